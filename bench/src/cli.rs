//! Flag parsing shared by the bench binaries.

/// `value` of `flag` as a number, or an error naming both.
pub fn num<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: not a number: {value:?}"))
}
