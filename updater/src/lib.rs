//! Switchback's updater: the appliance's side. [`install`] streams a signed
//! bundle into the inactive slot and flips the boot flag; [`state`] keeps
//! what the device knows about its slots; [`config`] is the device's
//! configuration.

pub mod config;
pub mod error;
pub mod events;
pub mod install;
pub mod slot_writer;
pub mod source;
pub mod state;
pub mod status;

pub use error::{exit_code, UpdateError};
