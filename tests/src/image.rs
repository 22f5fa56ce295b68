//! The test image: a busybox rootfs (sh, httpd, nc, ping, wget, nslookup)
//! from Debian's `busybox-static`, plus the tools of `tests/images` built
//! statically (`udp-who`, a UDP responder and client, which busybox lacks;
//! `tcp-bench`, the mesh benchmark's server and client), as a tarball for
//! `docker import`.
//! Made once per build directory and reused.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the static busybox comes from.
pub const BUSYBOX: &str = "/bin/busybox";

/// The image's own tools (`tests/images/<tool>.rs`, built statically).
pub const TOOLS: &[&str] = &["udp-who", "tcp-bench"];

/// A tool of `tests/images` built statically with plain rustc (so it runs
/// in busybox tasks and on any host), made if missing:
/// `<target>/images/<tool>`.
///
/// # Errors
/// If rustc fails.
pub fn static_tool(target: &Path, tool: &str) -> Result<PathBuf, String> {
    let dir = target.join("images");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("images").join(format!("{tool}.rs"));
    // Named after its source, so an edited tool is built again.
    let bin = dir.join(format!("{tool}-{:016x}", sources_hash(&[&src])));
    if bin.is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{tool}.{}", unique()));
    let built = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    if !built.status.success() {
        return Err(format!("building {tool}: {}", String::from_utf8_lossy(&built.stderr)));
    }
    fs::rename(&tmp, &bin).map_err(|e| format!("storing {tool}: {e}"))?;
    Ok(bin)
}

/// A suffix no other builder (process or thread) uses at the same time.
fn unique() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}.{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// FNV-1a of the files' contents.
fn sources_hash(files: &[&Path]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        for b in fs::read(f).unwrap_or_default() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The rootfs tarball, made if missing: `<target>/images/busybox-rootfs-<hash of the tools>.tar`.
///
/// # Errors
/// If busybox is missing (`apt-get install busybox-static`) or tar fails.
pub fn busybox_rootfs(target: &Path) -> Result<PathBuf, String> {
    let dir = target.join("images");
    let sources: Vec<PathBuf> = TOOLS
        .iter()
        .map(|t| Path::new(env!("CARGO_MANIFEST_DIR")).join("images").join(format!("{t}.rs")))
        .collect();
    let hash = sources_hash(&sources.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let tar = dir.join(format!("busybox-rootfs-{hash:016x}.tar"));
    if tar.is_file() {
        return Ok(tar);
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!("{BUSYBOX} is missing: apt-get install busybox-static"));
    }
    let root = dir.join(format!("rootfs.{}", unique()));
    let _ = fs::remove_dir_all(&root);
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for d in ["bin", "etc", "tmp", "root", "var/www", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d)).map_err(|e| io("making the rootfs", e))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| io("copying busybox", e))?;
    for tool in TOOLS {
        fs::copy(static_tool(target, tool)?, root.join("bin").join(tool))
            .map_err(|e| io("copying a tool", e))?;
    }
    let list = Command::new(BUSYBOX).arg("--list").output().map_err(|e| io("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| io("linking an applet", e))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(|e| io("writing /etc/passwd", e))?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .map_err(|e| io("writing /etc/group", e))?;
    fs::write(root.join("var/www/index.html"), "hello from busybox\n")
        .map_err(|e| io("writing index.html", e))?;
    let tmp = dir.join(format!("busybox-rootfs-{hash:016x}.tar.{}", unique()));
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&tmp)
        .arg(".")
        .output()
        .map_err(|e| io("running tar", e))?;
    let _ = fs::remove_dir_all(&root);
    if !out.status.success() {
        return Err(format!("tar failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    fs::rename(&tmp, &tar).map_err(|e| io("storing the tarball", e))?;
    Ok(tar)
}

/// The target directory of the running test binary (`target/`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}
