//! Finishing or undoing what a crash interrupted. Every step that changes
//! the device records its intent in the state file first; every
//! state-changing command (install, health, rollback) calls [`recover`]
//! under the disk's lock before anything else (`machine::begin`), and it
//! settles each step from what the disk shows. The last column names the
//! crash points (`machine::CRASH_POINTS`) that leave each row; the crash
//! tests stop the updater at every one (`updater/tests/crashes.rs`):
//!
//! | left in the state             | the disk shows                | done       | crash points |
//! |-------------------------------|-------------------------------|------------|--------------|
//! | a snapshot of the data        | (see `migrate::Snapshot`)     | restored or removed | |
//! | install `installing`          | the slot unbootable           | failed     | install-begun, install-target-unbootable, install-migrated |
//! | install `flipping`            | the slot bootable             | installed  | install-flipped |
//! | install `flipping`            | the slot unbootable           | failed     | install-flipping |
//! | `committing` slot             | the slot successful           | commit finished (floor, finalize) | commit-marked-good |
//! | `committing` slot             | not successful                | intent dropped; the next health check decides | commit-begun |
//! | `finalize_pending` release    | health of that release        | finalize runs (twice at most) | commit-recorded, finalize-started |
//! | install `installed`           | the slot marked bad           | rolled back (the health check of the other slot) | health-failed-marked |
//! | nothing (a technician's rollback) | the other slot active     | nothing to settle: the disk has it, the history misses it | rollback-flipped |

use crate::config::Config;
use crate::evidence;
use crate::migrate;
use crate::state::StateFile;
use crate::UpdateError;
use anyhow::Result;
use bootctl::{Disk, Slot};
use std::path::Path;
use switchback_bundle::Keyring;

pub fn save(state: &mut StateFile) -> Result<()> {
    state.save().map_err(|source| {
        UpdateError::State {
            path: state.path.clone(),
            source,
        }
        .into()
    })
}

/// The rest of a commit once `slot` is marked good on the disk: raise the
/// security floor, record it, then run the release's finalize migrations
/// once. Each step is saved before the next begins.
pub fn finish_commit(
    config: &Config,
    slot: Slot,
    security_version: Option<u64>,
    state: &mut StateFile,
) -> Result<()> {
    state.state.finish_commit(slot, security_version);
    save(state).map_err(|e| UpdateError::PartlyDone {
        done: format!("{slot} is committed (marked good on the disk)"),
        failed: format!(
            "recording the commit failed ({e:#}); the next updater command completes it"
        ),
    })?;
    crate::crash_point!("commit-recorded");
    run_finalize(config, slot, state)
}

/// Runs the pending finalize migrations if the release they belong to is
/// the one in `slot`: only from the health check of that release, never
/// before a rollback to the release they would break. A failure is
/// recorded and the release stays committed; an interrupted run (a power
/// cut: its snapshot is restored first) is tried once more, then given up.
pub fn run_finalize(config: &Config, slot: Slot, state: &mut StateFile) -> Result<()> {
    let Some(version) = state.state.finalize_pending.clone() else {
        return Ok(());
    };
    if state.state.slots.get(&slot).map(|r| &r.version) != Some(&version) {
        return Ok(());
    }
    let give_up = |state: &mut StateFile, why: String| -> Result<()> {
        log::warn!("{why}");
        state.state.finalize_given_up(slot, &version, &why);
        save(state)
    };
    if state.state.finalize_attempts >= 2 {
        return give_up(
            state,
            "finalize was interrupted twice (a crash or power cut while it ran); given up, the data is as before it".into(),
        );
    }
    state.state.finalize_started();
    save(state)?;
    crate::crash_point!("finalize-started");
    let env = migrate::MigrationEnv {
        release: version.clone(),
        data_dir: config.data_dir.clone(),
        new_slot: slot.name().into(),
    };
    let result = migrate::finalize(config, &version, &env, || {
        state.state.finalize_done(&version);
        save(state)
    });
    match result {
        Ok(_) => Ok(()),
        Err(e) => give_up(state, format!("{e:#}")),
    }
}

/// Finishes or undoes every interrupted step (module docs) but a pending
/// finalize (the health check runs that, [`run_finalize`]), before the
/// caller reads anything else. Returns what was done, for the log.
pub fn recover(config: &Config, disk: &Path, state: &mut StateFile) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let schema = state.state.data_schema.unwrap_or(migrate::INITIAL_SCHEMA);
    let finalized = state.state.finalized.as_deref();
    let declared = |release: &str, phase| migrate::declared_dirs(config, release, phase);
    if let Some(what) = migrate::recover_snapshot(&config.data_dir, schema, finalized, declared)? {
        done.push(what);
    }
    let d = Disk::open(disk, None, false)?.read()?;
    let attrs = d.attrs();
    if let Some(what) = state.state.settle_from_flags(attrs) {
        done.push(what);
        save(state)?;
    }
    if let Some(slot) = state.state.committing {
        if attrs[slot.index()].successful {
            done.push(format!(
                "finished the commit of {slot} that a crash interrupted"
            ));
            let sv = security_version_of(config, disk, &d, slot, state);
            finish_commit(config, slot, sv, state)?;
        } else {
            state.state.drop_commit();
            save(state)?;
        }
    }
    for w in &done {
        log::warn!("recovered: {w}");
    }
    Ok(done)
}

/// The security version of the release in `slot`: from the state, else
/// from the slot's signed trailer.
pub fn security_version_of(
    config: &Config,
    disk: &Path,
    d: &bootctl::State,
    slot: Slot,
    state: &StateFile,
) -> Option<u64> {
    if let Some(r) = state.state.slots.get(&slot) {
        return Some(r.security_version);
    }
    let keyring = Keyring::load_dir(&config.keyring).ok()?;
    let dev = std::fs::File::open(disk).ok()?;
    evidence::read(&dev, &evidence::SlotArea::of(d, slot), &keyring)
        .ok()
        .flatten()
        .map(|m| m.security_version)
}
