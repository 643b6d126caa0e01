//! Trusted proxy networks: `10.0.0.0/8`, `::1/128` or one address, matched with `ipnet`.

use std::net::IpAddr;

use ipnet::IpNet;
use tower_patterns_core::ConfigError;

/// A network, `10.0.0.0/8` or `::1/128` or one address (a `/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Net(IpNet);

impl Net {
    pub(super) fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::new(
                "trusted_proxies",
                format!("{s:?} is not an address or CIDR"),
            )
        };
        if s.contains('/') {
            s.parse::<IpNet>().map(Self).map_err(|_| bad())
        } else {
            s.parse::<IpAddr>()
                .map(|addr| Self(IpNet::from(addr)))
                .map_err(|_| bad())
        }
    }

    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a
    /// dual-stack socket reports for an IPv4 peer) counts as its IPv4 address.
    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.0.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let net = Net::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(Net::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("nonsense").is_err());
    }

    #[test]
    fn networks_mask_exactly_their_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = Net::parse("10.1.2.0/24").unwrap();
        for inside in ["10.1.2.0", "10.1.2.1", "10.1.2.255", "::ffff:10.1.2.7"] {
            assert!(v4.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "10.1.3.0",
            "10.1.1.255",
            "11.1.2.1",
            "10.129.2.1",
            "::a01:207",
        ] {
            assert!(!v4.contains(ip(outside)), "{outside}");
        }
        let pair = Net::parse("192.0.2.6/31").unwrap();
        assert!(pair.contains(ip("192.0.2.7")) && pair.contains(ip("192.0.2.6")));
        assert!(!pair.contains(ip("192.0.2.5")) && !pair.contains(ip("192.0.2.8")));
        let one = Net::parse("192.0.2.6").unwrap();
        assert!(one.contains(ip("192.0.2.6")) && !one.contains(ip("192.0.2.7")));
        let all = Net::parse("0.0.0.0/0").unwrap();
        for any in ["8.8.8.8", "8.8.8.9", "255.255.255.255", "0.0.0.1"] {
            assert!(all.contains(ip(any)), "{any}");
        }
        assert!(
            !all.contains(ip("2001:db8::1")),
            "an IPv4 net holds no IPv6 address"
        );

        let v6 = Net::parse("2001:db8::/32").unwrap();
        for inside in ["2001:db8::", "2001:db8::1", "2001:db8:ffff:ffff::9"] {
            assert!(v6.contains(ip(inside)), "{inside}");
        }
        for outside in ["2001:db9::", "2001:db7:ffff::", "3001:db8::1", "10.0.0.1"] {
            assert!(!v6.contains(ip(outside)), "{outside}");
        }
        let host = Net::parse("2001:db8::7/128").unwrap();
        assert!(host.contains(ip("2001:db8::7")) && !host.contains(ip("2001:db8::6")));
        let every6 = Net::parse("::/0").unwrap();
        for any in ["::1", "::2", "ffff::"] {
            assert!(every6.contains(ip(any)), "{any}");
        }
        assert!(Net::parse("::/129").is_err());
        assert!(Net::parse("10.0.0.0/x").is_err());
        assert_eq!(
            Net::parse("10.0.0.0/32").unwrap(),
            Net::parse("10.0.0.0").unwrap()
        );
    }
}
