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
