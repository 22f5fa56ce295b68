//! Test support for the swarm project: the multi-host testbed and helpers the
//! integration tests share.
//!
//! This library must not depend on `swarm-agent`: `cargo xtask` uses the
//! testbed before the eBPF objects the agent embeds have been built.

pub mod chaos;
pub mod cmd;
pub mod image;
pub mod overlay;
pub mod packet;
pub mod poll;
pub mod services;
pub mod swarm;
pub mod testbed;

use std::path::PathBuf;

/// Path of the `swarm-agent` binary the tests run.
///
/// `SWARM_AGENT_BIN` overrides it; otherwise it is the binary next to the
/// running test executable's profile directory (`target/<profile>/`), which
/// `cargo xtask test` builds before it runs the tests.
///
/// # Panics
/// If the binary does not exist, with the command that builds it.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARM_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/swarm-agent
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("swarm-agent");
    assert!(
        bin.is_file(),
        "swarm-agent binary not found at {}; build it with `cargo build -p swarm-agent` \
         (`cargo xtask test` does) or set SWARM_AGENT_BIN",
        bin.display()
    );
    bin
}
