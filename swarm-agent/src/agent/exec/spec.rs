//! The OCI runtime spec (`config.json`) for a task container, as Docker
//! makes it: its default capabilities, mounts, masked paths and a network
//! namespace made beforehand. Pure; the result is an `oci_spec` `Spec`.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::json;

use super::{ContainerConfig, MountSpec};

/// Docker's default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED: [&str; 9] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
];
const READONLY: [&str; 6] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/proc/scsi"];

/// `--user` resolved against the image's /etc/passwd and /etc/group:
/// `uid[:gid]` or `name[:group]`.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let entry = |file: &str, name: &str| -> Option<Vec<String>> {
        file.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.first().is_some_and(|n| n == name))
    };
    let (uid, mut gid) = if let Ok(n) = u.parse::<u32>() {
        let gid = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
            .and_then(|f| f.get(3).and_then(|x| x.parse().ok()))
            .unwrap_or(0);
        (n, gid)
    } else {
        let f = entry(passwd, u)
            .ok_or_else(|| format!("unable to find user {u}: no matching entries in passwd file"))?;
        let uid = f.get(2).and_then(|x| x.parse().ok()).ok_or_else(|| format!("bad passwd entry for {u}"))?;
        (uid, f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0))
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entry(group, g)
                .and_then(|f| f.get(2).and_then(|x| x.parse().ok()))
                .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
        };
    }
    Ok((uid, gid))
}

/// The spec for `c`, with its files (hosts, hostname, resolv.conf) in `dir`.
pub fn runtime_spec(
    c: &ContainerConfig,
    dir: &Path,
    uid: u32,
    gid: u32,
    cgroup_parent: &str,
) -> Result<Spec, String> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
    ];
    for f in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({
            "destination": format!("/etc/{f}"),
            "type": "bind",
            "source": dir.join(f),
            "options": ["rbind", "rprivate"],
        }));
    }
    for m in &c.mounts {
        mounts.push(match m {
            MountSpec::Bind { source, target, read_only } => {
                let mut o = vec!["rbind", "rprivate"];
                if *read_only {
                    o.push("ro");
                }
                json!({"destination": target, "type": "bind", "source": source, "options": o})
            }
            MountSpec::Tmpfs { target, size, mode } => {
                let mut o = vec!["nosuid".to_owned(), "nodev".to_owned(), format!("mode={mode:o}")];
                if *size > 0 {
                    o.push(format!("size={size}"));
                }
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": o})
            }
        });
    }
    for (i, f) in c.files.iter().enumerate() {
        mounts.push(json!({
            "destination": f.path,
            "type": "bind",
            "source": dir.join("secrets").join(f.host_name(i)),
            "options": ["rbind", "rprivate", "ro"],
        }));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if c.memory > 0 {
        resources["memory"] = json!({"limit": c.memory});
    }
    if c.nano_cpus > 0 {
        let period: i64 = 100_000;
        resources["cpu"] = json!({"quota": c.nano_cpus * period / 1_000_000_000, "period": period});
    }
    if c.pids_limit > 0 {
        resources["pids"] = json!({"limit": c.pids_limit});
    }
    let caps = DEFAULT_CAPS.to_vec();
    let doc = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        },
        "root": {"path": dir.join("rootfs"), "readonly": c.read_only},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": c.netns},
            ],
            "cgroupsPath": format!("/{cgroup_parent}/{}", c.id),
            "resources": resources,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    });
    serde_json::from_value(doc).map_err(|e| format!("building the runtime spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn config() -> ContainerConfig {
        ContainerConfig {
            task_id: "t".into(),
            id: "c".repeat(64),
            name: "web.1.t".into(),
            image: "busybox:latest".into(),
            image_id: "sha256:x".into(),
            layers: vec![],
            args: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            user: String::new(),
            hostname: "cccccccccccc".into(),
            labels: std::collections::BTreeMap::default(),
            nano_cpus: 500_000_000,
            memory: 64 << 20,
            pids_limit: 0,
            mounts: vec![MountSpec::Tmpfs { target: "/scratch".into(), size: 1 << 20, mode: 0o1777 }],
            stop_signal: String::new(),
            stop_grace: std::time::Duration::from_secs(10),
            netns: "/run/netns/x".into(),
            hosts: vec![],
            read_only: false,
            created: 0,
            service_id: "s".into(),
            node_id: "n".into(),
            endpoints: vec![],
            runtime: "runc".into(),
            embedded_dns: false,
            files: vec![crate::agent::exec::FileSpec {
                id: "sid".into(),
                path: "/run/secrets/pw".into(),
                uid: 0,
                gid: 0,
                mode: 0o400,
                data: b"hunter2".to_vec(),
            }],
        }
    }

    #[test]
    fn spec_has_dockers_shape() {
        let s = runtime_spec(&config(), Path::new("/b"), 0, 0, "swarm-agent").unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["args"], json!(["httpd", "-f"]));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], json!(50_000));
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/netns/x"));
        let mounts = v["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts" && m["source"] == "/b/hosts"));
        assert!(mounts.iter().any(|m| m["destination"] == "/scratch" && m["type"] == "tmpfs"));
        assert!(mounts.iter().any(|m| m["destination"] == "/run/secrets/pw"
            && m["source"] == "/b/secrets/0-sid"
            && m["options"] == json!(["rbind", "rprivate", "ro"])));
        // The container's metadata on disk never holds a secret's data.
        let meta = serde_json::to_string(&config()).unwrap();
        assert!(meta.contains("/run/secrets/pw") && !meta.contains("hunter2"), "{meta}");
        assert!(v["process"]["capabilities"]["bounding"].as_array().unwrap().contains(&json!("CAP_NET_RAW")));
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group), Ok((0, 0)));
        assert_eq!(resolve_user("www", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("33", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("1000:50", passwd, group), Ok((1000, 50)));
        assert_eq!(resolve_user("www:staff", passwd, group), Ok((33, 50)));
        assert!(resolve_user("nobody", passwd, group).unwrap_err().contains("unable to find user nobody"));
    }
}
