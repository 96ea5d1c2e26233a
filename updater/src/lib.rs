//! Switchback's updater: the appliance's side. [`install`] streams a signed
//! bundle into the inactive slot and flips the boot flag; [`state`] keeps
//! what the device knows about its slots; [`config`] is the device's
//! configuration.

pub mod cli;
pub mod config;
pub mod confine;
pub mod error;
pub mod events;
pub mod evidence;
pub mod fleet;
pub mod health;
pub mod install;
pub mod migrate;
pub mod recover;
pub mod rollback;
pub mod runner;
pub mod slot_writer;
pub mod source;
pub mod state;
pub mod status;

pub use error::{exit_code, UpdateError};

/// Syncs and reboots the machine.
pub fn reboot() -> anyhow::Result<()> {
    use anyhow::Context;
    nix::unistd::sync();
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).context("rebooting")?;
    Ok(())
}
