//! The updater's state file on the data partition: what each slot holds,
//! the security-version floor, the data schema, the last install and the
//! history. Versioned JSON, replaced atomically (temporary file, fsync,
//! rename, fsync of the directory), so a power cut leaves the old or the new
//! file, never half of one.
//!
//! A missing or damaged file never stops the appliance: the updater starts
//! from defaults, says so, and keeps a damaged file aside for inspection.

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
    /// Writing or checking the slot failed; it never booted.
    Failed,
    /// It booted and failed its health check.
    HealthFailed,
    Committed,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub slot: String,
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
    /// install, install-failed, commit, rollback.
    pub event: String,
    pub slot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a fleet server's deployment stands on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetPhase {
    /// Being downloaded and written (or cut short: tried again when the
    /// server offers it again).
    Installing,
    /// Installed; waits for the reboot and the health check's verdict.
    Installed,
    /// Finished; `report` is still to be sent.
    Done,
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
    /// By slot name (`slot_a`, `slot_b`).
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install: Option<InstallRecord>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// A commit under way: this slot is being marked good. Recorded first,
    /// so a crash between the flag and the rest of the commit is finished
    /// by the next command (see `recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing: Option<String>,
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
        let (state, warning, damaged, unreadable) = match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (State::default(), Some(format!("{}: no state file yet (factory state)", path.display())), false, false)
            }
            Err(e) => (State::default(), Some(format!("{}: cannot read ({e}); using defaults and not overwriting it", path.display())), false, true),
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(s) if s.format == FORMAT => (s, None, false, false),
                Ok(s) => (
                    State::default(),
                    Some(format!("{}: state format {} is not {FORMAT}; using defaults", path.display(), s.format)),
                    true,
                    false,
                ),
                Err(e) => (
                    State::default(),
                    Some(format!("{}: damaged ({e}); using defaults, and it is moved to {FILE_NAME}.damaged when the state is next saved", path.display())),
                    true,
                    false,
                ),
            },
        };
        // The fleet client loads the state several times a cycle, every
        // cycle: a warning is said when it is new, not at every load, and
        // said again if it comes back after a clean load.
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

    pub fn record(
        &mut self,
        event: &str,
        slot: &str,
        version: Option<&str>,
        from: Option<&str>,
        reason: Option<&str>,
    ) {
        self.state.history.push(HistoryEntry {
            time: now(),
            event: event.into(),
            slot: slot.into(),
            version: version.map(Into::into),
            from_version: from.map(Into::into),
            reason: reason.map(Into::into),
        });
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
        f.record("install", "slot_b", Some("2.0.0"), Some("1.0.0"), None);
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
