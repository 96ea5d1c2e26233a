//! The updater's state file on the data partition: what each slot holds,
//! the security-version floor, the data schema, the last install and the
//! history. Versioned JSON, replaced atomically (temporary file, fsync,
//! rename, fsync of the directory), so a power cut leaves the old or the new
//! file, never half of one.
//!
//! A missing or damaged file never stops the appliance: the updater starts
//! from defaults, says so, and keeps a damaged file aside for inspection.

use bootctl::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "state.json";
pub const FORMAT: u32 = 1;
/// History entries kept; older ones are dropped.
pub const HISTORY_LIMIT: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub version: String,
    pub compatible: String,
    /// Image digest (docs/bundle-format.md).
    pub digest: String,
    pub security_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_schema: Option<u32>,
    pub installed_at: u64,
}

impl SlotRecord {
    /// The record of a slot holding the release `manifest` signs, installed
    /// at `installed_at`: what install and activate both record.
    pub fn of(
        manifest: &switchback_bundle::Manifest,
        image: &switchback_bundle::ImageSpec,
        installed_at: u64,
    ) -> SlotRecord {
        SlotRecord {
            version: manifest.version.clone(),
            compatible: manifest.compatible.clone(),
            digest: image.digest().to_string(),
            security_version: manifest.security_version,
            data_schema: manifest.data_schema,
            installed_at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Writing; a crash leaves this, and the slot unbootable.
    Installing,
    /// Written, checked and recorded; the flip comes next. A crash leaves
    /// this, and the disk's flags tell whether the flip happened.
    Flipping,
    /// Written and flipped; waits for a reboot and the health check.
    Installed,
    /// Written, checked and recorded, not flipped (`install
    /// --no-activate`): the slot stays unbootable until `activate`.
    Ready,
    /// Writing or checking the slot failed; it never booted.
    Failed,
    /// It booted and failed its health check.
    HealthFailed,
    Committed,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub slot: Slot,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The fleet server's action this install carried out, if any: what
    /// ties the fleet report to this record (clocks cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_action: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: u64,
    pub event: Event,
    pub slot: Slot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a history entry records, spelled in the file and in `history` as
/// the docs list them (docs/updater.md). A name this updater does not know
/// (written by a newer one) is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Install,
    InstallFailed,
    Commit,
    FinalizeFailed,
    HealthFailed,
    /// The boot stage fell back from the release on trial.
    RolledBack,
    /// A technician's rollback.
    Rollback,
    /// A technician's rollback past the security floor; the fleet client
    /// reports the last one as a device attribute.
    RollbackBelowSecurityFloor,
    Other(String),
}

impl Event {
    const NAMED: [(Event, &'static str); 8] = [
        (Event::Install, "install"),
        (Event::InstallFailed, "install-failed"),
        (Event::Commit, "commit"),
        (Event::FinalizeFailed, "finalize-failed"),
        (Event::HealthFailed, "health-failed"),
        (Event::RolledBack, "rolled-back"),
        (Event::Rollback, "rollback"),
        (
            Event::RollbackBelowSecurityFloor,
            "rollback-below-security-floor",
        ),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Event::Other(name) => name,
            known => Event::NAMED
                .iter()
                .find(|(e, _)| e == known)
                .map_or("?", |(_, name)| name),
        }
    }
}

/// Padded as asked (`history` lines up its columns).
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<&str> for Event {
    fn from(name: &str) -> Event {
        Event::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map_or_else(|| Event::Other(name.to_string()), |(e, _)| e.clone())
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        Ok(Event::from(String::deserialize(d)?.as_str()))
    }
}

/// Where a fleet server's deployment stands on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetPhase {
    /// Being downloaded and written (or cut short: tried again when the
    /// server offers it again).
    Installing,
    /// Written into the other slot and left unbootable, `downloaded`
    /// reported: the server allowed the download, not yet the update (a
    /// download-only action, a maintenance window not open yet). Activated
    /// when an action of the same release may update.
    Downloaded,
    /// Installed; waits for the reboot and the health check's verdict.
    Installed,
    /// Finished; `report` is still to be sent.
    Done,
}

/// The fleet server's request to confirm an action, as the last poll saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetConfirmation {
    /// The action's id, as `updater fleet --once --confirm ID` names it.
    pub action: String,
    /// The release it would install, when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A deployment from the fleet server, kept so that it survives the reboot
/// into the new release, a lost connection and a power cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAction {
    /// The server's action id.
    pub id: String,
    /// The artifact's name on the server, for messages.
    pub artifact: String,
    pub phase: FleetPhase,
    pub started_at: u64,
    /// Installs started for this action; after a third cut short it is
    /// reported as failed instead of tried again.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<FleetReport>,
    /// Times the server refused the final report; at
    /// [`crate::fleet::MAX_REPORT_REFUSALS`] it is given up.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub report_refusals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    pub success: bool,
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// Lowest security_version this device installs.
    pub security_floor: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_schema: Option<u32>,
    /// Keyed by slot name (`slot_a`, `slot_b`) in the file.
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install: Option<InstallRecord>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// A commit under way: this slot is being marked good. Recorded first,
    /// so a crash between the flag and the rest of the commit is finished
    /// by the next command (see `recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing: Option<Slot>,
    /// The committed release whose finalize migrations have yet to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize_pending: Option<String>,
    /// Times that finalize was started without ending (a power cut or a
    /// crash in it); after two it is given up rather than crash each boot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub finalize_attempts: u32,
    /// The last release whose finalize migrations took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized: Option<String>,
    /// The fleet server's deployment under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetAction>,
    /// The attributes last sent to the fleet server (sent again only when
    /// they change or the server asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_attributes: Option<BTreeMap<String, String>>,
    /// The committed release the fleet server last heard of as installed
    /// (its own action's success, or `installedBase` for a release put on
    /// the device another way): told again only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_installed_base: Option<String>,
    /// An action the fleet server asks the device to confirm, waiting for
    /// an operator (`fleet.confirm: local`): kept by the fleet client
    /// while the server asks, for `status` and the technician's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_confirmation: Option<FleetConfirmation>,
    /// The GPT GUID of the disk this state describes. One config used
    /// for two disk images would otherwise carry one image's records,
    /// versions and security floor over to the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for State {
    fn default() -> State {
        State {
            format: FORMAT,
            security_floor: 0,
            data_schema: None,
            slots: BTreeMap::new(),
            last_install: None,
            history: Vec::new(),
            committing: None,
            finalize_pending: None,
            finalize_attempts: 0,
            finalized: None,
            fleet: None,
            fleet_attributes: None,
            fleet_installed_base: None,
            fleet_confirmation: None,
            disk_guid: None,
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// On a real disk the state must live on its `data` partition: anywhere
/// else (a tmpfs, the root file system while `data` is not mounted) it
/// would be lost or start afresh, taking the security floor with it.
/// `data_devnum` is that partition's device number, `None` when the disk
/// is an image file (tests, factory tooling), where nothing is checked.
pub fn check_location(
    dir: &Path,
    disk: &Path,
    data_devnum: Option<Option<u64>>,
) -> Result<(), String> {
    let Some(expected) = data_devnum else {
        return Ok(());
    };
    let Some(expected) = expected else {
        return Err(format!(
            "cannot find the data partition of {} in /sys/class/block; the state directory {} must be on it",
            disk.display(),
            dir.display()
        ));
    };
    // The directory may not exist yet: its nearest existing parent decides.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = nix::sys::stat::stat(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    if st.st_dev != expected {
        let show = |d: u64| format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d));
        return Err(format!(
            "the state directory {} is on device {}, not on {}'s data partition ({}): is the data partition mounted?",
            dir.display(),
            show(st.st_dev),
            disk.display(),
            show(expected)
        ));
    }
    Ok(())
}

/// A state file stamped with another disk's GUID is not applied to this
/// one. On a block device the location check has already tied the state
/// to the disk's own data partition (a GUID changed by `sgdisk -G` is
/// then simply stamped anew); on an image file, the GUID is all there is.
pub fn check_disk(
    state: &StateFile,
    disk: &Path,
    guid: Option<&str>,
    block_device: bool,
) -> Result<(), crate::UpdateError> {
    match (&state.state.disk_guid, guid) {
        (Some(recorded), Some(guid)) if recorded != guid && !block_device => {
            Err(crate::UpdateError::StateOfAnotherDisk {
                state: state.path.clone(),
                recorded: recorded.clone(),
                disk: disk.to_path_buf(),
                guid: guid.to_string(),
            })
        }
        (Some(recorded), Some(guid)) if recorded != guid => {
            log::warn!(
                "{}: recorded for the disk with GUID {recorded}; {} now has GUID {guid} (changed, or a cloned data partition?): it is stamped anew at the next save",
                state.path.display(),
                disk.display()
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

enum Unreadable {
    Newer(u64),
    Damaged(String),
}

fn format_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .get("format")?
        .as_u64()
}

/// A state file of any format this updater knows, converted to [`FORMAT`].
fn parse(bytes: &[u8]) -> Result<State, Unreadable> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Unreadable::Damaged(e.to_string()))?;
    let format = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| Unreadable::Damaged("no format number".into()))?;
    if format > u64::from(FORMAT) {
        return Err(Unreadable::Newer(format));
    }
    let value = upconvert(value, format).map_err(Unreadable::Damaged)?;
    serde_json::from_value(value).map_err(|e| Unreadable::Damaged(e.to_string()))
}

/// One step per format: the state of `format` as the next one spells it,
/// so that a format change never resets a device to defaults (its history,
/// security floor and fleet action would be lost). Format 1 is the first
/// there is; a step is added here with each new format, and its test
/// loads a file of the old one.
fn upconvert(value: serde_json::Value, format: u64) -> Result<serde_json::Value, String> {
    match format {
        f if f == u64::from(FORMAT) => Ok(value),
        f => Err(format!("state format {f} never existed (the first is 1)")),
    }
}

/// As `history`, `--json` and the docs spell it: `health-failed`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(name.as_str().unwrap_or("?"))
    }
}

/// The state file of one device, and what loading it found.
#[derive(Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub state: State,
    /// Set when the file was missing or damaged and defaults are in use.
    pub warning: Option<String>,
    damaged: bool,
    /// The file is there but could not be read (I/O error, permissions):
    /// saving defaults over it would lose it, so saving is refused.
    unreadable: bool,
    /// The disk's GUID, stamped on the state when it is saved.
    disk_guid: Option<String>,
    /// The file's format when it is newer than [`FORMAT`].
    newer: Option<u64>,
}

impl StateFile {
    /// The state of the device `config` was opened for, stamped with its
    /// disk's GUID when saved.
    pub fn of(config: &crate::config::Config) -> StateFile {
        let mut file = StateFile::load(&config.state_dir());
        file.disk_guid.clone_from(&config.disk_guid);
        file
    }

    pub fn load(dir: &Path) -> StateFile {
        let path = dir.join(FILE_NAME);
        let read = std::fs::read(&path);
        StateFile::from_read(path, read)
    }

    /// What [`StateFile::load`] makes of what reading `path` gave.
    pub fn from_read(path: PathBuf, read: std::io::Result<Vec<u8>>) -> StateFile {
        let read_format = read.as_ref().ok().and_then(|b| format_of(b));
        let (state, warning, damaged, unreadable) = match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (State::default(), Some(format!("{}: no state file yet (factory state)", path.display())), false, false)
            }
            Err(e) => (State::default(), Some(format!("{}: cannot read ({e}); using defaults and not overwriting it", path.display())), false, true),
            Ok(bytes) => match parse(&bytes) {
                Ok(s) => (s, None, false, false),
                Err(Unreadable::Newer(format)) => (
                    State::default(),
                    Some(format!("{}: state format {format} is newer than this updater's {FORMAT} (written by a newer release); not read and not overwritten", path.display())),
                    false,
                    true,
                ),
                Err(Unreadable::Damaged(e)) => (
                    State::default(),
                    Some(format!("{}: damaged ({e}); using defaults, and it is moved to {FILE_NAME}.damaged when the state is next saved", path.display())),
                    true,
                    false,
                ),
            },
        };
        let newer = match &read_format {
            Some(f) if *f > u64::from(FORMAT) => Some(*f),
            _ => None,
        };
        // The fleet client loads the state every cycle, for as long as the
        // device runs: a warning is said when it is new, not at every
        // load, and said again if it comes back after a clean load.
        static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        let new = match LAST.lock() {
            Ok(last) if *last == warning => false,
            Ok(mut last) => {
                last.clone_from(&warning);
                true
            }
            Err(_) => true,
        };
        if let (true, Some(w)) = (new, &warning) {
            log::warn!("{w}");
        }
        StateFile {
            path,
            state,
            warning,
            damaged,
            unreadable,
            disk_guid: None,
            newer,
        }
    }

    /// A state written by a newer updater (a rollback brought an older
    /// release back) is refused before anything changes: converting it
    /// down would lose what this updater does not know, and defaults
    /// would lose the history, the floor and the fleet action.
    pub fn refuse_newer(&self) -> Result<(), crate::UpdateError> {
        match self.newer {
            Some(found) => Err(crate::UpdateError::StateTooNew {
                path: self.path.clone(),
                found,
                known: FORMAT,
            }),
            None => Ok(()),
        }
    }

    /// Writes the state atomically, creating the directory if needed.
    pub fn save(&mut self) -> std::io::Result<()> {
        if self.unreadable {
            return Err(std::io::Error::other(
                "it could not be read when loaded; not replacing it with defaults",
            ));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        if self.damaged {
            let aside = dir.join(format!("{FILE_NAME}.damaged"));
            if std::fs::rename(&self.path, &aside).is_ok() {
                log::warn!(
                    "{}: the damaged state file is kept as {}",
                    self.path.display(),
                    aside.display()
                );
            }
            self.damaged = false;
        }
        if let Some(guid) = &self.disk_guid {
            self.state.disk_guid = Some(guid.clone());
        }
        if self.state.history.len() > HISTORY_LIMIT {
            let drop = self.state.history.len() - HISTORY_LIMIT;
            self.state.history.drain(..drop);
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, &self.state)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_then_saved_then_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("switchback");
        let mut f = StateFile::load(&sub);
        assert!(f.warning.as_deref().unwrap().contains("no state file yet"));
        f.state.security_floor = 7;
        f.state.history.push(HistoryEntry {
            time: 1,
            event: Event::Install,
            slot: Slot::B,
            version: Some("2.0.0".into()),
            from_version: Some("1.0.0".into()),
            reason: None,
        });
        f.save().unwrap();
        let again = StateFile::load(&sub);
        assert!(again.warning.is_none());
        assert_eq!(again.state, f.state);

        std::fs::write(sub.join(FILE_NAME), b"{\"format\":1, garbage").unwrap();
        let mut damaged = StateFile::load(&sub);
        assert!(damaged.warning.as_deref().unwrap().contains("damaged"));
        assert_eq!(damaged.state, State::default());
        damaged.save().unwrap();
        assert!(sub.join("state.json.damaged").exists());
        assert!(StateFile::load(&sub).warning.is_none());
    }
}
