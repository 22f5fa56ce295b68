//! Between the store's objects and the Docker Engine API's JSON models
//! (bollard-stubs, generated from Docker's swagger).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use bollard_stubs::models as m;
use serde::Serialize;

use crate::{
    ca::Role,
    error::ApiError,
    manager::store::model::{Availability, Cluster, ClusterSpec, Meta, Network, NodeSpec, NodeState},
    rpc::messages::{NodeView, Reachability},
};

/// RFC 3339 with nanoseconds, as Docker prints times.
pub fn rfc3339(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

fn version(meta: &Meta) -> m::ObjectVersion {
    m::ObjectVersion { index: Some(meta.version) }
}

fn role(r: Role) -> m::NodeSpecRoleEnum {
    match r {
        Role::Worker => m::NodeSpecRoleEnum::WORKER,
        Role::Manager => m::NodeSpecRoleEnum::MANAGER,
    }
}

fn availability(a: Availability) -> m::NodeSpecAvailabilityEnum {
    match a {
        Availability::Active => m::NodeSpecAvailabilityEnum::ACTIVE,
        Availability::Pause => m::NodeSpecAvailabilityEnum::PAUSE,
        Availability::Drain => m::NodeSpecAvailabilityEnum::DRAIN,
    }
}

/// TLS information of the swarm's root, as `docker node inspect` shows it.
pub fn tls_info(ca_pem: &str) -> m::TlsInfo {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let (subject, spki) = rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some((b64(c.subject().as_raw()), b64(c.public_key().raw)))
        })
        .unwrap_or_default();
    m::TlsInfo {
        trust_root: Some(ca_pem.to_owned()),
        cert_issuer_subject: Some(subject),
        cert_issuer_public_key: Some(spki),
    }
}

use rustls_pki_types::pem::PemObject as _;

pub fn node(v: &NodeView, ca_pem: &str) -> m::Node {
    let n = &v.node;
    m::Node {
        id: Some(n.id.clone()),
        version: Some(version(&n.meta)),
        created_at: Some(rfc3339(n.meta.created_at)),
        updated_at: Some(rfc3339(n.meta.updated_at)),
        spec: Some(m::NodeSpec {
            name: (!n.spec.name.is_empty()).then(|| n.spec.name.clone()),
            labels: Some(n.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            role: Some(role(n.spec.role)),
            availability: Some(availability(n.spec.availability)),
        }),
        description: Some(m::NodeDescription {
            hostname: Some(n.description.hostname.clone()),
            platform: Some(m::Platform {
                architecture: Some(n.description.arch.clone()),
                os: Some(n.description.os.clone()),
            }),
            resources: Some(m::ResourceObject {
                nano_cpus: Some(n.description.nano_cpus),
                memory_bytes: Some(n.description.memory_bytes),
                generic_resources: None,
            }),
            engine: Some(m::EngineDescription {
                engine_version: Some(n.description.engine_version.clone()),
                labels: (!n.description.engine_labels.is_empty())
                    .then(|| n.description.engine_labels.clone().into_iter().collect()),
                plugins: None,
            }),
            tls_info: Some(tls_info(ca_pem)),
        }),
        status: Some(m::NodeStatus {
            state: Some(match n.status.state {
                NodeState::Unknown => m::NodeState::UNKNOWN,
                NodeState::Down => m::NodeState::DOWN,
                NodeState::Ready => m::NodeState::READY,
                NodeState::Disconnected => m::NodeState::DISCONNECTED,
            }),
            message: (!n.status.message.is_empty()).then(|| n.status.message.clone()),
            addr: Some(n.status.addr.clone()),
        }),
        manager_status: n.manager.as_ref().map(|mi| m::ManagerStatus {
            leader: Some(v.leader),
            reachability: Some(match v.reachability {
                Reachability::Unknown => m::Reachability::UNKNOWN,
                Reachability::Unreachable => m::Reachability::UNREACHABLE,
                Reachability::Reachable => m::Reachability::REACHABLE,
            }),
            addr: Some(mi.addr.clone()),
        }),
    }
}

/// A node spec as a client sent it (JSON), with moby's errors for bad
/// values (`invalid Role: "x"`, `invalid Availability: "x"`).
pub fn node_spec_json(body: &[u8]) -> Result<NodeSpec, ApiError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct Raw {
        name: String,
        labels: Option<HashMap<String, String>>,
        role: String,
        availability: String,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?;
    let role = match raw.role.to_ascii_lowercase().as_str() {
        "manager" => Role::Manager,
        "worker" => Role::Worker,
        _ => return Err(ApiError::invalid(format!("invalid Role: {:?}", raw.role))),
    };
    let availability = match raw.availability.to_ascii_lowercase().as_str() {
        "active" => Availability::Active,
        "pause" => Availability::Pause,
        "drain" => Availability::Drain,
        _ => return Err(ApiError::invalid(format!("invalid Availability: {:?}", raw.availability))),
    };
    Ok(NodeSpec {
        name: raw.name,
        labels: raw.labels.unwrap_or_default().into_iter().collect(),
        role,
        availability,
    })
}

pub fn swarm_spec(s: &ClusterSpec) -> m::SwarmSpec {
    m::SwarmSpec {
        name: Some(s.name.clone()),
        labels: Some(s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>()),
        orchestration: Some(m::SwarmSpecOrchestration {
            task_history_retention_limit: Some(s.task_history_limit),
        }),
        raft: Some(m::SwarmSpecRaft {
            snapshot_interval: Some(s.snapshot_interval),
            keep_old_snapshots: Some(s.keep_old_snapshots),
            log_entries_for_slow_followers: Some(s.log_entries_for_slow_followers),
            election_tick: Some(i64::from(s.election_tick)),
            heartbeat_tick: Some(i64::from(s.heartbeat_tick)),
        }),
        dispatcher: Some(m::SwarmSpecDispatcher { heartbeat_period: Some(s.heartbeat_period as i64) }),
        ca_config: Some(m::SwarmSpecCaConfig {
            node_cert_expiry: Some(s.node_cert_expiry as i64),
            external_cas: None,
            signing_ca_cert: None,
            signing_ca_key: None,
            force_rotate: Some(0),
        }),
        encryption_config: Some(m::SwarmSpecEncryptionConfig { auto_lock_managers: Some(s.autolock) }),
        task_defaults: None,
    }
}

/// A swarm spec from a client; unset or zero fields take `base`'s values
/// (the defaults on init, the current spec on update).
pub fn cluster_spec(s: Option<&m::SwarmSpec>, base: &ClusterSpec) -> Result<ClusterSpec, ApiError> {
    let mut out = base.clone();
    let Some(s) = s else { return Ok(out) };
    if let Some(n) = s.name.as_ref().filter(|n| !n.is_empty()) {
        out.name.clone_from(n);
    }
    if let Some(l) = &s.labels {
        out.labels = l.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    if let Some(o) = &s.orchestration
        && let Some(v) = o.task_history_retention_limit
    {
        out.task_history_limit = v;
    }
    if let Some(r) = &s.raft {
        out.snapshot_interval = r.snapshot_interval.filter(|v| *v > 0).unwrap_or(out.snapshot_interval);
        out.keep_old_snapshots = r.keep_old_snapshots.unwrap_or(out.keep_old_snapshots);
        out.log_entries_for_slow_followers =
            r.log_entries_for_slow_followers.filter(|v| *v > 0).unwrap_or(out.log_entries_for_slow_followers);
        out.election_tick = r.election_tick.filter(|v| *v > 0).map_or(out.election_tick, |v| v as u32);
        out.heartbeat_tick = r.heartbeat_tick.filter(|v| *v > 0).map_or(out.heartbeat_tick, |v| v as u32);
    }
    if let Some(d) = &s.dispatcher
        && let Some(p) = d.heartbeat_period.filter(|p| *p != 0)
    {
        if p < 0 {
            return Err(ApiError::invalid("heartbeat period must be positive"));
        }
        out.heartbeat_period = p as u64;
    }
    if let Some(c) = &s.ca_config {
        if let Some(e) = c.node_cert_expiry.filter(|e| *e != 0) {
            if e < crate::ca::MIN_NODE_CERT_EXPIRY.as_nanos() as i64 {
                return Err(ApiError::invalid("minimum certificate expiry time is: 1h0m0s"));
            }
            out.node_cert_expiry = e as u64;
        }
        if c.external_cas.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::invalid("external CAs are not supported"));
        }
    }
    if let Some(e) = &s.encryption_config
        && e.auto_lock_managers == Some(true)
    {
        return Err(ApiError::invalid("autolock is not supported yet"));
    }
    Ok(out)
}

pub fn swarm(c: &Cluster) -> m::Swarm {
    m::Swarm {
        id: Some(c.id.clone()),
        version: Some(version(&c.meta)),
        created_at: Some(rfc3339(c.meta.created_at)),
        updated_at: Some(rfc3339(c.meta.updated_at)),
        spec: Some(swarm_spec(&c.spec)),
        tls_info: Some(tls_info(&c.root_ca_cert)),
        root_rotation_in_progress: Some(false),
        data_path_port: Some(c.data_path_port),
        default_addr_pool: Some(c.default_addr_pool.clone()),
        subnet_size: Some(c.subnet_size),
        join_tokens: Some(m::JoinTokens {
            worker: Some(c.worker_token.clone()),
            manager: Some(c.manager_token.clone()),
        }),
    }
}

/// A network as docker's daemon serializes it (`GET /networks[/{id}]`):
/// its field order, maps with sorted keys.
#[derive(Debug, Serialize)]
#[allow(clippy::struct_excessive_bools, reason = "the Docker API body")]
#[serde(rename_all = "PascalCase")]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: &'static str,
    pub driver: String,
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamView,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub config_from: ConfigFromView,
    pub config_only: bool,
    pub containers: BTreeMap<String, ContainerView>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `--verbose`: this node's datapath counters and tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<serde_json::Value>,
    /// `--verbose`: this node's gossip view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamView {
    pub driver: &'static str,
    pub options: Option<BTreeMap<String, String>>,
    pub config: Vec<IpamConfigView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigView {
    pub subnet: String,
    pub gateway: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigFromView {
    pub network: String,
}

/// An attached namespace, where docker lists a container.
#[derive(Debug, Serialize)]
pub struct ContainerView {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

pub fn network(n: &Network) -> NetworkView {
    let mut options = n.options.clone();
    options.insert("com.docker.network.driver.overlay.vxlanid_list".to_owned(), n.vni.to_string());
    NetworkView {
        name: n.name.clone(),
        id: n.id.clone(),
        created: rfc3339(n.meta.created_at),
        scope: "swarm",
        driver: n.driver.clone(),
        enable_ipv4: true,
        enable_ipv6: false,
        ipam: IpamView {
            driver: "default",
            options: None,
            config: vec![IpamConfigView { subnet: n.subnet.clone(), gateway: n.gateway.clone() }],
        },
        internal: false,
        attachable: n.attachable,
        ingress: n.ingress,
        config_from: ConfigFromView { network: String::new() },
        config_only: false,
        containers: BTreeMap::new(),
        options,
        labels: n.labels.clone(),
        datapath: None,
        gossip: None,
    }
}

pub fn cluster_info(c: &Cluster) -> m::ClusterInfo {
    let s = swarm(c);
    m::ClusterInfo {
        id: s.id,
        version: s.version,
        created_at: s.created_at,
        updated_at: s.updated_at,
        spec: s.spec,
        tls_info: s.tls_info,
        root_rotation_in_progress: s.root_rotation_in_progress,
        data_path_port: s.data_path_port,
        default_addr_pool: s.default_addr_pool,
        subnet_size: s.subnet_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
    }

    #[test]
    fn specs_round_trip_through_the_api_model() {
        let mut spec = ClusterSpec { heartbeat_period: 500_000_000, ..ClusterSpec::default() };
        spec.labels.insert("a".into(), "b".into());
        let back = cluster_spec(Some(&swarm_spec(&spec)), &ClusterSpec::default()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = swarm_spec(&ClusterSpec::default());
        s.ca_config.as_mut().unwrap().node_cert_expiry = Some(60 * 1_000_000_000);
        assert_eq!(
            cluster_spec(Some(&s), &ClusterSpec::default()).unwrap_err().message,
            "minimum certificate expiry time is: 1h0m0s"
        );
    }
}
