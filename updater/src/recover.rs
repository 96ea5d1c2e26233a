//! Finishing or undoing what a crash interrupted. Every step that changes
//! the device records its intent in the state file first; every
//! state-changing command (install, health, rollback) calls [`recover`]
//! under the disk's lock before anything else, and it settles each step
//! from what the disk shows:
//!
//! | left in the state             | the disk shows                | done       |
//! |-------------------------------|-------------------------------|------------|
//! | a snapshot of the data        | (see `migrate::Snapshot`)     | restored or removed |
//! | install `installing`          | the slot unbootable           | failed     |
//! | install `flipping`            | the slot bootable             | installed  |
//! | install `flipping`            | the slot unbootable           | failed     |
//! | `committing` slot             | the slot successful           | commit finished (floor, finalize) |
//! | `committing` slot             | not successful                | intent dropped; the next health check decides |
//! | `finalize_pending` release    | health of that release        | finalize runs (twice at most) |

use crate::config::Config;
use crate::evidence;
use crate::migrate;
use crate::state::{now, Outcome, StateFile};
use crate::UpdateError;
use anyhow::Result;
use bootctl::{BootAttrs, Disk, Slot};
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

fn slot_named(name: &str) -> Option<Slot> {
    name.parse().ok()
}

/// Settles an install record left `installing` or `flipping` from the
/// target slot's flags. Returns what it did.
pub fn settle_install(state: &mut StateFile, attrs: [BootAttrs; 2]) -> Option<String> {
    let rec = state.state.last_install.clone()?;
    let target = slot_named(&rec.slot)?;
    let bootable = attrs[target.index()].priority > 0;
    let failed = |why: String| (Outcome::Failed, Some(why), "install-failed");
    let (outcome, reason, event) = match rec.outcome {
        // Marking the slot unbootable is the first thing done to it.
        Outcome::Installing if bootable => {
            failed(format!("interrupted before {} was touched", rec.slot))
        }
        Outcome::Installing => failed(format!(
            "interrupted while writing {}; it stays unbootable",
            rec.slot
        )),
        Outcome::Flipping if bootable => (Outcome::Installed, None, "install"),
        Outcome::Flipping => failed(format!(
            "interrupted before the flip; {} stays unbootable",
            rec.slot
        )),
        _ => return None,
    };
    if outcome == Outcome::Failed && !bootable {
        state.state.slots.remove(&rec.slot);
    }
    if let Some(r) = state.state.last_install.as_mut() {
        r.outcome = outcome;
        r.reason.clone_from(&reason);
        r.finished_at.get_or_insert_with(now);
    }
    state.record(
        event,
        &rec.slot,
        Some(&rec.version),
        rec.from_version.as_deref(),
        reason.as_deref(),
    );
    Some(match reason {
        Some(r) => format!("the install of {} {r}", rec.version),
        None => format!(
            "the install of {} into {} completed before a crash; recorded now",
            rec.version, rec.slot
        ),
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
    let version = state
        .state
        .slots
        .get(slot.name())
        .map(|r| r.version.clone());
    if let Some(sv) = security_version {
        state.state.security_floor = state.state.security_floor.max(sv);
    }
    if let Some(last) = state
        .state
        .last_install
        .as_mut()
        .filter(|l| l.slot == slot.name())
    {
        last.outcome = Outcome::Committed;
        last.finished_at = Some(now());
    }
    state.record("commit", slot.name(), version.as_deref(), None, None);
    state.state.committing = None;
    state.state.finalize_pending = version;
    state.state.finalize_attempts = 0;
    save(state).map_err(|e| UpdateError::PartlyDone {
        done: format!("{slot} is committed (marked good on the disk)"),
        failed: format!(
            "recording the commit failed ({e:#}); the next updater command completes it"
        ),
    })?;
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
    if state.state.slots.get(slot.name()).map(|r| &r.version) != Some(&version) {
        return Ok(());
    }
    let give_up = |state: &mut StateFile, why: String| -> Result<()> {
        log::warn!("{why}");
        state.state.finalize_pending = None;
        state.state.finalize_attempts = 0;
        state.record(
            "finalize-failed",
            slot.name(),
            Some(&version),
            None,
            Some(&why),
        );
        save(state)
    };
    if state.state.finalize_attempts >= 2 {
        return give_up(
            state,
            "finalize was interrupted twice (a crash or power cut while it ran); given up, the data is as before it".into(),
        );
    }
    state.state.finalize_attempts += 1;
    save(state)?;
    let env = migrate::MigrationEnv {
        release: version.clone(),
        data_dir: config.data_dir.clone(),
        new_slot: slot.name().into(),
    };
    let result = migrate::finalize(config, &version, &env, || {
        state.state.finalize_pending = None;
        state.state.finalize_attempts = 0;
        state.state.finalized = Some(version.clone());
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
    if let Some(what) = settle_install(state, attrs) {
        done.push(what);
        save(state)?;
    }
    if let Some(slot) = state
        .state
        .committing
        .clone()
        .as_deref()
        .and_then(slot_named)
    {
        if attrs[slot.index()].successful {
            done.push(format!(
                "finished the commit of {slot} that a crash interrupted"
            ));
            let sv = security_version_of(config, disk, &d, slot, state);
            finish_commit(config, slot, sv, state)?;
        } else {
            state.state.committing = None;
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
    if let Some(r) = state.state.slots.get(slot.name()) {
        return Some(r.security_version);
    }
    let keyring = Keyring::load_dir(&config.keyring).ok()?;
    let dev = std::fs::File::open(disk).ok()?;
    evidence::read(&dev, &evidence::SlotArea::of(d, slot), &keyring)
        .ok()
        .flatten()
        .map(|m| m.security_version)
}
