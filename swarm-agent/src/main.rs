//! `swarm-agent`: the node daemon and its command-line client.

fn main() -> std::process::ExitCode {
    swarm_agent::cli::main()
}
