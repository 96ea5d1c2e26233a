//! Boot control on one disk: read the slots' state, change it safely.
//!
//! Every change goes through `bootctl_core`'s
//! [`update`](bootctl_core::update()): read and validate both GPT copies,
//! change only the boot bits of the two slot entries, write with the
//! power-loss-safe routine of [`crate::table`], and read back to verify.
//! The UEFI boot stage runs the same code; a [`Disk`] adds the disk's lock
//! (taken when it is opened for writing) and names the disk in its errors.

use crate::attr::{BootAttrs, MAX_NIBBLE};
use crate::device::{BlockDevice, FileDevice, IntoIoError, IoDevice};
use crate::error::{Error, Result};
use crate::lock::{self, DiskLock};
use crate::select::Selection;
use crate::slots::{slots_error, Slot};
use crate::table::{detect_sector_size, WriteError};
use bootctl_core::state::ReadError;
use bootctl_core::update::{UpdateError, Updated};
use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

pub use bootctl_core::flags::{ACTIVE_PRIORITY, DEFAULT_TRIES};
pub use bootctl_core::state::State;

/// An open disk (image file or block device).
pub struct Disk {
    path: PathBuf,
    dev: Box<dyn BlockDevice<Error = io::Error>>,
    sector_size: Option<u64>,
    /// Boot state is read-modify-written, and the boot stage, the updater
    /// and a technician may race: a writable handle holds the disk's lock
    /// ([`crate::lock`]) unless the process took it already.
    _lock: Option<DiskLock>,
}

impl Disk {
    /// Opens `path` for reading (and writing when `writable`, under the
    /// disk's lock, waiting at most [`lock::DEFAULT_WAIT`] for it).
    /// `sector_size` overrides detection for image files; a block device's
    /// own sector size wins, and a different override is refused.
    pub fn open(path: &Path, sector_size: Option<u64>, writable: bool) -> Result<Disk> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(Error::io(path, "open"))?;
        if !lock::path_is_disk_like(&file, path)? {
            return Err(Error::NotADisk { path: path.into() });
        }
        let held = if writable && !lock::held_by_us(&file, path)? {
            Some(lock::lock(path, lock::DEFAULT_WAIT)?)
        } else {
            None
        };
        let dev = FileDevice::new(file).map_err(Error::io(path, "measure"))?;
        let kernel = dev
            .kernel_sector_size()
            .map_err(Error::io(path, "BLKSSZGET"))?;
        if let (Some(k), Some(asked)) = (kernel, sector_size) {
            if k != asked {
                return Err(Error::Invalid(format!(
                    "{}: --sector-size {asked} disagrees with the block device's own {k}",
                    path.display()
                )));
            }
        }
        let mut disk = Disk {
            path: path.into(),
            dev: Box::new(dev),
            sector_size: kernel.or(sector_size),
            _lock: held,
        };
        disk.check_sector_size()?;
        Ok(disk)
    }

    /// A disk over any device whose errors read as `io::Error`s; the crash
    /// tests use this.
    pub fn from_device<D>(path: &Path, dev: Box<D>, sector_size: Option<u64>) -> Result<Disk>
    where
        D: BlockDevice + ?Sized + 'static,
        D::Error: IntoIoError,
    {
        let mut disk = Disk {
            path: path.into(),
            dev: Box::new(IoDevice(dev)),
            sector_size,
            _lock: None,
        };
        disk.check_sector_size()?;
        Ok(disk)
    }

    fn check_sector_size(&mut self) -> Result<()> {
        match self.sector_size {
            Some(512 | 4096) => Ok(()),
            Some(size) => Err(Error::SectorSize {
                path: self.path.clone(),
                size,
            }),
            None => {
                // No signature at either place: no GPT at all; report that
                // (with 512, the common case) rather than a sector-size riddle.
                self.sector_size = Some(detect_sector_size(self.dev.as_mut()).unwrap_or(512));
                Ok(())
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sector_size(&self) -> u64 {
        self.sector_size.unwrap_or(512)
    }

    pub fn device(&mut self) -> &mut dyn BlockDevice<Error = io::Error> {
        self.dev.as_mut()
    }

    /// Reads both GPT copies, checks the partitions' layout, finds the slots.
    pub fn read(&mut self) -> Result<State> {
        let sector_size = self.sector_size();
        bootctl_core::read(self.dev.as_mut(), sector_size).map_err(|e| read_error(&self.path, e))
    }

    /// [`Disk::read`] without the layout check: for the boot stage, which
    /// only reads a kernel from a slot and must boot what it can rather
    /// than loop on a table it would refuse to write.
    pub fn read_unchecked(&mut self) -> Result<State> {
        let sector_size = self.sector_size();
        bootctl_core::read_unchecked(self.dev.as_mut(), sector_size)
            .map_err(|e| read_error(&self.path, e))
    }

    /// Applies `change` to the two slots' boot attributes and persists the
    /// result power-loss safely. Returns the state as read back.
    pub fn update(
        &mut self,
        change: impl FnOnce(&mut [BootAttrs; 2]) -> Result<()>,
    ) -> Result<State> {
        let sector_size = self.sector_size();
        let ((), done) = bootctl_core::update(self.dev.as_mut(), sector_size, change)
            .map_err(|e| update_error(&self.path, e, |e| e))?;
        Ok(self.logged(done))
    }

    /// The state an update left, after logging what it wrote.
    fn logged(&self, done: Updated) -> State {
        if done.written {
            let attrs = done.state.attrs();
            let show = |a: BootAttrs| {
                format!(
                    "priority {} tries {} successful {}",
                    a.priority, a.tries, a.successful
                )
            };
            log::debug!(
                "{}: slot_a {}; slot_b {}",
                self.path.display(),
                show(attrs[0]),
                show(attrs[1])
            );
        }
        done.state
    }

    /// `slot` boots next, on trial with `tries` attempts; the other slot keeps
    /// its state one priority lower (or stays unbootable).
    pub fn set_active(&mut self, slot: Slot, tries: u8) -> Result<State> {
        if tries == 0 || tries > MAX_NIBBLE {
            return Err(Error::Invalid(format!(
                "tries must be 1 to {MAX_NIBBLE}, not {tries}"
            )));
        }
        let sector_size = self.sector_size();
        let done = bootctl_core::set_active(self.dev.as_mut(), sector_size, slot, tries)
            .map_err(|e| update_error(&self.path, e, refuses_nothing))?;
        Ok(self.logged(done))
    }

    /// The slot passed its health check.
    pub fn mark_good(&mut self, slot: Slot) -> Result<State> {
        let sector_size = self.sector_size();
        let done = bootctl_core::mark_good(self.dev.as_mut(), sector_size, slot)
            .map_err(|e| update_error(&self.path, e, refuses_nothing))?;
        Ok(self.logged(done))
    }

    /// The slot must never boot again until reinstalled.
    pub fn mark_bad(&mut self, slot: Slot) -> Result<State> {
        let sector_size = self.sector_size();
        let done = bootctl_core::mark_bad(self.dev.as_mut(), sector_size, slot)
            .map_err(|e| update_error(&self.path, e, refuses_nothing))?;
        Ok(self.logged(done))
    }

    /// Makes the slot other than `from` boot next, provided it holds a
    /// release that has proven itself. `from` defaults to the slot that would
    /// boot next.
    pub fn rollback(&mut self, from: Option<Slot>) -> Result<(Slot, State)> {
        let from = match from {
            Some(s) => s,
            None => self.read()?.next().slot,
        };
        let sector_size = self.sector_size();
        let done = bootctl_core::rollback(self.dev.as_mut(), sector_size, from).map_err(|e| {
            update_error(&self.path, e, |refused| Error::NotSuccessful {
                slot: refused.slot.name(),
                priority: refused.priority,
                tries: refused.tries,
            })
        })?;
        Ok((from.other(), self.logged(done)))
    }

    /// Runs the selection and persists the spent try before returning, as
    /// the boot stage must before it boots the slot.
    pub fn select(&mut self) -> Result<Selection> {
        let sector_size = self.sector_size();
        let (chosen, done) = bootctl_core::spend_try(self.dev.as_mut(), sector_size)
            .map_err(|e| update_error(&self.path, e, refuses_nothing))?;
        self.logged(done);
        Ok(chosen)
    }
}

/// The change of a verb that cannot refuse.
fn refuses_nothing(never: Infallible) -> Error {
    match never {}
}

/// The disk's path added to a read error.
fn read_error(path: &Path, e: ReadError) -> Error {
    match e {
        ReadError::NoGpt { primary, backup } => Error::NoGpt {
            path: path.to_path_buf(),
            primary,
            backup,
        },
        ReadError::Slots(e) => slots_error(path, e),
        ReadError::BadTable(reason) => Error::BadTable {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// An update's error as bootctl has always reported it: a write's failure
/// as the `io::Error` source of [`Error::Io`], with the messages the table
/// writer gave when it returned `io::Error`s itself.
fn update_error<C>(
    path: &Path,
    e: UpdateError<io::Error, C>,
    change: impl FnOnce(C) -> Error,
) -> Error {
    match e {
        UpdateError::Read(e) => read_error(path, e),
        UpdateError::Change(e) => change(e),
        UpdateError::Write(e) => {
            let source = match e {
                WriteError::SizeChanged => {
                    io::Error::new(io::ErrorKind::InvalidInput, "entry array size changed")
                }
                WriteError::NoRoomForBackup => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no room for the backup entry array",
                ),
                WriteError::NoRoomForPrimary => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no room for the primary entry array",
                ),
                WriteError::Device(e) => e,
            };
            Error::io(path, "write GPT")(source)
        }
        UpdateError::VerifyFailed => Error::VerifyFailed {
            path: path.to_path_buf(),
        },
    }
}
