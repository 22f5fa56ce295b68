//! The `swarm-agent` command line: docker's swarm and node commands as a
//! client of the daemon's API, the daemon itself, and debug tools.

pub mod client;
pub mod compose;
pub mod daemon;
pub mod debug;
pub mod fmt;
pub mod info;
pub mod network;
pub mod node;
pub mod progress;
pub mod secret;
pub mod service;
pub mod service_flags;
pub mod service_update;
pub mod stack;
pub mod swarm;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use self::client::{CliError, Client, DEFAULT_DATA_ROOT, DEFAULT_SOCKET, socket_path};

#[derive(Debug, Parser)]
#[command(name = "swarm-agent", version, about = "Docker swarm mode, in Rust, with an eBPF datapath")]
pub struct Cli {
    /// Daemon socket to connect to (unix:///path)
    #[arg(short = 'H', long = "host", env = "DOCKER_HOST", global = true)]
    pub host: Option<String>,
    /// Root of the daemon's persistent state
    #[arg(long, env = "SWARM_DATA_ROOT", global = true)]
    pub data_root: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon (the engine serving the Docker API)
    Daemon(daemon::DaemonArgs),
    /// Initialize a swarm
    Init(swarm::InitArgs),
    /// Join a swarm as a node and/or manager
    Join(swarm::JoinArgs),
    /// Manage join tokens
    JoinToken(swarm::JoinTokenArgs),
    /// Leave the swarm
    Leave {
        /// Force this node to leave the swarm, ignoring warnings
        #[arg(short, long)]
        force: bool,
    },
    /// Manage swarm nodes
    Node {
        #[command(subcommand)]
        cmd: node::NodeCmd,
    },
    /// Manage services
    Service {
        #[command(subcommand)]
        cmd: service::ServiceCmd,
    },
    /// Manage networks
    Network {
        #[command(subcommand)]
        cmd: network::NetworkCmd,
    },
    /// Manage swarm stacks
    Stack {
        #[command(subcommand)]
        cmd: stack::StackCmd,
    },
    /// Manage swarm secrets
    Secret {
        #[command(subcommand)]
        cmd: secret::BlobCmd,
    },
    /// Manage swarm configs
    Config {
        #[command(subcommand)]
        cmd: secret::BlobCmd,
    },
    /// Display system-wide information
    Info,
    /// A container's shim (started by the daemon, not by people)
    #[command(hide = true)]
    Shim {
        #[arg(long, default_value = "runc")]
        runtime: String,
        #[arg(long)]
        runc_root: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        id: String,
    },
    /// Low-level tools: the datapath, the local store (not part of docker's CLI)
    Debug {
        #[command(subcommand)]
        cmd: debug::DebugCmd,
    },
}

impl Cli {
    fn client(&self) -> Result<Client, CliError> {
        let host = self.host.clone().unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
        Ok(Client::new(socket_path(&host)?))
    }

    fn data_root(&self) -> PathBuf {
        self.data_root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT))
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim waits for any child: it must not share the process with an
    // async runtime that waits for its own.
    if let Cmd::Shim { runtime, runc_root, bundle, id } = &cli.cmd {
        let code = crate::agent::exec::shim::run(runtime, runc_root, bundle, id);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        // A client whose output goes to a pipe that closes (`| head`) ends
        // quietly with SIGPIPE's status, as docker does, instead of
        // panicking on the failed print. (SIGPIPE itself stays ignored:
        // writes to the daemon's socket must fail, not kill.)
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.payload_as_str().unwrap_or("");
            if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
                std::process::exit(141);
            }
            default(info);
        }));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let client = match cli.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let data_root = cli.data_root();
    let result = match cli.cmd {
        Cmd::Daemon(args) => return daemon::run(client.socket().to_owned(), data_root, args).await,
        Cmd::Debug { cmd: debug::DebugCmd::Store { objects } } => {
            debug::store(&client, objects).await.map_err(|e| e.to_string())
        }
        Cmd::Debug { cmd } => debug::run(cmd).map_err(|e| format!("Error: {e:#}")),
        cmd => client_command(&client, &data_root, cmd).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn client_command(client: &Client, data_root: &std::path::Path, cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Init(args) => {
            client.ensure_daemon(data_root).await?;
            swarm::init(client, args).await
        }
        Cmd::Join(args) => {
            client.ensure_daemon(data_root).await?;
            swarm::join(client, args).await
        }
        Cmd::JoinToken(args) => swarm::join_token(client, args).await,
        Cmd::Leave { force } => swarm::leave(client, force).await,
        Cmd::Node { cmd } => node::run(client, cmd).await,
        Cmd::Network { cmd } => network::run(client, cmd).await,
        Cmd::Stack { cmd } => stack::run(client, cmd).await,
        Cmd::Secret { cmd } => secret::run(client, crate::manager::store::secret::Kind::Secret, cmd).await,
        Cmd::Config { cmd } => secret::run(client, crate::manager::store::secret::Kind::Config, cmd).await,
        Cmd::Service { cmd } => service::run(client, cmd).await,
        Cmd::Info => info::info(client).await,
        Cmd::Daemon(_) | Cmd::Debug { .. } | Cmd::Shim { .. } => Ok(()),
    }
}
