//! Switchback's GPT boot flags, without std.
//!
//! The two root slots' boot state lives in their GPT entries' attribute
//! bits, ChromeOS-style ([`attr`]). [`select`] picks the slot to boot;
//! [`flags`] holds the changes a flag goes through; [`mod@update`] reads
//! both GPT copies ([`state`], [`table`]), applies a change and writes it so
//! that it survives a power cut at any sector. Everything reaches the disk
//! through [`device::BlockDevice`].
//!
//! `bootctl` (Linux: the CLI, the updater's library, the initramfs boot
//! stage) and the UEFI boot stage run this same code, so a disk means the
//! same to both; hence no std here, only `core` and `alloc`. With the
//! `verify` feature, [`verify`] is what both stages check in a slot before
//! they start its kernel.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod attr;
pub mod device;
pub mod flags;
pub mod select;
pub mod slots;
pub mod state;
pub mod table;
pub mod update;
#[cfg(feature = "verify")]
pub mod verify;

#[cfg(test)]
mod testdisk;

pub use attr::BootAttrs;
pub use device::BlockDevice;
pub use flags::{ACTIVE_PRIORITY, DEFAULT_TRIES};
pub use select::Selection;
pub use slots::{Slot, SlotTable};
pub use state::{read, read_unchecked, ReadError, State};
pub use update::{
    mark_bad, mark_good, rollback, set_active, spend_try, update, UpdateError, Updated,
};
