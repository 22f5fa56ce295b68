//! `cargo xtask chaos`: the fault suite's long form on the testbed (release
//! build; see `swarm_tests::chaos`): leader kill -9 cycles (a worker's agent
//! with each), partitions of the leader and of a follower, a follower far
//! behind and a worker promoted into the big state, under a writer, a ping
//! between workers and hostile bytes; then every acknowledged write is
//! looked for in each manager's own copy. The short form runs in
//! `cargo xtask test` (`tests/tests/chaos_short.rs`).

use anyhow::bail;
use swarm_tests::chaos::{self, Faults};

#[derive(clap::Args)]
pub struct Args {
    /// Leader kill -9 and restart cycles.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Leader partitions (cut off, then healed).
    #[arg(long, default_value_t = 10)]
    leader_partitions: usize,
    /// Follower partitions.
    #[arg(long, default_value_t = 10)]
    follower_partitions: usize,
    /// MiB written while a follower is cut off (then it catches up).
    #[arg(long, default_value_t = 50)]
    behind_mib: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::demo::build_agent()?;
    let faults = Faults {
        kills: args.kills,
        leader_partitions: args.leader_partitions,
        follower_partitions: args.follower_partitions,
        behind_mib: args.behind_mib,
    };
    let report = chaos::run(faults, &|s| crate::step(s)).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!();
    println!(
        "fault suite: 3 managers and 2 workers (testbed), release build, Raft heartbeat 100 ms, election 600-1200 ms"
    );
    println!("{report}");
    if !report.lost.is_empty() {
        bail!("acknowledged writes lost: {:?}", report.lost);
    }
    if report.misreported > 0 {
        bail!("{} writes answered \"no leader\" had been applied", report.misreported);
    }
    Ok(())
}
