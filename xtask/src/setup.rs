//! `cargo xtask setup`: makes a fresh Debian 12 machine able to build and test
//! the project. Idempotent: every step checks first and only acts when
//! something is missing, and says which it was.

use std::process::Command;

use anyhow::{Context, bail};

use crate::step;

/// The toolchain that builds the eBPF crate (nightly 1.97, 2026-05-19 here).
pub const NIGHTLY: &str = "nightly";
/// Debian packages the project's build, tests and demo use.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: namespaces, veth, bridges, vxlan in tests"),
    ("iputils-ping", "ping between testbed hosts"),
    ("util-linux", "unshare/nsenter for the testbed's UTS namespaces"),
    ("busybox-static", "the test container image"),
    ("iperf3", "overlay benchmarks"),
    ("runc", "the OCI runtime that runs tasks where crun cannot"),
    ("crun", "the OCI runtime the agent prefers (a third of runc's CPU per container)"),
    ("docker-registry", "a real registry server for the pull tests"),
    ("skopeo", "pushes the test image into that registry"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    cgroup_controllers();
    docker_cli()?;
    let llvm_major = nightly_llvm_major()?;
    rust_src()?;
    bpf_linker(llvm_major)?;
    nextest();
    busybox_image()?;
    step("setup complete");
    Ok(())
}

/// The busybox image tests and the demo load (`docker import` of a rootfs
/// made from busybox-static).
fn busybox_image() -> anyhow::Result<()> {
    let tar = swarm_tests::image::busybox_rootfs(&crate::target_dir()).map_err(anyhow::Error::msg)?;
    step(&format!("busybox image: {}", tar.display()));
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root to install them",
            missing.join(" ")
        );
    }
    for p in &missing {
        let why = PACKAGES.iter().find(|(n, _)| n == p).map_or("", |(_, w)| w);
        step(&format!("installing Debian package {p} ({why})"));
    }
    run_ok(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    run_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    Ok(())
}

/// crun refuses a cgroup v1 host whose unified (v2) hierarchy still holds
/// controllers (this machine's v1 layout leaves hugetlb there), and the
/// agent then falls back to runc. Each such controller gets a v1 hierarchy
/// of its own, as systemd's hybrid layout has it, so that tests run tasks on
/// crun. Not fatal: the agent works with runc either way.
fn cgroup_controllers() {
    let Ok(left) = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers") else {
        step("cgroups: no v1 host with a unified hierarchy; nothing to do");
        return;
    };
    if left.trim().is_empty() {
        step("cgroups: every controller has a v1 hierarchy");
        return;
    }
    for c in left.split_whitespace() {
        let dir = format!("/sys/fs/cgroup/{c}");
        step(&format!(
            "cgroups: mounting the {c} controller at {dir} (crun refuses it on the unified hierarchy)"
        ));
        let made = std::fs::create_dir_all(&dir).map_err(|e| e.to_string()).and_then(|()| {
            run_ok(Command::new("mount").args(["-t", "cgroup", "-o", c, "cgroup", &dir]), "mount")
                .map_err(|e| e.to_string())
        });
        if let Err(e) = made {
            step(&format!("cgroups: could not ({e}); tasks will run on runc"));
        }
    }
}

/// The compatibility tests drive the agent with docker's own CLI: the
/// machine's `docker`, or else the one in Debian's docker.io package.
fn docker_cli() -> anyhow::Result<()> {
    let present =
        Command::new("sh").args(["-c", "command -v docker"]).output().is_ok_and(|o| o.status.success());
    if present {
        step("docker CLI: present");
        return Ok(());
    }
    if !nix_is_root() {
        bail!("the docker CLI is missing; run `cargo xtask setup` as root to install Debian's docker.io");
    }
    step("installing Debian package docker.io (the docker CLI for compatibility tests)");
    run_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "docker.io"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install docker.io",
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
    })
}

fn nix_is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// LLVM major version of the nightly toolchain; bpf-linker must match it.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out =
        Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]).output().context("running rustup")?;
    if !out.status.success() {
        bail!(
            "the `{NIGHTLY}` Rust toolchain is missing; the eBPF programs need it \
             (this project uses nightly 1.97, 2026-05-19): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text.lines().find_map(|l| l.strip_prefix("release: ")).unwrap_or("?");
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc -vV` printed no LLVM version")?;
    let major = llvm.split('.').next().and_then(|m| m.parse().ok()).context("unparsable LLVM version")?;
    step(&format!("nightly toolchain: rustc {release}, LLVM {llvm}"));
    Ok(major)
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup component list")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly: present");
        return Ok(());
    }
    step("installing rust-src for the nightly toolchain (needed for -Z build-std)");
    run_ok(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "rustup component add",
    )
}

fn nightly_sysroot() -> anyhow::Result<String> {
    let out = Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// bpf-linker must be our pinned version and load the nightly's own libLLVM.
fn bpf_linker(llvm_major: u32) -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let version_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).trim() == format!("bpf-linker {BPF_LINKER_VERSION}")
    });
    if version_ok && links_nightly_llvm(&sysroot) {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present, linked against the nightly's LLVM"));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM {llvm_major} (a few minutes)"
    ));
    let lib_dir = format!("{sysroot}/lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {lib_dir}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|f| {
            f.strip_prefix("lib")
                .and_then(|f| f.strip_suffix(".so"))
                .filter(|f| f.starts_with("LLVM-"))
                .map(str::to_owned)
        })
        .with_context(|| format!("no libLLVM-*.so in {lib_dir}"))?;
    let rustflags = format!("-L native={lib_dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{lib_dir}");
    run_ok(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm_major},no-llvm-linking")])
            .env("RUSTFLAGS", rustflags)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"),
        "cargo install bpf-linker",
    )?;
    if !links_nightly_llvm(&sysroot) {
        bail!(
            "bpf-linker was installed but does not load {sysroot}/lib/libLLVM*; check `ldd $(which bpf-linker)`"
        );
    }
    Ok(())
}

fn links_nightly_llvm(sysroot: &str) -> bool {
    let Ok(path) = Command::new("sh").args(["-c", "command -v bpf-linker"]).output() else {
        return false;
    };
    let path = String::from_utf8_lossy(&path.stdout).trim().to_owned();
    if path.is_empty() {
        return false;
    }
    Command::new("ldd").arg(&path).output().is_ok_and(|o| {
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines().any(|l| l.contains("libLLVM") && l.contains(sysroot)) && !text.contains("not found")
    })
}

fn nextest() {
    let ok = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if ok {
        step("cargo-nextest: present");
    } else {
        step("cargo-nextest: absent; `cargo xtask test` will use `cargo test`");
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
