//! `cargo xtask build-ebpf`: builds `swarm-ebpf` for `bpfel-unknown-none`
//! with the nightly toolchain and bpf-linker, in release mode.
//!
//! The object lands at `<target>/ebpf/bpfel-unknown-none/release/swarm-ebpf`,
//! where `swarm-agent/build.rs` picks it up and embeds it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::{setup::NIGHTLY, step, target_dir, workspace_root};

pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Path of the built object.
pub fn object_path() -> PathBuf {
    target_dir().join("ebpf").join(BPF_TARGET).join("release").join("swarm-ebpf")
}

pub fn run() -> anyhow::Result<PathBuf> {
    step("building eBPF programs (swarm-ebpf, release, nightly)");
    let arch = std::env::consts::ARCH;
    // What aya-build passes: the target arch for aya-ebpf, BTF for the loader.
    let rustflags =
        [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
            .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", NIGHTLY, "cargo", "build", "--package", "swarm-ebpf", "--release"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(target_dir().join("ebpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Whatever toolchain runs xtask must not leak into the nightly build.
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().context("running `rustup run nightly cargo build` for swarm-ebpf")?;
    if !status.success() {
        bail!(
            "building swarm-ebpf failed ({status}); if bpf-linker or rust-src is missing, run `cargo xtask setup`"
        );
    }
    let obj = object_path();
    if !obj.is_file() {
        bail!("the build succeeded but {} is missing", obj.display());
    }
    step(&format!("eBPF object: {}", obj.display()));
    Ok(obj)
}
