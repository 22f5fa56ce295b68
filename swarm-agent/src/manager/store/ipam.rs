//! Address management for overlay networks, as Docker's swarm allocator does
//! it: subnets carved in order out of the cluster's address pools (default
//! 10.0.0.0/8 in /24s), the gateway at the first address, VNIs from 4096,
//! endpoint addresses the lowest free ones; everything reused after delete.

use std::{collections::BTreeSet, net::Ipv4Addr};

/// First VNI handed out (the ingress network gets it).
pub const FIRST_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; the address must be the network address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let err = || format!("invalid CIDR address: {s}");
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(format!(
                "invalid subnet {s}: it is not a network address (did you mean {}/{prefix}?)",
                c.network()
            ));
        }
        Ok(c)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The first host address (Docker's default gateway).
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(1))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The first `/size` subnet of the pools that overlaps none of `used`.
pub fn next_subnet(pools: &[Cidr], size: u8, used: &[Cidr]) -> Option<Cidr> {
    for pool in pools {
        if size < pool.prefix || size > 32 {
            continue;
        }
        let step = 1u64 << (32 - u32::from(size));
        let start = u64::from(u32::from(pool.network()));
        let end = u64::from(u32::from(pool.broadcast()));
        let mut at = start;
        while at + step - 1 <= end {
            let c = Cidr { addr: Ipv4Addr::from(at as u32), prefix: size };
            match used.iter().find(|u| u.overlaps(c)) {
                None => return Some(c),
                // Skip past the blocking subnet.
                Some(u) => {
                    let past = u64::from(u32::from(u.broadcast())) + 1;
                    at = past.max(at + step).div_ceil(step) * step;
                }
            }
        }
    }
    None
}

/// The lowest VNI from [`FIRST_VNI`] not in `used`.
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

/// The lowest free host address of `subnet`: not the network or broadcast
/// address, not the gateway, not in `used`.
pub fn next_ip(subnet: Cidr, gateway: Ipv4Addr, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()).checked_add(1)?;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last).map(Ipv4Addr::from).find(|ip| *ip != gateway && !used.contains(ip))
}

/// Why an address cannot be given to an endpoint, if it cannot.
pub fn check_ip(subnet: Cidr, gateway: Ipv4Addr, ip: Ipv4Addr) -> Result<(), String> {
    if !subnet.contains(ip) {
        return Err(format!("invalid address {ip}: it does not belong to subnet {subnet}"));
    }
    if ip == subnet.network() || ip == subnet.broadcast() || ip == gateway {
        return Err(format!("invalid address {ip}: it is reserved in subnet {subnet}"));
    }
    Ok(())
}

/// Docker's MAC for an IPv4 address: 02:42 followed by the address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn subnets_are_handed_out_in_order_and_reused() {
        let pool = [c("10.0.0.0/8")];
        assert_eq!(next_subnet(&pool, 24, &[]), Some(c("10.0.0.0/24")));
        assert_eq!(next_subnet(&pool, 24, &[c("10.0.0.0/24")]), Some(c("10.0.1.0/24")));
        assert_eq!(
            next_subnet(&pool, 24, &[c("10.0.1.0/24")]),
            Some(c("10.0.0.0/24")),
            "freed subnets are reused"
        );
        // A user subnet in the way is skipped entirely.
        assert_eq!(next_subnet(&pool, 24, &[c("10.0.0.0/24"), c("10.0.0.0/16")]), Some(c("10.1.0.0/24")));
        // Exhausted pools fall through to the next one.
        let small = [c("10.20.0.0/30"), c("10.30.0.0/16")];
        assert_eq!(next_subnet(&small, 30, &[c("10.20.0.0/30")]), Some(c("10.30.0.0/30")));
        assert_eq!(next_subnet(&[c("10.20.0.0/30")], 30, &[c("10.20.0.0/30")]), None);
    }

    #[test]
    fn vnis_start_at_4096_and_are_reused() {
        assert_eq!(next_vni(&BTreeSet::new()), Some(4096));
        assert_eq!(next_vni(&BTreeSet::from([4096, 4097])), Some(4098));
        assert_eq!(next_vni(&BTreeSet::from([4096, 4098])), Some(4097));
    }

    #[test]
    fn endpoint_addresses_skip_reserved_ones() {
        let s = c("10.0.1.0/24");
        let gw = s.first_host();
        assert_eq!(gw, Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(next_ip(s, gw, &BTreeSet::new()), Some(Ipv4Addr::new(10, 0, 1, 2)));
        let used = BTreeSet::from([Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)]);
        assert_eq!(next_ip(s, gw, &used), Some(Ipv4Addr::new(10, 0, 1, 4)));
        let tiny = c("10.0.2.0/30"); // .1 gateway, .2 the only host
        assert_eq!(next_ip(tiny, tiny.first_host(), &BTreeSet::from([Ipv4Addr::new(10, 0, 2, 2)])), None);
        assert!(check_ip(s, gw, Ipv4Addr::new(10, 0, 1, 255)).is_err());
        assert!(check_ip(s, gw, gw).is_err());
        assert!(check_ip(s, gw, Ipv4Addr::new(10, 0, 2, 5)).is_err());
        assert!(check_ip(s, gw, Ipv4Addr::new(10, 0, 1, 9)).is_ok());
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert!(Cidr::parse("10.0.0.0/8").is_ok());
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "invalid subnet 10.0.0.1/8: it is not a network address (did you mean 10.0.0.0/8?)"
        );
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(c("10.0.0.0/16").overlaps(c("10.0.5.0/24")));
        assert!(!c("10.0.0.0/24").overlaps(c("10.0.1.0/24")));
        assert_eq!(format_mac(mac_for(Ipv4Addr::new(10, 0, 1, 2))), "02:42:0a:00:01:02");
    }
}
