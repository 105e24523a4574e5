//! Who is kept out of the room: addresses and CIDR prefixes ([`Target`]) and the ban list that
//! holds them with their expiry ([`Bans`]). Pure data, no I/O: the hub asks it at every join,
//! the supervisor keeps it across reloads.

mod bans;

pub use bans::{Ban, Bans};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// One address (`203.0.113.7`, `::1`) or a prefix of them (`203.0.113.0/24`, `2001:db8::/32`).
/// Host bits below the prefix are cleared, so one range has one spelling.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    addr: IpAddr,
    prefix: u8,
}

impl Target {
    /// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6.
    pub fn parse(text: &str) -> Result<Target, String> {
        let bad =
            || format!("'{text}' is not an address or prefix like 203.0.113.7 or 203.0.113.0/24");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let bits = max_prefix(addr);
        let prefix = match prefix {
            None => bits,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(bad)?,
        };
        Ok(Target { addr: mask(addr, prefix), prefix })
    }

    /// Whether `ip` is this address or inside this prefix. IPv4 clients reached over an IPv6
    /// socket (`::ffff:203.0.113.7`) match their IPv4 bans.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// `addr` with every bit after the first `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((bits & kept).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((bits & kept).to_be_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn targets_match_addresses_and_prefixes() {
        let net = Target::parse("203.0.113.9/24").expect("prefix");
        assert_eq!(net.to_string(), "203.0.113.0/24");
        assert!(net.contains(ip("203.0.113.200")));
        assert!(net.contains(ip("::ffff:203.0.113.1")));
        assert!(!net.contains(ip("203.0.114.1")));
        assert!(!net.contains(ip("::1")));
        let one = Target::parse("127.0.0.1").expect("address");
        assert_eq!(one.to_string(), "127.0.0.1");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Target::parse("0.0.0.0/0").expect("everything");
        assert!(all.contains(ip("198.51.100.1")));
        let v6 = Target::parse("2001:db8::1/32").expect("v6 prefix");
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["", "host.example", "10.0.0.0/33", "::/129", "10.0.0.0/x", "10.0.0.0/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
