//! The worker: makes this node run what the dispatcher assigned it.
//!
//! [`diff`] (pure) compares the assignments with the task controllers and
//! containers this node has, and says what to do. Each task has a
//! controller that walks swarmkit's agent-side states — ACCEPTED,
//! PREPARING (image, network namespace, endpoints, container), READY,
//! STARTING, RUNNING, then COMPLETE/FAILED, or SHUTDOWN when told to stop,
//! or REJECTED when it cannot be prepared — reporting each step. A
//! controller that finds its container already there (the agent was
//! restarted) picks up where the container is.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use crate::{
    agent::{
        exec::{self, Container, ContainerConfig, ContainerState, Executor, MountSpec},
        images::ImageStore,
    },
    manager::store::task::{TaskState, TaskStatus},
    rpc::messages::{Assignment, AttachResponse},
    util::fs::is_mount_point,
};

/// What the worker needs from the node: endpoints on overlay networks,
/// and images it lacks (from the managers, or a registry).
pub trait NodeServices: Send + Sync + 'static {
    fn attach<'a>(&'a self, a: &'a AttachResponse, netns: &'a Path) -> BoxFuture<'a, Result<(), String>>;
    fn detach<'a>(&'a self, endpoint_id: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Fetches `reference` into the image store; `Ok(false)` if nobody has it.
    fn fetch_image<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<bool, String>>;
    /// What the node's datapath load-balances (service VIPs, published ports).
    fn balance(&self, _lb: &crate::manager::names::Balancers) {}
}

/// What the worker does about one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a controller for it.
    Run(Box<Assignment>),
    /// Tell its controller the new desired state.
    Desire { task_id: String, desired: TaskState },
    /// It is no longer assigned: stop it and remove its container.
    Forget { task_id: String },
}

/// Assigned vs. what this node has: `controllers` maps task IDs to the
/// desired state their controllers know; `containers` are task IDs with a
/// container here.
pub fn diff(
    assigned: &[Assignment],
    controllers: &BTreeMap<String, TaskState>,
    containers: &BTreeSet<String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    let ids: BTreeSet<&str> = assigned.iter().map(|a| a.task.id.as_str()).collect();
    for a in assigned {
        match controllers.get(&a.task.id) {
            Some(d) if *d != a.task.desired_state => {
                out.push(Action::Desire { task_id: a.task.id.clone(), desired: a.task.desired_state });
            }
            Some(_) => {}
            None if !a.task.status.state.is_terminal() => out.push(Action::Run(Box::new(a.clone()))),
            None => {}
        }
    }
    let gone: BTreeSet<&String> =
        controllers.keys().chain(containers.iter()).filter(|id| !ids.contains(id.as_str())).collect();
    for id in gone {
        out.push(Action::Forget { task_id: id.clone() });
    }
    out
}

struct Controller {
    desired: watch::Sender<TaskState>,
}

pub struct Worker {
    exec: Arc<dyn Executor>,
    images: Arc<ImageStore>,
    net: Arc<dyn NodeServices>,
    netns_dir: PathBuf,
    node_id: String,
    controllers: Mutex<BTreeMap<String, Controller>>,
    /// The names tasks resolve (embedded DNS), from the dispatcher.
    resolver: Arc<crate::agent::dns::Resolver>,
    report: mpsc::UnboundedSender<(String, TaskStatus)>,
    /// Status updates for the session to send.
    pub(crate) reports: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, TaskStatus)>>,
}

fn now() -> i64 {
    crate::manager::now_nanos()
}

/// Fatal errors reject or fail the task; others are retried.
enum Step {
    Fatal(String),
    Retry(String),
}

impl Worker {
    pub fn new(
        exec: Arc<dyn Executor>,
        images: Arc<ImageStore>,
        net: Arc<dyn NodeServices>,
        netns_dir: PathBuf,
        node_id: String,
        dns_upstreams: Vec<std::net::SocketAddr>,
    ) -> Arc<Worker> {
        let (report, rx) = mpsc::unbounded_channel();
        Arc::new(Worker {
            exec,
            images,
            net,
            netns_dir,
            node_id,
            controllers: Mutex::new(BTreeMap::new()),
            resolver: if dns_upstreams.is_empty() {
                crate::agent::dns::Resolver::from_host()
            } else {
                crate::agent::dns::Resolver::with_upstreams(dns_upstreams)
            },
            report,
            reports: tokio::sync::Mutex::new(rx),
        })
    }

    /// Removes every task container (leaving the swarm).
    pub async fn remove_all(&self) {
        let controllers = std::mem::take(&mut *self.controllers());
        for c in controllers.values() {
            c.desired.send_replace(TaskState::Remove);
        }
        for c in self.exec.list() {
            self.forget(&c.config.task_id).await;
        }
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.exec
    }

    pub fn resolver(&self) -> &Arc<crate::agent::dns::Resolver> {
        &self.resolver
    }

    /// Hands the managers' load balancing to the node's datapath.
    pub fn balance(&self, lb: &crate::manager::names::Balancers) {
        self.net.balance(lb);
    }

    /// The embedded DNS server of a task on overlay networks (none for a
    /// task without any, which keeps the host's resolvers).
    fn dns(&self, a: &Assignment, cid: &str) -> Option<crate::agent::dns::Server> {
        let networks: Vec<String> = a.attachments.iter().map(|att| att.network.id.clone()).collect();
        if networks.is_empty() {
            return None;
        }
        match crate::agent::dns::serve(self.resolver.clone(), &self.netns_path(cid), networks) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(task = %a.task.id, "embedded DNS: {e}");
                None
            }
        }
    }

    fn controllers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Controller>> {
        self.controllers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a new assignment set.
    pub fn assign(self: &Arc<Self>, assigned: &[Assignment]) {
        let known: BTreeMap<String, TaskState> =
            self.controllers().iter().map(|(id, c)| (id.clone(), *c.desired.borrow())).collect();
        let containers: BTreeSet<String> = self.exec.list().into_iter().map(|c| c.config.task_id).collect();
        for action in diff(assigned, &known, &containers) {
            match action {
                Action::Run(a) => {
                    let (tx, rx) = watch::channel(a.task.desired_state);
                    self.controllers().insert(a.task.id.clone(), Controller { desired: tx });
                    let me = self.clone();
                    tokio::spawn(async move { me.control(*a, rx).await });
                }
                Action::Desire { task_id, desired } => {
                    if let Some(c) = self.controllers().get(&task_id) {
                        c.desired.send_replace(desired);
                    }
                }
                Action::Forget { task_id } => {
                    let c = self.controllers().remove(&task_id);
                    if let Some(c) = &c {
                        c.desired.send_replace(TaskState::Remove);
                    }
                    let me = self.clone();
                    tokio::spawn(async move { me.forget(&task_id).await });
                }
            }
        }
    }

    fn send(&self, task_id: &str, status: &TaskStatus) {
        let _ = self.report.send((task_id.to_owned(), status.clone()));
    }

    /// One task, from wherever it is to a final state.
    async fn control(self: Arc<Self>, a: Assignment, mut desired: watch::Receiver<TaskState>) {
        let task_id = a.task.id.clone();
        let cid = exec::container_id(&task_id);
        let mut st = a.task.status.clone();
        st.container_id = Some(cid.clone());
        let set = |st: &mut TaskStatus, state: TaskState, message: &str| {
            if state < st.state {
                return;
            }
            st.state = state;
            message.clone_into(&mut st.message);
            st.timestamp = now();
            self.send(&task_id, st);
        };
        let existing = self.exec.inspect(&cid).map(|c| c.state);
        let mut dns = None;
        if let Some(ContainerState::Exited { code, .. }) = existing {
            self.finished(&task_id, &mut st, code, false);
            return;
        }
        if !matches!(existing, Some(ContainerState::Running { .. })) {
            if *desired.borrow() > TaskState::Running {
                set(&mut st, TaskState::Shutdown, "shutdown");
                return;
            }
            if st.state < TaskState::Accepted {
                set(&mut st, TaskState::Accepted, "accepted");
            }
            if existing.is_none() {
                set(&mut st, TaskState::Preparing, "preparing");
                let mut backoff = Duration::from_millis(100);
                loop {
                    match self.prepare(&a, &cid).await {
                        Ok(()) => break,
                        Err(Step::Fatal(e)) => {
                            st.err = e;
                            set(&mut st, TaskState::Rejected, "preparing");
                            return;
                        }
                        Err(Step::Retry(e)) => {
                            tracing::debug!(task = %task_id, "preparing: {e}");
                            // Shown in `service ps` while it lasts.
                            if st.err != e {
                                st.err = e;
                                st.timestamp = now();
                                self.send(&task_id, &st);
                            }
                            if *desired.borrow() > TaskState::Running {
                                set(&mut st, TaskState::Shutdown, "shutdown");
                                return;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            st.err.clear();
            set(&mut st, TaskState::Ready, "prepared");
            while *desired.borrow_and_update() < TaskState::Running {
                if desired.changed().await.is_err() {
                    return;
                }
            }
            if *desired.borrow() > TaskState::Running {
                set(&mut st, TaskState::Shutdown, "shutdown");
                return;
            }
            dns = self.dns(&a, &cid);
            set(&mut st, TaskState::Starting, "starting");
            match self.exec.start(&cid).await {
                Ok(pid) => st.pid = Some(pid),
                Err(e) => {
                    st.err = e.message;
                    set(&mut st, TaskState::Failed, "starting");
                    return;
                }
            }
        } else if let Some(ContainerState::Running { pid, .. }) = existing {
            st.pid = Some(pid);
            dns = self.dns(&a, &cid);
        }
        // Serves for as long as this controller runs.
        let _dns = dns;
        let (signal, grace) = match self.exec.inspect(&cid) {
            Some(c) => (c.config.stop_signal.clone(), c.config.stop_grace),
            None => (String::new(), Duration::from_secs(10)),
        };
        let health = health_of(&a.task.spec, self.images.resolve(image_of(&a)).ok().as_ref());
        let stop_wanted = async {
            loop {
                if *desired.borrow_and_update() > TaskState::Running {
                    return;
                }
                if desired.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::pin!(stop_wanted);
        let wait = self.exec.wait(&cid);
        tokio::pin!(wait);
        // With a health check a task is RUNNING once it is healthy (as
        // docker's executor reports it), and fails when it turns unhealthy.
        let mut healthy = health.is_none() || st.state >= TaskState::Running;
        if healthy {
            set(&mut st, TaskState::Running, "started");
        }
        loop {
            let probe = async {
                match &health {
                    Some(h) => self.probe(&cid, h, healthy).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut wait => {
                    self.finished(&task_id, &mut st, r.unwrap_or(255), false);
                    return;
                }
                () = &mut stop_wanted => {
                    // The task left every node's balancer and DNS when its
                    // desired state changed; give that a moment to reach
                    // them before it stops answering (docker waits 2 s).
                    if !a.attachments.is_empty() {
                        tokio::time::sleep(DRAIN).await;
                    }
                    let stopped = self.exec.stop(&cid, &signal, grace).await;
                    let code = self.exec.wait(&cid).await.unwrap_or(255);
                    if let Err(e) = stopped {
                        tracing::warn!(task = %task_id, "stopping: {e}");
                    }
                    self.finished(&task_id, &mut st, code, true);
                    return;
                }
                ok = probe => {
                    if ok {
                        healthy = true;
                        set(&mut st, TaskState::Running, "started");
                    } else {
                        let _ = self.exec.stop(&cid, &signal, grace).await;
                        st.exit_code = self.exec.wait(&cid).await.ok();
                        self.exec.release_files(&cid);
                        st.err = UNHEALTHY.into();
                        st.timestamp = now();
                        st.state = TaskState::Failed;
                        st.message = "started".into();
                        self.send(&task_id, &st);
                        return;
                    }
                }
            }
        }
    }

    /// Runs health probes until the container is healthy (`until_unhealthy`
    /// false: returns true) or unhealthy (returns false).
    async fn probe(&self, cid: &str, h: &Health, until_unhealthy: bool) -> bool {
        let started = tokio::time::Instant::now();
        let mut failures = 0;
        loop {
            let in_start_period = started.elapsed() < h.start_period;
            let ok = self.probe_once(cid, h).await;
            if ok {
                failures = 0;
                if !until_unhealthy {
                    return true;
                }
            } else if !in_start_period {
                failures += 1;
                if failures >= h.retries {
                    return false;
                }
            }
            tokio::time::sleep(h.interval).await;
        }
    }

    async fn probe_once(&self, cid: &str, h: &Health) -> bool {
        use std::process::Stdio;
        let spec = exec::ExecSpec { args: h.test.clone(), ..Default::default() };
        let Ok(mut child) = self.exec.exec(cid, &spec, [Stdio::null(), Stdio::null(), Stdio::null()]) else {
            return false;
        };
        matches!(tokio::time::timeout(h.timeout, child.wait()).await, Ok(Ok(s)) if s.success())
    }

    fn finished(&self, task_id: &str, st: &mut TaskStatus, code: i64, stopped: bool) {
        self.exec.release_files(&exec::container_id(task_id));
        st.exit_code = Some(code);
        st.timestamp = now();
        if stopped {
            st.state = TaskState::Shutdown;
            st.message = "shutdown".into();
        } else if code == 0 {
            st.state = TaskState::Complete;
            st.message = "finished".into();
        } else {
            st.state = TaskState::Failed;
            st.message = "started".into();
            st.err = format!("task: non-zero exit ({code})");
        }
        self.send(task_id, st);
    }

    fn netns_path(&self, cid: &str) -> PathBuf {
        self.netns_dir.join(&cid[..12])
    }

    /// Image, network namespace with the task's endpoints, container.
    async fn prepare(&self, a: &Assignment, cid: &str) -> Result<(), Step> {
        let spec = a.task.spec.container_spec.clone().unwrap_or_default();
        let image_ref = spec.image.clone().unwrap_or_default();
        let image = match self.images.resolve(&image_ref) {
            Ok(i) => i,
            Err(missing) => match self.net.fetch_image(&image_ref).await {
                Ok(true) => self.images.resolve(&image_ref).map_err(|e| Step::Fatal(e.message))?,
                Ok(false) => return Err(Step::Fatal(missing.message)),
                Err(e) => return Err(Step::Retry(e)),
            },
        };
        let netns = self.netns_path(cid);
        make_netns(&netns).await.map_err(Step::Retry)?;
        let mut hosts = Vec::new();
        for att in &a.attachments {
            self.net.attach(att, &netns).await.map_err(Step::Retry)?;
            hosts.push(att.endpoint.ip.clone());
        }
        let run = image.run_config();
        let entrypoint = spec.command.clone().unwrap_or(run.entrypoint);
        let cmd = match (&spec.args, &spec.command) {
            (Some(args), _) => args.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => run.cmd,
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        let hostname =
            spec.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| cid[..12].to_owned());
        let mut env = merge_env(&run.env, spec.env.as_deref().unwrap_or(&[]));
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        env.insert(0, format!("HOSTNAME={hostname}"));
        let limits = a.task.spec.resources.as_ref().and_then(|r| r.limits.as_ref());
        let mut labels: BTreeMap<String, String> =
            spec.labels.clone().unwrap_or_default().into_iter().collect();
        let name = a.task.container_name(&a.service_name);
        for (k, v) in [
            ("com.docker.swarm.task", String::new()),
            ("com.docker.swarm.task.id", a.task.id.clone()),
            ("com.docker.swarm.task.name", name.clone()),
            ("com.docker.swarm.node.id", self.node_id.clone()),
            ("com.docker.swarm.service.id", a.task.service_id.clone()),
            ("com.docker.swarm.service.name", a.service_name.clone()),
        ] {
            labels.insert(k.to_owned(), v);
        }
        let mut mounts = Vec::new();
        for m in spec.mounts.iter().flatten() {
            mounts.push(self.mount(m)?);
        }
        let files = task_files(a).map_err(Step::Fatal)?;
        let cfg = ContainerConfig {
            task_id: a.task.id.clone(),
            id: cid.to_owned(),
            name,
            image: image_ref,
            image_id: image.id.clone(),
            layers: image.layers.iter().map(|l| self.images.layer_dir(l)).collect(),
            args,
            env,
            cwd: spec.dir.clone().filter(|d| !d.is_empty()).unwrap_or(run.workdir),
            user: spec.user.clone().filter(|u| !u.is_empty()).unwrap_or(run.user),
            hostname: hostname.clone(),
            labels,
            nano_cpus: limits.and_then(|l| l.nano_cpus).unwrap_or(0),
            memory: limits.and_then(|l| l.memory_bytes).unwrap_or(0),
            pids_limit: limits.and_then(|l| l.pids).unwrap_or(0),
            mounts,
            stop_signal: spec.stop_signal.clone().filter(|s| !s.is_empty()).unwrap_or(run.stop_signal),
            stop_grace: Duration::from_nanos(
                u64::try_from(spec.stop_grace_period.unwrap_or(10_000_000_000)).unwrap_or(10_000_000_000),
            ),
            netns: netns.clone(),
            hosts: hosts.into_iter().map(|ip| (ip, hostname.clone())).collect(),
            read_only: spec.read_only.unwrap_or(false),
            created: now(),
            service_id: a.task.service_id.clone(),
            node_id: self.node_id.clone(),
            endpoints: a.attachments.iter().map(|att| att.endpoint.id.clone()).collect(),
            runtime: String::new(),
            embedded_dns: !a.attachments.is_empty(),
            files,
        };
        self.exec
            .prepare(cfg)
            .await
            .map_err(|e| if e.fatal { Step::Fatal(e.message) } else { Step::Retry(e.message) })
    }

    fn mount(&self, m: &bollard_stubs::models::Mount) -> Result<MountSpec, Step> {
        use bollard_stubs::models::MountType as T;
        let target = m.target.clone().unwrap_or_default();
        let read_only = m.read_only.unwrap_or(false);
        match m.typ {
            Some(T::BIND) => {
                let source = PathBuf::from(m.source.clone().unwrap_or_default());
                if !source.exists() {
                    return Err(Step::Fatal(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        source.display()
                    )));
                }
                Ok(MountSpec::Bind { source, target, read_only })
            }
            Some(T::VOLUME) => {
                let name =
                    m.source.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| exec::container_id(&target));
                let dir = self
                    .netns_dir
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .join("volumes")
                    .join(&name)
                    .join("_data");
                std::fs::create_dir_all(&dir).map_err(|e| Step::Retry(e.to_string()))?;
                Ok(MountSpec::Bind { source: dir, target, read_only })
            }
            Some(T::TMPFS) => {
                let o = m.tmpfs_options.as_ref();
                Ok(MountSpec::Tmpfs {
                    target,
                    size: o.and_then(|o| o.size_bytes).unwrap_or(0),
                    mode: o.and_then(|o| o.mode).and_then(|m| u32::try_from(m).ok()).unwrap_or(0o1777),
                })
            }
            _ => Err(Step::Fatal(format!("unsupported mount type for {target}"))),
        }
    }

    /// Stops and removes a task's container, endpoints and namespace.
    async fn forget(&self, task_id: &str) {
        let cid = exec::container_id(task_id);
        let endpoints = self.exec.inspect(&cid).map(|c| c.config.endpoints).unwrap_or_default();
        if let Err(e) = self.exec.remove(&cid).await {
            tracing::warn!(task = %task_id, "removing the container: {e}");
        }
        for ep in &endpoints {
            if let Err(e) = self.net.detach(ep).await {
                tracing::warn!(task = %task_id, "detaching {ep}: {e}");
            }
        }
        remove_netns(&self.netns_path(&cid));
    }

    /// The containers of this node.
    pub fn containers(&self) -> Vec<Container> {
        self.exec.list()
    }
}

/// The task's secret and config files, with the data its assignment
/// carries.
fn task_files(a: &Assignment) -> Result<Vec<exec::FileSpec>, String> {
    use base64::Engine as _;
    let spec =
        bollard_stubs::models::ServiceSpec { task_template: Some(a.task.spec.clone()), ..Default::default() };
    let mut out = Vec::new();
    for r in crate::manager::store::secret::file_refs(&spec) {
        let k = r.kind.as_str();
        let data = a
            .files
            .iter()
            .find(|f| f.id == r.id)
            .ok_or_else(|| format!("{k} {} is not available to this node", r.name))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(data.data.as_bytes())
            .map_err(|e| format!("{k} {}: {e}", r.name))?;
        let id = |what: &str, v: &str| {
            v.parse::<u32>().map_err(|_| format!("{k} {}: invalid {what} {v:?}", r.name))
        };
        out.push(exec::FileSpec {
            id: r.id.clone(),
            path: r.path(),
            uid: id("uid", &r.uid)?,
            gid: id("gid", &r.gid)?,
            mode: r.mode & 0o7777,
            data,
        });
    }
    Ok(out)
}

/// How long a task on a network keeps serving after it is told to stop,
/// while its removal from balancers and names reaches every node.
const DRAIN: Duration = Duration::from_millis(500);

/// Docker's error for a task whose health check failed.
pub const UNHEALTHY: &str = "unhealthy container";

/// A health check with docker's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

fn image_of(a: &Assignment) -> &str {
    a.task.spec.container_spec.as_ref().and_then(|c| c.image.as_deref()).unwrap_or("")
}

/// The task's health check (else the image's): `["CMD", args…]`,
/// `["CMD-SHELL", cmd]`, or none (`["NONE"]`).
pub fn health_of(
    spec: &bollard_stubs::models::TaskSpec,
    image: Option<&crate::agent::images::Image>,
) -> Option<Health> {
    let mine = spec.container_spec.as_ref().and_then(|c| c.health_check.clone());
    let theirs = image.map(|i| &i.config["config"]["Healthcheck"]).filter(|v| v.is_object()).map(|v| {
        let ns = |k: &str| v[k].as_i64();
        bollard_stubs::models::HealthConfig {
            test: v["Test"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()),
            interval: ns("Interval"),
            timeout: ns("Timeout"),
            retries: ns("Retries"),
            start_period: ns("StartPeriod"),
            start_interval: ns("StartInterval"),
        }
    });
    let pick = |f: &dyn Fn(&bollard_stubs::models::HealthConfig) -> Option<i64>| {
        mine.as_ref()
            .and_then(f)
            .filter(|v| *v > 0)
            .or_else(|| theirs.as_ref().and_then(f).filter(|v| *v > 0))
    };
    let test = mine
        .as_ref()
        .and_then(|m| m.test.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| theirs.as_ref().and_then(|t| t.test.clone()))?;
    let argv = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")],
        _ => return None,
    };
    if argv.is_empty() {
        return None;
    }
    let dur =
        |v: Option<i64>, d: u64| Duration::from_nanos(v.and_then(|n| u64::try_from(n).ok()).unwrap_or(d));
    Some(Health {
        test: argv,
        interval: dur(pick(&|h| h.interval), 30_000_000_000),
        timeout: dur(pick(&|h| h.timeout), 30_000_000_000),
        retries: pick(&|h| h.retries).and_then(|r| u32::try_from(r).ok()).unwrap_or(3),
        start_period: dur(pick(&|h| h.start_period), 0),
    })
}

/// Image env, then the task's, a later `KEY=` replacing an earlier one.
fn merge_env(image: &[String], task: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in image.iter().chain(task) {
        let key = e.split('=').next().unwrap_or("");
        out.retain(|o| o.split('=').next() != Some(key));
        out.push(e.clone());
    }
    out
}

/// A new network namespace bound at `path` with `lo` up (kept if it exists).
async fn make_netns(path: &Path) -> Result<(), String> {
    if is_mount_point(path) {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    crate::datapath::netlink::create_netns(path).await.map_err(|e| {
        remove_netns(path);
        format!("making a network namespace: {}", crate::error::chain(&e))
    })
}

fn remove_netns(path: &Path) {
    if is_mount_point(path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::{model::Meta, task::Task};

    fn assignment(id: &str, desired: TaskState, state: TaskState) -> Assignment {
        Assignment {
            task: Task {
                id: id.into(),
                meta: Meta::default(),
                service_id: "s".into(),
                slot: 1,
                node_id: "n".into(),
                spec: bollard_stubs::models::TaskSpec::default(),
                spec_version: 1,
                desired_state: desired,
                status: TaskStatus { state, ..Default::default() },
                networks: vec![],
                running_at: None,
                start_at: None,
            },
            service_name: "web".into(),
            attachments: vec![],
            files: vec![],
        }
    }

    #[test]
    fn diff_runs_new_tasks_updates_desired_and_forgets_the_rest() {
        let assigned = vec![
            assignment("new", TaskState::Running, TaskState::Assigned),
            assignment("known", TaskState::Shutdown, TaskState::Running),
            assignment("done", TaskState::Shutdown, TaskState::Failed),
            assignment("same", TaskState::Running, TaskState::Running),
        ];
        let controllers = BTreeMap::from([
            ("known".to_owned(), TaskState::Running),
            ("same".to_owned(), TaskState::Running),
            ("stale".to_owned(), TaskState::Running),
        ]);
        let containers = BTreeSet::from(["done".to_owned(), "orphan".to_owned(), "stale".to_owned()]);
        let actions = diff(&assigned, &controllers, &containers);
        assert_eq!(actions.len(), 4, "{actions:?}");
        assert!(matches!(&actions[0], Action::Run(a) if a.task.id == "new"));
        assert_eq!(actions[1], Action::Desire { task_id: "known".into(), desired: TaskState::Shutdown });
        assert!(actions.contains(&Action::Forget { task_id: "orphan".into() }));
        assert!(actions.contains(&Action::Forget { task_id: "stale".into() }));
    }

    #[test]
    fn health_checks_take_dockers_forms_and_defaults() {
        let spec = |test: Vec<&str>| bollard_stubs::models::TaskSpec {
            container_spec: Some(bollard_stubs::models::TaskSpecContainerSpec {
                health_check: Some(bollard_stubs::models::HealthConfig {
                    test: Some(test.into_iter().map(String::from).collect()),
                    retries: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = health_of(&spec(vec!["CMD-SHELL", "wget -O- localhost"]), None).unwrap();
        assert_eq!(h.test, ["/bin/sh", "-c", "wget -O- localhost"]);
        assert_eq!((h.interval, h.timeout, h.retries), (Duration::from_secs(30), Duration::from_secs(30), 2));
        assert_eq!(health_of(&spec(vec!["CMD", "true"]), None).unwrap().test, ["true"]);
        assert_eq!(health_of(&spec(vec!["NONE"]), None), None);
        assert_eq!(health_of(&bollard_stubs::models::TaskSpec::default(), None), None);
    }

    #[test]
    fn env_merges_by_key() {
        let e = merge_env(&["PATH=/bin".into(), "A=1".into()], &["A=2".into(), "B=3".into()]);
        assert_eq!(e, ["PATH=/bin", "A=2", "B=3"]);
    }
}
