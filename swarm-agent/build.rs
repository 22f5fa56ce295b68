//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is not built here: the nested nightly build would run on every
//! `cargo check`/`clippy` and hide toolchain problems in build-script output.
//! Instead the agent refuses to build without it and says how to get it.

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=SWARM_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest_dir.join("..").join("target"), PathBuf::from);
    // Must match xtask/src/build_ebpf.rs::object_path().
    let object = env::var_os("SWARM_EBPF_OBJECT")
        .map_or_else(|| target_dir.join("ebpf/bpfel-unknown-none/release/swarm-ebpf"), PathBuf::from);
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        eprintln!(
            "error: the eBPF object is missing: {}\n\
             swarm-agent embeds the programs built from swarm-ebpf. Build them first with:\n\n    \
             cargo xtask build-ebpf\n\n\
             (on a fresh machine run `cargo xtask setup` once before that)",
            object.display()
        );
        return ExitCode::FAILURE;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("swarm-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        eprintln!("error: copying {} to {}: {e}", object.display(), out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
