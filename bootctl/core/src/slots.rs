//! The slot table: which GPT entries are `slot_a`, `slot_b` and `data`.
//!
//! Partitions are found by GPT partition *name*, so a vendor may put them in
//! any order or next to partitions of its own. Type GUIDs follow the
//! Discoverable Partitions Specification so that generic tools label them
//! sensibly.

use crate::table::{Copy, Entry};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

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

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A word that names no slot; bootctl turns it into its `Error::Invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSlotError(pub String);

impl fmt::Display for ParseSlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a slot: use a or b", self.0)
    }
}

impl core::error::Error for ParseSlotError {}

impl core::str::FromStr for Slot {
    type Err = ParseSlotError;
    fn from_str(s: &str) -> Result<Slot, ParseSlotError> {
        match s.to_ascii_lowercase().as_str() {
            "a" | "slot_a" => Ok(Slot::A),
            "b" | "slot_b" => Ok(Slot::B),
            _ => Err(ParseSlotError(s.into())),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Exactly as serialized (`slot_a`, `slot_b`): a record naming anything
/// else is damaged, not read as a guess.
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let name = String::deserialize(d)?;
        Slot::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                serde::de::Error::custom(alloc::format!("{name:?} is not slot_a or slot_b"))
            })
    }
}

/// Why a table is not a Switchback disk's. bootctl adds the disk's path
/// (its `MissingPartition` and `DuplicatePartition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotsError {
    /// No partition has this name.
    Missing(&'static str),
    /// `count` partitions have this name.
    Duplicate { name: &'static str, count: usize },
}

impl fmt::Display for SlotsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotsError::Missing(name) => {
                write!(f, "no partition named {name:?}: not a Switchback disk")
            }
            SlotsError::Duplicate { name, count } => write!(
                f,
                "partition name {name:?} appears {count} times; slots must be unique"
            ),
        }
    }
}

impl core::error::Error for SlotsError {}

/// The Switchback partitions of one disk.
#[derive(Debug, Clone)]
pub struct SlotTable {
    pub slots: [Entry; 2],
    pub data: Option<Entry>,
}

fn find_one(entries: &[Entry], name: &'static str) -> Result<Option<Entry>, SlotsError> {
    let found: Vec<&Entry> = entries.iter().filter(|e| e.name == name).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(SlotsError::Duplicate {
            name,
            count: many.len(),
        }),
    }
}

impl SlotTable {
    pub fn find(copy: &Copy) -> Result<SlotTable, SlotsError> {
        let entries = copy.entries();
        let slot = |s: Slot| -> Result<Entry, SlotsError> {
            find_one(&entries, s.name())?.ok_or(SlotsError::Missing(s.name()))
        };
        Ok(SlotTable {
            slots: [slot(Slot::A)?, slot(Slot::B)?],
            data: find_one(&entries, DATA_NAME)?,
        })
    }

    pub fn entry(&self, slot: Slot) -> &Entry {
        &self.slots[slot.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn slots_parse_by_letter_or_name_and_print_their_name() {
        for (word, slot) in [("a", Slot::A), ("SLOT_B", Slot::B), ("slot_a", Slot::A)] {
            assert_eq!(word.parse::<Slot>(), Ok(slot));
        }
        let err = "c".parse::<Slot>().unwrap_err();
        assert_eq!(err.to_string(), "\"c\" is not a slot: use a or b");
        assert_eq!(alloc::format!("[{:>7}]", Slot::B), "[ slot_b]");
        assert_eq!(Slot::A.other(), Slot::B);
    }
}
