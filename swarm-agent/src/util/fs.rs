//! Filesystem checks.

use std::{os::unix::fs::MetadataExt, path::Path};

/// Whether something is mounted at `p`: its device differs from its
/// parent's. Cheap (two stats, where reading `/proc/self/mountinfo` grows
/// with every container's mounts); right for what the agent mounts itself
/// (overlayfs roots, namespace files), not for a bind mount of a directory
/// of the same filesystem.
pub fn is_mount_point(p: &Path) -> bool {
    let Some(parent) = p.parent() else { return true };
    match (std::fs::symlink_metadata(p), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_a_mount_point_and_a_plain_directory_is_not() {
        assert!(is_mount_point(Path::new("/proc")));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("x")).unwrap();
        assert!(!is_mount_point(&d.path().join("x")));
        assert!(!is_mount_point(&d.path().join("missing")));
    }
}
