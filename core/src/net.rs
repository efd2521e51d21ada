//! IP networks: [`Cidr`] blocks and [`CidrSet`] lists, for `ip_restriction` and the proxy's
//! `--trusted-proxies`.
//!
//! Notation and meaning, decided once here so that every list behaves the same:
//! - `10.0.0.0/8`, `2001:db8::/32`; a bare address is one host (`/32`, `/128`).
//! - Host bits set (`10.1.2.3/8`) are **refused**, and the error names the network
//!   (`10.0.0.0/8`). An allow or deny entry is a security decision; silently masking a typo
//!   would quietly widen or narrow who gets in.
//! - IPv4-mapped IPv6 (`::ffff:a.b.c.d`): an address is matched as the IPv4 address it
//!   carries, because a dual-stack socket reports IPv4 clients that way. A block written in
//!   mapped form with a prefix of 96 or more is stored as its IPv4 equivalent
//!   (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). Otherwise IPv6 blocks never match IPv4
//!   clients: `::/0` means "every IPv6 client", not "everyone" (that is `0.0.0.0/0` + `::/0`).
//! - Text form (Display, serde) is always `network/prefix`, so `"10.0.0.1"` reads back as
//!   `"10.0.0.1/32"`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One IP network: an address with its host bits zero and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR block was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// Not an address, or a malformed prefix.
    Syntax(String),
    /// Prefix longer than the address (`/33` for IPv4, `/129` for IPv6).
    PrefixTooLong { input: String, max: u8 },
    /// Bits below the prefix are set; `network` is the block the user probably meant.
    HostBitsSet { input: String, network: Cidr },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::Syntax(input) => write!(
                f,
                "{input:?} is not an IP address or CIDR block like 10.0.0.0/8 or 2001:db8::/32"
            ),
            CidrError::PrefixTooLong { input, max } => {
                write!(f, "{input:?}: the prefix length must be 0 to {max}")
            }
            CidrError::HostBitsSet { input, network } => write!(
                f,
                "{input:?} has bits set below its prefix; the network is \"{network}\""
            ),
        }
    }
}

impl std::error::Error for CidrError {}

/// The address as a 128-bit number in its own family's space, plus the family's width.
fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The mask with the top `prefix` of `width` bits set, as a 128-bit number.
fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let host_bits = u32::from(width - prefix);
    all & all.checked_shl(host_bits).unwrap_or(0)
}

impl Cidr {
    /// A block from its network address and prefix length. Mapped IPv6 blocks with a prefix
    /// of 96 or more become IPv4 blocks; host bits must be zero.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let input = || format!("{network}/{prefix}");
        let (network, prefix) = match network {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (network, prefix),
            },
            _ => (network, prefix),
        };
        let (value, width) = bits(network);
        if prefix > width {
            return Err(CidrError::PrefixTooLong {
                input: input(),
                max: width,
            });
        }
        let masked = value & mask(prefix, width);
        if masked != value {
            return Err(CidrError::HostBitsSet {
                input: input(),
                network: Cidr {
                    network: from_bits(masked, width),
                    prefix,
                },
            });
        }
        Ok(Cidr { network, prefix })
    }

    /// The block holding exactly `addr` (`/32` or `/128`; a mapped address becomes IPv4).
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr {
            network: addr,
            prefix: bits(addr).1,
        }
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is in this block. A mapped IPv6 address (`::ffff:a.b.c.d`) is tested as
    /// the IPv4 address it carries; IPv4 and IPv6 blocks never match the other family.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if addr.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let (value, width) = bits(addr);
        value & mask(self.prefix, width) == bits(self.network).0
    }

    /// The first and last address of the block, as numbers in its family's space.
    fn range(&self) -> (u128, u128) {
        let (start, width) = bits(self.network);
        (
            start,
            start | (mask(width, width) & !mask(self.prefix, width)),
        )
    }
}

fn from_bits(value: u128, width: u8) -> IpAddr {
    if width == 32 {
        // Lossless: a 32-bit family value never exceeds u32::MAX.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address. No whitespace, no zone ids.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => {
                if prefix.is_empty()
                    || prefix.len() > 3
                    || !prefix.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(syntax());
                }
                (addr, Some(prefix.parse::<u8>().map_err(|_| syntax())?))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix = prefix.unwrap_or(bits(addr).1);
        Cidr::new(addr, prefix).map_err(|e| match e {
            CidrError::PrefixTooLong { max, .. } => CidrError::PrefixTooLong {
                input: s.to_owned(),
                max,
            },
            CidrError::HostBitsSet { network, .. } => CidrError::HostBitsSet {
                input: s.to_owned(),
                network,
            },
            CidrError::Syntax(_) => syntax(),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A list of blocks with an O(log n) [`contains`](CidrSet::contains).
///
/// Built once per snapshot into sorted, merged address ranges per family and searched by
/// binary search. Why not a plain vector of blocks: typical lists (a few trusted proxies, an
/// office range) cost the same either way, but deny lists grow to thousands of entries (a
/// cloud provider's or a country's ranges), and a linear scan over those on every request
/// would not. A prefix trie would also be O(prefix length) but needs a node per bit; sorted
/// ranges are two flat vectors. The blocks as written are kept for display and equality.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    cidrs: Vec<Cidr>,
    /// Disjoint, non-adjacent `(first, last)` ranges, sorted; IPv4 values fit in 32 bits.
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == u128::MAX || start <= last.1 + 1 => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn in_ranges(ranges: &[(u128, u128)], value: u128) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= value);
    after > 0 && ranges[after - 1].1 >= value
}

impl CidrSet {
    pub fn new(cidrs: Vec<Cidr>) -> CidrSet {
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = cidrs.iter().partition(|c| c.network.is_ipv4());
        CidrSet {
            v4: merged(v4.into_iter().map(Cidr::range).collect()),
            v6: merged(v6.into_iter().map(Cidr::range).collect()),
            cidrs,
        }
    }

    /// Whether any block contains `addr` (mapped IPv6 addresses are tested as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(a) => in_ranges(&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.cidrs.len()
    }

    /// The blocks in the order they were given.
    pub fn as_slice(&self) -> &[Cidr] {
        &self.cidrs
    }
}

impl FromIterator<Cidr> for CidrSet {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> CidrSet {
        CidrSet::new(iter.into_iter().collect())
    }
}

impl FromStr for CidrSet {
    type Err = CidrError;

    /// A comma-separated list (`10.0.0.0/8, 127.0.0.1`), as a command-line flag takes it;
    /// spaces around items are ignored; an empty string is the empty set.
    fn from_str(s: &str) -> Result<CidrSet, CidrError> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for CidrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.cidrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

/// A JSON array of strings.
impl Serialize for CidrSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cidrs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CidrSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Cidr>::deserialize(d).map(CidrSet::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn blocks_parse_in_both_families_and_bare_addresses_are_single_hosts() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("10.0.0.1").to_string(), "10.0.0.1/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(cidr("::/0").prefix_len(), 0);
    }

    #[test]
    fn host_bits_are_refused_naming_the_network() {
        let err = "10.1.2.3/8".parse::<Cidr>().expect_err("host bits");
        assert_eq!(
            err,
            CidrError::HostBitsSet {
                input: "10.1.2.3/8".into(),
                network: cidr("10.0.0.0/8")
            }
        );
        assert!(err.to_string().contains("\"10.0.0.0/8\""), "{err}");
        let err = "2001:db8::1/32".parse::<Cidr>().expect_err("v6 host bits");
        assert!(err.to_string().contains("2001:db8::/32"), "{err}");
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
            "10.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "fe80::1%eth0",
            "example.com",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { max: 128, .. })
        ));
    }

    #[test]
    fn containment_at_the_edges_of_a_block() {
        let block = cidr("192.168.4.0/22");
        assert!(block.contains(ip("192.168.4.0")));
        assert!(block.contains(ip("192.168.7.255")));
        assert!(!block.contains(ip("192.168.3.255")));
        assert!(!block.contains(ip("192.168.8.0")));
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(cidr("10.0.0.1").contains(ip("10.0.0.1")));
        assert!(!cidr("10.0.0.1").contains(ip("10.0.0.2")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!v6.contains(ip("2001:db9::")));
        assert!(cidr("::/0").contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn mapped_ipv6_clients_match_ipv4_blocks_and_ipv6_blocks_never_match_ipv4() {
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.2")));
        assert!(!cidr("127.0.0.0/8").contains(ip("::ffff:128.0.0.1")));
        assert!(!cidr("::/0").contains(ip("10.0.0.1")));
        assert!(!cidr("::/0").contains(ip("::ffff:10.0.0.1")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        // A block written in mapped form is its IPv4 block.
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("::ffff:10.0.0.1"), cidr("10.0.0.1"));
        assert_eq!(Cidr::host(ip("::ffff:10.0.0.1")), cidr("10.0.0.1"));
    }

    #[test]
    fn a_set_finds_members_across_merged_and_separate_ranges() {
        let set: CidrSet = "10.0.0.0/9, 10.128.0.0/9,10.1.0.0/16, 192.168.1.7, 2001:db8::/64, ::1"
            .parse()
            .expect("valid list");
        assert_eq!(set.len(), 6);
        assert_eq!(set.v4.len(), 2, "adjacent /9s and the nested /16 merge");
        for inside in [
            "10.0.0.0",
            "10.127.255.255",
            "10.128.0.0",
            "10.255.255.255",
            "192.168.1.7",
            "::ffff:192.168.1.7",
            "2001:db8::abcd",
            "::1",
        ] {
            assert!(set.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.6",
            "192.168.1.8",
            "2001:db8:0:1::",
            "::2",
            "::",
        ] {
            assert!(!set.contains(ip(outside)), "{outside}");
        }
        assert!(!CidrSet::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn a_set_holding_everything_does_not_overflow() {
        let set: CidrSet = "0.0.0.0/0,255.255.255.255,::/0,ffff::/16"
            .parse()
            .expect("valid");
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("0.0.0.0")));
        assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert_eq!((set.v4.len(), set.v6.len()), (1, 1));
    }

    #[test]
    fn sets_serialize_as_strings_and_report_the_bad_entry() {
        let set: CidrSet =
            serde_json::from_value(serde_json::json!(["10.0.0.1", "2001:db8::/32"])).expect("ok");
        assert_eq!(
            serde_json::to_value(&set).expect("serialize"),
            serde_json::json!(["10.0.0.1/32", "2001:db8::/32"])
        );
        assert_eq!(set.to_string(), "10.0.0.1/32,2001:db8::/32");
        let err = serde_json::from_value::<CidrSet>(serde_json::json!(["10.0.0.0/8", "nope"]))
            .expect_err("bad entry");
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert_eq!("".parse::<CidrSet>().expect("empty"), CidrSet::default());
    }
}
