//! The allocator: gives each new task an address on every network its
//! service attaches to, and on `ingress` when it publishes ports there (an
//! endpoint in the store, so addresses never clash with attachments made by
//! `network connect` or with virtual IPs), then moves it to PENDING.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::manager::{
    orchestrator::Working,
    store::{
        ipam::{self, Cidr},
        model::{Endpoint, Meta},
        task::{Task, TaskNetwork, TaskState},
    },
};

pub const PENDING_MESSAGE: &str = "pending task scheduling";

/// An allocated task whose networks are no longer the ones its service's
/// tasks get (ports published or unpublished, networks changed): it is
/// replaced, as swarmkit replaces tasks whose endpoint changed.
pub fn attachments_outdated(w: &Working<'_>, s: &crate::manager::store::task::Service, t: &Task) -> bool {
    if t.status.state <= TaskState::New || t.status.state.is_terminal() {
        return false;
    }
    let have: Vec<&str> = t.networks.iter().map(|n| n.network_id.as_str()).collect();
    let want = task_networks(w, s);
    have != want.iter().map(String::as_str).collect::<Vec<_>>()
}

/// The networks a service's tasks attach to: `ingress` first when the
/// service publishes ingress ports with a virtual IP there (the routing
/// mesh reaches them on it), then the service's own.
pub fn task_networks(w: &Working<'_>, s: &crate::manager::store::task::Service) -> Vec<String> {
    let mut out: Vec<String> = s
        .endpoint
        .virtual_ips
        .iter()
        .filter(|v| w.state.networks.get(&v.network_id).is_some_and(|n| n.ingress))
        .map(|v| v.network_id.clone())
        .collect();
    for n in &s.networks {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    // Host-mode ports need an address to be sent to: a task on no network
    // gets one on ingress (what docker_gwbridge is to Docker).
    let host_ports = s
        .endpoint
        .ports
        .iter()
        .any(|p| p.publish_mode == Some(bollard_stubs::models::EndpointPortConfigPublishModeEnum::HOST));
    if out.is_empty()
        && host_ports
        && let Some(ingress) = w.state.networks.values().find(|n| n.ingress)
    {
        out.push(ingress.id.clone());
    }
    out
}

pub fn allocate(w: &mut Working<'_>) {
    let new: Vec<Task> =
        w.tasks().filter(|t| t.status.state == TaskState::New && t.is_runnable()).cloned().collect();
    if new.is_empty() {
        return;
    }
    let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for mut t in new {
        let networks = w.state.services.get(&t.service_id).map(|s| task_networks(w, s)).unwrap_or_default();
        let mut attached = Vec::new();
        let mut failed = None;
        for net_id in &networks {
            let Some(net) = w.state.networks.get(net_id) else {
                failed = Some(format!("network {net_id} not found"));
                break;
            };
            let (Ok(subnet), Ok(gateway)) = (Cidr::parse(&net.subnet), net.gateway.parse::<Ipv4Addr>())
            else {
                failed = Some(format!("network {} has a bad subnet", net.name));
                break;
            };
            let taken = used.entry(net_id.clone()).or_insert_with(|| {
                w.state
                    .endpoints
                    .values()
                    .filter(|e| e.network_id == *net_id)
                    .filter_map(|e| e.ip.parse().ok())
                    .collect()
            });
            let Some(ip) = ipam::next_ip(subnet, gateway, taken) else {
                failed = Some(format!(
                    "no available IPv4 addresses on this network's address pools: {} ({})",
                    net.name, net.id
                ));
                break;
            };
            taken.insert(ip);
            let endpoint = Endpoint {
                id: format!("{}-{}", t.id, net.id),
                meta: Meta { version: 0, created_at: w.now, updated_at: w.now },
                network_id: net.id.clone(),
                node_id: String::new(),
                ip: ip.to_string(),
                mac: ipam::format_mac(ipam::mac_for(ip)),
                name: format!("task:{}", t.id),
            };
            attached.push((
                TaskNetwork {
                    network_id: net.id.clone(),
                    endpoint_id: endpoint.id.clone(),
                    ip: endpoint.ip.clone(),
                    mac: endpoint.mac.clone(),
                    prefix: subnet.prefix,
                },
                endpoint,
            ));
        }
        if let Some(err) = failed {
            // Stays NEW, and is tried again when something changes.
            if t.status.err != err {
                t.status.err = err;
                w.put(t);
            }
            continue;
        }
        for (tn, e) in attached {
            t.networks.push(tn);
            w.endpoints.push(e);
        }
        t.status.state = TaskState::Pending;
        t.status.message = PENDING_MESSAGE.into();
        t.status.err.clear();
        t.status.timestamp = w.now;
        w.put(t);
    }
}
