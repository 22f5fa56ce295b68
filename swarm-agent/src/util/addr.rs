//! Listen and advertise addresses, with moby's rules and error texts
//! (daemon/cluster/listen_addr.go): `ip|interface[:port]`, and when no
//! advertise address is given, the system's single global IPv4 address.

use std::net::{IpAddr, Ipv4Addr};

/// Default port of the cluster management endpoint.
pub const DEFAULT_PORT: u16 = 2377;
/// Default listen address.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:2377";

pub const ERR_LISTEN: &str =
    "listen address must be an IP address or network interface (with optional port number)";
pub const ERR_ADVERTISE: &str =
    "advertise address must be a non-zero IP address or network interface (with optional port number)";
pub const ERR_NO_SYSTEM_ADDR: &str = "could not find the system's IP address";
pub const ERR_MUST_SPECIFY_LISTEN: &str = "must specify a listening address because the address to advertise is not recognized as a system address, and a system's IP address to use could not be uniquely identified";

/// An interface address as the system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub iface: String,
    pub ip: Ipv4Addr,
    pub up: bool,
    pub loopback: bool,
}

/// The IPv4 addresses of this network namespace's interfaces.
pub fn system_addrs() -> Vec<IfAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
            Some(IfAddr {
                iface: a.interface_name.clone(),
                ip,
                up: a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP),
                loopback: a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK),
            })
        })
        .collect()
}

/// Splits `host[:port]`; `host` may be an IP or an interface name.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// Resolves `ip|interface` to an IP using `addrs`.
fn resolve_host(host: &str, addrs: &[IfAddr], err: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let on_iface: Vec<&IfAddr> = addrs.iter().filter(|a| a.iface == host).collect();
    if on_iface.is_empty() {
        if addrs.iter().any(|a| a.iface == host) || nix::net::if_::if_nametoindex(host).is_ok() {
            return Err(format!("interface {host} has no usable IPv4 or IPv6 address"));
        }
        return Err(err.to_owned());
    }
    match on_iface.as_slice() {
        [a] => Ok(IpAddr::V4(a.ip)),
        [a, b, ..] => Err(format!("interface {host} has more than one IPv4 address ({} and {})", a.ip, b.ip)),
        [] => unreachable!(),
    }
}

fn parse_port(p: Option<&str>, default: u16, err: &str) -> Result<u16, String> {
    match p {
        None => Ok(default),
        Some(p) => p.parse::<u16>().map_err(|_| err.to_owned()),
    }
}

/// Parses a listen address (`0.0.0.0:2377` by default).
pub fn resolve_listen(listen: &str, addrs: &[IfAddr]) -> Result<(IpAddr, u16), String> {
    let (h, p) = split_host_port(listen);
    let ip = resolve_host(h, addrs, ERR_LISTEN)?;
    Ok((ip, parse_port(p, DEFAULT_PORT, ERR_LISTEN)?))
}

/// The address to advertise: the given one, else the listen IP if it is
/// specific, else the system's only global IPv4 address. The port defaults
/// to the listen port.
pub fn resolve_advertise(
    advertise: Option<&str>,
    listen: (IpAddr, u16),
    addrs: &[IfAddr],
) -> Result<(IpAddr, u16), String> {
    if let Some(adv) = advertise.filter(|a| !a.is_empty()) {
        let (h, p) = split_host_port(adv);
        let ip = resolve_host(h, addrs, ERR_ADVERTISE)?;
        if ip.is_unspecified() {
            return Err(ERR_ADVERTISE.to_owned());
        }
        return Ok((ip, parse_port(p, listen.1, ERR_ADVERTISE)?));
    }
    if !listen.0.is_unspecified() {
        return Ok(listen);
    }
    Ok((IpAddr::V4(system_ip(addrs)?), listen.1))
}

/// The one global unicast IPv4 address of an up, non-loopback interface.
pub fn system_ip(addrs: &[IfAddr]) -> Result<Ipv4Addr, String> {
    let candidates: Vec<&IfAddr> = addrs
        .iter()
        .filter(|a| {
            a.up && !a.loopback && !a.ip.is_loopback() && !a.ip.is_link_local() && !a.ip.is_unspecified()
        })
        .collect();
    match candidates.as_slice() {
        [] => Err(ERR_NO_SYSTEM_ADDR.to_owned()),
        [a] => Ok(a.ip),
        [a, b, ..] if a.iface == b.iface => Err(format!(
            "could not choose an IP address to advertise since this system has multiple addresses on interface {} ({} and {})",
            a.iface, a.ip, b.ip
        )),
        [a, b, ..] => Err(format!(
            "could not choose an IP address to advertise since this system has multiple addresses on different interfaces ({} on {} and {} on {})",
            a.ip, a.iface, b.ip, b.iface
        )),
    }
}

/// `ip:port`, with IPv6 in brackets.
pub fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// A remote manager address: `host:port`, port 2377 if omitted.
pub fn normalize_remote(remote: &str) -> String {
    match split_host_port(remote) {
        (_, Some(_)) => remote.to_owned(),
        (h, None) => format!("{h}:{DEFAULT_PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(iface: &str, ip: &str) -> IfAddr {
        IfAddr { iface: iface.into(), ip: ip.parse().unwrap(), up: true, loopback: iface == "lo" }
    }

    fn sys() -> Vec<IfAddr> {
        vec![a("lo", "127.0.0.1"), a("eth0", "198.18.0.1")]
    }

    #[test]
    fn single_system_address_is_advertised() {
        let l = resolve_listen(DEFAULT_LISTEN_ADDR, &sys()).unwrap();
        assert_eq!(resolve_advertise(None, l, &sys()).unwrap(), ("198.18.0.1".parse().unwrap(), 2377));
        assert_eq!(
            resolve_advertise(Some("eth0:4000"), l, &sys()).unwrap(),
            ("198.18.0.1".parse().unwrap(), 4000)
        );
        assert_eq!(
            resolve_advertise(Some("198.18.0.9"), l, &sys()).unwrap(),
            ("198.18.0.9".parse().unwrap(), 2377)
        );
    }

    #[test]
    fn ambiguous_addresses_give_moby_errors() {
        let l = resolve_listen(DEFAULT_LISTEN_ADDR, &sys()).unwrap();
        let mut two = sys();
        two.push(a("eth0", "198.18.0.101"));
        assert_eq!(
            resolve_advertise(None, l, &two).unwrap_err(),
            "could not choose an IP address to advertise since this system has multiple addresses on interface eth0 (198.18.0.1 and 198.18.0.101)"
        );
        let mut two_ifaces = sys();
        two_ifaces.push(a("eth1", "198.19.0.1"));
        assert_eq!(
            resolve_advertise(None, l, &two_ifaces).unwrap_err(),
            "could not choose an IP address to advertise since this system has multiple addresses on different interfaces (198.18.0.1 on eth0 and 198.19.0.1 on eth1)"
        );
        assert_eq!(resolve_advertise(None, l, &[a("lo", "127.0.0.1")]).unwrap_err(), ERR_NO_SYSTEM_ADDR);
        assert_eq!(
            resolve_advertise(Some("eth0"), l, &two).unwrap_err(),
            "interface eth0 has more than one IPv4 address (198.18.0.1 and 198.18.0.101)"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert_eq!(resolve_listen("no-such-if0", &sys()).unwrap_err(), ERR_LISTEN);
        assert_eq!(resolve_listen("0.0.0.0:notaport", &sys()).unwrap_err(), ERR_LISTEN);
        let l = resolve_listen(DEFAULT_LISTEN_ADDR, &sys()).unwrap();
        assert_eq!(resolve_advertise(Some("0.0.0.0"), l, &sys()).unwrap_err(), ERR_ADVERTISE);
        assert_eq!(resolve_advertise(Some("bogus-if9"), l, &sys()).unwrap_err(), ERR_ADVERTISE);
    }

    #[test]
    fn remote_addresses_get_the_default_port() {
        assert_eq!(normalize_remote("198.18.0.1"), "198.18.0.1:2377");
        assert_eq!(normalize_remote("198.18.0.1:4000"), "198.18.0.1:4000");
    }
}
