//! Per-route client address rules: `allow` and `deny` lists of addresses and CIDR blocks,
//! checked against the client's address: the connection's peer, or, when the peer is one of the
//! listener's `trusted_proxies`, the address it forwarded for (`forwarded.rs`). X-Forwarded-For
//! from anyone else is never read.

use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `addr` or `addr/bits`; None if it is neither.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net, bits })
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u32::from(n).into(), u32::from(a).into(), 32, self.bits)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(u128::from(n), u128::from(a), 128, self.bits)
            }
            _ => false,
        }
    }
}

/// Whether the top `bits` of two `width`-bit numbers agree.
fn prefix_eq(a: u128, b: u128, width: u8, bits: u8) -> bool {
    if bits == 0 {
        return true;
    }
    let shift = u32::from(width - bits);
    (a >> shift) == (b >> shift)
}

/// A route's rules: a peer must be in `allow` (when it is not empty) and not in `deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Blocks allowed (empty: everyone not denied).
    pub allow: Vec<Cidr>,
    /// Blocks refused, whatever `allow` says.
    pub deny: Vec<Cidr>,
}

impl AccessRules {
    /// Whether a client at `ip` may use the route.
    pub fn permits(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_match_by_prefix_in_both_families() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        let one = Cidr::parse("192.0.2.7").expect("one address");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129", "1.2.3.4/"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn deny_wins_over_allow_and_empty_allow_admits_all() {
        let r = AccessRules {
            allow: vec![Cidr::parse("10.0.0.0/8").expect("cidr")],
            deny: vec![Cidr::parse("10.9.0.0/16").expect("cidr")],
        };
        assert!(r.permits(ip("10.1.1.1")));
        assert!(!r.permits(ip("10.9.1.1")));
        assert!(!r.permits(ip("127.0.0.1")));
        let open = AccessRules {
            allow: vec![],
            deny: vec![Cidr::parse("203.0.113.0/24").expect("cidr")],
        };
        assert!(open.permits(ip("127.0.0.1")) && !open.permits(ip("203.0.113.5")));
    }
}
