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
    }
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
