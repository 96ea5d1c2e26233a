//! The host programs the tools run (mkfs.ext4, mkfs.vfat, mcopy, sbsign),
//! found the way a shell finds them.

use std::path::PathBuf;

/// Finds a program the way a shell would, plus the sbin directories that a
/// non-root PATH often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
