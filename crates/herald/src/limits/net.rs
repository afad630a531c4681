//! Addresses: visitor keys by prefix, host lists (IPs, CIDRs, host names) and the
//! client address behind a reverse proxy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`, or one address as `/32`,
/// `/128`). Stored masked, so equal prefixes compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    bits: u8,
}

impl IpNet {
    /// The prefix of `addr` of length `bits` (clamped to the family's width).
    pub fn new(addr: IpAddr, bits: u8) -> IpNet {
        let addr = addr.to_canonical();
        let bits = bits.min(max_bits(addr));
        IpNet {
            addr: mask(addr, bits),
            bits,
        }
    }

    /// Whether `ip` is inside this prefix (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.bits) == self.addr
    }

    /// `a.b.c.d`, `a.b.c.d/n`, `v6`, `v6/n`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let max = max_bits(addr.to_canonical());
        let bits = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max_bits(addr))?,
            None => max_bits(addr),
        };
        // `::ffff:10.0.0.0/104` means the IPv4 prefix `10.0.0.0/8`.
        let bits = if addr.is_ipv6() && max == 32 {
            bits.checked_sub(96)?
        } else {
            bits
        };
        Some(IpNet::new(addr, bits))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

fn max_bits(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_v4(a, bits))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(a, bits))),
    }
}

/// The first `bits` bits of `a`, the rest zero.
pub fn mask_v4(a: Ipv4Addr, bits: u8) -> u32 {
    let v = u32::from(a);
    match bits {
        0 => 0,
        b if b >= 32 => v,
        b => v & (u32::MAX << (32 - b)),
    }
}

/// The first `bits` bits of `a`, the rest zero.
pub fn mask_v6(a: Ipv6Addr, bits: u8) -> u128 {
    let v = u128::from(a);
    match bits {
        0 => 0,
        b if b >= 128 => v,
        b => v & (u128::MAX << (128 - b)),
    }
}

/// One entry of a host list option (`visitor-request-limit-exempt-hosts`,
/// `proxy-trusted-hosts`): an address or prefix, or a host name resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    Net(IpNet),
    Name(String),
}

/// Parses a comma- (or space-) separated host list as ntfy accepts it: IPs, CIDRs and
/// host names. Errors name the bad entry.
pub fn parse_host_list(s: &str) -> Result<Vec<HostSpec>, String> {
    let mut out = Vec::new();
    for entry in s.split([',', ' ']).map(str::trim).filter(|e| !e.is_empty()) {
        if let Some(net) = IpNet::parse(entry) {
            out.push(HostSpec::Net(net));
        } else if entry.contains('/') || !is_host_name(entry) {
            return Err(format!(
                "{entry:?} is not an IP address, CIDR prefix or host name"
            ));
        } else {
            out.push(HostSpec::Name(entry.to_ascii_lowercase()));
        }
    }
    Ok(out)
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Resolves a host list to prefixes. A name that does not resolve is skipped with a
/// warning (as ntfy does), so a DNS hiccup at start-up does not stop the server.
pub fn resolve_hosts(specs: &[HostSpec], option: &str) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for spec in specs {
        match spec {
            HostSpec::Net(n) => nets.push(*n),
            HostSpec::Name(name) => match (name.as_str(), 0).to_socket_addrs() {
                Ok(addrs) => {
                    for a in addrs {
                        let net = IpNet::new(a.ip(), 128);
                        if !nets.contains(&net) {
                            nets.push(net);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(option, host = %name, error = %e, "cannot resolve host name; ignoring it");
                }
            },
        }
    }
    nets
}

/// The client address from a proxy header (`X-Forwarded-For`, `X-Real-IP`,
/// `X-Client-IP` or RFC 7239 `Forwarded`), given its values in order: the right-most
/// address that is not a trusted proxy (the one the nearest untrusted hop added),
/// or the left-most if every one is trusted. `None` if no value holds an address.
pub fn forwarded_client<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    rfc7239: bool,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let mut last_untrusted = None;
    let mut first = None;
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for element in value.split(',') {
            let addr = if rfc7239 {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v))?
                })
            } else {
                parse_node(element)
            };
            let Some(addr) = addr else { continue };
            first.get_or_insert(addr);
            if !trusted.iter().any(|n| n.contains(addr)) {
                last_untrusted = Some(addr);
            }
        }
    }
    last_untrusted.or(first)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    let (host, _port) = s.rsplit_once(':')?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_contain_their_addresses() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("::1")));
        let n = IpNet::parse("2001:db8::/32").unwrap();
        assert!(n.contains(ip("2001:db8:ffff::1")));
        assert!(!n.contains(ip("2001:db9::1")));
        assert_eq!(
            IpNet::parse("::ffff:10.0.0.0/104"),
            IpNet::parse("10.0.0.0/8")
        );
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
        assert!(IpNet::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
    }

    #[test]
    fn host_lists() {
        let list = parse_host_list("127.0.0.1, 10.0.0.0/8 ::1,localhost").unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[3], HostSpec::Name("localhost".into()));
        assert!(parse_host_list("10.0.0.0/99").is_err());
        assert!(parse_host_list("under_score!").is_err());
        assert!(parse_host_list("").unwrap().is_empty());
        let nets = resolve_hosts(&parse_host_list("10.0.0.0/8,localhost").unwrap(), "t");
        assert!(nets.iter().any(|n| n.contains(ip("127.0.0.1"))));
    }

    #[test]
    fn forwarded_headers() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let xff = |v: &'static str| forwarded_client([v.as_bytes()].into_iter(), false, &trusted);
        assert_eq!(xff("1.2.3.4"), Some(ip("1.2.3.4")));
        // The right-most untrusted hop: a client cannot choose its address by
        // prepending one.
        assert_eq!(xff("6.6.6.6, 1.2.3.4, 10.0.0.2"), Some(ip("1.2.3.4")));
        assert_eq!(xff("10.0.0.3, 10.0.0.2"), Some(ip("10.0.0.3")));
        assert_eq!(xff("garbage, 1.2.3.4:5678"), Some(ip("1.2.3.4")));
        assert_eq!(xff("[2001:db8::1]:80"), Some(ip("2001:db8::1")));
        assert_eq!(xff("unknown"), None);
        let fwd = forwarded_client(
            [&b"for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\""[..]]
                .into_iter(),
            true,
            &[],
        );
        assert_eq!(fwd, Some(ip("2001:db8:cafe::17")));
        // Several header lines are one list, in order.
        let two = forwarded_client([&b"1.1.1.1"[..], &b"2.2.2.2"[..]].into_iter(), false, &[]);
        assert_eq!(two, Some(ip("2.2.2.2")));
    }

    proptest! {
        #[test]
        fn v4_prefix_membership_matches_the_mask(a: u32, b: u32, bits in 0u8..=32) {
            let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), bits);
            let other = IpAddr::V4(Ipv4Addr::from(b));
            let same = mask_v4(Ipv4Addr::from(a), bits) == mask_v4(Ipv4Addr::from(b), bits);
            prop_assert_eq!(net.contains(other), same);
            prop_assert!(net.contains(IpAddr::V4(Ipv4Addr::from(a))));
            prop_assert_eq!(IpNet::parse(&net.to_string()), Some(net));
        }

        #[test]
        fn v6_prefix_membership_matches_the_mask(a: u128, b: u128, bits in 0u8..=128) {
            let (a6, b6) = (Ipv6Addr::from(a), Ipv6Addr::from(b));
            // Skip IPv4-mapped addresses: they are treated as IPv4 (tested above).
            prop_assume!(a6.to_ipv4_mapped().is_none() && b6.to_ipv4_mapped().is_none());
            let net = IpNet::new(IpAddr::V6(a6), bits);
            let same = mask_v6(a6, bits) == mask_v6(b6, bits);
            prop_assert_eq!(net.contains(IpAddr::V6(b6)), same);
            prop_assert_eq!(IpNet::parse(&net.to_string()), Some(net));
        }

        #[test]
        fn forwarded_parsing_never_panics(s in "\\PC{0,80}") {
            let _ = forwarded_client([s.as_bytes()].into_iter(), false, &[]);
            let _ = forwarded_client([s.as_bytes()].into_iter(), true, &[]);
            let _ = parse_host_list(&s);
        }
    }
}
