//! The per-container shim: `swarm-agent shim --runtime BIN --runc-root R --bundle DIR --id ID`.
//!
//! The agent starts it in a process group of its own, so it (and the
//! container) outlive an agent that is killed. It is the container's
//! parent (a child subreaper), so it learns the exit code, and it timestamps
//! the container's output into `container.log` (docker's json-file format).
//! It leaves files the agent reads:
//!
//! ```text
//! DIR/started        pid and start time, once `<runtime> run --detach` returned
//! DIR/start-error    why the container could not start
//! DIR/exit           exit code and end time (128+N for signal N)
//! DIR/container.log  {"log": "...\n", "stream": "stdout", "time": "..."} per line
//! ```
//!
//! Once `started` or `start-error` is written it also writes a line to its
//! stdout, which the agent waits on.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i64,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub code: i64,
    pub at: i64,
}

/// One line of `container.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

pub fn now_nanos() -> i64 {
    crate::manager::now_nanos()
}

pub fn rfc3339_nanos(ns: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z",
    )
    .ok();
    f.and_then(|f| t.format(&f).ok()).unwrap_or_default()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

fn runc(runtime: &str, root: &Path, bundle: &Path) -> Command {
    let mut c = Command::new(runtime);
    c.arg("--root").arg(root).arg(format!("--log={}", bundle.join("runc.log").display()));
    c
}

fn runc_error(bundle: &Path, fallback: &str) -> String {
    let log = fs::read_to_string(bundle.join("runc.log")).unwrap_or_default();
    // runc logs `time=… level=error msg="…"`, crun the bare message.
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("level=error") || l.contains("\"level\":\"error\""))
        .map(|l| l.split("msg=").nth(1).unwrap_or(l).trim_matches('"').to_owned())
        .or_else(|| {
            log.lines().rev().find(|l| !l.trim().is_empty() && !l.contains("level=")).map(str::to_owned)
        });
    last.unwrap_or_else(|| fallback.to_owned())
}

fn pump(
    reader: impl std::io::Read + Send + 'static,
    stream: &'static str,
    out: Arc<Mutex<fs::File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = LogLine {
                        log: String::from_utf8_lossy(&buf).into_owned(),
                        stream: stream.to_owned(),
                        time: rfc3339_nanos(now_nanos()),
                    };
                    if let Ok(mut j) = serde_json::to_vec(&line) {
                        j.push(b'\n');
                        let mut f = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let _ = f.write_all(&j);
                    }
                }
            }
        }
    })
}

/// Runs the shim; returns its exit code.
pub fn run(runtime: &str, runc_root: &Path, bundle: &Path, id: &str) -> i32 {
    match run_inner(runtime, runc_root, bundle, id) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_atomic(&bundle.join("start-error"), e.as_bytes());
            tell_agent();
            1
        }
    }
}

/// One line on stdout: the agent's cue to read `started`/`start-error`.
/// An agent that is gone (a closed pipe) is no error.
fn tell_agent() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run_inner(runtime: &str, runc_root: &Path, bundle: &Path, id: &str) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("becoming a subreaper: {e}"))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle.join("container.log"))
        .map_err(|e| format!("opening the log: {e}"))?;
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = std::io::pipe().map_err(|e| e.to_string())?;
    let (err_r, err_w) = std::io::pipe().map_err(|e| e.to_string())?;
    let pumps = [pump(out_r, "stdout", log.clone()), pump(err_r, "stderr", log)];
    let pid_file = bundle.join("pid");
    // One runtime process (`run --detach`), not two (`create`, `start`).
    let ran = runc(runtime, runc_root, bundle)
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {runtime}: {e}"))?;
    if !ran.success() {
        let _ =
            runc(runtime, runc_root, bundle).args(["delete", "--force", id]).stdin(Stdio::null()).status();
        return Err(runc_error(bundle, &format!("{runtime} run failed")));
    }
    let pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{runtime} wrote no pid"))?;
    let s = Started { pid: i64::from(pid), at: now_nanos() };
    write_atomic(&bundle.join("started"), &serde_json::to_vec(&s).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    tell_agent();
    let code = reap(pid);
    // Output still buffered in the pipes is written before the exit is;
    // a daemonized grandchild that keeps them open is not waited for long.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for p in pumps {
            let _ = p.join();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(2));
    let e = Exited { code, at: now_nanos() };
    let _ = write_atomic(&bundle.join("exit"), &serde_json::to_vec(&e).unwrap_or_default());
    let _ = runc(runtime, runc_root, bundle).args(["delete", "--force", id]).stdin(Stdio::null()).status();
    Ok(())
}

/// Waits for `pid` (reaping any orphan that comes our way meanwhile).
fn reap(pid: i32) -> i64 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return i64::from(code),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => return 128 + sig as i64,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

/// The whole lines of a `container.log` from byte `offset` on, and the
/// offset after them.
pub fn read_lines(path: &Path, offset: u64) -> (Vec<LogLine>, u64) {
    use std::io::{Read, Seek};
    let Ok(mut f) = fs::File::open(path) else { return (Vec::new(), offset) };
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return (Vec::new(), offset);
    }
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = String::from_utf8_lossy(&buf[..end])
        .lines()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .collect();
    (lines, offset + end as u64)
}

/// The shim's files for a bundle directory.
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn started(&self) -> Option<Started> {
        serde_json::from_slice(&fs::read(self.dir.join("started")).ok()?).ok()
    }

    pub fn exited(&self) -> Option<Exited> {
        serde_json::from_slice(&fs::read(self.dir.join("exit")).ok()?).ok()
    }

    pub fn start_error(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("start-error")).ok()
    }
}
