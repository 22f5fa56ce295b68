//! Project tasks: `cargo xtask <task>`.
//!
//! - `setup`: install what a fresh Debian 12 machine lacks (idempotent).
//! - `build-ebpf`: build the eBPF objects the agent embeds.
//! - `testbed up|down|status|exec|cut|restore`: the multi-host testbed.
//! - `test`: everything CI checks (setup, build-ebpf, fmt, clippy, tests).
//! - `demo`: a three-host swarm in network namespaces (`demo --down` removes it).
//! - `bench control-plane`: init/join/failover/Down-detection times.
//! - `bench overlay`: overlay throughput/latency vs the underlay and vxlan+bridge.
//! - `bench store`: Raft write cost as the store grows; 50 MB snapshots.
//! - `bench services`: service create/scale/heal/reschedule times, agent RSS, scheduling.
//! - `chaos`: the fault suite's long form (kills and partitions under a writer).

mod bench;
mod bench_mesh;
mod bench_overlay;
mod bench_services;
mod bench_store;
mod build_ebpf;
mod chaos;
mod demo;
mod setup;
mod test;
mod testbed;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks for the swarm workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages, rust-src for the
    /// nightly toolchain, and bpf-linker built against the nightly's LLVM.
    Setup,
    /// Build the eBPF programs (release) that swarm-agent embeds.
    BuildEbpf,
    /// Manage the multi-host testbed (network namespaces on a private switch).
    Testbed {
        #[command(subcommand)]
        cmd: testbed::Cmd,
    },
    /// Run every check CI runs: setup, build-ebpf, fmt, clippy and all tests.
    Test(test::Args),
    /// Bring up a three-host demo swarm in network namespaces (`--down` removes it).
    Demo(demo::Args),
    /// The fault suite's long form: leader kills and partitions under a writer.
    Chaos(chaos::Args),
    /// Benchmarks on the testbed: `control-plane`, `overlay` or `store`.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf::run().map(|_| ()),
        Task::Testbed { cmd } => testbed::run(cmd),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench { which } => bench::run(&which),
        Task::Chaos(args) => chaos::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` or `<root>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Prints a step the way the tasks report progress.
fn step(msg: &str) {
    eprintln!("==> {msg}");
}
