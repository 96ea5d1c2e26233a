//! `updater status`: the boot flags, what each slot holds, the last install.

use crate::state::{InstallRecord, StateFile};
use bootctl::report::{slot_marks, StatusReport};
use bootctl::{Slot, State};
use serde::Serialize;
use std::fmt;
use switchback_bundle::Manifest;
use switchback_bundle::ROOTFS;

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: Slot,
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    pub version: Option<String>,
    pub digest: Option<String>,
    /// The root hash of the slot's dm-verity tree, from its signed record.
    pub verity_root_hash: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UpdaterStatus {
    pub disk: String,
    pub booted: Option<Slot>,
    pub next: Slot,
    pub slots: Vec<SlotStatus>,
    pub security_floor: u64,
    pub data_schema: Option<u32>,
    pub last_install: Option<InstallRecord>,
    /// An action the fleet server waits for an operator to confirm.
    pub fleet_confirmation: Option<crate::state::FleetConfirmation>,
    /// How the running root is checked ([`crate::integrity::describe`]);
    /// set when the disk is the one the machine runs from.
    pub running_root: Option<String>,
    pub warnings: Vec<String>,
}

impl UpdaterStatus {
    /// `on_disk` is each slot's release as its signed trailer shows it
    /// ([`crate::evidence`]): what status shows over the state file's
    /// record, and what the floor is at least.
    pub fn new(
        disk: &str,
        boot: &State,
        booted: Option<Slot>,
        state: &StateFile,
        on_disk: &[Option<Manifest>; 2],
    ) -> UpdaterStatus {
        let flags = StatusReport::new(disk, boot, booted);
        let slots = flags
            .slots
            .iter()
            .map(|s| {
                let rec = state.state.slots.get(&s.name);
                let disk = on_disk[s.name.index()].as_ref();
                SlotStatus {
                    name: s.name,
                    priority: s.priority,
                    tries: s.tries,
                    successful: s.successful,
                    version: crate::evidence::version_of(&state.state, s.name, on_disk),
                    digest: disk
                        .and_then(|m| m.image(ROOTFS).ok())
                        .map(|i| i.digest().to_string())
                        .or_else(|| rec.map(|r| r.digest.clone())),
                    verity_root_hash: disk
                        .and_then(|m| m.image(ROOTFS).ok())
                        .and_then(|i| i.verity.as_ref())
                        .map(|v| v.root_hash.to_string()),
                }
            })
            .collect();
        let mut warnings = flags.warnings.clone();
        warnings.extend(state.warning.clone());
        warnings.extend(crate::evidence::disagreements(&state.state, on_disk));
        UpdaterStatus {
            disk: disk.into(),
            booted,
            next: flags.next,
            slots,
            security_floor: state
                .state
                .security_floor
                .max(crate::evidence::floor(boot.attrs(), on_disk)),
            data_schema: state.state.data_schema,
            last_install: state.state.last_install.clone(),
            fleet_confirmation: state.state.fleet_confirmation.clone(),
            running_root: None,
            warnings,
        }
    }
}

impl fmt::Display for UpdaterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "disk {}", self.disk)?;
        writeln!(
            f,
            "{:<8} {:>8} {:>5} {:>10}  {:<12}",
            "slot", "priority", "tries", "successful", "release"
        )?;
        for s in &self.slots {
            writeln!(
                f,
                "{:<8} {:>8} {:>5} {:>10}  {:<12}{}",
                s.name.name(),
                s.priority,
                s.tries,
                if s.successful { "yes" } else { "no" },
                s.version.as_deref().unwrap_or("-"),
                slot_marks(s.name, self.booted, self.next)
            )?;
        }
        if let Some(root) = &self.running_root {
            writeln!(f, "running root: {root}")?;
        }
        writeln!(f, "security floor {}", self.security_floor)?;
        if let Some(schema) = self.data_schema {
            writeln!(f, "data schema {schema}")?;
        }
        if let Some(li) = &self.last_install {
            write!(
                f,
                "last install: {} into {}: {}",
                li.version, li.slot, li.outcome
            )?;
            if let Some(r) = &li.reason {
                write!(f, " ({r})")?;
            }
            writeln!(f)?;
        }
        if let Some(c) = &self.fleet_confirmation {
            let what = c.version.as_deref().unwrap_or("a release");
            writeln!(
                f,
                "fleet: action {} ({what}) waits for a confirmation: updater fleet --once --confirm {} (or --deny {})",
                c.action, c.action, c.action
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}
