//! Flag groups `service create` and `service update` share. Each group
//! changes only what was given, so applying it to a fresh spec is what
//! `create` sends and applying it to the current spec is what `update`
//! sends.

use std::time::Duration;

use bollard_stubs::models as m;

use super::{client::CliError, swarm::parse_duration};

fn local(m: impl Into<String>) -> CliError {
    CliError::local(m.into())
}

pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Docker's `RAMInBytes`: `512m`, `4MiB`, `1g`, plain bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size: '{s}'"))?;
    let mult: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        _ => return Err(format!("invalid size: '{s}'")),
    };
    Ok((n * mult) as i64)
}

/// An unsigned count with Go's `strconv.ParseUint` wording.
pub fn parse_uint(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("strconv.ParseUint: parsing {s:?}: invalid syntax"))
}

#[derive(Debug, Default, clap::Args)]
pub struct ResourceArgs {
    /// Limit CPUs
    #[arg(long)]
    limit_cpu: Option<f64>,
    /// Limit Memory
    #[arg(long)]
    limit_memory: Option<String>,
    /// Reserve CPUs
    #[arg(long)]
    reserve_cpu: Option<f64>,
    /// Reserve Memory
    #[arg(long)]
    reserve_memory: Option<String>,
}

impl ResourceArgs {
    pub fn apply(&self, task: &mut m::TaskSpec) -> Result<(), CliError> {
        let cpus = |c: f64| (c * 1e9) as i64;
        let mem = |s: &str| parse_bytes(s).map_err(local);
        if self.limit_cpu.is_none()
            && self.limit_memory.is_none()
            && self.reserve_cpu.is_none()
            && self.reserve_memory.is_none()
        {
            return Ok(());
        }
        let res = task.resources.get_or_insert_with(Default::default);
        let limits = res.limits.get_or_insert_with(Default::default);
        if let Some(c) = self.limit_cpu {
            limits.nano_cpus = Some(cpus(c));
        }
        if let Some(s) = &self.limit_memory {
            limits.memory_bytes = Some(mem(s)?);
        }
        let reservations = res.reservations.get_or_insert_with(Default::default);
        if let Some(c) = self.reserve_cpu {
            reservations.nano_cpus = Some(cpus(c));
        }
        if let Some(s) = &self.reserve_memory {
            reservations.memory_bytes = Some(mem(s)?);
        }
        Ok(())
    }
}

#[derive(Debug, Default, clap::Args)]
#[allow(clippy::struct_field_names)] // the fields are the flags' names
pub struct RestartArgs {
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long)]
    restart_condition: Option<String>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up
    #[arg(long, allow_negative_numbers = true)]
    restart_max_attempts: Option<i64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    restart_window: Option<Duration>,
}

impl RestartArgs {
    pub fn apply(&self, task: &mut m::TaskSpec) -> Result<(), CliError> {
        if self.restart_condition.is_none()
            && self.restart_delay.is_none()
            && self.restart_max_attempts.is_none()
            && self.restart_window.is_none()
        {
            return Ok(());
        }
        let r = task.restart_policy.get_or_insert_with(Default::default);
        if let Some(c) = self.restart_condition.as_deref() {
            use m::TaskSpecRestartPolicyConditionEnum as C;
            r.condition = Some(match c {
                "none" => C::NONE,
                "on-failure" => C::ON_FAILURE,
                "any" => C::ANY,
                o => return Err(local(format!("invalid restart condition: {o}"))),
            });
        }
        if let Some(d) = self.restart_delay {
            r.delay = Some(nanos(d));
        }
        if let Some(n) = self.restart_max_attempts {
            r.max_attempts = Some(n);
        }
        if let Some(d) = self.restart_window {
            r.window = Some(nanos(d));
        }
        Ok(())
    }
}

#[derive(Debug, Default, clap::Args)]
pub struct HealthArgs {
    /// Command to run to check health
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    health_interval: Option<Duration>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, allow_negative_numbers = true)]
    health_retries: Option<i64>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    health_timeout: Option<Duration>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    health_start_period: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long)]
    no_healthcheck: bool,
}

impl HealthArgs {
    pub fn apply(&self, c: &mut m::TaskSpecContainerSpec) -> Result<(), CliError> {
        let set = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_retries.is_some()
            || self.health_timeout.is_some()
            || self.health_start_period.is_some();
        if self.no_healthcheck && set {
            return Err(local("--no-healthcheck conflicts with --health-* options"));
        }
        if self.no_healthcheck {
            c.health_check = Some(m::HealthConfig { test: Some(vec!["NONE".into()]), ..Default::default() });
            return Ok(());
        }
        if !set {
            return Ok(());
        }
        let h = c.health_check.get_or_insert_with(Default::default);
        if h.test.as_deref().and_then(|t| t.first()).is_some_and(|t| t == "NONE") {
            h.test = None;
        }
        if let Some(cmd) = &self.health_cmd {
            h.test = Some(vec!["CMD-SHELL".into(), cmd.clone()]);
        }
        if let Some(d) = self.health_interval {
            h.interval = Some(nanos(d));
        }
        if let Some(d) = self.health_timeout {
            h.timeout = Some(nanos(d));
        }
        if let Some(n) = self.health_retries {
            h.retries = Some(n);
        }
        if let Some(d) = self.health_start_period {
            h.start_period = Some(nanos(d));
        }
        Ok(())
    }
}

/// `--update-*` and `--rollback-*`.
#[derive(Debug, Default, clap::Args)]
pub struct PolicyArgs {
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long, value_parser = parse_uint, allow_negative_numbers = true)]
    update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    update_delay: Option<Duration>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    update_monitor: Option<Duration>,
    /// Action on update failure ("pause", "continue", "rollback")
    #[arg(long)]
    update_failure_action: Option<String>,
    /// Failure rate to tolerate during an update
    #[arg(long, allow_negative_numbers = true)]
    update_max_failure_ratio: Option<f64>,
    /// Update order ("start-first", "stop-first")
    #[arg(long)]
    update_order: Option<String>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long, value_parser = parse_uint, allow_negative_numbers = true)]
    rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    rollback_delay: Option<Duration>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    rollback_monitor: Option<Duration>,
    /// Action on rollback failure ("pause", "continue")
    #[arg(long)]
    rollback_failure_action: Option<String>,
    /// Failure rate to tolerate during a rollback
    #[arg(long, allow_negative_numbers = true)]
    rollback_max_failure_ratio: Option<f64>,
    /// Rollback order ("start-first", "stop-first")
    #[arg(long)]
    rollback_order: Option<String>,
}

/// One config's flags, whichever of update and rollback they are for.
struct Policy<'a> {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    monitor: Option<Duration>,
    failure_action: Option<&'a str>,
    ratio: Option<f64>,
    order: Option<&'a str>,
}

impl Policy<'_> {
    fn any(&self) -> bool {
        self.parallelism.is_some()
            || self.delay.is_some()
            || self.monitor.is_some()
            || self.failure_action.is_some()
            || self.ratio.is_some()
            || self.order.is_some()
    }
}

/// swarmkit's defaults, which docker's CLI fills in when a config is first set.
const DEFAULT_MONITOR: i64 = 5_000_000_000;

fn order_of(what: &str, o: &str) -> Result<String, CliError> {
    match o.to_ascii_lowercase().as_str() {
        o @ ("stop-first" | "start-first") => Ok(o.to_owned()),
        _ => Err(local(format!("unrecognized {what} order {o}"))),
    }
}

impl PolicyArgs {
    fn update(&self) -> Policy<'_> {
        Policy {
            parallelism: self.update_parallelism,
            delay: self.update_delay,
            monitor: self.update_monitor,
            failure_action: self.update_failure_action.as_deref(),
            ratio: self.update_max_failure_ratio,
            order: self.update_order.as_deref(),
        }
    }

    fn rollback(&self) -> Policy<'_> {
        Policy {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay,
            monitor: self.rollback_monitor,
            failure_action: self.rollback_failure_action.as_deref(),
            ratio: self.rollback_max_failure_ratio,
            order: self.rollback_order.as_deref(),
        }
    }

    pub fn apply(&self, spec: &mut m::ServiceSpec) -> Result<(), CliError> {
        apply_policy(&mut spec.update_config, &self.update(), "update", &["pause", "continue", "rollback"])?;
        apply_policy(&mut spec.rollback_config, &self.rollback(), "rollback", &["pause", "continue"])
    }
}

/// Sets the given fields of an update or rollback config (the two share
/// Docker's JSON shape), starting from swarmkit's defaults when it has none.
fn apply_policy<T: serde::Serialize + serde::de::DeserializeOwned>(
    cfg: &mut Option<T>,
    p: &Policy<'_>,
    what: &str,
    actions: &[&str],
) -> Result<(), CliError> {
    if !p.any() {
        return Ok(());
    }
    let bad = |e: serde_json::Error| local(e.to_string());
    let mut v = match cfg.as_ref() {
        Some(c) => serde_json::to_value(c).map_err(bad)?,
        None => serde_json::json!({
            "Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": DEFAULT_MONITOR,
            "MaxFailureRatio": 0.0, "Order": "stop-first",
        }),
    };
    if let Some(n) = p.parallelism {
        v["Parallelism"] = i64::try_from(n).unwrap_or(i64::MAX).into();
    }
    if let Some(d) = p.delay {
        v["Delay"] = nanos(d).into();
    }
    if let Some(d) = p.monitor {
        v["Monitor"] = nanos(d).into();
    }
    if let Some(r) = p.ratio {
        v["MaxFailureRatio"] = r.into();
    }
    if let Some(a) = p.failure_action {
        let lower = a.to_ascii_lowercase();
        if !actions.contains(&lower.as_str()) {
            return Err(local(format!("unrecognized {what} failure action {a}")));
        }
        v["FailureAction"] = lower.into();
    }
    if let Some(o) = p.order {
        v["Order"] = order_of(what, o)?.into();
    }
    *cfg = Some(serde_json::from_value(v).map_err(bad)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fills_swarmkits_defaults_then_the_given_flags() {
        let p = PolicyArgs {
            update_parallelism: Some(2),
            update_order: Some("start-first".into()),
            ..Default::default()
        };
        let mut spec = m::ServiceSpec::default();
        p.apply(&mut spec).unwrap();
        let u = spec.update_config.unwrap();
        assert_eq!(u.parallelism, Some(2));
        assert_eq!(u.monitor, Some(DEFAULT_MONITOR));
        assert_eq!(u.order, Some(m::ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        assert!(spec.rollback_config.is_none());
        let bad = PolicyArgs { rollback_failure_action: Some("rollback".into()), ..Default::default() };
        let e = bad.apply(&mut m::ServiceSpec::default()).unwrap_err();
        assert_eq!(e.to_string(), "unrecognized rollback failure action rollback");
        assert_eq!(parse_uint("-1").unwrap_err(), "strconv.ParseUint: parsing \"-1\": invalid syntax");
    }

    #[test]
    fn sizes_like_dockers() {
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("lots").is_err());
    }
}
