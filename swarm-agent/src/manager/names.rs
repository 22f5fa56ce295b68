//! Service discovery data: what the embedded DNS of a node's tasks answers,
//! per network, computed from the store (pure). Docker's records
//! (`libnetwork` service records): `<service>` → its VIP on the network
//! (`vip` mode) or its running tasks' addresses (`dnsrr`); `tasks.<service>`
//! → the running tasks' addresses in both modes; the same for each network
//! alias of the service (`--network name=N,alias=A`); a task's container
//! name → its address; and PTR records for task addresses and VIPs
//! (`<name>.<network>`). The ingress network has no names.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use crate::manager::store::{
    state::ClusterState,
    task::{Service, TaskState},
};

/// The names of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkNames {
    /// Lower-cased name → addresses.
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Address → the name its PTR record gives.
    pub ptr: BTreeMap<Ipv4Addr, String>,
}

/// The names a node's tasks can resolve, by network ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamesView {
    pub networks: BTreeMap<String, NetworkNames>,
    /// What the node's datapath balances.
    #[serde(default)]
    pub lb: Balancers,
}

/// A service's virtual IP on one network and its running tasks there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VipBalancer {
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// A port published in ingress mode and the running tasks' addresses on
/// the ingress network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedBalancer {
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub target: u16,
    pub backends: Vec<Ipv4Addr>,
}

/// The ingress network, which every node's datapath needs for the routing
/// mesh whether or not it runs a task on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngressNetwork {
    pub id: String,
    pub vni: u32,
    pub subnet: String,
    pub gateway: Ipv4Addr,
}

/// A port published in host mode by a task on this node: straight to that
/// task's address on its first network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPortBalancer {
    pub port: u16,
    pub protocol: u8,
    pub target: u16,
    pub vni: u32,
    pub task: Ipv4Addr,
}

/// The load balancing a node does: VIPs of the services on its tasks'
/// networks (clients are its tasks), every published port (clients come
/// from anywhere), and the host-mode ports of its own tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Balancers {
    pub vips: Vec<VipBalancer>,
    pub published: Vec<PublishedBalancer>,
    pub ingress: Option<IngressNetwork>,
    #[serde(default)]
    pub host_ports: Vec<HostPortBalancer>,
}

fn protocol_number(p: Option<bollard_stubs::models::EndpointPortConfigProtocolEnum>) -> Option<u8> {
    use bollard_stubs::models::EndpointPortConfigProtocolEnum as P;
    match p {
        Some(P::UDP) => Some(17),
        Some(P::TCP) => Some(6),
        _ => None,
    }
}

/// The host-mode ports of the running tasks on `node_id`.
pub fn host_ports(state: &ClusterState, node_id: &str) -> Vec<HostPortBalancer> {
    use bollard_stubs::models::EndpointPortConfigPublishModeEnum as M;
    let mut out = Vec::new();
    for t in state.tasks.values().filter(|t| {
        t.node_id == node_id && t.desired_state == TaskState::Running && t.status.state == TaskState::Running
    }) {
        let Some(s) = state.services.get(&t.service_id) else { continue };
        let Some(att) = t.networks.first() else { continue };
        let (Ok(task), Some(net)) = (att.ip.parse::<Ipv4Addr>(), state.networks.get(&att.network_id)) else {
            continue;
        };
        for p in s.endpoint.ports.iter().filter(|p| p.publish_mode == Some(M::HOST)) {
            let (Some(protocol), Some(port), Some(target)) = (
                protocol_number(p.protocol),
                p.published_port.and_then(|v| u16::try_from(v).ok()),
                p.target_port.and_then(|v| u16::try_from(v).ok()),
            ) else {
                continue;
            };
            out.push(HostPortBalancer { port, protocol, target, vni: net.vni, task });
        }
    }
    out
}

/// Everything node `node_id` gets: the names and balancers of its tasks'
/// networks, and its host-mode ports.
pub fn node_view(state: &ClusterState, node_id: &str) -> NamesView {
    let mut networks = node_networks(state, node_id);
    // Every node has its own endpoint on ingress (`ingress-sbox`).
    networks.extend(state.networks.values().filter(|n| n.ingress).map(|n| n.id.clone()));
    let mut v = view(state, &networks);
    v.lb.host_ports = host_ports(state, node_id);
    v
}

impl NamesView {
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// The networks of the tasks assigned to `node_id` that want to run.
pub fn node_networks(state: &ClusterState, node_id: &str) -> BTreeSet<String> {
    state
        .tasks
        .values()
        .filter(|t| t.node_id == node_id && t.is_runnable())
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.clone()))
        .collect()
}

fn aliases(s: &Service, network_id: &str, state: &ClusterState) -> Vec<String> {
    let attachments = s
        .spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref())
        .into_iter()
        .flatten()
        .chain(s.spec.networks.iter().flatten());
    attachments
        .filter(|a| {
            a.target.as_deref().is_some_and(|t| {
                t == network_id || state.networks.get(network_id).is_some_and(|n| n.name == t)
            })
        })
        .flat_map(|a| a.aliases.clone().unwrap_or_default())
        .collect()
}

/// The running tasks of `s` on network `net_id`: container name and address.
fn running_on(state: &ClusterState, s: &Service, net_id: &str) -> Vec<(String, Ipv4Addr)> {
    state
        .tasks_of(&s.id)
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .filter_map(|t| {
            let ip = t.networks.iter().find(|n| n.network_id == *net_id)?.ip.parse().ok()?;
            Some((t.container_name(s.name()), ip))
        })
        .collect()
}

fn vip_on(s: &Service, net_id: &str) -> Option<Ipv4Addr> {
    s.endpoint.virtual_ips.iter().find(|v| v.network_id == *net_id).and_then(|v| v.ip.parse().ok())
}

/// The published ports (ingress mode) of every service, and the VIPs of
/// the services on `networks`.
pub fn balancers(state: &ClusterState, networks: &BTreeSet<String>) -> Balancers {
    use bollard_stubs::models::EndpointPortConfigPublishModeEnum as M;
    let mut out = Balancers::default();
    let ingress = state.networks.values().find(|n| n.ingress);
    if let Some(net) = ingress {
        out.ingress = net.gateway.parse().ok().map(|gateway| IngressNetwork {
            id: net.id.clone(),
            vni: net.vni,
            subnet: net.subnet.clone(),
            gateway,
        });
        for s in state.services.values() {
            let ports: Vec<_> = s
                .endpoint
                .ports
                .iter()
                .filter(|p| p.publish_mode == Some(M::INGRESS))
                .filter_map(|p| {
                    let protocol = protocol_number(p.protocol)?;
                    Some((
                        u16::try_from(p.published_port?).ok()?,
                        protocol,
                        u16::try_from(p.target_port?).ok()?,
                    ))
                })
                .collect();
            if ports.is_empty() {
                continue;
            }
            let backends: Vec<Ipv4Addr> =
                running_on(state, s, &net.id).into_iter().map(|(_, ip)| ip).collect();
            for (port, protocol, target) in ports {
                out.published.push(PublishedBalancer { port, protocol, target, backends: backends.clone() });
            }
        }
    }
    // Ingress included: a publishing service's VIP there answers from the
    // node's own endpoint and from tasks on ingress, balanced per packet.
    for net_id in networks {
        let Some(net) = state.networks.get(net_id) else { continue };
        let on = |s: &&Service| {
            if net.ingress {
                s.endpoint.ports.iter().any(|p| p.publish_mode == Some(M::INGRESS))
            } else {
                s.networks.contains(net_id)
            }
        };
        for s in state.services.values().filter(on).filter(|s| !s.endpoint.dnsrr) {
            let Some(vip) = vip_on(s, net_id) else { continue };
            let backends = running_on(state, s, net_id).into_iter().map(|(_, ip)| ip).collect();
            out.vips.push(VipBalancer { vni: net.vni, vip, backends });
        }
    }
    out
}

/// The names on `networks` (ingress excluded), and the node's balancers.
pub fn view(state: &ClusterState, networks: &BTreeSet<String>) -> NamesView {
    let mut out = NamesView { lb: balancers(state, networks), ..NamesView::default() };
    for net_id in networks {
        let Some(net) = state.networks.get(net_id) else { continue };
        if net.ingress {
            continue;
        }
        let mut names = NetworkNames::default();
        for s in state.services.values().filter(|s| s.networks.contains(net_id)) {
            let running = running_on(state, s, net_id);
            let ips: Vec<Ipv4Addr> = running.iter().map(|(_, ip)| *ip).collect();
            let vip = vip_on(s, net_id);
            let service_answer = match vip {
                Some(v) if !s.endpoint.dnsrr => vec![v],
                _ => ips.clone(),
            };
            let mut service_names = vec![s.name().to_ascii_lowercase()];
            service_names.extend(aliases(s, net_id, state).iter().map(|a| a.to_ascii_lowercase()));
            for n in &service_names {
                names.names.insert(n.clone(), service_answer.clone());
                names.names.insert(format!("tasks.{n}"), ips.clone());
            }
            if let Some(v) = vip {
                names.ptr.insert(v, format!("{}.{}", s.name(), net.name));
            }
            for (container, ip) in running {
                names.names.insert(container.to_ascii_lowercase(), vec![ip]);
                names.ptr.insert(ip, format!("{container}.{}", net.name));
            }
        }
        out.networks.insert(net_id.clone(), names);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::{
        orchestrator::testutil::{add_node, cluster, converge, spec},
        store::{model::Network, state::Command, task::TaskStatus},
    };
    use bollard_stubs::models as m;

    fn net(id: &str, subnet: &str, gateway: &str, vni: u32, ingress: bool) -> Network {
        crate::manager::orchestrator::testutil::network(
            id,
            &format!("{id}-net"),
            subnet,
            gateway,
            vni,
            ingress,
        )
    }

    fn running_state() -> ClusterState {
        let mut s = cluster();
        add_node(&mut s, "n1");
        for n in [
            net("ing", "10.0.0.0/24", "10.0.0.1", 4096, true),
            net("app", "10.0.1.0/24", "10.0.1.1", 4097, false),
        ] {
            s.apply(1, &Command::CreateNetwork { network: Box::new(n) }).unwrap();
        }
        for (id, dnsrr) in [("web", false), ("rr", true)] {
            let mut sp = spec(id, Some(2));
            sp.endpoint_spec = Some(m::EndpointSpec {
                mode: Some(if dnsrr { m::EndpointSpecModeEnum::DNSRR } else { m::EndpointSpecModeEnum::VIP }),
                ports: None,
            });
            sp.task_template.as_mut().unwrap().networks = Some(vec![m::NetworkAttachmentConfig {
                target: Some("app".into()),
                aliases: Some(vec![format!("{id}-alias")]),
                ..Default::default()
            }]);
            let svc = crate::manager::controlapi::new_service(id.into(), sp, vec!["app".into()], 0);
            s.apply(2, &Command::CreateService { service: Box::new(svc) }).unwrap();
        }
        let mut next = 0;
        converge(&mut s, 1, &mut next);
        let updates: Vec<(String, TaskStatus)> = s
            .tasks
            .values()
            .map(|t| {
                let mut st = t.status.clone();
                st.state = TaskState::Running;
                (t.id.clone(), st)
            })
            .collect();
        s.apply(9, &Command::SetTaskStatus { updates, now: 2 }).unwrap();
        s
    }

    #[test]
    fn balancers_hold_vips_of_vip_services_with_their_running_tasks() {
        let s = running_state();
        let lb = balancers(&s, &["app".to_owned()].into());
        assert_eq!(lb.vips.len(), 1, "dnsrr services have no VIP to balance: {:?}", lb.vips);
        let v = &lb.vips[0];
        assert_eq!(v.vni, 4097);
        assert_eq!(v.vip, s.services["web"].endpoint.virtual_ips[0].ip.parse::<Ipv4Addr>().unwrap());
        let mut tasks: Vec<Ipv4Addr> = s
            .tasks
            .values()
            .filter(|t| t.service_id == "web")
            .map(|t| t.networks[0].ip.parse().unwrap())
            .collect();
        tasks.sort();
        let mut got = v.backends.clone();
        got.sort();
        assert_eq!(got, tasks);
        assert!(lb.published.is_empty() && lb.host_ports.is_empty());
        assert_eq!(lb.ingress.as_ref().map(|i| i.vni), Some(4096), "every node learns the ingress network");
        // Not on the node's networks: no VIP.
        assert!(balancers(&s, &BTreeSet::new()).vips.is_empty());
    }

    #[test]
    fn publishing_a_port_replaces_the_tasks_onto_ingress_and_balances_them() {
        let mut s = running_state();
        let mut sp = s.services["web"].spec.clone();
        sp.endpoint_spec = Some(m::EndpointSpec {
            mode: Some(m::EndpointSpecModeEnum::VIP),
            ports: Some(vec![m::EndpointPortConfig {
                target_port: Some(80),
                published_port: Some(7080),
                ..Default::default()
            }]),
        });
        let version = s.services["web"].meta.version;
        s.apply(
            20,
            &Command::UpdateService { id: "web".into(), version, spec: Box::new(sp), now: 3, networks: None },
        )
        .unwrap();
        let mut next = 100;
        converge(&mut s, 4, &mut next);
        let live: Vec<_> = s.tasks.values().filter(|t| t.service_id == "web" && t.is_runnable()).collect();
        assert_eq!(live.len(), 2);
        for t in &live {
            let nets: Vec<&str> = t.networks.iter().map(|n| n.network_id.as_str()).collect();
            assert_eq!(nets, ["ing", "app"], "ingress first, then the service's network");
        }
        let updates: Vec<(String, TaskStatus)> = live
            .iter()
            .map(|t| {
                let mut st = t.status.clone();
                st.state = TaskState::Running;
                (t.id.clone(), st)
            })
            .collect();
        s.apply(30, &Command::SetTaskStatus { updates, now: 5 }).unwrap();
        let lb = node_view(&s, "n1").lb;
        assert_eq!(lb.published.len(), 1);
        let p = &lb.published[0];
        assert_eq!((p.port, p.protocol, p.target), (7080, 6, 80));
        assert_eq!(p.backends.len(), 2);
        assert!(p.backends.iter().all(|ip| ip.octets()[..3] == [10, 0, 0]), "{:?}", p.backends);
        let on_ingress: Vec<_> = lb.vips.iter().filter(|v| v.vni == 4096).collect();
        assert_eq!(on_ingress.len(), 1, "the VIP on ingress is balanced too: {:?}", lb.vips);
        assert_eq!(on_ingress[0].backends, p.backends);
    }

    #[test]
    fn vip_and_dnsrr_services_tasks_aliases_containers_and_ptr() {
        let s = running_state();
        let v = view(&s, &["app".to_owned(), "ing".to_owned()].into());
        assert!(!v.networks.contains_key("ing"), "no names on ingress");
        let n = &v.networks["app"];
        let vip: Ipv4Addr = s.services["web"].endpoint.virtual_ips[0].ip.parse().unwrap();
        assert_eq!(n.names["web"], [vip]);
        assert_eq!(n.names["web-alias"], [vip]);
        assert_eq!(n.names["tasks.web"].len(), 2);
        assert!(!n.names["tasks.web"].contains(&vip));
        assert_eq!(n.names["rr"].len(), 2, "dnsrr: the tasks");
        assert_eq!(n.names["rr"], n.names["tasks.rr"]);
        assert_eq!(n.names["tasks.rr-alias"], n.names["tasks.rr"]);
        assert_eq!(n.ptr[&vip], "web.app-net");
        let t = s.tasks.values().find(|t| t.service_id == "web").unwrap();
        let name = t.container_name("web");
        let ip: Ipv4Addr = t.networks[0].ip.parse().unwrap();
        assert_eq!(n.names[&name.to_ascii_lowercase()], [ip]);
        assert_eq!(n.ptr[&ip], format!("{name}.app-net"));
    }

    #[test]
    fn stopped_tasks_leave_the_records_and_the_fingerprint_moves() {
        let mut s = running_state();
        let nets: BTreeSet<String> = ["app".to_owned()].into();
        let before = view(&s, &nets);
        let t = s.tasks.values().find(|t| t.service_id == "rr").unwrap().clone();
        let mut st = t.status.clone();
        st.state = TaskState::Failed;
        s.apply(10, &Command::SetTaskStatus { updates: vec![(t.id.clone(), st)], now: 3 }).unwrap();
        let after = view(&s, &nets);
        assert_eq!(after.networks["app"].names["rr"].len(), 1);
        assert!(!after.networks["app"].names.contains_key(&t.container_name("rr").to_ascii_lowercase()));
        assert_ne!(before.fingerprint(), after.fingerprint());
        assert_eq!(node_networks(&s, "n1"), ["app".to_owned()].into());
    }
}
