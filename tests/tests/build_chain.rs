//! The agent embeds the eBPF object; without it the build must stop and say
//! which command produces it.

use std::{path::PathBuf, process::Command};

#[test]
fn agent_build_without_the_ebpf_object_names_the_command_to_run() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The target directory this test was built in (target/<profile>/deps/<exe>):
    // its dependencies are built already, so only the build script runs.
    // (The next build reruns the script with the real object path.)
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps/<exe>").to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--quiet", "--locked", "--lib", "-p", "swarm-agent"])
        .env("CARGO_TARGET_DIR", &target)
        .env("SWARM_EBPF_OBJECT", "/nonexistent/swarm-ebpf")
        .output()
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build must fail without the object:\n{stderr}");
    assert!(stderr.contains("the eBPF object is missing: /nonexistent/swarm-ebpf"), "{stderr}");
    assert!(stderr.contains("cargo xtask build-ebpf"), "{stderr}");
}
