//! Helpers for service tests: the busybox image on every host, waiting
//! for `service ls` replica counts, the task containers per host.

use std::{path::PathBuf, time::Duration};

use crate::{
    image::{busybox_rootfs, target_dir},
    poll,
    swarm::{daemon_log, docker, parse_table},
    testbed::{Host, Testbed},
};

/// `docker import`s the busybox test image as `busybox:latest` on `h`.
///
/// # Panics
/// If the image cannot be made or imported.
pub fn import_busybox(h: &Host) {
    let tar = busybox_rootfs(&target_dir()).expect("busybox rootfs");
    let out = docker(h, &["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), "busybox:latest"]);
    let out = out.unwrap_or_else(|e| panic!("docker import: {e}\n{}", daemon_log(h)));
    assert!(out.starts_with("sha256:"), "{out}");
}

/// `docker service ls` rows (without the header).
///
/// # Panics
/// If the command fails.
pub fn service_ls(h: &Host) -> Vec<Vec<String>> {
    parse_table(&docker(h, &["service", "ls"]).unwrap())
}

/// The REPLICAS column of `service`.
pub fn replicas(h: &Host, service: &str) -> Option<String> {
    service_ls(h).into_iter().find(|r| r[1] == service).map(|r| r[3].clone())
}

/// Waits until `service ls` on host 0 shows `want` for `service`.
///
/// # Panics
/// On timeout, with `service ps` and host 0's log.
pub fn wait_replicas(tb: &Testbed, service: &str, want: &str, timeout: Duration) {
    let m = tb.host(0);
    poll::until(&format!("{service} to show {want}"), timeout, || {
        let r = replicas(m, service);
        if r.as_deref() == Some(want) { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            docker(m, &["service", "ps", "--no-trunc", service]).unwrap_or_default(),
            daemon_log(m)
        )
    });
}

/// A task container seen by `docker ps` on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub host: usize,
    pub id: String,
    pub name: String,
}

/// Every running task container, per host (`docker ps` on each).
///
/// # Panics
/// If `docker ps` fails.
pub fn running_containers(tb: &Testbed) -> Vec<Running> {
    let mut out = Vec::new();
    for (i, h) in tb.hosts().iter().enumerate() {
        let Ok(ps) = docker(h, &["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]) else { continue };
        for l in ps.lines() {
            if let Some((id, name)) = l.split_once(' ') {
                out.push(Running { host: i, id: id.to_owned(), name: name.to_owned() });
            }
        }
    }
    out
}

/// The network namespace of a task container.
pub fn netns_of(h: &Host, container_id: &str) -> PathBuf {
    h.state_dir().join("netns").join(&container_id[..12])
}

/// `service ps --no-trunc` rows of `service`.
///
/// # Panics
/// If the command fails.
pub fn service_ps(h: &Host, service: &str) -> Vec<Vec<String>> {
    parse_table(&docker(h, &["service", "ps", "--no-trunc", service]).unwrap())
}

/// A busybox httpd on port 80 whose `/cgi-bin/who` answers
/// `<hostname> <client address>`.
pub const WHO: &str = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/who && chmod +x /www/cgi-bin/who && exec httpd -f -p 80 -h /www";

/// `(hostname, client address)` from one new connection, or the error.
///
/// # Errors
/// An empty or odd answer.
pub fn parse_who(out: &str) -> Result<(String, String), String> {
    let line = out.lines().find(|l| !l.trim().is_empty()).ok_or_else(|| format!("empty answer: {out:?}"))?;
    let (h, a) = line.trim().split_once(' ').ok_or_else(|| format!("odd answer: {out:?}"))?;
    // httpd listens on IPv6 too and shows IPv4 clients as `[::ffff:a.b.c.d]`.
    let a = a.trim_start_matches("[::ffff:").trim_end_matches(']');
    Ok((h.to_owned(), a.to_owned()))
}

/// From a testbed host's own namespace (busybox's `wget -T` crashes;
/// `timeout` bounds it instead).
///
/// # Errors
/// The request failed or the answer is odd.
pub fn who_from_host(client: &Host, url: &str) -> Result<(String, String), String> {
    parse_who(
        &client
            .run("busybox", ["timeout", "5", "busybox", "wget", "-O", "-", url])
            .map_err(|e| e.to_string())?,
    )
}

/// A swarm of `hosts` (one manager) with the busybox image on every host.
pub fn busybox_cluster(hosts: usize) -> Testbed {
    let tb = crate::swarm::cluster(hosts, 1, &[], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    tb
}

/// `docker service create -d --name NAME FLAGS... busybox COMMAND...`.
///
/// # Panics
/// If the command fails.
pub fn create_busybox(h: &Host, name: &str, flags: &[&str], command: &[&str]) {
    let mut a = vec!["service", "create", "-d", "--name", name];
    a.extend_from_slice(flags);
    a.push("busybox");
    a.extend_from_slice(command);
    docker(h, &a).unwrap_or_else(|e| panic!("service create {name}: {e}\n{}", daemon_log(h)));
}
