//! Registry pulls, against Debian's `docker-registry` (a real registry
//! server) running on a testbed host, with an image pushed by `skopeo`:
//! `docker pull`, a service whose image only the registry has, and
//! docker's errors; and `docker load` of the OCI layouts skopeo writes.
//! Needs root, crun or runc, docker's CLI, docker-registry, skopeo.

use std::{process::Stdio, time::Duration};

use swarm_tests::{
    poll,
    services::{import_busybox, wait_replicas},
    swarm::{cluster, docker, parse_table, stderr},
    testbed::Host,
};

const REGISTRY: &str = "198.18.0.1:5000";

struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(h: &Host) -> Registry {
    let dir = h.state_dir().join("registry");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = h
        .command("docker-registry")
        .unwrap()
        .arg("serve")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let r = Registry(child);
    poll::until("the registry to listen", Duration::from_secs(20), || {
        h.run("/bin/busybox", ["wget", "-O", "-", &format!("http://{REGISTRY}/v2/")])
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .unwrap();
    r
}

#[test]
fn images_are_pulled_from_a_registry() {
    let tb = cluster(3, 1, &[("SWARM_INSECURE_REGISTRIES", REGISTRY)], &[]);
    let (m, w1, w2) = (tb.host(0), tb.host(1), tb.host(2));
    let _registry = start_registry(m);
    // Push the test image with skopeo, from a `docker save` archive.
    import_busybox(m);
    let archive = m.state_dir().join("busybox-save.tar");
    docker(m, &["save", "-o", archive.to_str().unwrap(), "busybox:latest"]).unwrap();
    m.run(
        "skopeo",
        [
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{}", archive.display()),
            &format!("docker://{REGISTRY}/tools/busybox:v1"),
        ],
    )
    .unwrap();

    let out = docker(w1, &["pull", &format!("{REGISTRY}/tools/busybox:v1")]).unwrap();
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {REGISTRY}/tools/busybox:v1")),
        "{out}"
    );
    let images = parse_table(&docker(w1, &["images"]).unwrap());
    assert_eq!(images[0][0..2], [format!("{REGISTRY}/tools/busybox"), "v1".to_owned()], "{images:?}");
    let id =
        |h| docker(h, &["image", "inspect", "--format", "{{.Id}}", &format!("{REGISTRY}/tools/busybox:v1")]);
    assert_eq!(
        id(w1).unwrap(),
        docker(m, &["image", "inspect", "--format", "{{.Id}}", "busybox:latest"]).unwrap(),
        "the same config, so the same image ID"
    );

    // A service whose image neither the node nor a manager has: the node
    // pulls it from the registry.
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "pulled",
            "--constraint",
            "node.hostname==node3",
            &format!("{REGISTRY}/tools/busybox:v1"),
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "pulled", "1/1", Duration::from_secs(60));
    assert!(id(w2).is_ok(), "node3 has the image now");

    let e = stderr(&docker(w1, &["pull", "Bad Ref"]).unwrap_err());
    assert!(e.contains("invalid reference format"), "{e}");
    let e = stderr(&docker(w1, &["pull", &format!("{REGISTRY}/tools/nope:1")]).unwrap_err());
    assert!(e.contains("not found"), "{e}");
}

/// `docker load` of OCI layouts (what `skopeo copy … oci-archive:` and
/// docker 25+'s `docker save` write), with plain and gzip layers: the image
/// has the same layers (skopeo rewrites the config, so the ID differs) and
/// runs.
#[test]
fn oci_layout_archives_load_and_run() {
    let tb = cluster(1, 1, &[], &[]);
    let h = tb.host(0);
    import_busybox(h);
    let layers = |r: &str| docker(h, &["image", "inspect", "--format", "{{json .RootFS.Layers}}", r]);
    let want = layers("busybox:latest").unwrap();
    assert!(want.contains("sha256:"), "{want}");
    let archive = h.state_dir().join("busybox-save.tar");
    docker(h, &["save", "-o", archive.to_str().unwrap(), "busybox:latest"]).unwrap();
    for (tag, compress) in [("plain", false), ("gzip", true)] {
        let oci = h.state_dir().join(format!("busybox-oci-{tag}.tar"));
        let mut args = vec!["--insecure-policy".to_owned(), "copy".to_owned()];
        if compress {
            args.extend([
                "--dest-compress".to_owned(),
                "--dest-compress-format".to_owned(),
                "gzip".to_owned(),
            ]);
        }
        args.push(format!("docker-archive:{}", archive.display()));
        args.push(format!("oci-archive:{}:oci/busybox:{tag}", oci.display()));
        h.run("skopeo", &args).unwrap();
        let out = docker(h, &["load", "-i", oci.to_str().unwrap()]).unwrap();
        assert!(out.contains(&format!("Loaded image: oci/busybox:{tag}")), "{out}");
        assert_eq!(layers(&format!("oci/busybox:{tag}")).unwrap(), want, "the same layers");
        let name = format!("oci-{tag}");
        docker(
            h,
            &["service", "create", "-d", "--name", &name, &format!("oci/busybox:{tag}"), "sleep", "100000"],
        )
        .unwrap();
        wait_replicas(&tb, &name, "1/1", Duration::from_secs(60));
    }
}
