//! Service endpoints: what the managers allocate for a service's
//! `EndpointSpec`. In `vip` mode (the default) one virtual IP per attached
//! network, plus one on `ingress` when the service publishes ingress ports;
//! in `dnsrr` mode none. Published ports as asked, or from 30000–32767 when
//! an ingress port names none.
//!
//! Allocation runs inside the store's state machine: the check and the
//! apply of a service command compute the same result from the same state,
//! so two creates can never take one address or port. Virtual IPs are
//! endpoints in the store (named `vip:<service id>`), so they never clash
//! with task addresses or `network connect` attachments.

use std::{collections::BTreeSet, net::Ipv4Addr, ops::RangeInclusive};

use bollard_stubs::models as m;
use serde::{Deserialize, Serialize};

use crate::{
    error::ApiError,
    manager::store::{
        ipam::{self, Cidr},
        model::{Endpoint, Meta, Nanos},
        state::ClusterState,
        task::Service,
    },
};

/// Where dynamic published ports come from (swarmkit's range).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

/// One virtual IP of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub network_id: String,
    pub ip: String,
    pub prefix: u8,
    /// The store endpoint that holds the address.
    pub endpoint_id: String,
}

impl VirtualIp {
    /// Docker's `Addr`: `10.0.1.2/24`.
    pub fn addr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix)
    }
}

/// What was allocated for a service: docker's `Endpoint` without `Spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// Round-robin DNS instead of a virtual IP.
    #[serde(default)]
    pub dnsrr: bool,
    /// The spec's ports with protocol, mode and published port filled in.
    #[serde(default)]
    pub ports: Vec<m::EndpointPortConfig>,
    /// Ingress first, then the service's networks in order.
    #[serde(default)]
    pub virtual_ips: Vec<VirtualIp>,
}

/// A port's protocol and mode with docker's defaults (tcp, ingress).
pub fn normalized(p: &m::EndpointPortConfig) -> m::EndpointPortConfig {
    use m::{EndpointPortConfigProtocolEnum as P, EndpointPortConfigPublishModeEnum as M};
    let mut p = p.clone();
    if matches!(p.protocol, None | Some(P::EMPTY)) {
        p.protocol = Some(P::TCP);
    }
    if matches!(p.publish_mode, None | Some(M::EMPTY)) {
        p.publish_mode = Some(M::INGRESS);
    }
    p.published_port = Some(p.published_port.unwrap_or(0));
    p
}

pub fn is_ingress(p: &m::EndpointPortConfig) -> bool {
    !matches!(p.publish_mode, Some(m::EndpointPortConfigPublishModeEnum::HOST))
}

fn protocol(p: &m::EndpointPortConfig) -> m::EndpointPortConfigProtocolEnum {
    normalized(p).protocol.unwrap_or(m::EndpointPortConfigProtocolEnum::TCP)
}

/// The spec's ports, checked: target 1–65535, published 0–65535, an
/// ingress port not with `dnsrr`, no published port twice (swarmkit's
/// wording).
pub fn spec_ports(spec: &m::ServiceSpec) -> Result<(bool, Vec<m::EndpointPortConfig>), ApiError> {
    let e = spec.endpoint_spec.as_ref();
    let dnsrr = matches!(e.and_then(|e| e.mode), Some(m::EndpointSpecModeEnum::DNSRR));
    let ports: Vec<m::EndpointPortConfig> =
        e.and_then(|e| e.ports.as_ref()).map(|p| p.iter().map(normalized).collect()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for p in &ports {
        let target = p.target_port.unwrap_or(0);
        if !(1..=65535).contains(&target) {
            return Err(ApiError::invalid(format!("EndpointSpec: invalid target port {target}")));
        }
        let published = p.published_port.unwrap_or(0);
        if !(0..=65535).contains(&published) {
            return Err(ApiError::invalid(format!("EndpointSpec: invalid published port {published}")));
        }
        if dnsrr && is_ingress(p) {
            return Err(ApiError::invalid(
                "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
            ));
        }
        if published != 0 && !seen.insert((published, protocol(p))) {
            return Err(ApiError::invalid("EndpointSpec: duplicate published ports provided"));
        }
    }
    Ok((dnsrr, ports))
}

/// The result of allocating: the endpoint, store endpoints to add (new
/// virtual IPs) and to remove (virtual IPs no longer wanted).
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub endpoint: ServiceEndpoint,
    pub add: Vec<Endpoint>,
    pub remove: Vec<String>,
}

/// Allocates the endpoint of service `id` with `spec` on `networks`, keeping
/// what `old` had where it still fits (the same virtual IPs, the same
/// dynamic ports).
pub fn allocate(
    state: &ClusterState,
    id: &str,
    spec: &m::ServiceSpec,
    networks: &[String],
    old: Option<&ServiceEndpoint>,
    now: Nanos,
) -> Result<Allocation, ApiError> {
    let (dnsrr, mut ports) = spec_ports(spec)?;
    let others: Vec<&Service> = state.services.values().filter(|s| s.id != id).collect();
    check_conflicts(&ports, &others)?;
    let wants_ingress = ports.iter().any(is_ingress);
    let ingress = state.networks.values().find(|n| n.ingress);
    if wants_ingress && ingress.is_none() {
        return Err(ApiError::invalid("service needs ingress network, but no ingress network is present"));
    }

    // Dynamic ports: the old allocation for the same target and protocol,
    // else the lowest free one.
    let mut taken: BTreeSet<(i64, m::EndpointPortConfigProtocolEnum)> = BTreeSet::new();
    for s in &others {
        for p in s.endpoint.ports.iter().chain(spec_ports(&s.spec).map(|(_, p)| p).unwrap_or_default().iter())
        {
            taken.insert((p.published_port.unwrap_or(0), protocol(p)));
        }
    }
    for p in &ports {
        taken.insert((p.published_port.unwrap_or(0), protocol(p)));
    }
    for p in ports.iter_mut().filter(|p| is_ingress(p) && p.published_port == Some(0)) {
        let proto = protocol(p);
        let reuse = old
            .into_iter()
            .flat_map(|o| o.ports.iter())
            .find(|o| is_ingress(o) && o.target_port == p.target_port && protocol(o) == proto)
            .and_then(|o| o.published_port)
            .filter(|n| *n != 0 && !taken.contains(&(*n, proto)));
        let port = reuse
            .or_else(|| DYNAMIC_PORTS.map(i64::from).find(|n| !taken.contains(&(*n, proto))))
            .ok_or_else(|| ApiError::invalid("no dynamic published ports are left (30000-32767)"))?;
        taken.insert((port, proto));
        p.published_port = Some(port);
    }

    // Virtual IPs: ingress first (when it publishes there), then each network.
    let mut want: Vec<String> = Vec::new();
    if !dnsrr {
        if let (true, Some(n)) = (wants_ingress, ingress) {
            want.push(n.id.clone());
        }
        for n in networks {
            if !want.contains(n) {
                want.push(n.clone());
            }
        }
    }
    let old_vips: &[VirtualIp] = old.map_or(&[], |o| &o.virtual_ips);
    let mut vips = Vec::new();
    let mut add = Vec::new();
    for net_id in &want {
        if let Some(v) = old_vips.iter().find(|v| v.network_id == *net_id) {
            vips.push(v.clone());
            continue;
        }
        let net = state.network(net_id)?;
        let subnet = Cidr::parse(&net.subnet).map_err(ApiError::internal)?;
        let gateway: Ipv4Addr = net.gateway.parse().map_err(|_| ApiError::internal("bad gateway"))?;
        let ip = free_ip(state, net_id, subnet, gateway).ok_or_else(|| {
            ApiError::invalid(format!(
                "no available IPv4 addresses on this network's address pools: {} ({})",
                net.name, net.id
            ))
        })?;
        let endpoint = Endpoint {
            id: format!("vip-{id}-{net_id}"),
            meta: Meta { version: 0, created_at: now, updated_at: now },
            network_id: net_id.clone(),
            node_id: String::new(),
            ip: ip.to_string(),
            mac: ipam::format_mac(ipam::mac_for(ip)),
            name: format!("vip:{id}"),
        };
        vips.push(VirtualIp {
            network_id: net_id.clone(),
            ip: endpoint.ip.clone(),
            prefix: subnet.prefix,
            endpoint_id: endpoint.id.clone(),
        });
        add.push(endpoint);
    }
    let remove =
        old_vips.iter().filter(|v| !want.contains(&v.network_id)).map(|v| v.endpoint_id.clone()).collect();
    Ok(Allocation { endpoint: ServiceEndpoint { dnsrr, ports, virtual_ips: vips }, add, remove })
}

/// The lowest address of `subnet` that is neither the gateway nor in use.
fn free_ip(state: &ClusterState, net_id: &str, subnet: Cidr, gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()).checked_add(1)?;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !state.address_used(net_id, &ip.to_string()))
}

/// swarmkit's `checkPortConflicts`: a published port asked for that another
/// service asks for too, or was given.
fn check_conflicts(ports: &[m::EndpointPortConfig], others: &[&Service]) -> Result<(), ApiError> {
    let asked: BTreeSet<(i64, m::EndpointPortConfigProtocolEnum)> = ports
        .iter()
        .filter(|p| p.published_port.unwrap_or(0) > 0)
        .map(|p| (p.published_port.unwrap_or(0), protocol(p)))
        .collect();
    for s in others {
        let conflict = |list: &[m::EndpointPortConfig]| {
            list.iter()
                .map(normalized)
                .find(|p| asked.contains(&(p.published_port.unwrap_or(0), protocol(p))))
                .and_then(|p| p.published_port)
        };
        let spec = spec_ports(&s.spec).map(|(_, p)| p).unwrap_or_default();
        if let Some(port) = conflict(&spec) {
            return Err(ApiError::invalid(format!(
                "port '{port}' is already in use by service '{}' ({}) as a host-published port",
                s.name(),
                s.id
            )));
        }
        if let Some(port) = conflict(&s.endpoint.ports) {
            return Err(ApiError::invalid(format!(
                "port '{port}' is already in use by service '{}' ({}) as an ingress port",
                s.name(),
                s.id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::{
        orchestrator::testutil::{cluster, spec},
        store::{model::Network, state::Command},
    };

    fn net(id: &str, subnet: &str, gateway: &str, vni: u32, ingress: bool) -> Network {
        crate::manager::orchestrator::testutil::network(id, id, subnet, gateway, vni, ingress)
    }

    fn state() -> ClusterState {
        let mut s = cluster();
        for n in [
            net("ing", "10.0.0.0/24", "10.0.0.1", 4096, true),
            net("app", "10.0.1.0/24", "10.0.1.1", 4097, false),
        ] {
            s.apply(1, &Command::CreateNetwork { network: Box::new(n) }).unwrap();
        }
        s
    }

    fn port(published: i64, target: i64, host: bool) -> m::EndpointPortConfig {
        m::EndpointPortConfig {
            target_port: Some(target),
            published_port: Some(published),
            publish_mode: Some(if host {
                m::EndpointPortConfigPublishModeEnum::HOST
            } else {
                m::EndpointPortConfigPublishModeEnum::INGRESS
            }),
            ..Default::default()
        }
    }

    fn with_ports(name: &str, ports: Vec<m::EndpointPortConfig>, dnsrr: bool) -> m::ServiceSpec {
        let mut s = spec(name, Some(1));
        s.endpoint_spec = Some(m::EndpointSpec {
            mode: Some(if dnsrr { m::EndpointSpecModeEnum::DNSRR } else { m::EndpointSpecModeEnum::VIP }),
            ports: Some(ports),
        });
        s
    }

    fn create(
        s: &mut ClusterState,
        id: &str,
        spec: m::ServiceSpec,
        networks: &[&str],
    ) -> Result<(), ApiError> {
        let mut svc = crate::manager::controlapi::new_service(
            id.into(),
            spec,
            networks.iter().map(|n| (*n).to_owned()).collect(),
            0,
        );
        svc.meta.created_at = 0;
        s.apply(5, &Command::CreateService { service: Box::new(svc) })
    }

    #[test]
    fn vips_on_ingress_first_then_each_network_and_ports_from_30000() {
        let mut s = state();
        create(
            &mut s,
            "a",
            with_ports("a", vec![port(0, 80, false), port(8080, 81, false)], false),
            &["app"],
        )
        .unwrap();
        let e = &s.services["a"].endpoint;
        let vips: Vec<(String, String)> =
            e.virtual_ips.iter().map(|v| (v.network_id.clone(), v.addr())).collect();
        assert_eq!(
            vips,
            [("ing".to_owned(), "10.0.0.2/24".to_owned()), ("app".into(), "10.0.1.2/24".into())]
        );
        assert_eq!(e.ports[0].published_port, Some(30000));
        assert_eq!(e.ports[1].published_port, Some(8080));
        assert!(s.address_used("app", "10.0.1.2"));
        // The next service takes the next address and port.
        create(&mut s, "b", with_ports("b", vec![port(0, 80, false)], false), &["app"]).unwrap();
        assert_eq!(s.services["b"].endpoint.ports[0].published_port, Some(30001));
        assert_eq!(s.services["b"].endpoint.virtual_ips[1].ip, "10.0.1.3");
        // Removing frees them.
        s.apply(6, &Command::RemoveService { id: "a".into(), now: 0 }).unwrap();
        assert!(!s.address_used("app", "10.0.1.2"));
        create(&mut s, "c", with_ports("c", vec![port(0, 80, false)], false), &["app"]).unwrap();
        assert_eq!(s.services["c"].endpoint.ports[0].published_port, Some(30000));
        assert_eq!(s.services["c"].endpoint.virtual_ips[1].ip, "10.0.1.2");
    }

    #[test]
    fn updates_keep_addresses_and_dynamic_ports() {
        let mut s = state();
        create(&mut s, "a", with_ports("a", vec![port(0, 80, false)], false), &["app"]).unwrap();
        create(&mut s, "b", with_ports("b", vec![port(0, 80, false)], false), &["app"]).unwrap();
        let before = s.services["b"].endpoint.clone();
        let version = s.services["b"].meta.version;
        let mut spec = with_ports("b", vec![port(0, 80, false), port(0, 90, false)], false);
        spec.labels = Some(std::collections::HashMap::from([("x".to_owned(), "y".to_owned())]));
        s.apply(
            7,
            &Command::UpdateService { id: "b".into(), version, spec: Box::new(spec), now: 1, networks: None },
        )
        .unwrap();
        let after = &s.services["b"].endpoint;
        assert_eq!(after.virtual_ips, before.virtual_ips);
        assert_eq!(after.ports[0].published_port, before.ports[0].published_port);
        assert_eq!(after.ports[1].published_port, Some(30002));
        // Dropping the ports drops the ingress VIP only.
        let version = s.services["b"].meta.version;
        let spec = with_ports("b", vec![], false);
        s.apply(
            8,
            &Command::UpdateService { id: "b".into(), version, spec: Box::new(spec), now: 2, networks: None },
        )
        .unwrap();
        let after = &s.services["b"].endpoint;
        assert_eq!(after.virtual_ips.len(), 1);
        assert_eq!(after.virtual_ips[0].network_id, "app");
        assert!(!s.address_used("ing", &before.virtual_ips[0].ip));
    }

    #[test]
    fn conflicts_duplicates_and_dnsrr_get_swarmkits_errors() {
        let mut s = state();
        create(&mut s, "a", with_ports("a", vec![port(7080, 80, false), port(0, 81, false)], false), &[])
            .unwrap();
        let e = create(&mut s, "b", with_ports("b", vec![port(7080, 90, false)], false), &[]).unwrap_err();
        assert_eq!(e.message, "port '7080' is already in use by service 'a' (a) as a host-published port");
        let e = create(&mut s, "b", with_ports("b", vec![port(30000, 90, true)], false), &[]).unwrap_err();
        assert_eq!(e.message, "port '30000' is already in use by service 'a' (a) as an ingress port");
        let e =
            create(&mut s, "b", with_ports("b", vec![port(1, 80, false), port(1, 81, false)], false), &[])
                .unwrap_err();
        assert_eq!(e.message, "EndpointSpec: duplicate published ports provided");
        let e = create(&mut s, "b", with_ports("b", vec![port(0, 80, false)], true), &[]).unwrap_err();
        assert_eq!(e.message, "EndpointSpec: port published with ingress mode can't be used with dnsrr mode");
        // The same port over another protocol, and host mode with dnsrr, are fine.
        let mut udp = port(7080, 80, false);
        udp.protocol = Some(m::EndpointPortConfigProtocolEnum::UDP);
        create(&mut s, "b", with_ports("b", vec![udp], false), &[]).unwrap();
        create(&mut s, "c", with_ports("c", vec![port(9000, 80, true)], true), &["app"]).unwrap();
        assert!(s.services["c"].endpoint.virtual_ips.is_empty(), "dnsrr has no VIP");
        assert!(!s.services.contains_key("d"));
    }

    #[test]
    fn publishing_without_an_ingress_network_is_refused() {
        let mut s = cluster();
        let e = create(&mut s, "a", with_ports("a", vec![port(80, 80, false)], false), &[]).unwrap_err();
        assert_eq!(e.message, "service needs ingress network, but no ingress network is present");
        create(&mut s, "a", with_ports("a", vec![port(80, 80, true)], false), &[]).unwrap();
    }
}
