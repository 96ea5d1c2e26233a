//! A field technician's rollback: the other slot boots next, provided it
//! holds a release that has proven itself.

use crate::config::Config;
use crate::state::StateFile;
use anyhow::Result;
use bootctl::{Disk, Slot};
use std::path::Path;

/// Makes the slot other than `booted` boot next; returns it.
pub fn rollback(
    config: &Config,
    disk_path: &Path,
    sector_size: Option<u64>,
    booted: Slot,
) -> Result<Slot> {
    let _lock = bootctl::lock::ensure(disk_path, bootctl::lock::DEFAULT_WAIT)?;
    let mut state = StateFile::load(&config.state_dir());
    crate::recover::recover(config, disk_path, &mut state)?;
    let (target, _) = Disk::open(disk_path, sector_size, true)?.rollback(Some(booted))?;
    let version = |s: Slot| state.state.slots.get(s.name()).map(|r| r.version.clone());
    let (to, from) = (version(target), version(booted));
    state.record(
        "rollback",
        target.name(),
        to.as_deref(),
        from.as_deref(),
        Some("requested by a technician"),
    );
    crate::recover::save(&mut state)?;
    Ok(target)
}
