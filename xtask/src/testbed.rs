//! `cargo xtask testbed ...`: the multi-host testbed from the command line.
//! The work is done by `swarm_tests::testbed`, which the integration tests use too.

use anyhow::Context;
use clap::Subcommand;
use swarm_tests::testbed::{self, Lifetime, Testbed};

const DEFAULT_NAME: &str = "tb";

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a testbed (replacing leftovers of one with the same name).
    Up {
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Testbed name; namespaces are called swtb-NAME-nodeI.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Remove a testbed: processes in its hosts, mounts, namespaces, links.
    Down {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Remove every testbed on this machine.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// List testbeds and their hosts.
    Status,
    /// Run a command inside a host (its network and UTS namespaces).
    Exec {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Host name: node1, node2, ...
        host: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Cut a host off the underlay (its switch port goes down).
    Cut {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        host: String,
    },
    /// Reconnect a host that was cut off.
    Restore {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        host: String,
    },
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Up { hosts, name } => {
            let tb = Testbed::create(&name, hosts, Lifetime::Persistent)?;
            print_hosts(&tb);
            println!();
            println!("Run commands in a host with:  cargo xtask testbed exec --name {name} node1 -- ip addr");
            println!("                          or  ip netns exec {} ip addr", tb.host(0).netns);
            println!("Remove it with:               cargo xtask testbed down --name {name}");
        }
        Cmd::Down { name, all } => {
            let names = if all { Testbed::list() } else { vec![name] };
            for n in names {
                testbed::remove(&n)?;
                println!("removed testbed {n}");
            }
        }
        Cmd::Status => {
            let names = Testbed::list();
            if names.is_empty() {
                println!("no testbeds");
            }
            for n in names {
                match Testbed::open(&n) {
                    Ok(tb) => print_hosts(&tb),
                    Err(e) => println!("{n}: {e}"),
                }
            }
        }
        Cmd::Exec { name, host, command } => {
            let tb = Testbed::open(&name)?;
            let (program, args) = command.split_first().context("no command given")?;
            let status = tb
                .host_named(&host)?
                .command(program)?
                .args(args)
                .status()
                .with_context(|| format!("running {program} in {host}"))?;
            let code = status.code().unwrap_or(1);
            std::process::exit(code);
        }
        Cmd::Cut { name, host } => {
            let tb = Testbed::open(&name)?;
            tb.cut(tb.host_named(&host)?)?;
            println!("{host} cut off");
        }
        Cmd::Restore { name, host } => {
            let tb = Testbed::open(&name)?;
            tb.restore(tb.host_named(&host)?)?;
            println!("{host} restored");
        }
    }
    Ok(())
}

fn print_hosts(tb: &Testbed) {
    println!("testbed {} (switch namespace {})", tb.name(), tb.switch_netns());
    println!("  {:<8} {:<22} {:<12} STATE DIR", "HOST", "NETNS", "UNDERLAY");
    for h in tb.hosts() {
        println!("  {:<8} {:<22} {:<12} {}", h.name, h.netns, h.underlay_ip, h.state_dir().display());
    }
}
