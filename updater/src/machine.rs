//! The device's records as one state machine: every change the updater
//! makes to what the state file says about an install, a commit, a health
//! verdict or a rollback is one of the transitions below, named after the
//! step it records. The transitions only change the records; the callers
//! (`install`, `health`, `recover`, `rollback`) do the disk's part and save
//! in the order their docs give, intent before action
//! (docs/architecture.md, "Write order").
//!
//! An install's record moves so:
//!
//! ```text
//! begin_install ──> installing ──> flipping ──> installed ──> committed
//!                       │   │          │   ^        │
//!                       │   │          │   │        └──> health-failed ──> rolled-back
//!                       │   └──> ready ┼───┘ (activate)
//!                       └──> failed <──┘
//! ```
//!
//! `ready` (an install with `--no-activate`) leaves the slot written and
//! unbootable; `activate` takes it on through `flipping` as an install
//! would.
//!
//! `settle_from_flags` is the crash path out of `installing` and
//! `flipping` (see `recover`).
//!
//! [`begin`] is the preamble of every state-changing command: the disk's
//! lock, the state, and whatever a crash left settled, in that order.

use crate::config::Config;
use crate::state::{
    now, Event, HistoryEntry, InstallRecord, Outcome, SlotRecord, State, StateFile,
};
use anyhow::Result;
use bootctl::{BootAttrs, Slot};
use std::path::Path;

/// Every crash point (`crash_point!`) and the state the next command
/// settles the device to after a crash there: the recovery table in
/// `recover` names each, and `updater/tests/crashes.rs` crashes at each.
pub const CRASH_POINTS: [(&str, &str); 11] = [
    ("install-begun", "install failed, the slot unbootable"),
    (
        "install-target-unbootable",
        "install failed, the slot unbootable",
    ),
    (
        "install-migrated",
        "install failed, the slot unbootable, the data restored",
    ),
    ("install-flipping", "install failed, the slot unbootable"),
    ("install-flipped", "installed, on trial at the next boot"),
    ("commit-begun", "the next health check commits"),
    (
        "commit-marked-good",
        "the commit is finished, the floor raised",
    ),
    ("commit-recorded", "finalize runs at the next health check"),
    ("finalize-started", "finalize runs once more"),
    (
        "health-failed-marked",
        "rolled back, recorded by the other slot's health check",
    ),
    (
        "rollback-flipped",
        "the other slot boots; the history misses the rollback",
    ),
];

/// What a state-changing command holds while it runs: the disk's lock
/// (none when the caller already held it) and the settled state.
pub struct Session {
    pub state: StateFile,
    _lock: Option<bootctl::lock::DiskLock>,
}

/// The preamble of every state-changing command: take the disk's lock
/// before anything is read (what is checked stays true), load the state,
/// refuse one a newer updater wrote, and settle what a crash left
/// (`recover`).
pub fn begin(config: &Config, disk: &Path) -> Result<Session> {
    let lock = bootctl::lock::ensure(disk, bootctl::lock::DEFAULT_WAIT)?;
    begin_locked(config, disk, lock)
}

/// [`begin`] for a caller that took the disk's lock its own way (the fleet
/// client's cancel waits a second, not a minute).
pub fn begin_locked(
    config: &Config,
    disk: &Path,
    lock: Option<bootctl::lock::DiskLock>,
) -> Result<Session> {
    let mut state = StateFile::of(config);
    state.refuse_newer()?;
    crate::recover::recover(config, disk, &mut state)?;
    Ok(Session { state, _lock: lock })
}

impl State {
    fn record(
        &mut self,
        event: Event,
        slot: Slot,
        version: Option<&str>,
        from: Option<&str>,
        reason: Option<&str>,
    ) {
        self.history.push(HistoryEntry {
            time: now(),
            event,
            slot,
            version: version.map(Into::into),
            from_version: from.map(Into::into),
            reason: reason.map(Into::into),
        });
    }

    fn set_outcome(&mut self, outcome: Outcome, reason: Option<String>) {
        if let Some(r) = self.last_install.as_mut() {
            r.outcome = outcome;
            r.reason = reason;
            if outcome != Outcome::Flipping {
                r.finished_at.get_or_insert_with(now);
            }
        }
    }

    /// Install step 1, saved before `target` is touched: the install is
    /// under way and `target` holds nothing a record can vouch for.
    pub fn begin_install(
        &mut self,
        target: Slot,
        version: &str,
        from_version: Option<String>,
        fleet_action: Option<String>,
    ) {
        self.last_install = Some(InstallRecord {
            slot: target,
            version: version.into(),
            from_version,
            started_at: now(),
            finished_at: None,
            outcome: Outcome::Installing,
            reason: None,
            fleet_action,
        });
        self.slots.remove(&target);
    }

    /// Install step 3, saved before the flip: `target` is written, checked
    /// and holds `release`; the disk's flags tell later whether the flip
    /// happened.
    pub fn flipping(&mut self, target: Slot, release: SlotRecord) {
        self.slots.insert(target, release);
        self.set_outcome(Outcome::Flipping, None);
    }

    /// Install step 3 without the flip (`--no-activate`): `target` is
    /// written, checked and holds `release`, and stays unbootable until
    /// `activate` flips it.
    pub fn ready(&mut self, target: Slot, release: SlotRecord) {
        self.slots.insert(target, release);
        self.set_outcome(Outcome::Ready, None);
    }

    /// A fleet action of the ready release's version takes it over (a
    /// download-only action wrote it, another one offers it again): what
    /// is reported of it goes to that action.
    pub fn ready_for(&mut self, fleet_action: &str) {
        if let Some(r) = self
            .last_install
            .as_mut()
            .filter(|r| r.outcome == Outcome::Ready)
        {
            r.fleet_action = Some(fleet_action.into());
        }
    }

    /// Activation step 1, saved before the flip: the ready install goes on
    /// as an install does from [`State::flipping`], with `release` (from
    /// the slot's signed record) as what `target` holds; a fleet action
    /// that activates it (not the one that downloaded it) is the one its
    /// verdict is reported to.
    pub fn activating(&mut self, target: Slot, release: SlotRecord, fleet_action: Option<String>) {
        if let Some(r) = self.last_install.as_mut() {
            r.finished_at = None;
            if fleet_action.is_some() {
                r.fleet_action = fleet_action;
            }
        }
        self.flipping(target, release);
    }

    /// Install step 5: the flip took effect; the release waits for its
    /// reboot and health check.
    pub fn installed(&mut self) {
        self.set_outcome(Outcome::Installed, None);
        if let Some(r) = self.last_install.clone() {
            self.record(
                Event::Install,
                r.slot,
                Some(&r.version),
                r.from_version.as_deref(),
                None,
            );
        }
    }

    /// The install failed before its flip: its slot holds nothing.
    pub fn install_failed(&mut self, reason: &str) {
        let Some(r) = self.last_install.clone() else {
            return;
        };
        self.slots.remove(&r.slot);
        self.set_outcome(Outcome::Failed, Some(reason.into()));
        self.record(
            Event::InstallFailed,
            r.slot,
            Some(&r.version),
            r.from_version.as_deref(),
            Some(reason),
        );
    }

    /// Settles an install left `installing` or `flipping` (a crash, or a
    /// flip that reported an error) from the target slot's flags. Returns
    /// what it did, or `None` when there was nothing to settle.
    pub fn settle_from_flags(&mut self, attrs: [BootAttrs; 2]) -> Option<String> {
        let rec = self.last_install.clone()?;
        let bootable = attrs[rec.slot.index()].priority > 0;
        let failed = |why: String| (Outcome::Failed, Some(why), Event::InstallFailed);
        let (outcome, reason, event) = match rec.outcome {
            // Marking the slot unbootable is the first thing done to it.
            Outcome::Installing if bootable => {
                failed(format!("interrupted before {} was touched", rec.slot))
            }
            Outcome::Installing => failed(format!(
                "interrupted while writing {}; it stays unbootable",
                rec.slot
            )),
            Outcome::Flipping if bootable => (Outcome::Installed, None, Event::Install),
            Outcome::Flipping => failed(format!(
                "interrupted before the flip; {} stays unbootable",
                rec.slot
            )),
            _ => return None,
        };
        if outcome == Outcome::Failed && !bootable {
            self.slots.remove(&rec.slot);
        }
        self.set_outcome(outcome, reason.clone());
        self.record(
            event,
            rec.slot,
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

    /// Commit step 1, saved before `slot` is marked good on the disk.
    pub fn begin_commit(&mut self, slot: Slot) {
        self.committing = Some(slot);
    }

    /// A commit whose flag never reached the disk: the intent is dropped
    /// and the next health check decides.
    pub fn drop_commit(&mut self) {
        self.committing = None;
    }

    /// Commit step 3, once `slot` is marked good: the floor rises to the
    /// release's security version, the install record ends committed, and
    /// the release's finalize migrations become due.
    pub fn finish_commit(&mut self, slot: Slot, security_version: Option<u64>) {
        let version = self.slots.get(&slot).map(|r| r.version.clone());
        if let Some(sv) = security_version {
            self.security_floor = self.security_floor.max(sv);
        }
        if let Some(last) = self.last_install.as_mut().filter(|l| l.slot == slot) {
            last.outcome = Outcome::Committed;
            last.finished_at = Some(now());
        }
        self.record(Event::Commit, slot, version.as_deref(), None, None);
        self.committing = None;
        self.finalize_pending = version;
        self.finalize_attempts = 0;
    }

    /// The release on trial in `slot` failed its health check (or was
    /// marked bad before it ran); the disk already boots the other slot.
    pub fn health_failed(&mut self, slot: Slot, reason: &str) {
        let version = self.slots.get(&slot).map(|r| r.version.clone());
        if let Some(last) = self.last_install.as_mut().filter(|l| l.slot == slot) {
            last.outcome = Outcome::HealthFailed;
            last.reason = Some(reason.into());
        }
        self.record(
            Event::HealthFailed,
            slot,
            version.as_deref(),
            None,
            Some(reason),
        );
    }

    /// The boot stage fell back from the last install's slot: the install
    /// ends rolled back, for `reason`.
    pub fn fell_back(&mut self, reason: &str) {
        let Some(last) = self.last_install.as_mut() else {
            return;
        };
        last.outcome = Outcome::RolledBack;
        last.reason = Some(reason.into());
        let (slot, version) = (last.slot, last.version.clone());
        self.record(Event::RolledBack, slot, Some(&version), None, Some(reason));
    }

    /// A technician's rollback to `to`; `below_floor` when it went past
    /// the security floor, with why that was allowed.
    pub fn technician_rollback(
        &mut self,
        to: Slot,
        to_version: Option<&str>,
        from_version: Option<&str>,
        below_floor: Option<&str>,
    ) {
        let (event, reason) = match below_floor {
            Some(why) => (Event::RollbackBelowSecurityFloor, why),
            None => (Event::Rollback, "requested by a technician"),
        };
        self.record(event, to, to_version, from_version, Some(reason));
    }

    /// Finalize is about to run once more: counted first, so that a run a
    /// power cut ends is seen at the next boot.
    pub fn finalize_started(&mut self) {
        self.finalize_attempts += 1;
    }

    /// Finalize of `version` took effect.
    pub fn finalize_done(&mut self, version: &str) {
        self.finalize_pending = None;
        self.finalize_attempts = 0;
        self.finalized = Some(version.into());
    }

    /// Finalize of `version` in `slot` is given up for `why`; the release
    /// stays committed.
    pub fn finalize_given_up(&mut self, slot: Slot, version: &str, why: &str) {
        self.finalize_pending = None;
        self.finalize_attempts = 0;
        self.record(Event::FinalizeFailed, slot, Some(version), None, Some(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list, the recovery table and the code name the same points.
    #[test]
    fn every_crash_point_is_in_the_recovery_table_and_in_the_code() {
        let table = include_str!("recover.rs");
        let code = [
            include_str!("install.rs"),
            include_str!("health.rs"),
            include_str!("recover.rs"),
            include_str!("rollback.rs"),
        ]
        .concat();
        let in_code: Vec<&str> = code
            .split("crash_point!(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        let listed: Vec<&str> = CRASH_POINTS.iter().map(|(n, _)| *n).collect();
        let mut sorted = in_code.clone();
        sorted.sort_unstable();
        let mut want = listed.clone();
        want.sort_unstable();
        assert_eq!(sorted, want, "crash_point! calls against CRASH_POINTS");
        for name in listed {
            let row = table.lines().filter(|l| l.starts_with("//! |")).any(|l| {
                l.rsplit('|')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|n| n.trim() == name))
            });
            assert!(row, "{name} is in no row of recover.rs's table");
        }
    }

    fn release(version: &str) -> SlotRecord {
        SlotRecord {
            version: version.into(),
            compatible: "demo".into(),
            digest: "d".into(),
            security_version: 3,
            data_schema: None,
            installed_at: 1,
        }
    }

    fn flags(a: i32, b: i32) -> [BootAttrs; 2] {
        let at = |p: i32| BootAttrs {
            priority: p as u8,
            tries: 0,
            successful: p > 0,
        };
        [at(a), at(b)]
    }

    fn events(s: &State) -> Vec<String> {
        s.history
            .iter()
            .map(|h| format!("{} {}", h.event, h.slot))
            .collect()
    }

    #[test]
    fn an_install_runs_through_its_steps_to_the_commit() {
        let mut s = State::default();
        s.slots.insert(Slot::B, release("0.9.0"));
        s.begin_install(Slot::B, "2.0.0", Some("1.0.0".into()), None);
        assert!(!s.slots.contains_key(&Slot::B), "the old record goes first");
        assert_eq!(
            s.last_install.as_ref().unwrap().outcome,
            Outcome::Installing
        );
        s.flipping(Slot::B, release("2.0.0"));
        assert_eq!(s.last_install.as_ref().unwrap().finished_at, None);
        s.installed();
        s.begin_commit(Slot::B);
        s.finish_commit(Slot::B, Some(3));
        let last = s.last_install.as_ref().unwrap();
        assert_eq!(last.outcome, Outcome::Committed);
        assert_eq!((s.security_floor, s.committing), (3, None));
        assert_eq!(s.finalize_pending.as_deref(), Some("2.0.0"));
        assert_eq!(events(&s), ["install slot_b", "commit slot_b"]);
    }

    /// The table in `recover`: installing/flipping against the target's flags.
    #[test]
    fn a_crash_is_settled_from_the_targets_flags() {
        let cases = [
            (
                Outcome::Installing,
                0,
                Outcome::Failed,
                "install-failed",
                false,
            ),
            (
                Outcome::Installing,
                3,
                Outcome::Failed,
                "install-failed",
                true,
            ),
            (
                Outcome::Flipping,
                0,
                Outcome::Failed,
                "install-failed",
                false,
            ),
            (Outcome::Flipping, 3, Outcome::Installed, "install", true),
        ];
        for (left, priority, settled, event, record_kept) in cases {
            let mut s = State::default();
            s.begin_install(Slot::B, "2.0.0", None, None);
            s.slots.insert(Slot::B, release("2.0.0"));
            s.set_outcome(left, None);
            assert!(s.settle_from_flags(flags(1, priority)).is_some());
            assert_eq!(
                s.last_install.as_ref().unwrap().outcome,
                settled,
                "{left:?} {priority}"
            );
            assert_eq!(events(&s), [format!("{event} slot_b")]);
            assert_eq!(
                s.slots.contains_key(&Slot::B),
                record_kept,
                "{left:?} {priority}"
            );
            // Settled once: nothing more to do.
            assert!(s.settle_from_flags(flags(1, priority)).is_none());
        }
    }

    #[test]
    fn a_failed_health_check_then_the_fallback() {
        let mut s = State::default();
        s.begin_install(Slot::B, "2.0.0", None, None);
        s.flipping(Slot::B, release("2.0.0"));
        s.installed();
        s.health_failed(Slot::B, "health check \"app\" failed");
        assert_eq!(
            s.last_install.as_ref().unwrap().outcome,
            Outcome::HealthFailed
        );
        s.fell_back("health check \"app\" failed");
        assert_eq!(
            s.last_install.as_ref().unwrap().outcome,
            Outcome::RolledBack
        );
        assert_eq!(
            events(&s),
            [
                "install slot_b",
                "health-failed slot_b",
                "rolled-back slot_b"
            ]
        );
    }

    #[test]
    fn events_keep_their_names_in_the_file_and_unknown_ones_survive() {
        let mut s = State::default();
        s.technician_rollback(Slot::A, Some("1.0.0"), Some("2.0.0"), Some("below 3"));
        s.history.push(HistoryEntry {
            event: Event::from("something-newer"),
            ..s.history[0].clone()
        });
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["history"][0]["event"], "rollback-below-security-floor");
        assert_eq!(json["history"][0]["slot"], "slot_a");
        let back: State = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.history[1].event,
            Event::Other("something-newer".into())
        );
        assert_eq!(back, s);
    }
}
