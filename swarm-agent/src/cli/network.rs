//! `network create|ls|inspect|rm|connect|disconnect`, with docker's output.
//! `connect`/`disconnect` attach a network namespace (not a container).

use std::collections::HashMap;

use bollard_stubs::models as m;
use serde_json::json;

use super::client::{CliError, Client};
use crate::{table, util::ids};

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCmd {
    /// Create a network
    Create {
        /// Driver to manage the Network
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR format that represents a network segment
        #[arg(long)]
        subnet: Option<String>,
        /// IPv4 Gateway for the master subnet
        #[arg(long)]
        gateway: Option<String>,
        /// Enable manual container attachment
        #[arg(long)]
        attachable: bool,
        /// Set metadata on a network
        #[arg(long)]
        label: Vec<String>,
        /// Set driver specific options
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate the output
        #[arg(long)]
        no_trunc: bool,
        /// Provide filter values (e.g. "driver=overlay")
        #[arg(short, long)]
        filter: Vec<String>,
    },
    /// Display detailed information on one or more networks
    Inspect {
        /// Verbose output: this node's datapath counters and tables
        #[arg(short, long)]
        verbose: bool,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a network namespace on this host to a network
    Connect {
        /// The network namespace (a file such as /run/netns/NAME)
        #[arg(long)]
        netns: String,
        /// IPv4 address (e.g., "10.0.1.10")
        #[arg(long)]
        ip: Option<String>,
        network: String,
    },
    /// Detach a network namespace from a network
    Disconnect {
        #[arg(long)]
        netns: String,
        network: String,
    },
}

fn kv(list: &[String], what: &str) -> Result<HashMap<String, String>, CliError> {
    list.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::local(format!("invalid {what} {s:?}: expected key=value")))
        })
        .collect()
}

pub async fn run(client: &Client, cmd: NetworkCmd) -> Result<(), CliError> {
    match cmd {
        NetworkCmd::Create { driver, subnet, gateway, attachable, label, opt, name } => {
            let ipam_config: Vec<serde_json::Value> = match (subnet, gateway) {
                (None, None) => Vec::new(),
                (s, g) => vec![json!({"Subnet": s, "Gateway": g})],
            };
            let body = json!({
                "Name": name,
                "Driver": driver,
                "Attachable": attachable,
                "IPAM": {"Driver": "default", "Config": ipam_config},
                "Labels": kv(&label, "label")?,
                "Options": kv(&opt, "option")?,
            });
            let resp: serde_json::Value =
                serde_json::from_slice(&client.post("/networks/create", &body).await?)
                    .map_err(|e| CliError::local(e.to_string()))?;
            println!("{}", resp["Id"].as_str().unwrap_or_default());
            Ok(())
        }
        NetworkCmd::Ls { quiet, no_trunc, filter } => {
            let q = super::node::filters_query(&filter)?;
            let mut nets: Vec<m::Network> = client.get(&format!("/networks{q}")).await?;
            nets.sort_by(|a, b| {
                super::fmt::natural_cmp(a.name.as_deref().unwrap_or(""), b.name.as_deref().unwrap_or(""))
            });
            let id = |n: &m::Network| {
                let id = n.id.clone().unwrap_or_default();
                if no_trunc { id } else { ids::short(&id).to_owned() }
            };
            if quiet {
                for n in &nets {
                    println!("{}", id(n));
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| {
                    vec![
                        id(n),
                        n.name.clone().unwrap_or_default(),
                        n.driver.clone().unwrap_or_default(),
                        n.scope.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!("{}", table::render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows));
            Ok(())
        }
        NetworkCmd::Inspect { verbose, networks } => {
            let q = if verbose { "?verbose=true" } else { "" };
            client.inspect_each(networks.iter().map(|n| format!("/networks/{n}{q}"))).await
        }
        NetworkCmd::Rm { networks } => client.remove_each("/networks", &networks).await,
        NetworkCmd::Connect { netns, ip, network } => {
            let body = json!({"NetNs": netns, "EndpointConfig": {"IPAMConfig": {"IPv4Address": ip.unwrap_or_default()}}});
            client.post(&format!("/networks/{network}/connect"), &body).await.map(|_| ())
        }
        NetworkCmd::Disconnect { netns, network } => client
            .post(&format!("/networks/{network}/disconnect"), &json!({"NetNs": netns}))
            .await
            .map(|_| ()),
    }
}
