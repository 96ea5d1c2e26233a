//! Where a data migration runs: a private mount namespace in which every
//! mount is read-only except the data directories the migration declared
//! (the ones snapshotted before it runs). A migration that writes anywhere
//! else fails with "Read-only file system" instead of changing data that
//! the snapshot cannot restore.
//!
//! Everything is prepared before the fork ([`Confinement::new`]); the child
//! only makes system calls ([`Confinement::enter`]), as it must between
//! fork and exec in a threaded process. Needs root (CAP_SYS_ADMIN), as the
//! updater has on a device.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Confinement {
    /// Every mount point of the caller's namespace, with the flags to keep.
    mounts: Vec<(CString, MsFlags)>,
    writable: Vec<CString>,
}

/// `\040`-style escapes of /proc/self/mountinfo.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn cstring(bytes: &[u8], what: &Path) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has a NUL byte", what.display()),
        )
    })
}

impl Confinement {
    /// Everything read-only but `writable` (directories that must exist).
    pub fn new(writable: &[PathBuf]) -> std::io::Result<Confinement> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut mounts = Vec::new();
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(point), Some(opts)) = (fields.get(4), fields.get(5)) else {
                continue;
            };
            let mut flags = MsFlags::empty();
            for o in opts.split(',') {
                flags |= match o {
                    "nosuid" => MsFlags::MS_NOSUID,
                    "nodev" => MsFlags::MS_NODEV,
                    "noexec" => MsFlags::MS_NOEXEC,
                    "noatime" => MsFlags::MS_NOATIME,
                    "nodiratime" => MsFlags::MS_NODIRATIME,
                    "relatime" => MsFlags::MS_RELATIME,
                    _ => MsFlags::empty(),
                };
            }
            mounts.push((cstring(&unescape(point), Path::new(point))?, flags));
        }
        let writable = writable
            .iter()
            .map(|p| cstring(p.as_os_str().as_bytes(), p))
            .collect::<std::io::Result<_>>()?;
        Ok(Confinement { mounts, writable })
    }

    /// In the child, before exec.
    pub fn enter(&self) -> std::io::Result<()> {
        let none: Option<&str> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        // The writable directories first, as bind mounts of themselves: a
        // bind mount takes the flags of its source, so it must be made
        // before the sources turn read-only.
        for dir in &self.writable {
            mount(
                Some(dir.as_c_str()),
                dir.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
        }
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (point, keep) in &self.mounts {
            match mount(none, point.as_c_str(), none, ro | *keep, none) {
                // A mount hidden under another (or gone since) cannot be
                // reached by path, and then cannot be written either.
                Err(Errno::EINVAL | Errno::ENOENT) if point.as_bytes() != b"/" => {}
                r => r?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/x\134y\9"), b"/x\\y\\9");
    }
}
