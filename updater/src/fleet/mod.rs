//! `updater fleet`: updates from a hawkBit DDI server (docs/fleet.md).
//!
//! Each cycle: send what is still to be reported, poll, send the device's
//! attributes when they changed, then act on a cancel or a deployment. A
//! deployment streams the artifact (a `.swu` or `.swb`) straight into the
//! inactive slot through [`crate::install`], and the device reboots into
//! it on trial. Success is reported only when `updater health` has
//! committed the release; failure when the install, the check or the boot
//! failed. The action and its phase live in the state file, so they
//! survive the reboot, a lost connection and a power cut:
//!
//! | phase        | what a crash or reboot there leads to                        |
//! |--------------|--------------------------------------------------------------|
//! | `installing` | the slot was never flipped: tried again when offered again,  |
//! |              | reported failed after [`MAX_ATTEMPTS`] starts                |
//! | `installed`  | settled from the install record once health has run          |
//! | `done`       | the report is sent again until the server takes it           |

pub mod ddi;

use crate::config::Config;
use crate::error::UpdateError;
use crate::events::{Event, Observer};
use crate::install::{install, InstallOptions};
use crate::recover::save;
use crate::source::{self, HttpOptions, HttpReader};
use crate::state::{now, FleetAction, FleetPhase, FleetReport, Outcome, State, StateFile};
use anyhow::Result;
use bootctl::{Disk, Slot};
use ddi::{Ddi, DdiError, Deployment};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Installs started for one action before it is reported as failed.
pub const MAX_ATTEMPTS: u32 = 3;
/// Refusals of a final report (other than 404 and 410, which end it at
/// once) before it is given up: a report the server never takes must not
/// hold back every later deployment.
pub const MAX_REPORT_REFUSALS: u32 = 5;
/// Wait after the first failed poll; doubles up to `max_poll_s`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Poll interval when the server names none.
const DEFAULT_SLEEP: Duration = Duration::from_secs(60);

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cycle {
    /// Nothing to do.
    Idle,
    /// The result of an action was reported.
    Reported { id: String, success: bool },
    /// A release was installed; the device reboots into it (unless told not to).
    Installed {
        id: String,
        version: String,
        slot: Slot,
    },
    /// The server canceled an action before it was installed.
    Canceled { id: String },
    /// The server asked to cancel an action already installed: refused.
    CancelRefused { id: String },
    /// There is work, but not now (a trial pending, a maintenance window).
    Waiting(String),
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cycle::Idle => f.write_str("nothing to do"),
            Cycle::Reported { id, success } => {
                let what = if *success { "success" } else { "failure" };
                write!(f, "action {id}: reported {what}")
            }
            Cycle::Installed { id, version, slot } => write!(
                f,
                "action {id}: {version} installed into {slot}; it boots on trial next, and success is reported once its health check commits it"
            ),
            Cycle::Canceled { id } => write!(f, "action {id}: canceled by the server before it was installed"),
            Cycle::CancelRefused { id } => write!(f, "action {id}: cancel refused, the release is already installed"),
            Cycle::Waiting(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Never reboot (tests, manual runs), whatever the config says.
    pub no_reboot: bool,
    pub threads: usize,
    /// The most memory an install may use, whole process, in bytes.
    pub memory: u64,
    pub http: HttpOptions,
}

/// A device as the fleet client sees it.
pub struct Client<'a> {
    pub config: &'a Config,
    /// Where `config` came from, for errors that name it.
    pub config_path: PathBuf,
    pub fleet: &'a crate::config::Fleet,
    pub disk: PathBuf,
    pub sector_size: Option<u64>,
    pub booted: Slot,
    pub opts: FleetOptions,
}

/// Turns what the install record says about the action's release into a
/// report, once there is one to make. Returns whether `state` changed.
pub fn settle(state: &mut State) -> bool {
    let Some(action) = state.fleet.as_mut() else {
        return false;
    };
    if action.phase == FleetPhase::Done {
        return false;
    }
    let record = state
        .last_install
        .as_ref()
        .filter(|r| r.fleet_action.as_deref() == Some(action.id.as_str()));
    let reason = |r: &crate::state::InstallRecord| {
        r.reason
            .clone()
            .unwrap_or_else(|| format!("{} did not pass its trial", r.version))
    };
    let report = match record.map(|r| (r, r.outcome)) {
        Some((r, Outcome::Committed)) => FleetReport {
            success: true,
            details: vec![format!(
                "{} committed in {} after its health check",
                r.version, r.slot
            )],
        },
        Some((r, Outcome::HealthFailed | Outcome::RolledBack)) => FleetReport {
            success: false,
            details: vec![format!("{} was rolled back: {}", r.version, reason(r))],
        },
        Some((_, Outcome::Installed | Outcome::Flipping)) => {
            let changed = action.phase != FleetPhase::Installed;
            action.phase = FleetPhase::Installed;
            return changed;
        }
        // Installed, then replaced by an install of someone else's (a
        // technician's `updater install`) before it was judged.
        None if action.phase == FleetPhase::Installed => FleetReport {
            success: false,
            details: vec![format!(
                "{} was replaced by another install before its health check",
                action.artifact
            )],
        },
        // Not installed: written part-way and cut short (a power cut, a
        // kill), or the download failed; tried again when the server
        // offers it again, up to a limit.
        _ if action.attempts >= MAX_ATTEMPTS => FleetReport {
            success: false,
            details: vec![format!(
                "the install of {} did not complete in {} attempts (download failures or power cuts); giving up",
                action.artifact, action.attempts
            )],
        },
        _ => return false,
    };
    action.phase = FleetPhase::Done;
    action.report = Some(report);
    true
}

/// After `updater health`: settle the action and send its report now, so
/// the server hears before any reboot. Best effort: what cannot be sent
/// now, `updater fleet` sends later.
pub fn report_after_health(config: &Config, disk: &std::path::Path) {
    let Some(fleet) = &config.fleet else { return };
    let sent = settle_and_save(config, disk).and_then(|()| {
        // Nothing to say: no need for the token, the name or the network.
        let state = StateFile::of(config).state;
        if !state.fleet.is_some_and(|a| a.phase == FleetPhase::Done) {
            return Ok(None);
        }
        let token = fleet.token().map_err(anyhow::Error::msg)?;
        let ddi = Ddi::new(fleet, &token, Duration::from_secs(10))?;
        send_report(config, disk, &ddi)
    });
    match sent {
        Ok(Some(Cycle::Reported { id, success })) => {
            log::info!(
                "fleet action {id}: reported {}",
                if success { "success" } else { "failure" }
            )
        }
        Ok(_) => {}
        Err(e) => log::warn!("fleet: the report waits for `updater fleet`: {e:#}"),
    }
}

fn settle_and_save(config: &Config, disk: &std::path::Path) -> Result<()> {
    let mut session = crate::machine::begin(config, disk)?;
    if settle(&mut session.state.state) {
        save(&mut session.state)?;
    }
    Ok(())
}

/// Changes the state under the disk's lock.
fn change(config: &Config, disk: &std::path::Path, f: impl FnOnce(&mut State)) -> Result<()> {
    let _lock = bootctl::lock::ensure(disk, bootctl::lock::DEFAULT_WAIT)?;
    let mut state = StateFile::of(config);
    state.refuse_newer()?;
    f(&mut state.state);
    save(&mut state)
}

/// A server's answer that refuses this request for good: a 4xx, not one
/// that means "later" (408, 429). A 5xx is an outage, not a refusal.
fn refusal(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
}

/// Sends the finished action's report; forgets the action once the server
/// has it (or no longer knows the action).
fn send_report(config: &Config, disk: &std::path::Path, ddi: &Ddi) -> Result<Option<Cycle>> {
    let state = StateFile::of(config).state;
    let Some(action) = state.fleet.filter(|a| a.phase == FleetPhase::Done) else {
        return Ok(None);
    };
    let report = action.report.clone().unwrap_or(FleetReport {
        success: false,
        details: vec!["the result was lost".into()],
    });
    let finished = if report.success { "success" } else { "failure" };
    match ddi.feedback(&action.id, "closed", finished, None, &report.details) {
        Ok(()) => {}
        Err(DdiError::Gone { .. } | DdiError::Status { status: 404, .. }) => {
            log::warn!(
                "fleet action {}: the server no longer knows it; its report ({finished}) is dropped",
                action.id
            )
        }
        Err(e @ DdiError::Status { status, .. })
            if refusal(status) && action.report_refusals + 1 >= MAX_REPORT_REFUSALS =>
        {
            log::warn!(
                "fleet action {}: the server refused its report ({finished}) {MAX_REPORT_REFUSALS} times, last: {e}; given up",
                action.id
            )
        }
        Err(e @ DdiError::Status { status, .. }) if refusal(status) => {
            change(config, disk, |s| {
                if let Some(a) = s.fleet.as_mut().filter(|a| a.id == action.id) {
                    a.report_refusals += 1;
                }
            })?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    }
    change(config, disk, |s| {
        if s.fleet.as_ref().is_some_and(|a| a.id == action.id) {
            s.fleet = None;
        }
        // The running version may have changed: tell the server again.
        s.fleet_attributes = None;
    })?;
    Ok(Some(Cycle::Reported {
        id: action.id,
        success: report.success,
    }))
}

impl Client<'_> {
    fn ddi(&self) -> Result<Ddi> {
        let token = self.fleet.token().map_err(UpdateError::ConfigFile)?;
        // Checked here so that a missing serial number is named as such,
        // not as a CA file problem.
        self.fleet
            .controller_id()
            .map_err(|reason| UpdateError::Config {
                path: self.config_path.clone(),
                reason,
            })?;
        Ddi::new(self.fleet, &token, self.opts.http.idle_timeout).map_err(|e| {
            UpdateError::ConfigFile(format!(
                "fleet CA file {}: {e:#}",
                self.fleet.ca_file.clone().unwrap_or_default().display()
            ))
            .into()
        })
    }

    /// The running release's version: the signed trailer at the end of the
    /// running slot, else the state's record.
    fn running_version(&self, state: &State) -> Option<String> {
        let keyring = switchback_bundle::Keyring::load_dir(&self.config.keyring).ok();
        let disk = Disk::open(&self.disk, self.sector_size, false).and_then(|mut d| d.read());
        let releases = match (keyring, disk) {
            (Some(keyring), Ok(disk)) => crate::evidence::releases(&self.disk, &disk, &keyring).0,
            _ => [None, None],
        };
        crate::evidence::running_version(state, self.booted, &releases)
    }

    fn attributes(&self) -> BTreeMap<String, String> {
        let state = StateFile::of(self.config).state;
        let mut attributes = BTreeMap::from([
            ("hw_boardname".into(), self.config.compatible.clone()),
            ("hw_revision".into(), self.fleet.hw_revision.clone()),
            (
                "sw_version".into(),
                self.running_version(&state)
                    .unwrap_or_else(|| "unknown".into()),
            ),
        ]);
        // A technician's rollback past the security floor is the fleet's
        // business: the last one stays on the device's record.
        if let Some(e) = state
            .history
            .iter()
            .rev()
            .find(|e| e.event == crate::state::Event::RollbackBelowSecurityFloor)
        {
            let when = std::time::UNIX_EPOCH + Duration::from_secs(e.time);
            attributes.insert(
                "below_security_floor".into(),
                format!(
                    "{} booted by a technician at {}: {}",
                    e.version.as_deref().unwrap_or("unknown"),
                    humantime::format_rfc3339_seconds(when),
                    e.reason.as_deref().unwrap_or("")
                ),
            );
        }
        attributes
    }

    /// One cycle; returns what it did and how long the server asks to wait.
    pub fn cycle(&self) -> Result<(Cycle, Duration)> {
        // Another command holding the disk (an install, possibly of this
        // very action) must not stop the polling: the server still hears
        // from the device, and a cancel gets its answer once the disk is
        // free. Only what needs the disk waits.
        let busy = match settle_and_save(self.config, &self.disk) {
            Err(e)
                if e.chain()
                    .any(|c| matches!(c.downcast_ref(), Some(bootctl::Error::Busy { .. }))) =>
            {
                log::info!("fleet: {e:#}; polling anyway");
                true
            }
            r => r.map(|()| false)?,
        };
        let ddi = self.ddi()?;
        if busy {
            let polled = ddi.poll()?;
            let sleep = polled.sleep.unwrap_or(DEFAULT_SLEEP);
            let done = match (&polled.cancel, &polled.deployment) {
                (Some(href), _) => self.cancel(&ddi, href)?,
                (None, Some(_)) => Cycle::Waiting(format!(
                    "another command holds {}; the deployment waits",
                    self.disk.display()
                )),
                (None, None) => Cycle::Idle,
            };
            return Ok((done, sleep));
        }
        // A report the server will not take must not stop the polling.
        let reported = send_report(self.config, &self.disk, &ddi).unwrap_or_else(|e| {
            log::warn!("fleet: the report waits for the next cycle: {e:#}");
            None
        });
        let polled = ddi.poll()?;
        let sleep = polled.sleep.unwrap_or(DEFAULT_SLEEP);
        let attributes = self.attributes();
        let sent = StateFile::of(self.config).state.fleet_attributes;
        if polled.config_data.is_some() || sent.as_ref() != Some(&attributes) {
            match ddi.config_data(polled.config_data.as_deref(), &attributes) {
                Ok(()) => change(self.config, &self.disk, |s| {
                    s.fleet_attributes = Some(attributes)
                })?,
                Err(e) => log::warn!("fleet: attributes not taken, sent again next cycle: {e}"),
            }
        }
        let done = if let Some(href) = &polled.cancel {
            self.cancel(&ddi, href)?
        } else if let Some(href) = &polled.deployment {
            self.deploy(&ddi, href)?
        } else {
            reported.unwrap_or(Cycle::Idle)
        };
        Ok((done, sleep))
    }

    /// Answers a cancel under the disk's lock, from the settled state: an
    /// install of the same action by another process (which holds the
    /// lock while it writes) is waited for, not canceled under its feet.
    fn cancel(&self, ddi: &Ddi, href: &str) -> Result<Cycle> {
        let (cancel_id, stop_id) = ddi.cancel_action(href)?;
        let lock = match bootctl::lock::lock(&self.disk, Duration::from_secs(1)) {
            Ok(l) => l,
            Err(bootctl::Error::Busy { .. }) => {
                return Ok(Cycle::Waiting(format!(
                    "the server asks to cancel action {stop_id}; answered once the command holding {} (an install?) is done",
                    self.disk.display()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let mut session = crate::machine::begin_locked(self.config, &self.disk, Some(lock))?;
        let state = &mut session.state;
        if settle(&mut state.state) {
            save(state)?;
        }
        let installed = state
            .state
            .fleet
            .as_ref()
            .filter(|a| a.id == stop_id && a.phase != FleetPhase::Installing);
        if let Some(a) = installed {
            let why = if a.phase == FleetPhase::Installed {
                format!(
                    "{} is already installed and boots on trial; it cannot be canceled, roll it back instead",
                    a.artifact
                )
            } else {
                format!("{} has finished; its result is being reported", a.artifact)
            };
            ddi.cancel_feedback(&cancel_id, false, &[why])?;
            return Ok(Cycle::CancelRefused { id: stop_id });
        }
        ddi.cancel_feedback(
            &cancel_id,
            true,
            &["canceled before it was installed".into()],
        )?;
        change(self.config, &self.disk, |s| {
            if s.fleet.as_ref().is_some_and(|a| a.id == stop_id) {
                s.fleet = None;
            }
        })?;
        Ok(Cycle::Canceled { id: stop_id })
    }

    /// Why a deployment offered now is not started now, if it is not.
    fn not_now(&self, d: &Deployment, state: &State) -> Result<Option<String>> {
        match state.fleet.as_ref() {
            Some(a) if a.phase == FleetPhase::Installed => {
                return Ok(Some(format!(
                    "action {} waits for its reboot and health check; deployment {} waits",
                    a.id, d.id
                )));
            }
            Some(a) if a.phase == FleetPhase::Done => {
                return Ok(Some(format!(
                    "action {} waits for the server to take its final report (refused {} of at most {MAX_REPORT_REFUSALS} times); deployment {} waits",
                    a.id, a.report_refusals, d.id
                )));
            }
            _ => {}
        }
        let attrs = Disk::open(&self.disk, self.sector_size, false)?
            .read()?
            .attrs();
        let (running, other) = (
            attrs[self.booted.index()],
            attrs[self.booted.other().index()],
        );
        if !running.successful || (other.is_bootable() && !other.successful) {
            return Ok(Some(format!(
                "a release is on trial; deployment {} waits until it is committed or rolled back",
                d.id
            )));
        }
        if d.download == "skip"
            || d.update == "skip"
            || d.maintenance_window.as_deref() == Some("unavailable")
        {
            return Ok(Some(format!(
                "deployment {}: the server says not yet (download {}, update {})",
                d.id, d.download, d.update
            )));
        }
        Ok(None)
    }

    /// Reports `success` for `id` at once, with `detail`.
    fn close(&self, ddi: &Ddi, id: &str, success: bool, detail: String) -> Result<Cycle> {
        change(self.config, &self.disk, |s| {
            s.fleet = Some(FleetAction {
                id: id.into(),
                artifact: String::new(),
                phase: FleetPhase::Done,
                started_at: now(),
                attempts: 0,
                report: Some(FleetReport {
                    success,
                    details: vec![detail],
                }),
                report_refusals: 0,
            })
        })?;
        Ok(send_report(self.config, &self.disk, ddi)?.unwrap_or(Cycle::Idle))
    }

    fn deploy(&self, ddi: &Ddi, href: &str) -> Result<Cycle> {
        let d = ddi.deployment(href)?;
        let state = StateFile::of(self.config).state;
        if let Some(why) = self.not_now(&d, &state)? {
            return Ok(Cycle::Waiting(why));
        }
        let running = self.running_version(&state);
        if d.version.is_some() && d.version == running {
            // A lost state file, or a server that missed the report.
            let detail = format!(
                "{} is running and committed already",
                d.version.unwrap_or_default()
            );
            return self.close(ddi, &d.id, true, detail);
        }
        let Some(artifact) = d
            .artifacts
            .iter()
            .find(|a| a.filename.ends_with(".swu") || a.filename.ends_with(".swb"))
        else {
            let names: Vec<&str> = d.artifacts.iter().map(|a| a.filename.as_str()).collect();
            let passed_over = if d.unusable.is_empty() {
                String::new()
            } else {
                format!(
                    "; passed over for want of an http(s) link: {:?}",
                    d.unusable
                )
            };
            let detail = format!(
                "no usable .swu or .swb artifact in deployment {} (it has: {names:?}{passed_over})",
                d.id
            );
            return self.close(ddi, &d.id, false, detail);
        };
        let attempts = state
            .fleet
            .as_ref()
            .filter(|a| a.id == d.id)
            .map_or(0, |a| a.attempts)
            + 1;
        change(self.config, &self.disk, |s| {
            s.fleet = Some(FleetAction {
                id: d.id.clone(),
                artifact: artifact.filename.clone(),
                phase: FleetPhase::Installing,
                started_at: now(),
                attempts,
                report: None,
                report_refusals: 0,
            })
        })?;
        let size = artifact
            .size
            .map_or(String::new(), |s| format!(" ({s} bytes)"));
        let start = format!(
            "Downloading {}{size} into {}",
            artifact.filename,
            self.booted.other()
        );
        if let Err(e) = ddi.feedback(&d.id, "proceeding", "none", None, &[start]) {
            log::warn!("fleet: {e}");
        }
        let installed = self.install(ddi, &d.id, &artifact.href, &artifact.filename);
        match installed {
            Ok(done) => {
                change(self.config, &self.disk, |s| {
                    if let Some(a) = s.fleet.as_mut().filter(|a| a.id == d.id) {
                        a.phase = FleetPhase::Installed;
                    }
                })?;
                let reboot = self.fleet.reboot && !self.opts.no_reboot;
                let next = if reboot {
                    "rebooting into it on trial"
                } else {
                    "it boots on trial at the next reboot"
                };
                let line = format!(
                    "{} installed into {}; {next}",
                    done.manifest.version, done.slot
                );
                let lines = ["Downloaded 100%".to_string(), line];
                if let Err(e) = ddi.feedback(&d.id, "proceeding", "none", Some((100, 100)), &lines)
                {
                    log::warn!("fleet: {e}");
                }
                if reboot {
                    log::info!("fleet: action {}: {}", d.id, lines[1]);
                    crate::reboot(&self.disk)?;
                }
                Ok(Cycle::Installed {
                    id: d.id,
                    version: done.manifest.version,
                    slot: done.slot,
                })
            }
            // The server, the network or the disk's lock failed, not the
            // release: the next offer tries again (within MAX_ATTEMPTS).
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                // A flip that reported an error may have taken effect: the
                // install record says, and then the verdict is health's.
                settle_and_save(self.config, &self.disk)?;
                let state = StateFile::of(self.config).state;
                if state
                    .fleet
                    .as_ref()
                    .is_some_and(|a| a.id == d.id && a.phase == FleetPhase::Installed)
                {
                    return Err(e);
                }
                let detail = format!("{e:#}");
                change(self.config, &self.disk, |s| {
                    if let Some(a) = s.fleet.as_mut().filter(|a| a.id == d.id) {
                        a.phase = FleetPhase::Done;
                        a.report = Some(FleetReport {
                            success: false,
                            details: vec![detail],
                        });
                    }
                })?;
                if let Err(report) = send_report(self.config, &self.disk, ddi) {
                    log::warn!("fleet: the failure report waits for the next cycle: {report:#}");
                }
                Err(e)
            }
        }
    }

    fn install(
        &self,
        ddi: &Ddi,
        id: &str,
        href: &str,
        name: &str,
    ) -> Result<crate::install::Installed> {
        let agent = source::agent(
            self.opts.http.idle_timeout,
            self.fleet.ca_file.as_deref(),
            true,
            None,
        )?;
        let reader = HttpReader::with_agent(
            href,
            self.opts.http.clone(),
            agent,
            ddi.authorization_for(href),
        )?;
        let input = source::unwrap(Box::new(reader), name)?;
        let opts = InstallOptions {
            disk: self.disk.clone(),
            sector_size: self.sector_size,
            booted: self.booted,
            allow_downgrade: false,
            threads: self.opts.threads,
            memory: self.opts.memory,
            fleet_action: Some(id.to_string()),
        };
        // Progress goes to the server from a thread of its own, so that a
        // slow server never holds up the writing.
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for percent in rx {
                    let line = format!("Downloaded {percent}%");
                    if let Err(e) =
                        ddi.feedback(id, "proceeding", "none", Some((percent, 100)), &[line])
                    {
                        log::warn!("fleet: {e}");
                    }
                }
            });
            let mut observer = Progress {
                inner: crate::events::Terminal::default(),
                tx,
                sent: 0,
            };
            let config = self.config;
            install(config, input, &opts, &mut observer)
        })
    }

    /// Polls until stopped: waits as the server asks (within
    /// `max_poll_s`), backs off on errors and on 429.
    pub fn serve(&self) -> ! {
        let max = Duration::from_secs(self.fleet.max_poll_s);
        let mut failures = 0u32;
        loop {
            let wait = match self.cycle() {
                Ok((done, sleep)) => {
                    failures = 0;
                    if done != Cycle::Idle {
                        log::info!("fleet: {done}");
                    }
                    jittered(sleep.clamp(Duration::from_secs(1), max))
                }
                Err(e) => {
                    failures += 1;
                    let backoff =
                        (FIRST_BACKOFF * 2u32.saturating_pow(failures.min(16) - 1)).min(max);
                    let asked = match crate::error::find::<DdiError>(&e) {
                        Some(DdiError::TooMany { retry_after, .. }) => Some(*retry_after),
                        _ => None,
                    };
                    // The server's Retry-After the first time; a server that
                    // keeps refusing gets the growing back-off at least.
                    let wait = match asked {
                        Some(Some(after)) if failures == 1 => {
                            after.clamp(Duration::from_secs(1), max)
                        }
                        Some(Some(after)) => {
                            after.max(backoff / 2).clamp(Duration::from_secs(1), max)
                        }
                        _ => backoff,
                    };
                    let wait = jittered(wait);
                    log::warn!("fleet: {e:#}; next poll in {} s", wait.as_secs());
                    wait
                }
            };
            std::thread::sleep(wait);
        }
    }
}

/// `wait` lengthened by up to a tenth, at random: devices that start
/// together (a site's power back, the end of an outage) drift apart rather
/// than poll the server in step. Never shorter than the server asked.
fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A thread's first RandomState is keyed from the OS's randomness and
    // each next one differently: random enough to spread polls, without a
    // crate for it.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    wait + wait.mul_f64((r % 1000) as f64 / 10_000.0)
}

/// Whether the install failed for want of the download (the server or
/// the network) or of the disk's lock (a technician's command), rather
/// than because of what was downloaded.
fn is_transient(e: &anyhow::Error) -> bool {
    use crate::error::typed;
    e.chain().any(|link| {
        matches!(
            typed::<bootctl::Error>(link),
            Some(bootctl::Error::Busy { .. })
        ) || matches!(typed::<UpdateError>(link), Some(UpdateError::Http { .. }))
    })
}

/// The install's progress on the terminal, and every tenth to the server.
struct Progress<O: Observer> {
    inner: O,
    tx: std::sync::mpsc::SyncSender<u64>,
    sent: u64,
}

impl<O: Observer> Observer for Progress<O> {
    fn event(&mut self, event: &Event) {
        self.inner.event(event);
        if let Event::Progress { done, total } = event {
            let percent = (done.saturating_mul(100) / (*total).max(1)).min(100) / 10 * 10;
            // A full channel means the server is slow: this step is
            // folded into the next one sent, so the server never misses
            // the latest figure for long (the end is reported once the
            // install returns).
            if percent > self.sent && self.tx.try_send(percent).is_ok() {
                self.sent = percent;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::InstallRecord;

    fn with(phase: FleetPhase, attempts: u32, record: Option<(&str, Outcome)>) -> State {
        State {
            fleet: Some(FleetAction {
                id: "6".into(),
                artifact: "2.0.0.swu".into(),
                phase,
                // A clock that stepped back: times must not matter.
                started_at: 2_000_000_000,
                attempts,
                report: None,
                report_refusals: 0,
            }),
            last_install: record.map(|(action, outcome)| InstallRecord {
                slot: bootctl::Slot::A,
                version: "2.0.0".into(),
                from_version: None,
                started_at: 1,
                finished_at: None,
                outcome,
                reason: Some("health check \"svc\" failed".into()),
                fleet_action: Some(action.into()).filter(|a: &String| !a.is_empty()),
            }),
            ..State::default()
        }
    }

    fn report(s: &State) -> Option<(bool, String)> {
        let a = s.fleet.as_ref()?;
        let r = a.report.as_ref()?;
        Some((r.success, r.details.join(" ")))
    }

    /// What the server hears of an install's progress: tens, and a step
    /// it was too slow to take folded into the next, not lost.
    #[test]
    fn progress_goes_out_in_tens_and_a_step_the_server_missed_comes_with_the_next() {
        struct Quiet;
        impl Observer for Quiet {
            fn event(&mut self, _: &Event) {}
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let mut p = Progress {
            inner: Quiet,
            tx,
            sent: 0,
        };
        let mut at = |done: u64| p.event(&Event::Progress { done, total: 100 });
        at(5);
        at(12);
        assert_eq!(rx.try_recv(), Ok(10));
        at(25);
        // The server is busy with 20: 30 and 40 cannot go yet...
        at(33);
        at(47);
        assert_eq!(rx.try_recv(), Ok(20));
        // ...and the next step sends the latest figure.
        at(48);
        assert_eq!(rx.try_recv(), Ok(40));
        at(100);
        assert_eq!(rx.try_recv(), Ok(100));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn polls_are_spread_over_a_tenth_of_the_sleep_and_never_early() {
        let asked = Duration::from_secs(100);
        let waits: Vec<Duration> = (0..50).map(|_| jittered(asked)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= asked && *w <= asked + asked / 10));
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }

    #[test]
    fn only_the_actions_own_install_record_decides_its_report() {
        use FleetPhase::*;
        // Another install's commit is not this action's success.
        let mut s = with(Installing, 1, Some(("", Outcome::Committed)));
        assert!(!settle(&mut s));
        assert_eq!(s.fleet.as_ref().unwrap().phase, Installing);
        let mut s = with(Installed, 1, Some(("6", Outcome::Committed)));
        assert!(settle(&mut s));
        assert_eq!(
            report(&s),
            Some((
                true,
                "2.0.0 committed in slot_a after its health check".into()
            ))
        );
        let mut s = with(Installed, 1, Some(("6", Outcome::HealthFailed)));
        settle(&mut s);
        let (ok, why) = report(&s).unwrap();
        assert!(
            !ok && why.contains("rolled back") && why.contains("svc"),
            "{why}"
        );
        // Installed, then overwritten by a technician's install.
        let mut s = with(Installed, 1, Some(("", Outcome::Installed)));
        settle(&mut s);
        assert!(report(&s)
            .unwrap()
            .1
            .contains("replaced by another install"));
        // Cut short: tried again, then given up.
        let mut s = with(Installing, 2, Some(("6", Outcome::Failed)));
        assert!(!settle(&mut s));
        let mut s = with(Installing, MAX_ATTEMPTS, Some(("6", Outcome::Failed)));
        settle(&mut s);
        assert!(report(&s)
            .unwrap()
            .1
            .contains("did not complete in 3 attempts"));
        // Written and flipped, the record saved before the crash.
        let mut s = with(Installing, 1, Some(("6", Outcome::Flipping)));
        assert!(settle(&mut s));
        assert_eq!(s.fleet.as_ref().unwrap().phase, Installed);
        assert!(report(&s).is_none());
    }
}
