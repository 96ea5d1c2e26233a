//! The post-boot health check and its outcome (docs/updater.md, `updater health`; docs/architecture.md).
//!
//! Run once per boot by the appliance's init. On a slot on trial it runs the
//! configured checks within one overall deadline: all pass, the slot is
//! committed (successful, security floor raised); any fails, the slot is
//! marked bad and the previous slot boots next. It also notices when the boot
//! stage has already fallen back (the slot the last install targeted is not
//! the one running) and reports that once, with the reason.

use crate::config::{Check, Config};
use crate::recover::{finish_commit, run_finalize, save, security_version_of};
use crate::runner::{run_command, CheckResult};
use crate::state::Outcome;
use anyhow::Result;
use bootctl::{BootAttrs, Disk, Slot};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthOutcome {
    /// The slot was committed before; nothing to do.
    AlreadyGood,
    /// All checks passed; the slot is committed now.
    Committed { version: Option<String> },
    /// A check failed; the slot is marked bad and `fallback` boots next.
    Failed { reason: String, fallback: Slot },
    /// The boot stage fell back from the slot the last install targeted.
    RolledBack {
        from: Slot,
        version: String,
        reason: String,
    },
}

/// Runs `check` with its timeout, cut short at `deadline`. Unconfined: it
/// is the running release's own code and must see the system as it is
/// (its processes, devices, network; docs/updater.md).
pub fn run_check(check: &Check, deadline: Instant) -> CheckResult {
    run_command(
        &check.name,
        &check.command,
        &[],
        Duration::from_secs(check.timeout_s),
        Some(deadline),
        None,
    )
}

/// Runs every check in order within `deadline_s`; the first failure stops them.
pub fn run_checks(config: &Config) -> std::result::Result<(), CheckResult> {
    let deadline = Instant::now() + Duration::from_secs(config.health.deadline_s);
    for check in &config.health.checks {
        let result = run_check(check, deadline);
        log::info!(
            "health check {}: {}",
            result.name,
            if result.passed {
                "passed"
            } else {
                &result.detail
            }
        );
        if !result.passed {
            return Err(result);
        }
    }
    Ok(())
}

/// Why the boot stage could not start `slot` in this boot, as it told this
/// kernel (`switchback.start_failed`, docs/boot-flow.md); only on the disk
/// the machine runs from.
fn start_failure(disk: &Path, slot: Slot) -> Option<String> {
    let cmdline = bootctl::host::read_cmdline();
    let value = bootctl::host::cmdline_value(&cmdline, bootctl::boot_stage::START_FAILED)?;
    if crate::not_the_running_disk(disk, &cmdline).is_some() {
        return None;
    }
    let (failed, why) = bootctl::boot_stage::describe_start_failure(&value)?;
    (failed == slot).then_some(why)
}

/// The health check for the booted slot on `disk`. Never reboots; the caller
/// does, on `Failed`.
pub fn health(
    config: &Config,
    disk_path: &Path,
    sector_size: Option<u64>,
    booted: Slot,
) -> Result<HealthOutcome> {
    let mut session = crate::machine::begin(config, disk_path)?;
    let state = &mut session.state;
    let mut disk = Disk::open(disk_path, sector_size, true)?;
    let attrs = disk.read()?.attrs();

    // Did the boot stage fall back from the slot the last install targeted?
    // Only if that slot cannot be picked any more: one still on trial just
    // waits for its reboot.
    if let Some(last) = state.state.last_install.clone() {
        let booted_new = matches!(last.outcome, Outcome::Installed | Outcome::HealthFailed);
        let target = last.slot;
        let t = attrs[target.index()];
        if booted_new && target != booted && !t.is_bootable() {
            let started = start_failure(disk_path, target);
            let reason = match (last.outcome, last.reason.clone(), started) {
                (Outcome::HealthFailed, Some(r), _) => r,
                (_, _, Some(why)) => why,
                _ if t.priority > 0 && t.tries == 0 => {
                    "tries exhausted: it never passed its health check".into()
                }
                _ => "it was marked bad".into(),
            };
            state.state.fell_back(&reason);
            save(state)?;
            return Ok(HealthOutcome::RolledBack {
                from: last.slot,
                version: last.version,
                reason,
            });
        }
    }

    if attrs[booted.index()].successful {
        // A finalize that a power cut interrupted, or whose commit it cut.
        run_finalize(config, booted, state)?;
        return Ok(HealthOutcome::AlreadyGood);
    }
    let version = state.state.slots.get(&booted).map(|r| r.version.clone());
    // A slot marked bad (by a technician, or a check run elsewhere) while
    // on trial is a failed trial, whatever the checks would say now.
    let verdict = if attrs[booted.index()].priority == 0 {
        Err(format!(
            "{booted} was marked bad before its health check ran"
        ))
    } else {
        // The whole root through dm-verity first: a release whose blocks
        // differ from what was signed is not committed, whatever its checks.
        crate::integrity::check_whole_root().and_then(|()| {
            run_checks(config)
                .map_err(|f| format!("health check {:?} failed: {}", f.name, f.detail))
        })
    };
    match verdict {
        Ok(()) => {
            // Intent first: a crash after the flag is finished by `recover`.
            let sv = security_version_of(config, disk_path, &disk.read()?, booted, state);
            state.state.begin_commit(booted);
            save(state)?;
            crate::crash_point!("commit-begun");
            disk.mark_good(booted)?;
            crate::crash_point!("commit-marked-good");
            finish_commit(config, booted, sv, state)?;
            Ok(HealthOutcome::Committed { version })
        }
        Err(reason) => {
            let fallback = booted.other();
            disk.update(|a| {
                a[booted.index()] = BootAttrs::UNBOOTABLE;
                let f = &mut a[fallback.index()];
                if f.successful {
                    f.priority = bootctl::ACTIVE_PRIORITY;
                }
                Ok(())
            })?;
            crate::crash_point!("health-failed-marked");
            state.state.health_failed(booted, &reason);
            save(state)?;
            Ok(HealthOutcome::Failed { reason, fallback })
        }
    }
}
