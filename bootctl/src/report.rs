//! The status report `bootctl status` prints, as text or JSON.

use crate::attr::BootAttrs;
use crate::control::State;
use crate::slots::Slot;
use serde::Serialize;
use std::fmt;

/// Prints `value` as pretty JSON or as text: how every Switchback command
/// shows a report.
pub fn show<T: Serialize + fmt::Display>(json: bool, value: &T) -> serde_json::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{value}");
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub name: Slot,
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    pub partuuid: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub disk: String,
    pub sector_size: u64,
    pub slots: Vec<SlotReport>,
    /// The slot selection would pick now.
    pub next: Slot,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted: Option<Slot>,
    /// Damage found and worked around (a GPT copy that did not validate).
    pub warnings: Vec<String>,
}

impl StatusReport {
    pub fn new(disk: &str, state: &State, booted: Option<Slot>) -> StatusReport {
        let slots = Slot::ALL
            .into_iter()
            .map(|s| {
                let entry = state.table.entry(s);
                let BootAttrs {
                    priority,
                    tries,
                    successful,
                } = BootAttrs::decode(entry.attributes);
                SlotReport {
                    name: s,
                    priority,
                    tries,
                    successful,
                    partuuid: entry.unique_guid.to_string(),
                }
            })
            .collect();
        let mut warnings = Vec::new();
        for (which, copy) in [
            ("primary", &state.gpt.primary),
            ("backup", &state.gpt.backup),
        ] {
            if let Err(why) = copy {
                warnings.push(format!(
                    "{which} GPT is damaged ({why}); the next change repairs it"
                ));
            }
        }
        let next = state.next();
        if next.fallback {
            warnings.push(format!(
                "no slot is bootable; the boot stage would try {} anyway",
                next.slot
            ));
        }
        StatusReport {
            disk: disk.to_string(),
            sector_size: state.gpt.sector_size,
            slots,
            next: next.slot,
            booted,
            warnings,
        }
    }
}

/// `  (booted, next)` or the part of it that applies, for a status line.
pub fn slot_marks(slot: Slot, booted: Option<Slot>, next: Slot) -> String {
    let marks: Vec<&str> = [(Some(slot) == booted, "booted"), (slot == next, "next")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    if marks.is_empty() {
        String::new()
    } else {
        format!("  ({})", marks.join(", "))
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "disk {} ({}-byte sectors)", self.disk, self.sector_size)?;
        writeln!(
            f,
            "{:<8} {:>8} {:>5} {:>10}",
            "slot", "priority", "tries", "successful"
        )?;
        for s in &self.slots {
            let marks = slot_marks(s.name, self.booted, self.next);
            writeln!(
                f,
                "{:<8} {:>8} {:>5} {:>10}{marks}",
                s.name.name(),
                s.priority,
                s.tries,
                if s.successful { "yes" } else { "no" }
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}
