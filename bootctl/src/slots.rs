//! The slot table: which GPT entries are `slot_a`, `slot_b` and `data`
//! (`bootctl_core::slots`), and its errors as bootctl reports them.

pub use bootctl_core::slots::{
    ParseSlotError, Slot, SlotTable, SlotsError, DATA_NAME, ESP_NAME, ESP_TYPE, ROOT_ARM64_TYPE,
    ROOT_X86_64_TYPE, VAR_TYPE,
};

use crate::error::Error;
use std::path::Path;

/// The disk's path added to a slot-table error.
pub fn slots_error(path: &Path, e: SlotsError) -> Error {
    match e {
        SlotsError::Missing(name) => Error::MissingPartition {
            path: path.to_path_buf(),
            name,
        },
        SlotsError::Duplicate { name, count } => Error::DuplicatePartition {
            path: path.to_path_buf(),
            name,
            count,
        },
    }
}
