//! Boot control on one disk: read the slots' state, change it safely.
//!
//! Every change goes through [`Disk::update`]: lock the disk, read and
//! validate both GPT copies, change only the boot bits of the two slot
//! entries, write with the power-loss-safe routine of [`crate::table`], and
//! read back to verify.

use crate::attr::{BootAttrs, MAX_NIBBLE};
use crate::device::{BlockDevice, FileDevice};
use crate::error::{Error, Result};
use crate::lock::{self, DiskLock};
use crate::select::{select, Selection};
use crate::slots::{Slot, SlotTable};
use crate::table::{detect_sector_size, Gpt};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Priority a freshly activated slot gets; the other bootable slot sits one
/// below it. Two levels are all selection needs, and staying low leaves room
/// for other tools that use the same bits.
pub const ACTIVE_PRIORITY: u8 = 2;
pub const DEFAULT_TRIES: u8 = 3;

/// What a reader sees on a disk: the table and the two slots' states.
#[derive(Debug, Clone)]
pub struct State {
    pub gpt: Gpt,
    pub table: SlotTable,
}

impl State {
    /// The disk's own GUID, from whichever header copy is intact: what
    /// tells one disk image from another where device numbers cannot.
    pub fn disk_guid(&self) -> Option<String> {
        let gpt = &self.gpt;
        let copy = gpt.primary.as_ref().or(gpt.backup.as_ref()).ok()?;
        Some(copy.header.disk_guid.to_string())
    }

    pub fn attrs(&self) -> [BootAttrs; 2] {
        Slot::ALL.map(|s| BootAttrs::decode(self.table.entry(s).attributes))
    }
    /// What the boot stage would pick now (without spending a try).
    pub fn next(&self) -> Selection {
        select(self.attrs())
    }
}

/// An open disk (image file or block device).
pub struct Disk {
    path: PathBuf,
    dev: Box<dyn BlockDevice>,
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

    /// A disk over any device; the crash tests use this.
    pub fn from_device(
        path: &Path,
        dev: Box<dyn BlockDevice>,
        sector_size: Option<u64>,
    ) -> Result<Disk> {
        let mut disk = Disk {
            path: path.into(),
            dev,
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

    pub fn device(&mut self) -> &mut dyn BlockDevice {
        self.dev.as_mut()
    }

    /// Reads both GPT copies, checks the partitions' layout, finds the slots.
    pub fn read(&mut self) -> Result<State> {
        let state = self.read_unchecked()?;
        state
            .gpt
            .current()
            .check_layout()
            .map_err(|reason| Error::BadTable {
                path: self.path.clone(),
                reason,
            })?;
        Ok(state)
    }

    /// [`Disk::read`] without the layout check: for the boot stage, which
    /// only reads a kernel from a slot and must boot what it can rather
    /// than loop on a table it would refuse to write.
    pub fn read_unchecked(&mut self) -> Result<State> {
        let sector_size = self.sector_size();
        let gpt = Gpt::read(self.dev.as_mut(), sector_size).map_err(|(primary, backup)| {
            Error::NoGpt {
                path: self.path.clone(),
                primary,
                backup,
            }
        })?;
        let table = SlotTable::find(gpt.current(), &self.path)?;
        Ok(State { gpt, table })
    }

    /// Applies `change` to the two slots' boot attributes and persists the
    /// result power-loss safely. Returns the state as read back.
    pub fn update(
        &mut self,
        change: impl FnOnce(&mut [BootAttrs; 2]) -> Result<()>,
    ) -> Result<State> {
        let state = self.read()?;
        let mut attrs = state.attrs();
        change(&mut attrs)?;
        let current = state.gpt.current();
        let mut next = current.clone();
        for slot in Slot::ALL {
            let entry = state.table.entry(slot);
            next.set_attributes(entry.index, attrs[slot.index()].encode(entry.attributes));
        }
        let entries = next.entries;
        if entries == current.entries && state.gpt.is_consistent() {
            return Ok(state);
        }
        state
            .gpt
            .write_entries(self.dev.as_mut(), &entries)
            .map_err(Error::io(&self.path, "write GPT"))?;
        let after = self.read()?;
        let verified = match (&after.gpt.primary, &after.gpt.backup) {
            (Ok(p), Ok(b)) => p.entries == entries && b.entries == entries,
            _ => false,
        };
        if !verified {
            return Err(Error::VerifyFailed {
                path: self.path.clone(),
            });
        }
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
        Ok(after)
    }

    /// `slot` boots next, on trial with `tries` attempts; the other slot keeps
    /// its state one priority lower (or stays unbootable).
    pub fn set_active(&mut self, slot: Slot, tries: u8) -> Result<State> {
        if tries == 0 || tries > MAX_NIBBLE {
            return Err(Error::Invalid(format!(
                "tries must be 1 to {MAX_NIBBLE}, not {tries}"
            )));
        }
        self.update(|attrs| {
            attrs[slot.index()] = BootAttrs {
                priority: ACTIVE_PRIORITY,
                tries,
                successful: false,
            };
            demote(&mut attrs[slot.other().index()]);
            Ok(())
        })
    }

    /// The slot passed its health check.
    pub fn mark_good(&mut self, slot: Slot) -> Result<State> {
        self.update(|attrs| {
            let a = &mut attrs[slot.index()];
            a.successful = true;
            a.tries = 0;
            if a.priority == 0 {
                a.priority = 1;
            }
            Ok(())
        })
    }

    /// The slot must never boot again until reinstalled.
    pub fn mark_bad(&mut self, slot: Slot) -> Result<State> {
        self.update(|attrs| {
            attrs[slot.index()] = BootAttrs::UNBOOTABLE;
            Ok(())
        })
    }

    /// Makes the slot other than `from` boot next, provided it holds a
    /// release that has proven itself. `from` defaults to the slot that would
    /// boot next.
    pub fn rollback(&mut self, from: Option<Slot>) -> Result<(Slot, State)> {
        let from = match from {
            Some(s) => s,
            None => self.read()?.next().slot,
        };
        let target = from.other();
        let state = self.update(|attrs| {
            let t = attrs[target.index()];
            if !t.successful {
                return Err(Error::NotSuccessful {
                    slot: target.name(),
                    priority: t.priority,
                    tries: t.tries,
                });
            }
            attrs[target.index()] = BootAttrs {
                priority: ACTIVE_PRIORITY,
                tries: 0,
                successful: true,
            };
            demote(&mut attrs[from.index()]);
            Ok(())
        })?;
        Ok((target, state))
    }

    /// Runs the selection and persists the spent try before returning, as
    /// the boot stage must before it boots the slot.
    pub fn select(&mut self) -> Result<Selection> {
        let mut chosen = None;
        self.update(|attrs| {
            let s = select(*attrs);
            attrs[s.slot.index()] = s.attrs;
            chosen = Some(s);
            Ok(())
        })?;
        chosen.ok_or_else(|| Error::Invalid("selection did not run".into()))
    }
}

/// One level below the active slot, unless it is unbootable already.
fn demote(attrs: &mut BootAttrs) {
    if attrs.priority > 0 {
        attrs.priority = ACTIVE_PRIORITY - 1;
    }
}
