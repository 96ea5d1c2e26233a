//! Switchback boot control.
//!
//! The two root slots' boot state lives in their GPT entries' attribute
//! bits, ChromeOS-style ([`attr`]). The boot stage runs [`select`] on every
//! boot; the updater, the health check and a technician change the state
//! through [`Disk`], whose writes survive a power cut at any sector
//! ([`table`]). [`provision`] lays out a factory disk.

pub mod attr;
pub mod boot_stage;
pub mod control;
pub mod device;
pub mod error;
pub mod host;
pub mod kexec;
pub mod lock;
pub mod provision;
pub mod report;
pub mod select;
pub mod slots;
pub mod sysfs;
pub mod table;

pub use attr::BootAttrs;
pub use control::{Disk, State, ACTIVE_PRIORITY, DEFAULT_TRIES};
pub use error::{Error, Result};
pub use select::{select, Selection};
pub use slots::{Slot, SlotTable};
