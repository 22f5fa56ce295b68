//! `debug xdp ...` and `debug store`: tools that docker's CLI does not have.

use crate::{
    datapath::{
        PinLayout, bpffs,
        vxlan_counter::{self, AttachMode},
    },
    table,
};

#[derive(Debug, clap::Subcommand)]
pub enum DebugCmd {
    /// This manager's own copy of the store: applied Raft index, object
    /// counts, size and SHA-256 of its encoding (JSON). Read locally, never
    /// forwarded to the leader: compares managers' copies.
    Store {
        /// Also list every network's name.
        #[arg(long)]
        objects: bool,
    },
    /// Times the reconcilers placing a service's tasks on simulated nodes
    /// (no Raft, no network: the pure scheduling cost).
    BenchScheduler {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        tasks: i64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The underlay XDP program that counts VXLAN frames per VNI.
    Xdp {
        /// Root of this agent's pinned eBPF objects (on a bpffs).
        #[arg(long, env = "SWARM_BPFFS", default_value = bpffs::DEFAULT_ROOT, global = true)]
        bpffs: String,
        #[command(subcommand)]
        cmd: XdpCmd,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum XdpCmd {
    /// Attach the counter to an interface; it stays attached (pinned) after this command exits.
    Attach {
        /// Interface to attach to (the underlay interface, e.g. eth0).
        iface: String,
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
    },
    /// Detach the counter from an interface.
    Detach { iface: String },
    /// Print the counters: per VNI, then every frame by class.
    Stats {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Native XDP where the driver has it, else generic.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

pub fn run(cmd: DebugCmd) -> anyhow::Result<()> {
    match cmd {
        DebugCmd::Xdp { bpffs, cmd } => xdp(&PinLayout::new(bpffs), cmd),
        DebugCmd::Store { .. } => Ok(()),
        DebugCmd::BenchScheduler { nodes, tasks, runs } => {
            bench_scheduler(nodes, tasks, runs);
            Ok(())
        }
    }
}

/// Prints the median time of one `plan` round that creates, allocates and
/// schedules `tasks` tasks onto `nodes` nodes, and checks the spread.
fn bench_scheduler(nodes: usize, tasks: i64, runs: usize) {
    use crate::manager::orchestrator::{plan, testutil};
    let mut times = Vec::new();
    let mut spread = (0, 0);
    for _ in 0..runs.max(1) {
        let mut s = testutil::cluster();
        for i in 0..nodes {
            testutil::add_node(&mut s, &format!("node{i:05}"));
        }
        testutil::add_service(&mut s, "svc", testutil::spec("bench", Some(tasks)));
        let mut n = 0u64;
        let mut new_id = || {
            n += 1;
            format!("task{n:021}")
        };
        let t = std::time::Instant::now();
        let (cmds, _) = plan(&s, 1, &mut new_id);
        times.push(t.elapsed());
        let mut per_node = std::collections::BTreeMap::<String, usize>::new();
        for c in &cmds {
            if let crate::manager::store::state::Command::PutTasks { tasks, .. } = c {
                for t in tasks {
                    *per_node.entry(t.node_id.clone()).or_default() += 1;
                }
            }
        }
        spread =
            (per_node.values().copied().min().unwrap_or(0), per_node.values().copied().max().unwrap_or(0));
    }
    times.sort();
    println!(
        "scheduled {tasks} tasks onto {nodes} nodes: median {:.1} ms (min {:.1}, max {:.1}); tasks per node {}..{}",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        spread.0,
        spread.1
    );
}

fn xdp(pins: &PinLayout, cmd: XdpCmd) -> anyhow::Result<()> {
    match cmd {
        XdpCmd::Attach { iface, mode } => {
            let mode = match mode {
                Mode::Auto => AttachMode::Auto,
                Mode::Native => AttachMode::Native,
                Mode::Generic => AttachMode::Generic,
            };
            let used = match vxlan_counter::attach_pinned(pins, &iface, mode)? {
                aya::programs::XdpMode::Skb => "generic",
                _ => "native",
            };
            println!("attached {} to {iface} ({used} XDP)", swarm_common::names::PROG_XDP_VXLAN_COUNT);
        }
        XdpCmd::Detach { iface } => {
            vxlan_counter::detach_pinned(pins, &iface)?;
            println!("detached {} from {iface}", swarm_common::names::PROG_XDP_VXLAN_COUNT);
        }
        XdpCmd::Stats { json } => {
            let s = vxlan_counter::pinned_stats(pins)?;
            if json {
                let vni: Vec<_> = s
                    .per_vni
                    .iter()
                    .map(|(v, c)| serde_json::json!({"vni": v, "packets": c.packets, "bytes": c.bytes}))
                    .collect();
                let class: serde_json::Map<_, _> = s
                    .per_class
                    .iter()
                    .map(|(k, c)| {
                        (k.name().to_owned(), serde_json::json!({"packets": c.packets, "bytes": c.bytes}))
                    })
                    .collect();
                println!("{}", serde_json::json!({"vni": vni, "class": class}));
            } else {
                let rows: Vec<Vec<String>> = s
                    .per_vni
                    .iter()
                    .map(|(v, c)| vec![v.to_string(), c.packets.to_string(), c.bytes.to_string()])
                    .collect();
                print!("{}", table::render(&["VNI", "PACKETS", "BYTES"], &rows));
                println!();
                let rows: Vec<Vec<String>> = s
                    .per_class
                    .iter()
                    .map(|(k, c)| vec![k.name().to_owned(), c.packets.to_string(), c.bytes.to_string()])
                    .collect();
                print!("{}", table::render(&["CLASS", "PACKETS", "BYTES"], &rows));
            }
        }
    }
    Ok(())
}

/// `debug store`: prints the daemon's `/swarm-agent/store` answer.
pub async fn store(
    client: &crate::cli::client::Client,
    objects: bool,
) -> Result<(), crate::cli::client::CliError> {
    let raw =
        client.get_raw(if objects { "/swarm-agent/store?objects=1" } else { "/swarm-agent/store" }).await?;
    println!("{}", String::from_utf8_lossy(&raw));
    Ok(())
}
