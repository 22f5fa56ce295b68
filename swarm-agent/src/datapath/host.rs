//! This host's overlay datapath: the programs attached to the underlay
//! interface and to each endpoint's veth, and the maps that steer them.
//! Everything is pinned under the agent's bpffs root, so a restarted agent
//! finds the datapath still running and adopts it.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    programs::{
        TcAttachType, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use swarm_common::{
    names::{
        MAP_SOCK_NETNS, PROG_SOCK_CONNECT4, PROG_TC_FROM_ENDPOINT, PROG_TC_FROM_UNDERLAY, PROG_XDP_UNDERLAY,
    },
    overlay::{
        DropReason, ENDPOINT_LOCAL, EndpointInfo, EndpointKey, Event, HostConfig, LocalEndpoint, NetworkInfo,
    },
    stats::Counter,
};

use super::{DatapathError, PinLayout, netlink, overlay};

/// Whether and how to run XDP on the underlay interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpPolicy {
    /// Native XDP, except on veth underlays: there an XDP program costs most
    /// of the TCP throughput (measured 14 -> 2.6 Gbit/s) and TC filters alone.
    Auto,
    Native,
    Generic,
    Off,
}

impl XdpPolicy {
    pub fn parse(s: &str) -> Option<XdpPolicy> {
        match s {
            "auto" => Some(XdpPolicy::Auto),
            "native" => Some(XdpPolicy::Native),
            "generic" => Some(XdpPolicy::Generic),
            "off" => Some(XdpPolicy::Off),
            _ => None,
        }
    }
}

/// The underlay interface and the programs on it.
pub struct HostDatapath {
    ebpf: Ebpf,
    pins: PinLayout,
    pub underlay: String,
    pub underlay_ip: Ipv4Addr,
    pub underlay_mtu: u32,
    /// Which XDP mode the underlay runs, if any.
    pub xdp: Option<XdpMode>,
    /// The service frontends as programmed.
    balancers: super::balancer::Applied,
}

/// The interface that has `ip`.
fn iface_with(ip: Ipv4Addr) -> Option<String> {
    crate::util::addr::system_addrs().into_iter().find(|a| a.ip == ip).map(|a| a.iface)
}

impl HostDatapath {
    /// Loads (or adopts) the datapath for the underlay interface that holds
    /// `underlay_ip`, with VXLAN on `vxlan_port`.
    pub async fn start(
        pins: PinLayout,
        underlay_ip: Ipv4Addr,
        vxlan_port: u16,
        xdp: XdpPolicy,
    ) -> Result<HostDatapath, DatapathError> {
        let underlay = iface_with(underlay_ip)
            .ok_or_else(|| DatapathError::NoSuchInterface(format!("(with address {underlay_ip})")))?;
        let h = netlink::handle(None)?;
        let link = netlink::link_by_name(&h, &underlay)
            .await?
            .ok_or_else(|| DatapathError::NoSuchInterface(underlay.clone()))?;
        let ifindex = link.header.index;
        let underlay_mtu = netlink::mtu(&link).unwrap_or(1500);
        pins.prepare()?;
        let mut ebpf = super::load(Some(&pins))?;
        overlay::Maps::new(&mut ebpf).set_config(HostConfig {
            underlay_ip: underlay_ip.octets(),
            underlay_ifindex: ifindex,
            vxlan_port,
            pad: 0,
        })?;
        let balancers = super::balancer::read(&mut overlay::LbMaps::new(&mut ebpf))?;
        let mut dp = HostDatapath {
            ebpf,
            pins,
            underlay: underlay.clone(),
            underlay_ip,
            underlay_mtu,
            xdp: None,
            balancers,
        };
        dp.attach_tc(PROG_TC_FROM_UNDERLAY, &underlay)?;
        let mode = match xdp {
            XdpPolicy::Off => None,
            XdpPolicy::Auto if netlink::is_veth(&link) => None,
            XdpPolicy::Auto | XdpPolicy::Native => Some(XdpMode::Driver),
            XdpPolicy::Generic => Some(XdpMode::Skb),
        };
        if let Some(m) = mode {
            dp.attach_xdp(&underlay, m)?;
            dp.xdp = Some(m);
        }
        Ok(dp)
    }

    /// Attaches a TC program to an interface's ingress, pinned; an
    /// attachment already pinned (a previous agent's) is kept.
    fn attach_tc(&mut self, program: &'static str, iface: &str) -> Result<(), DatapathError> {
        let pin = self.pins.link(program, iface);
        if pin.exists() {
            return Ok(());
        }
        let prog = overlay::classifier(&mut self.ebpf, program)?;
        let id = prog.attach(iface, TcAttachType::Ingress).map_err(|source| DatapathError::Program {
            op: "attaching",
            program,
            source,
        })?;
        let link = prog.take_link(id).map_err(|source| DatapathError::Program {
            op: "taking link of",
            program,
            source,
        })?;
        pin_link(link, &pin, "TC attached without a bpf_link (kernel < 6.6?): ")
    }

    fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), DatapathError> {
        let pin = self.pins.link(PROG_XDP_UNDERLAY, iface);
        if pin.exists() {
            return Ok(());
        }
        let prog = overlay::xdp(&mut self.ebpf, PROG_XDP_UNDERLAY)?;
        let id = prog.attach(iface, mode).map_err(|source| DatapathError::Program {
            op: "attaching",
            program: PROG_XDP_UNDERLAY,
            source,
        })?;
        let link = prog.take_link(id).map_err(|source| DatapathError::Program {
            op: "taking link of",
            program: PROG_XDP_UNDERLAY,
            source,
        })?;
        pin_link(link, &pin, "")
    }

    fn unpin(&self, program: &str, iface: &str) {
        let pin = self.pins.link(program, iface);
        if let Ok(l) = PinnedLink::from_pin(&pin) {
            let _ = l.unpin();
        }
    }

    fn maps(&mut self) -> overlay::Maps<'_> {
        overlay::Maps::new(&mut self.ebpf)
    }

    /// Makes a network known to the datapath.
    pub fn set_network(
        &mut self,
        vni: u32,
        subnet: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        self.maps().set_network(
            vni,
            NetworkInfo { gateway_ip: gateway.octets(), subnet: subnet.octets(), prefix_len, pad: [0; 3] },
        )
    }

    pub fn remove_network(&mut self, vni: u32) -> Result<(), DatapathError> {
        self.maps().remove_network(vni)
    }

    /// A local endpoint behind host-side interface `iface` (of a `kind`
    /// pair): its maps and the program for what the endpoint sends.
    pub fn add_local_endpoint(
        &mut self,
        iface: &str,
        ifindex: u32,
        kind: netlink::PairKind,
        vni: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        let flags = if kind == netlink::PairKind::Netkit { swarm_common::overlay::LOCAL_NETKIT } else { 0 };
        let ep = LocalEndpoint { vni, ip: ip.octets(), mac, flags, pad: 0 };
        self.program_endpoint(iface, ifindex, ep, ENDPOINT_LOCAL)
    }

    /// Attaches a TC program to the transmit path of the peer of netkit
    /// `iface` (what the task sends), pinned; an attachment already pinned
    /// is kept. aya 0.14 has no netkit links, so this is `BPF_LINK_CREATE`
    /// itself.
    fn attach_netkit_peer(
        &mut self,
        program: &'static str,
        iface: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let pin = self.pins.link(program, iface);
        if pin.exists() {
            return Ok(());
        }
        let prog = overlay::classifier(&mut self.ebpf, program)?;
        let fd = prog.fd().map_err(|source| DatapathError::Program { op: "opening", program, source })?;
        let link = bpf_link_create_netkit_peer(fd.as_fd().as_raw_fd(), ifindex).map_err(|source| {
            DatapathError::Io {
                op: "attaching the endpoint program to the netkit",
                path: iface.into(),
                source,
            }
        })?;
        bpf_obj_pin(link.as_raw_fd(), &pin).map_err(|e| DatapathError::Pin {
            op: "pinning",
            path: pin.clone(),
            detail: e.to_string(),
        })
    }

    /// The host's own endpoint (see [`swarm_common::overlay::ENDPOINT_HOST`]),
    /// also the source of tasks' connections to published ports.
    pub fn add_host_endpoint(
        &mut self,
        iface: &str,
        ifindex: u32,
        vni: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        let ep = LocalEndpoint { vni, ip: ip.octets(), mac, flags: 0, pad: 0 };
        self.program_endpoint(iface, ifindex, ep, ENDPOINT_LOCAL | swarm_common::overlay::ENDPOINT_HOST)?;
        self.set_single(
            swarm_common::names::MAP_LB_HOST,
            swarm_common::lb::HostEndpoint { ip: ip.octets(), vni },
        )
    }

    fn program_endpoint(
        &mut self,
        iface: &str,
        ifindex: u32,
        ep: LocalEndpoint,
        flags: u16,
    ) -> Result<(), DatapathError> {
        let mut m = self.maps();
        m.set_local(ifindex, ep)?;
        m.set_endpoint(
            EndpointKey { vni: ep.vni, ip: ep.ip },
            EndpointInfo { mac: ep.mac, flags, host_ip: [0; 4], ifindex },
        )?;
        if ep.flags & swarm_common::overlay::LOCAL_NETKIT == 0 {
            self.attach_tc(PROG_TC_FROM_ENDPOINT, iface)
        } else {
            self.attach_netkit_peer(PROG_TC_FROM_ENDPOINT, iface, ifindex)
        }
    }

    /// Sets the one value of an array map of one entry.
    fn set_single<T: aya::Pod>(&mut self, name: &'static str, value: T) -> Result<(), DatapathError> {
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
        let mut a: aya::maps::Array<&mut aya::maps::MapData, T> =
            aya::maps::Array::try_from(map).map_err(|source| DatapathError::Map { map: name, source })?;
        a.set(0, value, 0).map_err(|source| DatapathError::Map { map: name, source })
    }

    /// Attaches the socket-level half of the routing mesh to the cgroup v2
    /// hierarchy (at `cgroup2`, its root): `connect()` to a published port
    /// on a loopback address or the node's address, from this namespace.
    pub fn attach_sock(&mut self, cgroup2: &std::path::Path) -> Result<(), DatapathError> {
        use aya::programs::{CgroupAttachMode, CgroupSockAddr};
        let cookie = netns_cookie().map_err(|source| DatapathError::Io {
            op: "reading the network namespace cookie",
            path: std::path::PathBuf::new(),
            source,
        })?;
        self.set_single(MAP_SOCK_NETNS, cookie)?;
        let pin = self.pins.link(PROG_SOCK_CONNECT4, "cgroup");
        if pin.exists() {
            return Ok(());
        }
        let err = |op| move |source| DatapathError::Program { op, program: PROG_SOCK_CONNECT4, source };
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(PROG_SOCK_CONNECT4)
            .ok_or(DatapathError::MissingProgram(PROG_SOCK_CONNECT4))?
            .try_into()
            .map_err(err("opening"))?;
        if prog.fd().is_err() {
            prog.load().map_err(err("loading"))?;
        }
        let cg = std::fs::File::open(cgroup2).map_err(|source| DatapathError::Io {
            op: "opening the cgroup",
            path: cgroup2.to_owned(),
            source,
        })?;
        // Links to cgroups always allow several programs (flags must be 0).
        let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(err("attaching"))?;
        let link = prog.take_link(id).map_err(err("taking link of"))?;
        pin_link(link, &pin, "")
    }

    pub fn remove_local_endpoint(
        &mut self,
        iface: &str,
        ifindex: u32,
        vni: u32,
        ip: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        self.unpin(PROG_TC_FROM_ENDPOINT, iface);
        let mut m = self.maps();
        m.remove_local(ifindex)?;
        m.remove_endpoint(EndpointKey { vni, ip: ip.octets() })
    }

    /// An endpoint on another host.
    pub fn set_remote_endpoint(
        &mut self,
        vni: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
        host: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        self.maps().set_endpoint(
            EndpointKey { vni, ip: ip.octets() },
            EndpointInfo { mac, flags: 0, host_ip: host.octets(), ifindex: 0 },
        )
    }

    pub fn remove_remote_endpoint(&mut self, vni: u32, ip: Ipv4Addr) -> Result<(), DatapathError> {
        let key = EndpointKey { vni, ip: ip.octets() };
        // Never remove a local endpoint because a remote record went away.
        let local = self.maps().endpoints()?.iter().any(|(k, v)| *k == key && v.is_local());
        if local { Ok(()) } else { self.maps().remove_endpoint(key) }
    }

    /// Adds `hosts` to the member hosts allowed to send VXLAN.
    pub fn add_hosts(&mut self, hosts: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let have: std::collections::BTreeSet<[u8; 4]> = self.maps().hosts()?.into_iter().collect();
        for h in hosts {
            if !have.contains(&h.octets()) {
                self.maps().set_host(h.octets())?;
            }
        }
        Ok(())
    }

    /// Makes exactly `hosts` the member hosts allowed to send VXLAN.
    pub fn set_hosts(&mut self, hosts: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let want: std::collections::BTreeSet<[u8; 4]> = hosts.iter().map(Ipv4Addr::octets).collect();
        let have: std::collections::BTreeSet<[u8; 4]> = self.maps().hosts()?.into_iter().collect();
        for gone in have.difference(&want) {
            self.maps().remove_host(*gone)?;
        }
        for new in want.difference(&have) {
            self.maps().set_host(*new)?;
        }
        Ok(())
    }

    /// Makes the service frontends exactly `want`.
    pub fn set_balancers(
        &mut self,
        want: &std::collections::BTreeMap<swarm_common::lb::FrontendKey, super::balancer::Want>,
    ) -> Result<(), DatapathError> {
        let mut maps = overlay::LbMaps::new(&mut self.ebpf);
        super::balancer::sync(&mut maps, &mut self.balancers, want)
    }

    /// The service frontends as programmed: key, value, backends.
    pub fn frontends(
        &self,
    ) -> Vec<(swarm_common::lb::FrontendKey, swarm_common::lb::Frontend, Vec<[u8; 4]>)> {
        self.balancers.iter().map(|(k, (f, b))| (*k, *f, b.clone())).collect()
    }

    /// The flow table (translations of balanced flows).
    pub fn flows(
        &mut self,
    ) -> Result<Vec<(swarm_common::lb::FlowKey, swarm_common::lb::Flow)>, DatapathError> {
        overlay::LbMaps::new(&mut self.ebpf).flows()
    }

    pub fn drops(&mut self) -> Result<Vec<(DropReason, Counter)>, DatapathError> {
        self.maps().drops()
    }

    pub fn events(&mut self) -> Result<Vec<(Event, Counter)>, DatapathError> {
        self.maps().events()
    }

    /// The endpoint table as the programs see it.
    pub fn endpoints(&mut self) -> Result<Vec<(EndpointKey, EndpointInfo)>, DatapathError> {
        self.maps().endpoints()
    }

    /// Removes the underlay programs (leaving the swarm).
    pub fn shutdown(&mut self) {
        self.unpin(PROG_SOCK_CONNECT4, "cgroup");
        self.unpin(PROG_TC_FROM_UNDERLAY, &self.underlay.clone());
        self.unpin(PROG_XDP_UNDERLAY, &self.underlay.clone());
    }
}

/// Pins an attachment's bpf_link at `pin`, so it outlives the agent;
/// `hint` prefixes the error when the attachment has no bpf_link.
fn pin_link<L>(link: L, pin: &std::path::Path, hint: &str) -> Result<(), DatapathError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let err = |detail: String| DatapathError::Pin { op: "pinning", path: pin.to_owned(), detail };
    let fd = FdLink::try_from(link).map_err(|e| err(format!("{hint}{e}")))?;
    fd.pin(pin).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// `bpf(2)` commands and the attach type used here (`include/uapi/linux/bpf.h`).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_NETKIT_PEER: u32 = 55;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` prefix of the size passed
    // (the kernel zero-fills the rest); the fields set are the command's.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as libc::c_uint)
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// `BPF_LINK_CREATE` of a SCHED_CLS program on the peer of netkit
/// `ifindex` (appended after any other program there).
fn bpf_link_create_netkit_peer(prog_fd: i32, ifindex: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let mut attr = [0u64; 8];
    // link_create: u32 prog_fd, u32 target_ifindex, u32 attach_type, u32 flags.
    attr[0] = u64::from(prog_fd.cast_unsigned()) | (u64::from(ifindex) << 32);
    attr[1] = u64::from(BPF_NETKIT_PEER);
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `BPF_OBJ_PIN` of `fd` at `path` (on a bpffs).
fn bpf_obj_pin(fd: i32, path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut attr = [0u64; 8];
    // obj: u64 pathname, u32 bpf_fd, u32 file_flags.
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.cast_unsigned());
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `SO_NETNS_COOKIE` (Linux 5.14; not in the libc crate for every target).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the current network namespace (`SO_NETNS_COOKIE`).
fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if r == 0 { Ok(cookie) } else { Err(std::io::Error::last_os_error()) }
}

/// The mount point of the cgroup v2 hierarchy's root, if one is mounted.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fields: Vec<&str> = pre.split(' ').collect();
        let point = fields.get(4)?;
        (post.split(' ').next() == Some("cgroup2") && fields.get(3) == Some(&"/"))
            .then(|| std::path::PathBuf::from(point))
    })
}
