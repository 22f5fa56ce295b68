//! The control API's checks for services (swarmkit `manager/controlapi`):
//! a request is validated against the state and turned into a command
//! before anything is proposed, with swarmkit's error texts.

use bollard_stubs::models as m;

use crate::{
    error::ApiError,
    manager::{
        scheduler::constraint::Constraint,
        store::{
            model::{Meta, Nanos},
            state::ClusterState,
            task::Service,
        },
    },
    util::reference,
};

/// More replicas than this are refused: every one is a task in the store.
pub const MAX_REPLICAS: i64 = 10_000;

fn invalid(msg: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("rpc error: code = InvalidArgument desc = {msg}"))
}

/// Docker's service/network name rule.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(invalid("meta: name must be provided"));
    }
    if name.len() > 63 {
        return Err(invalid("name must be 63 characters or fewer"));
    }
    let b = name.as_bytes();
    let ok = b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
    if !ok {
        return Err(invalid("name must be valid as a DNS name component"));
    }
    Ok(())
}

const LEFT: [&str; 24] = [
    "admiring", "brave", "busy", "clever", "cool", "eager", "elastic", "festive", "focused", "gifted",
    "happy", "jolly", "keen", "loving", "modest", "nifty", "peaceful", "quirky", "relaxed", "sharp", "stoic",
    "tender", "vibrant", "zealous",
];
const RIGHT: [&str; 24] = [
    "albattani",
    "bardeen",
    "curie",
    "darwin",
    "einstein",
    "euler",
    "faraday",
    "galileo",
    "hopper",
    "hypatia",
    "kepler",
    "lamport",
    "lovelace",
    "meitner",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "tesla",
    "thompson",
    "turing",
    "wozniak",
    "yalow",
];

/// A name for a service created without one, as docker's namesgenerator
/// makes them (`adjective_surname`), not taken by another service.
pub fn random_name(state: &ClusterState, rng: &mut impl rand::Rng) -> String {
    loop {
        let name =
            format!("{}_{}", LEFT[rng.random_range(0..LEFT.len())], RIGHT[rng.random_range(0..RIGHT.len())]);
        if state.resolve_service(&name).is_err() {
            return name;
        }
    }
}

/// Checks a spec and resolves its networks to IDs.
pub fn validate_spec(state: &ClusterState, spec: &m::ServiceSpec) -> Result<Vec<String>, ApiError> {
    validate_name(spec.name.as_deref().unwrap_or(""))?;
    let task = spec.task_template.as_ref().ok_or_else(|| invalid("TaskSpec: missing runtime"))?;
    let c = task.container_spec.as_ref().ok_or_else(|| invalid("ContainerSpec: missing in service spec"))?;
    let image = c.image.as_deref().unwrap_or("");
    if image.is_empty() {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    }
    if reference::parse(image).is_err() {
        return Err(invalid(format!("ContainerSpec: {image:?} is not a valid repository/tag")));
    }
    let mut targets = std::collections::BTreeSet::new();
    for mnt in c.mounts.iter().flatten() {
        let t = mnt.target.as_deref().unwrap_or("");
        if !targets.insert(t) {
            return Err(invalid(format!("ContainerSpec: duplicate mount point: {t}")));
        }
    }
    if let Some(g) = c.stop_grace_period
        && g < 0
    {
        return Err(invalid("ContainerSpec: stop grace period must not be negative"));
    }
    if let Some(mode) = &spec.mode {
        let kinds = [
            mode.replicated.is_some(),
            mode.global.is_some(),
            mode.replicated_job.is_some(),
            mode.global_job.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(invalid("service mode: only one mode may be set"));
        }
        if mode.replicated_job.is_some() || mode.global_job.is_some() {
            return Err(invalid("jobs are not supported yet"));
        }
        if let Some(r) = mode.replicated.as_ref().and_then(|r| r.replicas) {
            if r < 0 {
                return Err(invalid(format!("invalid replicas value {r}: must not be negative")));
            }
            if r > MAX_REPLICAS {
                return Err(invalid(format!(
                    "invalid replicas value {r}: at most {MAX_REPLICAS} replicas per service"
                )));
            }
        }
    }
    if let Some(res) = &task.resources {
        for (cpu, mem) in [
            (res.limits.as_ref().and_then(|l| l.nano_cpus), res.limits.as_ref().and_then(|l| l.memory_bytes)),
            (
                res.reservations.as_ref().and_then(|l| l.nano_cpus),
                res.reservations.as_ref().and_then(|l| l.memory_bytes),
            ),
        ] {
            if let Some(c) = cpu
                && c != 0
                && c < 1_000_000
            {
                return Err(invalid(format!(
                    "invalid cpu value {:.3}: Must be at least 0.001",
                    c as f64 / 1e9
                )));
            }
            if let Some(mem) = mem
                && mem != 0
                && mem < 4 << 20
            {
                return Err(invalid(format!("invalid memory value {mem}: Must be at least 4MiB")));
            }
        }
    }
    if let Some(r) = &task.restart_policy {
        if r.delay.is_some_and(|d| d < 0) {
            return Err(invalid("TaskSpec: restart-delay cannot be negative"));
        }
        if r.window.is_some_and(|d| d < 0) {
            return Err(invalid("TaskSpec: restart-window cannot be negative"));
        }
        if r.max_attempts.is_some_and(|d| d < 0) {
            return Err(invalid("TaskSpec: restart-max-attempts cannot be negative"));
        }
    }
    if let Some(p) = &task.placement {
        Constraint::parse_all(p.constraints.as_deref().unwrap_or(&[])).map_err(invalid)?;
        for pref in p.preferences.iter().flatten() {
            let d = pref.spread.as_ref().and_then(|s| s.spread_descriptor.as_deref()).unwrap_or("");
            if !(d.starts_with("node.labels.") || d.starts_with("engine.labels.")) || d.ends_with('.') {
                return Err(invalid(format!(
                    "invalid placement preference: spread descriptor {d:?} must be node.labels.<label> or engine.labels.<label>"
                )));
            }
        }
        if p.max_replicas.is_some_and(|n| n < 0) {
            return Err(invalid("TaskSpec: max replicas per node cannot be negative"));
        }
    }
    let configs = [
        spec.update_config.as_ref().map(|u| (u.parallelism, u.delay, u.monitor, u.max_failure_ratio)),
        spec.rollback_config.as_ref().map(|u| (u.parallelism, u.delay, u.monitor, u.max_failure_ratio)),
    ];
    for (parallelism, delay, monitor, ratio) in configs.into_iter().flatten() {
        if parallelism.is_some_and(|p| p < 0) {
            return Err(invalid("TaskSpec: update-parallelism cannot be negative"));
        }
        if delay.is_some_and(|d| d < 0) {
            return Err(invalid("TaskSpec: update-delay cannot be negative"));
        }
        if monitor.is_some_and(|d| d < 0) {
            return Err(invalid("TaskSpec: update-monitor cannot be negative"));
        }
        if ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(invalid("TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1"));
        }
    }
    crate::manager::store::secret::validate_refs(spec, |k, id| {
        state.blobs(k).get(id).map(|b| b.name.clone())
    })?;
    crate::manager::store::endpoint::spec_ports(spec)?;
    state.spec_networks(spec)
}

/// The image as docker's daemon records it when it cannot ask a registry
/// for a digest: the familiar name with a tag (`busybox` → `busybox:latest`).
pub fn normalize_image(spec: &mut m::ServiceSpec) {
    let c = spec.task_template.as_mut().and_then(|t| t.container_spec.as_mut());
    if let Some(c) = c
        && let Some(img) = c.image.as_mut()
        && let Ok(r) = reference::parse(img)
    {
        *img = match (&r.tag, &r.digest) {
            (Some(_), Some(d)) => format!("{}@{d}", r.familiar()),
            _ => r.familiar(),
        };
    }
}

/// A new service object for a checked spec.
pub fn new_service(id: String, spec: m::ServiceSpec, networks: Vec<String>, now: Nanos) -> Service {
    Service {
        id,
        meta: Meta { version: 0, created_at: now, updated_at: now },
        spec,
        previous_spec: None,
        update_status: None,
        networks,
        endpoint: crate::manager::store::endpoint::ServiceEndpoint::default(),
    }
}

/// What `service update` may not change.
pub fn check_update(old: &Service, spec: &m::ServiceSpec) -> Result<(), ApiError> {
    let global = |s: &m::ServiceSpec| s.mode.as_ref().is_some_and(|m| m.global.is_some());
    if global(&old.spec) != global(spec) {
        return Err(ApiError::invalid(
            "rpc error: code = Unimplemented desc = service mode change is not allowed",
        ));
    }
    if old.spec.name != spec.name {
        return Err(ApiError::invalid(
            "rpc error: code = Unimplemented desc = renaming services is not supported",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::orchestrator::testutil::{cluster, spec};

    #[test]
    fn names() {
        assert!(validate_name("web-1_a").is_ok());
        for (n, e) in [
            ("", "meta: name must be provided"),
            ("-x", "name must be valid as a DNS name component"),
            ("a.b", "name must be valid as a DNS name component"),
            (&"a".repeat(64), "name must be 63 characters or fewer"),
        ] {
            assert!(validate_name(n).unwrap_err().message.ends_with(e), "{n}");
        }
    }

    #[test]
    fn bad_specs_are_refused_with_dockers_words() {
        let s = cluster();
        let check = |f: &dyn Fn(&mut m::ServiceSpec)| {
            let mut sp = spec("web", Some(1));
            f(&mut sp);
            validate_spec(&s, &sp).unwrap_err().message
        };
        assert!(
            check(&|sp| sp.task_template.as_mut().unwrap().container_spec.as_mut().unwrap().image =
                Some(String::new()))
            .ends_with("image reference must be provided")
        );
        assert!(
            check(&|sp| sp.task_template.as_mut().unwrap().container_spec.as_mut().unwrap().image =
                Some("Bad Ref".into()))
            .contains("is not a valid repository/tag")
        );
        assert!(
            check(&|sp| sp.mode.as_mut().unwrap().replicated.as_mut().unwrap().replicas = Some(-1))
                .contains("must not be negative")
        );
        assert!(
            check(&|sp| sp.mode.as_mut().unwrap().replicated.as_mut().unwrap().replicas = Some(1 << 40))
                .contains("at most")
        );
        assert!(
            check(&|sp| sp.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
                constraints: Some(vec!["node.role=manager".into()]),
                ..Default::default()
            }))
            .ends_with("constraint expected one operator from ==, !=")
        );
        assert!(
            check(&|sp| sp.task_template.as_mut().unwrap().networks =
                Some(vec![m::NetworkAttachmentConfig { target: Some("nope".into()), ..Default::default() }]))
            .ends_with("network nope not found")
        );
        assert!(check(&|sp| sp.task_template = None).contains("TaskSpec"));
        assert!(
            check(&|sp| sp.update_config =
                Some(m::ServiceSpecUpdateConfig { max_failure_ratio: Some(1.5), ..Default::default() }))
            .ends_with("update-maxfailureratio cannot be less than 0 or bigger than 1")
        );
        assert!(
            check(&|sp| sp.rollback_config =
                Some(m::ServiceSpecRollbackConfig { delay: Some(-1), ..Default::default() }))
            .ends_with("update-delay cannot be negative")
        );
    }
}
