//! The post-boot health check and its outcome (DESIGN §7).
//!
//! Run once per boot by the appliance's init. On a slot on trial it runs the
//! configured checks within one overall deadline: all pass, the slot is
//! committed (successful, security floor raised); any fails, the slot is
//! marked bad and the previous slot boots next. It also notices when the boot
//! stage has already fallen back (the slot the last install targeted is not
//! the one running) and reports that once, with the reason.

use crate::config::{Check, Config};
use crate::state::{now, Outcome, StateFile};
use anyhow::{Context, Result};
use bootctl::{BootAttrs, Disk, Slot};
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of a failed check's output kept in the record.
const OUTPUT_LINES: usize = 10;

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
        from: String,
        version: String,
        reason: String,
    },
}

/// The result of one check.
#[derive(Debug)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// Why it failed: exit status, signal or timeout, and its last output lines.
    pub detail: String,
}

/// Runs `check` with its timeout, cut short at `deadline`. Output goes to a
/// temporary file, not a pipe, so a chatty check cannot block on a full pipe.
pub fn run_check(check: &Check, deadline: Instant) -> CheckResult {
    let fail = |detail: String| CheckResult {
        name: check.name.clone(),
        passed: false,
        detail,
    };
    let mut out = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create an output file: {e}")),
    };
    let (stdout, stderr) = match (out.try_clone(), out.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return fail("cannot share the output file".into()),
    };
    let mut child = match Command::new(&check.command[0])
        .args(&check.command[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {:?}: {e}", check.command[0])),
    };
    let own_limit = Instant::now() + Duration::from_secs(check.timeout_s);
    let limit = own_limit.min(deadline);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return fail(format!("waiting for it: {e}")),
        }
    };
    let mut text = String::new();
    let _ = out.rewind().and_then(|()| out.read_to_string(&mut text));
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(OUTPUT_LINES)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let output = if tail.is_empty() {
        String::new()
    } else {
        format!("; output: {}", tail.join(" | "))
    };
    match status {
        Some(s) if s.success() => CheckResult {
            name: check.name.clone(),
            passed: true,
            detail: String::new(),
        },
        Some(s) => fail(format!("{s}{output}")),
        None if own_limit <= deadline => {
            fail(format!("timed out after {} s{output}", check.timeout_s))
        }
        None => fail(format!("cut off by the overall deadline{output}")),
    }
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

/// The health check for the booted slot on `disk`. Never reboots; the caller
/// does, on `Failed`.
pub fn health(
    config: &Config,
    disk_path: &Path,
    sector_size: Option<u64>,
    booted: Slot,
) -> Result<HealthOutcome> {
    let mut state = StateFile::load(&config.state_dir());
    let mut disk = Disk::open(disk_path, sector_size, true)?;
    let attrs = disk.read()?.attrs();

    // Did the boot stage fall back from the slot the last install targeted?
    // Only if that slot cannot be picked any more: one still on trial just
    // waits for its reboot.
    if let Some(last) = state.state.last_install.clone() {
        let booted_new = matches!(last.outcome, Outcome::Installed | Outcome::HealthFailed);
        let target = if last.slot == Slot::A.name() {
            Slot::A
        } else {
            Slot::B
        };
        let t = attrs[target.index()];
        if booted_new && target != booted && !t.is_bootable() {
            let reason = match (last.outcome, last.reason.clone()) {
                (Outcome::HealthFailed, Some(r)) => r,
                _ if t.priority > 0 && t.tries == 0 => {
                    "tries exhausted: it never passed its health check".into()
                }
                _ => "it was marked bad".into(),
            };
            let record = state
                .state
                .last_install
                .as_mut()
                .context("install record vanished")?;
            record.outcome = Outcome::RolledBack;
            record.reason = Some(reason.clone());
            state.record(
                "rolled-back",
                &last.slot,
                Some(&last.version),
                None,
                Some(&reason),
            );
            save(&mut state)?;
            return Ok(HealthOutcome::RolledBack {
                from: last.slot,
                version: last.version,
                reason,
            });
        }
    }

    if attrs[booted.index()].successful {
        return Ok(HealthOutcome::AlreadyGood);
    }
    let version = state
        .state
        .slots
        .get(booted.name())
        .map(|r| r.version.clone());
    match run_checks(config) {
        Ok(()) => {
            disk.mark_good(booted)?;
            if let Some(rec) = state.state.slots.get(booted.name()) {
                state.state.security_floor = state.state.security_floor.max(rec.security_version);
            }
            if let Some(last) = state
                .state
                .last_install
                .as_mut()
                .filter(|l| l.slot == booted.name())
            {
                last.outcome = Outcome::Committed;
                last.finished_at = Some(now());
            }
            state.record("commit", booted.name(), version.as_deref(), None, None);
            save(&mut state)?;
            Ok(HealthOutcome::Committed { version })
        }
        Err(failed) => {
            let reason = format!("health check {:?} failed: {}", failed.name, failed.detail);
            let fallback = booted.other();
            disk.update(|a| {
                a[booted.index()] = BootAttrs::UNBOOTABLE;
                let f = &mut a[fallback.index()];
                if f.successful {
                    f.priority = bootctl::ACTIVE_PRIORITY;
                }
                Ok(())
            })?;
            if let Some(last) = state
                .state
                .last_install
                .as_mut()
                .filter(|l| l.slot == booted.name())
            {
                last.outcome = Outcome::HealthFailed;
                last.reason = Some(reason.clone());
            }
            state.record(
                "health-failed",
                booted.name(),
                version.as_deref(),
                None,
                Some(&reason),
            );
            save(&mut state)?;
            Ok(HealthOutcome::Failed { reason, fallback })
        }
    }
}

fn save(state: &mut StateFile) -> Result<()> {
    state.save().map_err(|source| {
        crate::UpdateError::State {
            path: state.path.clone(),
            source,
        }
        .into()
    })
}
