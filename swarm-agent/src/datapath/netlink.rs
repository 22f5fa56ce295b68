//! Kernel network objects through rtnetlink: the veth pair of an endpoint,
//! its address, MTU and default route inside the endpoint's network
//! namespace, and link lookups.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opens it, so sockets for another namespace are opened on a short-lived
//! thread that has entered it; the connection then runs on the runtime.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkNetkit, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::DatapathError;

fn nl_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> DatapathError {
    move |e| DatapathError::Netlink { op, detail: e.to_string() }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io { op, path: path.to_owned(), source }
}

/// A netlink handle in `netns` (a namespace file) or in the current namespace.
pub fn handle(netns: Option<&Path>) -> Result<Handle, DatapathError> {
    let open = || rtnetlink::new_connection();
    let (conn, handle, _) = match netns {
        None => open().map_err(|source| DatapathError::Io {
            op: "opening netlink",
            path: PathBuf::new(),
            source,
        })?,
        Some(ns) => {
            let file = File::open(ns).map_err(io_err("opening network namespace", ns))?;
            let ns_owned = ns.to_owned();
            // The socket registers with the runtime's reactor when it is created.
            let runtime = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let _runtime = runtime.enter();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    DatapathError::Io { op: "entering", path: ns_owned.clone(), source: e.into() }
                })?;
                open().map_err(|source| DatapathError::Io {
                    op: "opening netlink in",
                    path: ns_owned,
                    source,
                })
            })
            .join()
            .map_err(|_| DatapathError::Netlink {
                op: "opening netlink",
                detail: "thread panicked".into(),
            })??
        }
    };
    tokio::spawn(conn);
    Ok(handle)
}

/// A new network namespace bound at `path` (an empty file is made there),
/// with `lo` up. Made in-process: a short-lived thread unshares its network
/// namespace and bind-mounts it, then exits.
pub async fn create_netns(path: &Path) -> Result<(), DatapathError> {
    File::create(path).map_err(io_err("creating", path))?;
    let at = path.to_owned();
    let made = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join();
    let made = match made {
        Ok(r) => r.map_err(|e| DatapathError::Io {
            op: "making a network namespace at",
            path: path.to_owned(),
            source: e.into(),
        }),
        Err(_) => {
            Err(DatapathError::Netlink { op: "making a network namespace", detail: "thread panicked".into() })
        }
    };
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let inner = handle(Some(path))?;
    let lo = link_by_name(&inner, "lo")
        .await?
        .ok_or_else(|| DatapathError::Netlink { op: "finding", detail: "lo".into() })?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(lo.header.index).up().build())
        .execute()
        .await
        .map_err(nl_err("bringing lo up"))
}

/// The link called `name`, if any.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, DatapathError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err("looking up a link")(e)),
    }
}

pub async fn link_names(h: &Handle) -> Result<Vec<String>, DatapathError> {
    let links: Vec<LinkMessage> =
        h.link().get().execute().try_collect().await.map_err(nl_err("listing links"))?;
    Ok(links
        .iter()
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect())
}

/// True if the link is a veth (where native XDP is a throughput trap).
pub fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// What an endpoint's link looks like inside its namespace.
pub struct EndpointLink<'a> {
    /// Host-side veth name (at most 15 characters).
    pub host_name: &'a str,
    pub netns: &'a Path,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What an endpoint's pair of interfaces is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    /// netkit (Linux 6.7): the datapath program runs in the pair's own
    /// transmit path, with no backlog queue between the task and it.
    Netkit,
    Veth,
}

/// Which pair endpoints get (`--endpoint-interface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPolicy {
    /// netkit where the kernel has it, else veth.
    Auto,
    Netkit,
    Veth,
}

impl PairPolicy {
    pub fn parse(s: &str) -> Option<PairPolicy> {
        match s {
            "auto" => Some(PairPolicy::Auto),
            "netkit" => Some(PairPolicy::Netkit),
            "veth" => Some(PairPolicy::Veth),
            _ => None,
        }
    }
}

/// Set once the kernel refused to make a netkit (no `CONFIG_NETKIT`).
static NO_NETKIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Creates the endpoint's pair (netkit or veth, per `policy`), moves one
/// end into the namespace as the first free `ethN` with the endpoint's MAC,
/// address, MTU and (if the namespace has none yet) a default route via the
/// gateway. Returns the host side's ifindex, the name inside and the kind
/// of pair. On failure, removes what it made.
pub async fn create_endpoint_link(
    e: &EndpointLink<'_>,
    policy: PairPolicy,
) -> Result<(u32, String, PairKind), DatapathError> {
    use std::sync::atomic::Ordering;
    let host = handle(None)?;
    // A name for the peer while it is still in this namespace: the host
    // name with its 15th character replaced (or a character appended), never
    // equal to it.
    let keep = &e.host_name[..e.host_name.len().min(14)];
    let last = if e.host_name.len() > 14 && e.host_name.ends_with('p') { 'q' } else { 'p' };
    let peer_tmp = format!("{keep}{last}");
    let failed = |what: &'static str| {
        let detail = format!("{} and {peer_tmp}", e.host_name);
        move |err: rtnetlink::Error| DatapathError::Netlink { op: what, detail: format!("{detail}: {err}") }
    };
    let try_netkit = match policy {
        PairPolicy::Netkit => true,
        PairPolicy::Auto => !NO_NETKIT.load(Ordering::Relaxed),
        PairPolicy::Veth => false,
    };
    let mut kind = PairKind::Veth;
    if try_netkit {
        // L2: the task keeps an Ethernet interface (ARP, its MAC), and the
        // programs see the same frames as on a veth.
        let nk = LinkNetkit::new(e.host_name, &peer_tmp, netlink_packet_route::link::NetkitMode::L2)
            .mtu(e.mtu)
            .build();
        match host.link().add(nk).execute().await {
            Ok(()) => kind = PairKind::Netkit,
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EOPNOTSUPP => {
                if policy == PairPolicy::Netkit {
                    return Err(DatapathError::Netlink {
                        op: "creating the netkit pair",
                        detail: "this kernel has no netkit (CONFIG_NETKIT, Linux 6.7); \
                                 use --endpoint-interface auto or veth"
                            .into(),
                    });
                }
                if !NO_NETKIT.swap(true, Ordering::Relaxed) {
                    tracing::info!("the kernel has no netkit (CONFIG_NETKIT): endpoints get veth pairs");
                }
            }
            Err(err) => return Err(failed("creating the netkit pair")(err)),
        }
    }
    if kind == PairKind::Veth {
        host.link()
            .add(LinkVeth::new(e.host_name, &peer_tmp).mtu(e.mtu).build())
            .execute()
            .await
            .map_err(failed("creating the veth pair"))?;
    }
    let result = configure(&host, e, &peer_tmp).await;
    if result.is_err() {
        let _ = delete_link(e.host_name).await;
    }
    result.map(|(idx, name)| (idx, name, kind))
}

async fn configure(
    host: &Handle,
    e: &EndpointLink<'_>,
    peer_tmp: &str,
) -> Result<(u32, String), DatapathError> {
    let index = |m: Option<LinkMessage>, what: &str| {
        m.map(|m| m.header.index)
            .ok_or_else(|| DatapathError::Netlink { op: "finding", detail: what.to_owned() })
    };
    let host_idx = index(link_by_name(host, e.host_name).await?, e.host_name)?;
    let peer_idx = index(link_by_name(host, peer_tmp).await?, peer_tmp)?;
    let ns = File::open(e.netns).map_err(io_err("opening network namespace", e.netns))?;
    host.link()
        .set(LinkUnspec::new_with_index(peer_idx).setns_by_fd(ns.as_raw_fd()).build())
        .execute()
        .await
        .map_err(nl_err("moving the veth into the namespace"))?;

    let inner = handle(Some(e.netns))?;
    let existing = link_names(&inner).await?;
    // At most `existing.len()` names are taken, so one of the first `len + 1` is free.
    let name = (0..=existing.len())
        .map(|i| format!("eth{i}"))
        .find(|n| !existing.contains(n))
        .unwrap_or_else(|| format!("eth{}", existing.len()));
    let idx = index(link_by_name(&inner, peer_tmp).await?, peer_tmp)?;
    inner
        .link()
        .set(
            LinkUnspec::new_with_index(idx)
                .name(name.clone())
                .address(e.mac.to_vec())
                .mtu(e.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err("configuring the endpoint interface"))?;
    inner
        .address()
        .add(idx, e.ip.into(), e.prefix_len)
        .execute()
        .await
        .map_err(nl_err("adding the endpoint address"))?;
    if let Some(lo) = link_by_name(&inner, "lo").await? {
        let _ = inner.link().set(LinkUnspec::new_with_index(lo.header.index).up().build()).execute().await;
    }
    let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(e.gateway).output_interface(idx).build();
    match inner.route().add(default).execute().await {
        Ok(()) => {}
        // The namespace already has a default route (another network's).
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {}
        Err(err) => return Err(nl_err("adding the default route")(err)),
    }
    host.link()
        .set(LinkUnspec::new_with_index(host_idx).up().build())
        .execute()
        .await
        .map_err(nl_err("bringing the host side up"))?;
    Ok((host_idx, name))
}

/// Deletes a link of the current namespace (both ends of a pair go).
pub async fn delete_link(name: &str) -> Result<(), DatapathError> {
    let h = handle(None)?;
    match link_by_name(&h, name).await? {
        Some(l) => h.link().del(l.header.index).execute().await.map_err(nl_err("deleting a link")),
        None => Ok(()),
    }
}

/// The host's own endpoint: a veth pair with both ends in the current
/// namespace. `stack_name` gets the address (so the host routes the
/// network's subnet through it); the datapath program goes on `dp_name`.
/// Returns `dp_name`'s ifindex. An existing pair is replaced.
pub async fn create_host_endpoint_link(
    dp_name: &str,
    stack_name: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    mac: [u8; 6],
    mtu: u32,
) -> Result<u32, DatapathError> {
    let h = handle(None)?;
    delete_link(dp_name).await?;
    h.link().add(LinkVeth::new(dp_name, stack_name).mtu(mtu).build()).execute().await.map_err(|err| {
        DatapathError::Netlink {
            op: "creating the veth pair",
            detail: format!("{dp_name} and {stack_name}: {err}"),
        }
    })?;
    let made = async {
        let index = |m: Option<LinkMessage>, what: &str| {
            m.map(|m| m.header.index)
                .ok_or_else(|| DatapathError::Netlink { op: "finding", detail: what.to_owned() })
        };
        let dp = index(link_by_name(&h, dp_name).await?, dp_name)?;
        let stack = index(link_by_name(&h, stack_name).await?, stack_name)?;
        h.link()
            .set(LinkUnspec::new_with_index(stack).address(mac.to_vec()).up().build())
            .execute()
            .await
            .map_err(nl_err("configuring the host endpoint"))?;
        h.address()
            .add(stack, ip.into(), prefix_len)
            .execute()
            .await
            .map_err(nl_err("adding the host endpoint address"))?;
        h.link()
            .set(LinkUnspec::new_with_index(dp).up().build())
            .execute()
            .await
            .map_err(nl_err("bringing the host endpoint up"))?;
        Ok(dp)
    }
    .await;
    if made.is_err() {
        let _ = delete_link(dp_name).await;
    }
    made
}
