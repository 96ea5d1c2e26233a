//! The slot table: which GPT entries are `slot_a`, `slot_b` and `data`.
//!
//! Partitions are found by GPT partition *name*, so a vendor may put them in
//! any order or next to partitions of its own. Type GUIDs follow the
//! Discoverable Partitions Specification so that generic tools label them
//! sensibly.

use crate::error::{Error, Result};
use crate::table::{Copy, Entry};
use serde::{Serialize, Serializer};
use std::path::Path;

/// DPS: root partition, x86-64.
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// DPS: root partition, arm64 (AArch64).
pub const ROOT_ARM64_TYPE: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";
/// DPS: /var, where an appliance's persistent state lives.
pub const VAR_TYPE: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
pub const DATA_NAME: &str = "data";
/// The EFI system partition (UEFI spec), where the firmware finds the boot
/// stage as its default loader.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const ESP_NAME: &str = "esp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
    /// The GPT partition name.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "slot_a",
            Slot::B => "slot_b",
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Slot {
    type Err = Error;
    fn from_str(s: &str) -> Result<Slot> {
        match s.to_ascii_lowercase().as_str() {
            "a" | "slot_a" => Ok(Slot::A),
            "b" | "slot_b" => Ok(Slot::B),
            _ => Err(Error::Invalid(format!("{s:?} is not a slot: use a or b"))),
        }
    }
}

impl Serialize for Slot {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Exactly as serialized (`slot_a`, `slot_b`): a record naming anything
/// else is damaged, not read as a guess.
impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Slot, D::Error> {
        let name = String::deserialize(d)?;
        Slot::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("{name:?} is not slot_a or slot_b")))
    }
}

/// The Switchback partitions of one disk.
#[derive(Debug, Clone)]
pub struct SlotTable {
    pub slots: [Entry; 2],
    pub data: Option<Entry>,
}

fn find_one(entries: &[Entry], name: &'static str, path: &Path) -> Result<Option<Entry>> {
    let found: Vec<&Entry> = entries.iter().filter(|e| e.name == name).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(Error::DuplicatePartition {
            path: path.to_path_buf(),
            name,
            count: many.len(),
        }),
    }
}

impl SlotTable {
    pub fn find(copy: &Copy, path: &Path) -> Result<SlotTable> {
        let entries = copy.entries();
        let slot = |s: Slot| -> Result<Entry> {
            find_one(&entries, s.name(), path)?.ok_or(Error::MissingPartition {
                path: path.to_path_buf(),
                name: s.name(),
            })
        };
        Ok(SlotTable {
            slots: [slot(Slot::A)?, slot(Slot::B)?],
            data: find_one(&entries, DATA_NAME, path)?,
        })
    }

    pub fn entry(&self, slot: Slot) -> &Entry {
        &self.slots[slot.index()]
    }
}
