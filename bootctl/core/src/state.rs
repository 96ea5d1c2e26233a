//! What a reader sees on a disk: both GPT copies, the slots, their flags.

use crate::attr::BootAttrs;
use crate::device::BlockDevice;
use crate::select::{select, Selection};
use crate::slots::{Slot, SlotTable, SlotsError};
use crate::table::Gpt;
use alloc::string::{String, ToString};
use core::fmt;

/// What a reader sees on a disk: the table and the two slots' states.
#[derive(Debug, Clone)]
pub struct State {
    pub gpt: Gpt,
    pub table: SlotTable,
}

/// Why a disk's boot flags cannot be read (or, for [`read`], may not
/// be written). bootctl adds the disk's path to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Neither GPT copy is valid; why, for each.
    NoGpt { primary: String, backup: String },
    /// The table lacks a slot or names one twice.
    Slots(SlotsError),
    /// The partitions could send a write somewhere else
    /// ([`crate::table::Copy::check_layout`]).
    BadTable(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NoGpt { primary, backup } => {
                write!(f, "no valid GPT (primary: {primary}; backup: {backup})")
            }
            ReadError::Slots(e) => e.fmt(f),
            ReadError::BadTable(reason) => {
                write!(f, "the partition table is unsafe to use: {reason}")
            }
        }
    }
}

impl core::error::Error for ReadError {}

impl ReadError {
    /// Whether the disk is no slot disk at all (no GPT header in either
    /// place, or a GPT without the slots), rather than a damaged or
    /// unreadable one: a boot stage may then look at other disks.
    pub fn not_a_slot_disk(&self) -> bool {
        match self {
            ReadError::Slots(_) => true,
            ReadError::NoGpt { primary, backup } => {
                primary == crate::table::NO_SIGNATURE && backup == crate::table::NO_SIGNATURE
            }
            ReadError::BadTable(_) => false,
        }
    }
}

/// [`read`] without the layout check: for a boot stage, which only reads a
/// kernel from a slot and must boot what it can rather than loop on a table
/// it would refuse to write.
pub fn read_unchecked<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
) -> Result<State, ReadError> {
    let gpt = Gpt::read(dev, sector_size)
        .map_err(|(primary, backup)| ReadError::NoGpt { primary, backup })?;
    let table = SlotTable::find(gpt.current()).map_err(ReadError::Slots)?;
    Ok(State { gpt, table })
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

/// Reads both GPT copies, checks the partitions' layout, finds the slots:
/// what a writer needs before it changes anything.
pub fn read<D: BlockDevice + ?Sized>(dev: &mut D, sector_size: u64) -> Result<State, ReadError> {
    let state = read_unchecked(dev, sector_size)?;
    state
        .gpt
        .current()
        .check_layout()
        .map_err(ReadError::BadTable)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    /// A blank disk is no slot disk; a slot disk whose both headers are
    /// damaged is a damaged one, not "no slot disk".
    #[test]
    fn a_blank_disk_is_not_a_slot_disk_and_a_damaged_one_is() {
        let mut blank = MemDevice(alloc::vec![0u8; 1 << 20]);
        let e = read_unchecked(&mut blank, 512).expect_err("a blank disk reads");
        assert!(e.not_a_slot_disk(), "{e}");
        let mut damaged = crate::testdisk::disk(512);
        let last = damaged.0.len() - 512;
        crate::testdisk::flip_byte(&mut damaged, 512 + 20);
        crate::testdisk::flip_byte(&mut damaged, last + 20);
        let e = read_unchecked(&mut damaged, 512).expect_err("both copies damaged");
        assert!(!e.not_a_slot_disk(), "{e}");
    }
}
