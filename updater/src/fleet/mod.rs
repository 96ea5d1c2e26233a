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
//!
//! In three parts: [`action`] decides what an action comes to, [`schedule`]
//! when to poll next, both without I/O; this module is the client that
//! talks to the server and the disk. Each step loads the state once, under
//! the disk's lock when it changes it.

pub mod action;
pub mod ddi;
pub mod schedule;

use crate::config::Config;
use crate::error::UpdateError;
use crate::events::{Event, Observer};
use crate::install::{install, InstallOptions};
use crate::recover::save;
use crate::source::{self, HttpOptions, HttpReader};
use crate::state::{now, FleetAction, FleetPhase, FleetReport, Outcome, State, StateFile};
use action::{settle, Refused};
pub use action::{MAX_ATTEMPTS, MAX_REPORT_REFUSALS};
use anyhow::Result;
use bootctl::{Disk, Slot};
use ddi::{Ddi, DdiError, Execution, Finished};
use schedule::Last;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cycle {
    /// Nothing to do.
    Idle,
    /// The result of an action was reported.
    Reported {
        id: String,
        success: bool,
    },
    /// A release was installed; the device reboots into it (unless told not to).
    Installed {
        id: String,
        version: String,
        slot: Slot,
    },
    /// The server canceled an action before it was installed.
    Canceled {
        id: String,
    },
    /// The server asked to cancel an action already installed: refused.
    CancelRefused {
        id: String,
    },
    /// A release was written and left unbootable: the server allows its
    /// download, not yet its update.
    Downloaded {
        id: String,
        version: String,
        slot: Slot,
    },
    /// An action the server asked to confirm was confirmed, or denied.
    Confirmed {
        id: String,
        by: &'static str,
    },
    Denied {
        id: String,
    },
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
            Cycle::Downloaded { id, version, slot } => write!(
                f,
                "action {id}: {version} downloaded into {slot} and left unbootable; it is activated when the server allows the update"
            ),
            Cycle::Confirmed { id, by } => write!(f, "action {id}: confirmed {by}; the server offers it next"),
            Cycle::Denied { id } => write!(f, "action {id}: denied"),
            Cycle::Waiting(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// An operator's answer to the server's request to confirm an action:
    /// its id, and whether it is confirmed (`--confirm`) or denied.
    pub answer: Option<(String, bool)>,
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
    /// The last poll reply and its ETag, for the next poll's
    /// `If-None-Match`.
    pub poll_cache: ddi::PollCache,
}

/// After `updater health`: settle the action and send its report now, so
/// the server hears before any reboot. Best effort: what cannot be sent
/// now, `updater fleet` sends later.
pub fn report_after_health(config: &Config, disk: &std::path::Path) {
    let Some(fleet) = &config.fleet else { return };
    let sent = settle_and_save(config, disk).and_then(|mut state| {
        // Nothing to say: no need for the token, the name or the network.
        if !state
            .fleet
            .as_ref()
            .is_some_and(|a| a.phase == FleetPhase::Done)
        {
            return Ok(None);
        }
        let authorization = fleet.authorization().map_err(anyhow::Error::msg)?;
        let ddi = Ddi::new(fleet, authorization, Duration::from_secs(10))?;
        send_report(config, disk, &ddi, &mut state)
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

/// The state as the device's records settle it (a crash's leftovers, the
/// action's verdict), saved: the one load a cycle starts with.
fn settle_and_save(config: &Config, disk: &std::path::Path) -> Result<State> {
    let mut session = crate::machine::begin(config, disk)?;
    if settle(&mut session.state.state) {
        save(&mut session.state)?;
    }
    Ok(session.state.state)
}

/// Changes the state under the disk's lock, from the file as it is now
/// (another command may have changed it since the cycle began), and
/// returns what was saved.
fn change(config: &Config, disk: &std::path::Path, f: impl FnOnce(&mut State)) -> Result<State> {
    let _lock = bootctl::lock::ensure(disk, bootctl::lock::DEFAULT_WAIT)?;
    let mut file = StateFile::of(config);
    file.refuse_newer()?;
    f(&mut file.state);
    save(&mut file)?;
    Ok(file.state)
}

/// Sends the finished action's report in `state`; forgets the action once
/// the server has it (or no longer knows the action). `state` becomes what
/// was saved.
fn send_report(
    config: &Config,
    disk: &std::path::Path,
    ddi: &Ddi,
    state: &mut State,
) -> Result<Option<Cycle>> {
    let Some(action) = state.fleet.clone().filter(|a| a.phase == FleetPhase::Done) else {
        return Ok(None);
    };
    let report = action.report.clone().unwrap_or(FleetReport {
        success: false,
        details: vec!["the result was lost".into()],
    });
    let finished = match report.success {
        true => Finished::Success,
        false => Finished::Failure,
    };
    let sent = ddi.feedback(
        &action.id,
        Execution::Closed,
        finished,
        None,
        &report.details,
    );
    let taken = sent.is_ok();
    if let Err(e) = sent {
        match action::refused(&e, action.report_refusals) {
            Refused::Unknown => log::warn!(
                "fleet action {}: the server no longer knows it; its report ({finished}) is dropped",
                action.id
            ),
            Refused::GivenUp => log::warn!(
                "fleet action {}: the server refused its report ({finished}) {MAX_REPORT_REFUSALS} times, last: {e}; given up",
                action.id
            ),
            Refused::Counted => {
                *state = change(config, disk, |s| {
                    if let Some(a) = s.fleet.as_mut().filter(|a| a.id == action.id) {
                        a.report_refusals += 1;
                    }
                })?;
                return Err(e.into());
            }
            Refused::Later => return Err(e.into()),
        }
    }
    *state = change(config, disk, |s| {
        if s.fleet.as_ref().is_some_and(|a| a.id == action.id) {
            s.fleet = None;
        }
        // The running version may have changed: tell the server again.
        s.fleet_attributes = None;
        // Its own action's success, taken, says what is installed.
        let installed = s
            .last_install
            .as_ref()
            .filter(|i| i.fleet_action.as_deref() == Some(action.id.as_str()))
            .map(|i| i.version.clone());
        if report.success && taken && installed.is_some() {
            s.fleet_installed_base = installed;
        }
    })?;
    Ok(Some(Cycle::Reported {
        id: action.id,
        success: report.success,
    }))
}

impl Client<'_> {
    fn ddi(&self) -> Result<Ddi> {
        let authorization = self
            .fleet
            .authorization()
            .map_err(UpdateError::ConfigFile)?;
        self.fleet
            .check_attributes(&self.config.compatible)
            .map_err(|reason| UpdateError::Config {
                path: self.config_path.clone(),
                reason,
            })?;
        // Checked here so that a missing serial number is named as such,
        // not as a CA file problem.
        self.fleet
            .controller_id()
            .map_err(|reason| UpdateError::Config {
                path: self.config_path.clone(),
                reason,
            })?;
        Ddi::new(self.fleet, authorization, self.opts.http.idle_timeout)
            .map_err(|e| UpdateError::ConfigFile(format!("the fleet's TLS files: {e:#}")).into())
    }

    /// The running release's version (the signed trailer at the end of the
    /// running slot, else the state's record), and whether its slot is
    /// committed (marked successful). Read once a cycle: the attributes,
    /// `installedBase` and a deployment's "already running" use it.
    fn running(&self, state: &State) -> (Option<String>, bool) {
        let keyring = switchback_bundle::Keyring::load_dir(&self.config.keyring).ok();
        let disk = Disk::open(&self.disk, self.sector_size, false).and_then(|mut d| d.read());
        let committed = disk
            .as_ref()
            .is_ok_and(|d| d.attrs()[self.booted.index()].successful);
        let releases = match (keyring, disk) {
            (Some(keyring), Ok(disk)) => crate::evidence::releases(&self.disk, &disk, &keyring).0,
            _ => [None, None],
        };
        let version = crate::evidence::running_version(state, self.booted, &releases);
        (version, committed)
    }

    /// Tells the server the committed release that runs when it did not
    /// put it there (a USB stick, the local page, the factory) and has not
    /// heard of it yet. Never while one of its actions is under way on the
    /// device: that action's report says it. Best effort: tried again
    /// next cycle.
    fn installed_base(
        &self,
        ddi: &Ddi,
        state: State,
        running: &(Option<String>, bool),
    ) -> Result<State> {
        if state.fleet.is_some() {
            return Ok(state);
        }
        let (Some(version), true) = running.clone() else {
            return Ok(state);
        };
        if state.fleet_installed_base.as_ref() == Some(&version) {
            return Ok(state);
        }
        let name = self
            .fleet
            .distribution
            .as_deref()
            .unwrap_or(&self.config.compatible);
        match ddi.installed_base(name, &version) {
            Ok(()) => log::info!("fleet: told the server that {name} {version} is installed"),
            // An older hawkBit, another server, or a distribution set the
            // server does not have: the attributes still say what runs.
            // Refusals that asking again would not change; anything else
            // (408, 409, 429, a token being replaced) is asked again.
            Err(DdiError::Status {
                status: 400 | 404 | 405 | 410 | 501,
                ..
            }) => log::info!(
                "fleet: the server takes no installedBase for {name} {version}; its sw_version attribute says what runs"
            ),
            Err(e) => {
                log::warn!("fleet: installedBase not taken, sent again next cycle: {e}");
                return Ok(state);
            }
        }
        change(self.config, &self.disk, |s| {
            s.fleet_installed_base = Some(version)
        })
    }

    fn attributes(&self, state: &State, running: Option<&str>) -> BTreeMap<String, String> {
        let mut attributes = BTreeMap::from([
            ("hw_boardname".into(), self.config.compatible.clone()),
            ("hw_revision".into(), self.fleet.hw_revision.clone()),
            (
                "sw_version".into(),
                ddi::fit_attribute(running.unwrap_or("unknown")),
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
                ddi::fit_attribute(&format!(
                    "{} booted by a technician at {}: {}",
                    e.version.as_deref().unwrap_or("unknown"),
                    humantime::format_rfc3339_seconds(when),
                    e.reason.as_deref().unwrap_or("")
                )),
            );
        }
        attributes
    }

    /// One cycle; returns what it did and how long the server asks to wait
    /// (None: it named no time).
    pub fn cycle(&self) -> Result<(Cycle, Option<Duration>)> {
        // Another command holding the disk (an install, possibly of this
        // very action) must not stop the polling: the server still hears
        // from the device, and a cancel gets its answer once the disk is
        // free. Only what needs the disk waits.
        // An operator's answer is not polled past: it waits for the disk
        // (Busy) rather than be dropped while the page says it was given.
        let settled = match settle_and_save(self.config, &self.disk) {
            Err(e)
                if self.opts.answer.is_none()
                    && matches!(
                        crate::error::find::<bootctl::Error>(&e),
                        Some(bootctl::Error::Busy { .. })
                    ) =>
            {
                log::info!("fleet: {e:#}; polling anyway");
                None
            }
            r => Some(r?),
        };
        let ddi = self.ddi()?;
        let Some(mut state) = settled else {
            let polled = ddi.poll(&self.poll_cache)?;
            let done = match (&polled.cancel, &polled.deployment) {
                (Some(href), _) => self.cancel(&ddi, href)?,
                (None, Some(_)) => Cycle::Waiting(format!(
                    "another command holds {}; the deployment waits",
                    self.disk.display()
                )),
                (None, None) => Cycle::Idle,
            };
            return Ok((done, polled.sleep));
        };
        // A report the server will not take must not stop the polling.
        let reported = send_report(self.config, &self.disk, &ddi, &mut state).unwrap_or_else(|e| {
            log::warn!("fleet: the report waits for the next cycle: {e:#}");
            None
        });
        let polled = ddi.poll(&self.poll_cache)?;
        let running = self.running(&state);
        let attributes = self.attributes(&state, running.0.as_deref());
        if polled.config_data.is_some() || state.fleet_attributes.as_ref() != Some(&attributes) {
            match ddi.config_data(polled.config_data.as_deref(), &attributes) {
                Ok(()) => {
                    state = change(self.config, &self.disk, |s| {
                        s.fleet_attributes = Some(attributes)
                    })?
                }
                Err(e) => log::warn!("fleet: attributes not taken, sent again next cycle: {e}"),
            }
        }
        // Only when the server has nothing under way for the device:
        // hawkBit records an installedBase as an assignment, which would
        // end an action it still offers.
        let idle =
            polled.deployment.is_none() && polled.cancel.is_none() && polled.confirmation.is_none();
        // Nor when the operator's answer to a confirmation is all that
        // was asked: that sends nothing else.
        if idle && self.opts.answer.is_none() {
            state = self.installed_base(&ddi, state, &running)?;
        }
        // The server no longer asks: nothing waits for an operator.
        if polled.confirmation.is_none() && state.fleet_confirmation.is_some() {
            state = change(self.config, &self.disk, |s| s.fleet_confirmation = None)?;
        }
        if let Some(asked) = self.opts.answer.as_ref().map(|(id, _)| id) {
            if polled.confirmation.is_none() {
                return Err(UpdateError::NothingToConfirm {
                    id: asked.clone(),
                    why: "the server asks no confirmation now".into(),
                }
                .into());
            }
        }
        let done = if let (Some(href), Some(_)) = (&polled.confirmation, &self.opts.answer) {
            // What the operator asked for is done first, never dropped
            // for a cancel the same poll carries (answered next cycle).
            self.confirmation(&ddi, href, &state)?
        } else if let Some(href) = &polled.cancel {
            self.cancel(&ddi, href)?
        } else if let Some(href) = &polled.confirmation {
            self.confirmation(&ddi, href, &state)?
        } else if let Some(href) = &polled.deployment {
            self.deploy(&ddi, href, state, running.0)?
        } else {
            reported.unwrap_or(Cycle::Idle)
        };
        Ok((done, polled.sleep))
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
        let installed = state.state.fleet.as_ref().filter(|a| {
            a.id == stop_id && matches!(a.phase, FleetPhase::Installed | FleetPhase::Done)
        });
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

    /// Answers the server's request to confirm an action: as the operator
    /// said (`--confirm`/`--deny` naming it), or at once with `confirm:
    /// auto`; else it waits, and says how to answer, and the state keeps
    /// what waits for `status` and the page to show.
    fn confirmation(&self, ddi: &Ddi, href: &str, state: &State) -> Result<Cycle> {
        let (id, version) = ddi.confirmation(href)?;
        let waiting = Some(crate::state::FleetConfirmation {
            action: id.clone(),
            version: version.clone(),
        });
        let answer = match (&self.opts.answer, self.fleet.confirm) {
            (Some((asked, yes)), _) if *asked == id => Some((*yes, "by an operator at the device")),
            (Some((asked, _)), confirm) => {
                // What the server asks about now is what the page offers.
                if confirm == crate::config::Confirm::Local && state.fleet_confirmation != waiting {
                    change(self.config, &self.disk, |s| s.fleet_confirmation = waiting)?;
                }
                return Err(UpdateError::NothingToConfirm {
                    id: asked.clone(),
                    why: format!("the server asks to confirm action {id}"),
                }
                .into());
            }
            (None, crate::config::Confirm::Auto) => {
                Some((true, "automatically (fleet.confirm: auto)"))
            }
            (None, crate::config::Confirm::Local) => None,
        };
        let what = match &version {
            Some(v) => format!("action {id} ({v})"),
            None => format!("action {id}"),
        };
        let Some((yes, by)) = answer else {
            if state.fleet_confirmation != waiting {
                change(self.config, &self.disk, |s| s.fleet_confirmation = waiting)?;
            }
            return Ok(Cycle::Waiting(format!(
                "{what} waits for a confirmation at the device: updater fleet --once --confirm {id} (or --deny {id})"
            )));
        };
        let said = if yes { "confirmed" } else { "denied" };
        ddi.confirm(&id, yes, &[format!("{what} {said} {by}")])?;
        // Answered, as the server took it; a denied action it asks about
        // again is kept again by the next poll.
        if state.fleet_confirmation.is_some() {
            change(self.config, &self.disk, |s| s.fleet_confirmation = None)?;
        }
        Ok(match yes {
            true => Cycle::Confirmed { id, by },
            false => Cycle::Denied { id },
        })
    }

    /// Why a deployment offered now is not started now, if it is not
    /// ([`action::waits`], with the disk's flags read now).
    fn waits(&self, d: &ddi::Deployment, state: &State) -> Result<Option<String>> {
        let attrs = Disk::open(&self.disk, self.sector_size, false)?
            .read()?
            .attrs();
        Ok(action::waits(
            state.fleet.as_ref(),
            attrs[self.booted.index()],
            attrs[self.booted.other().index()],
            d,
        ))
    }

    /// Reports `success` for `id` at once, with `detail`.
    /// Closes action `id` without an install. A success closes it for the
    /// release that runs, `running`: what the server then knows is
    /// installed.
    fn close(
        &self,
        ddi: &Ddi,
        id: &str,
        success: bool,
        detail: String,
        running: Option<String>,
    ) -> Result<Cycle> {
        let mut state = change(self.config, &self.disk, |s| {
            if success && running.is_some() {
                s.fleet_installed_base = running;
            }
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
        Ok(send_report(self.config, &self.disk, ddi, &mut state)?.unwrap_or(Cycle::Idle))
    }

    /// `running`: the running release's version, as the cycle read it.
    fn deploy(
        &self,
        ddi: &Ddi,
        href: &str,
        state: State,
        running: Option<String>,
    ) -> Result<Cycle> {
        let d = ddi.deployment(href)?;
        if let Some(why) = self.waits(&d, &state)? {
            return Ok(Cycle::Waiting(why));
        }
        if d.version.is_some() && d.version == running {
            // A lost state file, or a server that missed the report.
            let detail = format!(
                "{} is running and committed already",
                d.version.as_deref().unwrap_or_default()
            );
            return self.close(ddi, &d.id, true, detail, d.version.clone());
        }
        let later = action::download_only(&d);
        // Written for an earlier download-only offer: activated now, or
        // left waiting, never downloaded again.
        let ready = state.last_install.as_ref().filter(|r| {
            r.outcome == Outcome::Ready
                && r.slot == self.booted.other()
                && d.version.as_deref() == Some(r.version.as_str())
        });
        if let Some(r) = ready {
            let (version, slot) = (r.version.clone(), r.slot);
            return match later {
                true => self.downloaded(ddi, &d.id, &state, &version, slot),
                false => self.activate(ddi, &d.id),
            };
        }
        let Some(artifact) = self.choose(ddi, &d)? else {
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
                "no usable .swu or .swb artifact for {} in deployment {} (it has: {names:?}{passed_over})",
                self.config.compatible, d.id
            );
            return self.close(ddi, &d.id, false, detail, None);
        };
        let attempts = state
            .fleet
            .as_ref()
            .filter(|a| a.id == d.id)
            .map_or(0, |a| a.attempts)
            + 1;
        let state = self.begin(&d.id, &artifact.filename, attempts)?;
        let size = artifact
            .size
            .map_or(String::new(), |s| format!(" ({s} bytes)"));
        let start = format!(
            "Downloading {}{size} into {}",
            artifact.filename,
            self.booted.other()
        );
        if let Err(e) = ddi.feedback(&d.id, Execution::Proceeding, Finished::None, None, &[start]) {
            log::warn!("fleet: {e}");
        }
        match self.install(ddi, &d, artifact, !later) {
            Ok(done) if !done.activated => {
                self.downloaded(ddi, &d.id, &state, &done.manifest.version, done.slot)
            }
            Ok(done) => self.installed(
                ddi,
                &d.id,
                &done.manifest.version,
                done.slot,
                "installed into",
            ),
            // The server, the network or the disk's lock failed, not the
            // release: the next offer tries again (within MAX_ATTEMPTS).
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => self.failed(ddi, &d.id, e),
        }
    }

    /// The deployment's `.swu` or `.swb` for this device. One is taken as
    /// it is (the install checks it); of several (a distribution set of
    /// several modules, for several kinds of device), each one's signed
    /// header is read and the first signed for this device's `compatible`
    /// is taken, the others passed over with a warning. None when no
    /// artifact is for this device.
    fn choose<'d>(&self, ddi: &Ddi, d: &'d ddi::Deployment) -> Result<Option<&'d ddi::Artifact>> {
        let candidates: Vec<&ddi::Artifact> = d
            .artifacts
            .iter()
            .filter(|a| a.filename.ends_with(".swu") || a.filename.ends_with(".swb"))
            .collect();
        if candidates.len() < 2 {
            return Ok(candidates.first().copied());
        }
        let mut others = Vec::new();
        let mut unread = false;
        for a in candidates {
            let compatible = self
                .open(ddi, a)
                .and_then(|reader| source::unwrap(Box::new(reader), &a.filename))
                .and_then(|r| Ok(switchback_bundle::Envelope::read(r)?.unverified_manifest()?))
                .map(|m| m.compatible);
            match compatible {
                Ok(c) if c == self.config.compatible => {
                    if !others.is_empty() {
                        log::warn!(
                            "fleet: deployment {}: {} is for {}; passed over: {}",
                            d.id,
                            a.filename,
                            c,
                            others.join(", ")
                        );
                    }
                    return Ok(Some(a));
                }
                Ok(c) => others.push(format!("{} (for {c})", a.filename)),
                Err(e) => {
                    unread = true;
                    others.push(format!("{} (unreadable: {e:#})", a.filename));
                }
            }
        }
        // Ours may be the one that could not be read: the next offer
        // tries again, nothing is reported.
        if unread {
            return Err(UpdateError::Http {
                url: format!("deployment {}", d.id),
                reason: format!(
                    "no artifact read so far is for {}: {}",
                    self.config.compatible,
                    others.join(", ")
                ),
            }
            .into());
        }
        log::warn!(
            "fleet: deployment {}: no artifact for {}: {}",
            d.id,
            self.config.compatible,
            others.join(", ")
        );
        Ok(None)
    }

    /// Records that `id` is being carried out, before anything is written.
    fn begin(&self, id: &str, artifact: &str, attempts: u32) -> Result<State> {
        change(self.config, &self.disk, |s| {
            s.fleet = Some(FleetAction {
                id: id.into(),
                artifact: artifact.into(),
                phase: FleetPhase::Installing,
                started_at: now(),
                attempts,
                report: None,
                report_refusals: 0,
            })
        })
    }

    /// `version` is in `slot`, unbootable, for action `id`, whose update
    /// the server does not allow yet: `downloaded` is reported once for
    /// the action (for a download-only action, what closes it).
    fn downloaded(
        &self,
        ddi: &Ddi,
        id: &str,
        state: &State,
        version: &str,
        slot: Slot,
    ) -> Result<Cycle> {
        let told = state
            .fleet
            .as_ref()
            .is_some_and(|a| a.id == id && a.phase == FleetPhase::Downloaded);
        if !told {
            let line = format!(
                "{version} downloaded into {slot} and checked; it is activated when the update is allowed"
            );
            ddi.feedback(
                id,
                Execution::Downloaded,
                Finished::None,
                Some((100, 100)),
                &[line],
            )?;
            change(self.config, &self.disk, |s| {
                s.ready_for(id);
                s.fleet = Some(FleetAction {
                    id: id.into(),
                    artifact: version.into(),
                    phase: FleetPhase::Downloaded,
                    started_at: now(),
                    attempts: 1,
                    report: None,
                    report_refusals: 0,
                })
            })?;
        }
        Ok(Cycle::Downloaded {
            id: id.into(),
            version: version.into(),
            slot,
        })
    }

    /// Activates the release written for an earlier download-only offer,
    /// for action `id`: checked again whole, then flipped, as `updater
    /// activate` does.
    fn activate(&self, ddi: &Ddi, id: &str) -> Result<Cycle> {
        self.begin(id, "the release downloaded before", 1)?;
        let opts = crate::activate::ActivateOptions {
            disk: self.disk.clone(),
            sector_size: self.sector_size,
            booted: self.booted,
            allow_downgrade: false,
            threads: self.opts.threads,
            fleet_action: Some(id.into()),
        };
        let mut observer = crate::events::Terminal::default();
        match crate::activate::activate(self.config, &opts, &mut observer) {
            Ok((slot, m)) => self.installed(ddi, id, &m.version, slot, "activated in"),
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                // What was downloaded no longer holds: the next offer
                // downloads it again rather than failing the same way.
                let why = format!("{e:#}");
                change(self.config, &self.disk, |s| {
                    if s.last_install
                        .as_ref()
                        .is_some_and(|r| r.outcome == Outcome::Ready)
                    {
                        s.install_failed(&why);
                    }
                })?;
                self.failed(ddi, id, e)
            }
        }
    }

    /// `version` boots next from `slot` on trial, for action `id` (`how`:
    /// "installed into" or "activated in"): said to the server, and rebooted into
    /// when the config says so.
    fn installed(
        &self,
        ddi: &Ddi,
        id: &str,
        version: &str,
        slot: Slot,
        how: &str,
    ) -> Result<Cycle> {
        change(self.config, &self.disk, |s| {
            if let Some(a) = s.fleet.as_mut().filter(|a| a.id == id) {
                a.phase = FleetPhase::Installed;
            }
        })?;
        let reboot = self.fleet.reboot && !self.opts.no_reboot;
        let next = if reboot {
            "rebooting into it on trial"
        } else {
            "it boots on trial at the next reboot"
        };
        let lines = [
            "Downloaded 100%".to_string(),
            format!("{version} {how} {slot}; {next}"),
        ];
        if let Err(e) = ddi.feedback(
            id,
            Execution::Proceeding,
            Finished::None,
            Some((100, 100)),
            &lines,
        ) {
            log::warn!("fleet: {e}");
        }
        if reboot {
            log::info!("fleet: action {id}: {}", lines[1]);
            crate::reboot(&self.disk)?;
        }
        Ok(Cycle::Installed {
            id: id.into(),
            version: version.into(),
            slot,
        })
    }

    /// The release of action `id` was refused or failed before its flip:
    /// reported, unless the flip took effect after all (the install record
    /// says, and then the verdict is health's).
    fn failed(&self, ddi: &Ddi, id: &str, e: anyhow::Error) -> Result<Cycle> {
        let state = settle_and_save(self.config, &self.disk)?;
        if state
            .fleet
            .as_ref()
            .is_some_and(|a| a.id == id && a.phase == FleetPhase::Installed)
        {
            return Err(e);
        }
        let detail = format!("{e:#}");
        let mut state = change(self.config, &self.disk, |s| {
            if let Some(a) = s.fleet.as_mut().filter(|a| a.id == id) {
                a.phase = FleetPhase::Done;
                a.report = Some(FleetReport {
                    success: false,
                    details: vec![detail],
                });
            }
        })?;
        if let Err(report) = send_report(self.config, &self.disk, ddi, &mut state) {
            log::warn!("fleet: the failure report waits for the next cycle: {report:#}");
        }
        Err(e)
    }

    /// Opens the artifact's first link that answers (`download`, then
    /// `download-http`): a link that is gone or refused is passed over for
    /// the next, and the last one's error is the install's.
    fn open(&self, ddi: &Ddi, artifact: &ddi::Artifact) -> Result<HttpReader> {
        let mut failed = None;
        for href in &artifact.hrefs {
            let agent = source::agent(self.opts.http.idle_timeout, &self.fleet.tls(), true, None)?;
            match HttpReader::with_agent(
                href,
                self.opts.http.clone(),
                agent,
                ddi.authorization_for(href),
            ) {
                Ok(reader) => return Ok(reader),
                Err(e) => {
                    log::warn!("fleet: {}: {e:#}; trying its next link", artifact.filename);
                    failed = Some(e);
                }
            }
        }
        Err(failed.unwrap_or_else(|| anyhow::anyhow!("{} has no http(s) link", artifact.filename)))
    }

    fn install(
        &self,
        ddi: &Ddi,
        d: &ddi::Deployment,
        artifact: &ddi::Artifact,
        activate: bool,
    ) -> Result<crate::install::Installed> {
        let id = d.id.as_str();
        let name = artifact.filename.as_str();
        let reader: Box<dyn std::io::Read + Send> = Box::new(self.open(ddi, artifact)?);
        // The server's hash covers the artifact as downloaded, the .swu
        // wrapper included: checked under the wrapper.
        let (reader, artifact_digest) = match &artifact.sha256 {
            Some(sha256) => {
                let digest = source::ArtifactDigest::new(name, sha256, reader)?;
                (
                    Box::new(digest.clone()) as Box<dyn std::io::Read + Send>,
                    Some(digest),
                )
            }
            None => (reader, None),
        };
        let input = source::unwrap(reader, name)?;
        let opts = InstallOptions {
            disk: self.disk.clone(),
            sector_size: self.sector_size,
            booted: self.booted,
            allow_downgrade: false,
            threads: self.opts.threads,
            memory: self.opts.memory,
            fleet_action: Some(id.to_string()),
            activate,
            expect_version: d.version.clone(),
            artifact_digest,
        };
        // Progress goes to the server from a thread of its own, so that a
        // slow server never holds up the writing.
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for percent in rx {
                    let line = format!("Downloaded {percent}%");
                    if let Err(e) = ddi.feedback(
                        id,
                        Execution::Proceeding,
                        Finished::None,
                        Some((percent, 100)),
                        &[line],
                    ) {
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

    /// Polls until stopped, waiting as [`schedule::next_wait`] says.
    pub fn serve(&self) -> ! {
        let max = Duration::from_secs(self.fleet.max_poll_s);
        let mut failures = 0u32;
        let mut asked = None;
        loop {
            let (last, failed) = match self.cycle() {
                Ok((done, sleep)) => {
                    failures = 0;
                    if done != Cycle::Idle {
                        log::info!("fleet: {done}");
                    }
                    if sleep.is_some() && sleep != asked {
                        asked = sleep;
                        let secs = sleep.map_or(0, |s| s.as_secs());
                        let capped = match secs > max.as_secs() {
                            true => format!(" (fleet.max_poll_s makes it {} s)", max.as_secs()),
                            false => String::new(),
                        };
                        log::info!("fleet: the server asks for a poll every {secs} s{capped}");
                    }
                    (Last::Answered { sleep }, None)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry_after = match crate::error::find::<DdiError>(&e) {
                        Some(DdiError::TooMany { retry_after, .. }) => *retry_after,
                        _ => None,
                    };
                    let last = Last::Failed {
                        failures,
                        retry_after,
                    };
                    (last, Some(e))
                }
            };
            let wait = schedule::next_wait(last, max, fastrand::f64());
            if let Some(e) = failed {
                log::warn!("fleet: {e:#}; next poll in {} s", wait.as_secs());
            }
            std::thread::sleep(wait);
        }
    }
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
}
