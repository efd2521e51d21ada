//! Bytes on the wire that several stages write: reason phrases, `100 Continue`, decimal
//! numbers, chunk-size lines and header lines, all appended to a `Vec<u8>` without an
//! intermediate `String`. A leaf: it imports nothing from the request flow.

use std::fmt::Write as _;

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match shardgate_core::http1::reason_phrase(status) {
        "" => "Unknown",
        phrase => phrase,
    }
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a decimal number without allocating.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        // Common in a log line: a worker, an address's zeros, whole seconds.
        out.push(b'0' + n as u8);
        return;
    }
    if n >= 100_000_000 {
        // Rare in a log line (byte counts over 100 MB): the high digits, then eight more.
        push_decimal(out, n / 100_000_000);
        out.extend_from_slice(&eight_digits((n % 100_000_000) as u32).to_le_bytes());
        return;
    }
    let len = decimal_len(n);
    // The digits are built in a register and stored with one 8-byte write, the unused tail
    // cut off. Digits stored byte by byte and then copied would be read back with one wide
    // load that cannot take its bytes from those stores (a store-forwarding stall, measured
    // at over a third of an access-log line's cost).
    let digits = eight_digits(n as u32) >> (8 * (8 - len));
    let start = out.len();
    out.extend_from_slice(&digits.to_le_bytes());
    out.truncate(start + len);
}

/// `n` (below 10⁸) as eight ASCII digits, zero-padded, the first digit in the lowest byte
/// (so `to_le_bytes` reads them in order): the halves, quarters and digits are split in
/// parallel lanes of one `u64` by multiply-and-shift division.
pub fn eight_digits(n: u32) -> u64 {
    debug_assert!(n < 100_000_000);
    // Two 32-bit lanes: the first four digits and the last four.
    let x = u64::from(n / 10_000) | (u64::from(n % 10_000) << 32);
    // Each lane (< 10⁴) into two 16-bit lanes: lane / 100 and lane % 100
    // (x·10486 >> 20 is x / 100 for x < 10⁴ and stays within the lane).
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let x = hundreds | ((x - hundreds * 100) << 16);
    // Each 16-bit lane (< 100) into two bytes: lane / 10 and lane % 10
    // (x·103 >> 10 is x / 10 for x < 100).
    let tens = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    let x = tens | ((x - tens * 10) << 8);
    x + 0x3030_3030_3030_3030
}

/// `x` as sixteen lowercase hex digits, most significant first, the first digit in the
/// lowest byte (so `to_le_bytes` reads them in order): each byte spread into a 16-bit lane
/// of one `u128`, its nibbles split, and every lane made a digit at once (no table, no
/// loop over bytes).
pub fn sixteen_hex(x: u64) -> u128 {
    const LOW_NIBBLES: u128 = 0x000f_000f_000f_000f_000f_000f_000f_000f;
    const EVERY_BYTE: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // The most significant byte into the lowest lane.
    let z = u128::from(x.swap_bytes());
    let z = (z | (z << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    let z = (z | (z << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    let z = (z | (z << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    // Each lane's high nibble in its first byte, its low nibble in its second.
    let nibbles = ((z >> 4) & LOW_NIBBLES) | ((z & LOW_NIBBLES) << 8);
    // 1 in each byte whose nibble is 10 or more (10 + 6 carries into bit 4).
    let letters = ((nibbles + 6 * EVERY_BYTE) >> 4) & EVERY_BYTE;
    nibbles + 0x30 * EVERY_BYTE + letters * u128::from(b'a' - b'0' - 10)
}

/// How many decimal digits `n` has (1 for 0).
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends a chunk-size line (`{len:x}\r\n`).
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(ByteWriter(out), "{len:x}\r\n");
}

/// Appends `ip` as `Display` writes it: IPv4, the usual case, octet by octet without the
/// formatting machinery (which a saturated core's profile showed per request for the
/// X-Forwarded-For address); IPv6 through `Display`.
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_decimal(out, u64::from(a));
            for octet in [b, c, d] {
                out.push(b'.');
                push_decimal(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(ByteWriter(out), "{v6}");
        }
    }
}

/// Appends `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The connection preface a client with prior knowledge opens with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` (the first bytes of a plain connection) is, or may still become, the
/// HTTP/2 preface: `Some(true)` complete, `Some(false)` a prefix of it so far, `None` not.
pub fn h2_preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(H2_PREFACE.len());
    (buf[..n] == H2_PREFACE[..n]).then_some(n == H2_PREFACE.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_like_std() {
        let mut ips: Vec<std::net::IpAddr> = vec![
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [127, 0, 0, 1].into(),
            [10, 9, 100, 200].into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
            "2001:db8::8a2e:370:7334".parse().expect("an IPv6 address"),
            "::ffff:192.0.2.1".parse().expect("a mapped address"),
        ];
        // Every octet value in every position.
        ips.extend((0..=255u8).flat_map(|o| {
            [[o, 1, 2, 3], [1, o, 2, 3], [1, 2, o, 3], [1, 2, 3, o]].map(std::net::IpAddr::from)
        }));
        for ip in ips {
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes());
        }
    }

    #[test]
    fn decimals_and_chunk_sizes_format_like_std() {
        let powers = (0..20).map(|e| 10u64.pow(e));
        let edges = powers.flat_map(|p| [p - 1, p, p + 1]);
        for n in edges.chain([7, 12345, u64::MAX - 1, u64::MAX]) {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
        // Every value of both 4-digit lanes, beside a high and a low neighbour lane.
        let lanes = (0..10_000).flat_map(|v| [v * 10_001, v * 10_000 + 9_999 - v]);
        for n in (0..100_000_000).step_by(9_973).chain(lanes) {
            let text = format!("{n:08}");
            assert_eq!(eight_digits(n).to_le_bytes(), text.as_bytes(), "{n}");
        }
        let mut out = Vec::new();
        push_chunk_size(&mut out, 255);
        assert_eq!(out, b"ff\r\n");
    }

    #[test]
    fn hex_digits_format_like_std() {
        // Every nibble value in every position, and a spread of mixed words.
        let single = (0..16u64).flat_map(|pos| (0..16u64).map(move |v| v << (4 * pos)));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mixed = (0..10_000).map(move |_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x
        });
        for n in single
            .chain(mixed)
            .chain([0, u64::MAX, 0x0123_4567_89ab_cdef])
        {
            let text = format!("{n:016x}");
            assert_eq!(sixteen_hex(n).to_le_bytes(), text.as_bytes(), "{n:x}");
        }
    }

    #[test]
    fn the_h2_preface_is_told_apart_from_an_http11_head_byte_by_byte() {
        assert_eq!(h2_preface(b""), Some(false));
        assert_eq!(h2_preface(b"PRI * HT"), Some(false));
        assert_eq!(h2_preface(H2_PREFACE), Some(true));
        assert_eq!(
            h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(true)
        );
        assert_eq!(h2_preface(b"POST / HTTP/1.1\r\n"), None);
        assert_eq!(h2_preface(b"PRI * HTTP/1.1\r\n"), None);
    }
}
