//! `cargo xtask test`: the one command that checks everything, as CI runs it.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{build_ebpf, setup, step, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (when the machine is known to be ready).
    #[arg(long)]
    no_setup: bool,
    /// Only run the tests (no fmt/clippy).
    #[arg(long)]
    tests_only: bool,
    /// Extra arguments for the test runner (e.g. a filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    build_ebpf::run()?;
    if !args.tests_only {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--check"])?;
        step("cargo clippy (stable crates, all targets, warnings are errors)");
        cargo(&["clippy", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    }
    step("building binaries the tests run");
    cargo(&["build", "--bins", "--locked"])?;
    let nextest =
        Command::new(cargo_bin()).args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut test_args: Vec<&str> = if nextest {
        step("running tests (cargo nextest)");
        vec!["nextest", "run", "--locked", "--no-fail-fast"]
    } else {
        step("running tests (cargo test)");
        vec!["test", "--locked", "--no-fail-fast"]
    };
    test_args.extend(args.extra.iter().map(String::as_str));
    cargo(&test_args)?;
    step("all checks passed");
    Ok(())
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
