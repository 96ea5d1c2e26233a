//! The one lock every state-changing command takes: an exclusive `flock`
//! on the disk itself, taken before any state is read and held until the
//! command ends.
//!
//! Locking the disk (not a file beside it) means one lock for `bootctl`,
//! the updater and the boot stage alike, and it also waits for tools such
//! as `sfdisk` that lock the disk the same way. The wait is bounded: a
//! holder that never lets go gets a clear "busy" error, not a silent hang.
//!
//! A process may open the disk several times while it holds the lock (the
//! updater does); `flock` would make those opens conflict with each other,
//! so the lock is recorded per process and later opens see that it is held.

use crate::error::{Error, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a command waits for the lock unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Disks this process holds the lock of, by identity (device number for a
/// block device, device and inode for an image file).
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn identity(file: &File, path: &Path) -> Result<(u64, u64)> {
    let meta = file.metadata().map_err(Error::io(path, "stat"))?;
    Ok(if meta.file_type().is_block_device() {
        (u64::MAX, meta.rdev())
    } else {
        (meta.dev(), meta.ino())
    })
}

/// Held while it lives.
#[derive(Debug)]
pub struct DiskLock {
    _flock: Flock<File>,
    id: (u64, u64),
}

impl Drop for DiskLock {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.retain(|&id| id != self.id);
        }
    }
}

/// Whether this process holds the lock of the disk `file` is open on.
pub fn held_by_us(file: &File, path: &Path) -> Result<bool> {
    let id = identity(file, path)?;
    Ok(HELD.lock().map(|h| h.contains(&id)).unwrap_or(false))
}

/// Takes the lock of the disk at `path`, waiting at most `wait`.
pub fn lock(path: &Path, wait: Duration) -> Result<DiskLock> {
    let file = File::open(path).map_err(Error::io(path, "open"))?;
    if !path_is_disk_like(&file, path)? {
        return Err(Error::NotADisk { path: path.into() });
    }
    let id = identity(&file, path)?;
    if HELD.lock().map(|h| h.contains(&id)).unwrap_or(false) {
        return Err(Error::Invalid(format!(
            "{}: this process holds its lock already",
            path.display()
        )));
    }
    let start = Instant::now();
    let mut file = file;
    let flock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < wait => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Busy {
                    path: path.into(),
                    waited_s: wait.as_secs(),
                })
            }
            Err((_, errno)) => {
                return Err(Error::Io {
                    path: path.into(),
                    op: "flock",
                    source: errno.into(),
                })
            }
        }
    };
    if let Ok(mut held) = HELD.lock() {
        held.push(id);
    }
    Ok(DiskLock { _flock: flock, id })
}

/// Takes the lock unless this process holds it already (then `None`): for
/// library entry points that a CLI may have locked for them.
pub fn ensure(path: &Path, wait: Duration) -> Result<Option<DiskLock>> {
    let file = File::open(path).map_err(Error::io(path, "open"))?;
    if held_by_us(&file, path)? {
        return Ok(None);
    }
    lock(path, wait).map(Some)
}

/// A regular file (a disk image) or a block device; a directory, a pipe or
/// a character device is no disk.
pub fn path_is_disk_like(file: &File, path: &Path) -> Result<bool> {
    let t = file
        .metadata()
        .map_err(Error::io(path, "stat"))?
        .file_type();
    Ok(t.is_file() || t.is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_makes_others_wait_then_busy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let first = lock(&p, DEFAULT_WAIT).unwrap();
        let f = File::open(&p).unwrap();
        assert!(held_by_us(&f, &p).unwrap());
        // Another open file description, as another process would have.
        let other = Flock::lock(File::open(&p).unwrap(), FlockArg::LockExclusiveNonblock);
        assert!(other.is_err());
        drop(first);
        assert!(!held_by_us(&f, &p).unwrap());
        let start = Instant::now();
        let _theirs = Flock::lock(File::open(&p).unwrap(), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let err = lock(&p, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
