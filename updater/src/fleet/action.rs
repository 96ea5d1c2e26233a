//! What an action comes to, decided without I/O: the report an install's
//! record makes (its verdict), whether an offered deployment waits, and
//! what a refused report leads to. The client (`fleet/mod.rs`) reads the
//! server and the disk, asks these, and writes what they say.

use super::ddi::{DdiError, Deployment, Handling, Window};
use crate::state::{FleetAction, FleetPhase, FleetReport, Outcome, State};
use bootctl::BootAttrs;

/// Installs started for one action before it is reported as failed.
pub const MAX_ATTEMPTS: u32 = 3;
/// Refusals of a final report (other than 404 and 410, which end it at
/// once) before it is given up: a report the server never takes must not
/// hold back every later deployment.
pub const MAX_REPORT_REFUSALS: u32 = 5;

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
        // Written for a download-only offer and waiting for its update.
        Some((_, Outcome::Ready)) if action.phase == FleetPhase::Downloaded => return false,
        // Downloaded, then replaced (a technician's install): downloaded
        // again when the update is offered.
        None | Some(_) if action.phase == FleetPhase::Downloaded => {
            action.phase = FleetPhase::Installing;
            return true;
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

/// Why a deployment offered now is not started now, if it is not: the
/// last action still waits for its verdict or for the server to take its
/// report, a release is on trial (`running` and `other` are the booted and
/// the other slot's flags), or the server says not yet.
pub fn waits(
    action: Option<&FleetAction>,
    running: BootAttrs,
    other: BootAttrs,
    d: &Deployment,
) -> Option<String> {
    match action {
        Some(a) if a.phase == FleetPhase::Installed => {
            return Some(format!(
                "action {} waits for its reboot and health check; deployment {} waits",
                a.id, d.id
            ));
        }
        Some(a) if a.phase == FleetPhase::Done => {
            return Some(format!(
                "action {} waits for the server to take its final report (refused {} of at most {MAX_REPORT_REFUSALS} times); deployment {} waits",
                a.id, a.report_refusals, d.id
            ));
        }
        _ => {}
    }
    if !running.successful || (other.is_bootable() && !other.successful) {
        return Some(format!(
            "a release is on trial; deployment {} waits until it is committed or rolled back",
            d.id
        ));
    }
    if d.download == Handling::Skip {
        return Some(format!(
            "deployment {}: the server says not yet (download {}, update {})",
            d.id, d.download, d.update
        ));
    }
    None
}

/// Whether the server allows the download of `d` but not its update yet:
/// a download-only action, or a maintenance window not open yet. Its
/// release is written and left unbootable, and activated once an offer
/// of it may update.
pub fn download_only(d: &Deployment) -> bool {
    d.update == Handling::Skip || d.maintenance_window == Some(Window::Unavailable)
}

/// What becomes of a final report the server answered with `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server no longer knows the action (404, 410): the report is
    /// dropped and the action forgotten.
    Unknown,
    /// Refused for good, the last of [`MAX_REPORT_REFUSALS`] times: given up
    /// and the action forgotten.
    GivenUp,
    /// Refused for good (a 4xx but 408 and 429): counted, sent again next
    /// cycle.
    Counted,
    /// An outage, a network failure or "later": sent again next cycle,
    /// not counted.
    Later,
}

/// What a report refused with `error` comes to, after `refusals` earlier
/// refusals of it.
pub fn refused(error: &DdiError, refusals: u32) -> Refused {
    match error {
        DdiError::Gone { .. } | DdiError::Status { status: 404, .. } => Refused::Unknown,
        DdiError::Status { status, .. } if refusal(*status) => {
            if refusals + 1 >= MAX_REPORT_REFUSALS {
                Refused::GivenUp
            } else {
                Refused::Counted
            }
        }
        _ => Refused::Later,
    }
}

/// A server's answer that refuses this request for good: a 4xx, not one
/// that means "later" (408, 429). A 5xx is an outage, not a refusal.
fn refusal(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
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

    fn offer(download: Handling, update: Handling, window: Option<Window>) -> Deployment {
        Deployment {
            id: "7".into(),
            download,
            update,
            maintenance_window: window,
            version: Some("3.0.0".into()),
            artifacts: Vec::new(),
            unusable: Vec::new(),
        }
    }

    const COMMITTED: BootAttrs = BootAttrs {
        priority: 2,
        tries: 0,
        successful: true,
    };
    const ON_TRIAL: BootAttrs = BootAttrs {
        priority: 3,
        tries: 2,
        successful: false,
    };

    #[test]
    fn a_deployment_waits_for_the_last_verdict_a_trial_and_the_servers_yes() {
        use FleetPhase::*;
        let go = offer(Handling::Forced, Handling::Forced, None);
        let idle = BootAttrs::UNBOOTABLE;
        // The last action's phase, the booted and the other slot's flags,
        // the offer, and what the wait's reason says (None: no wait).
        type Row<'a> = (
            Option<FleetPhase>,
            BootAttrs,
            BootAttrs,
            &'a Deployment,
            Option<&'a str>,
        );
        let table: [Row; 11] = [
            (None, COMMITTED, idle, &go, None),
            (Some(Installing), COMMITTED, idle, &go, None),
            // Written and unbootable: an offer of it may activate it.
            (Some(Downloaded), COMMITTED, idle, &go, None),
            (
                Some(Installed),
                COMMITTED,
                idle,
                &go,
                Some("waits for its reboot"),
            ),
            (
                Some(Done),
                COMMITTED,
                idle,
                &go,
                Some("refused 0 of at most 5"),
            ),
            // Booted on trial, or the other slot flipped and not yet booted.
            (None, ON_TRIAL, COMMITTED, &go, Some("on trial")),
            (None, COMMITTED, ON_TRIAL, &go, Some("on trial")),
            (None, COMMITTED, COMMITTED, &go, None),
            (
                None,
                COMMITTED,
                idle,
                &offer(Handling::Skip, Handling::Forced, None),
                Some("not yet"),
            ),
            (
                None,
                COMMITTED,
                idle,
                &offer(
                    Handling::Attempt,
                    Handling::Attempt,
                    Some(Window::Unavailable),
                ),
                None,
            ),
            // Download-only: written now, activated later.
            (
                None,
                COMMITTED,
                idle,
                &offer(Handling::Forced, Handling::Skip, None),
                None,
            ),
        ];
        assert!(download_only(&offer(
            Handling::Forced,
            Handling::Skip,
            None
        )));
        assert!(download_only(&offer(
            Handling::Forced,
            Handling::Forced,
            Some(Window::Unavailable)
        )));
        assert!(!download_only(&go));
        for (phase, running, other, d, want) in table {
            let state = phase.map(|p| with(p, 1, None)).unwrap_or_default();
            let got = waits(state.fleet.as_ref(), running, other, d);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) if g.contains(w) => {}
                _ => panic!(
                    "{phase:?} {running:?} {other:?} {}/{}: {got:?}, want {want:?}",
                    d.download, d.update
                ),
            }
        }
    }

    #[test]
    fn a_refused_report_is_dropped_counted_given_up_or_sent_again() {
        let url = || "http://fleet/x".to_string();
        let status = |status| DdiError::Status { url: url(), status };
        let table = [
            (
                DdiError::Gone {
                    url: url(),
                    status: 410,
                },
                0,
                Refused::Unknown,
            ),
            (status(404), 3, Refused::Unknown),
            (status(400), 0, Refused::Counted),
            (status(403), MAX_REPORT_REFUSALS - 2, Refused::Counted),
            (status(409), MAX_REPORT_REFUSALS - 1, Refused::GivenUp),
            (status(408), 9, Refused::Later),
            (status(429), 9, Refused::Later),
            (status(503), 9, Refused::Later),
            (
                DdiError::TooMany {
                    url: url(),
                    retry_after: None,
                },
                9,
                Refused::Later,
            ),
            (
                DdiError::Network {
                    url: url(),
                    reason: "reset".into(),
                },
                9,
                Refused::Later,
            ),
        ];
        for (error, refusals, want) in table {
            assert_eq!(refused(&error, refusals), want, "{error} after {refusals}");
        }
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
