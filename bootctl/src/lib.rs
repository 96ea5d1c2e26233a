//! Switchback boot control.
//!
//! The two root slots' boot state lives in their GPT entries' attribute
//! bits, ChromeOS-style ([`attr`]). The boot stage runs [`select()`] on every
//! boot; the updater, the health check and a technician change the state
//! through [`Disk`], whose writes survive a power cut at any sector
//! ([`table`]). [`provision`] lays out a factory disk.
//!
//! The flags' codec, selection, the table and the flip itself are
//! `bootctl_core`'s, which needs no std so that the UEFI boot stage runs
//! the same code; they are re-exported here under their old paths.

pub use bootctl_core::select::{self, select, Selection};
pub use bootctl_core::{attr, table, verify};

pub mod boot_stage;
pub mod control;
pub mod device;
pub mod dm;
pub mod error;
pub mod host;
pub mod kexec;
pub mod lock;
pub mod provision;
pub mod report;
pub mod slots;
pub mod sysfs;

pub use attr::BootAttrs;
pub use control::{Disk, State, ACTIVE_PRIORITY, DEFAULT_TRIES};
pub use error::{Error, Result};
pub use slots::{Slot, SlotTable};
