//! Running external commands with errors that say what failed and why.

use std::{
    fmt::Write as _,
    process::{Command, Output},
};

/// A command that did not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (not installed, not executable).
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed { cmd: String, status: std::process::ExitStatus, stdout: String, stderr: String },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() { String::new() } else { format!(": {s}") }
}

/// The command line as a person would type it, for error messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            let _ = write!(s, " '{a}'");
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

/// Runs the command to completion, capturing output; fails unless it exits 0.
/// Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    let out = output(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CmdError::Failed {
            cmd: display(cmd),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs the command to completion, capturing output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output, CmdError> {
    cmd.output().map_err(|source| CmdError::Spawn { cmd: display(cmd), source })
}

/// `Command::new(program).args(args)`.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}
