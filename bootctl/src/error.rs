//! Errors that callers (the CLIs, the updater) match on, each with its own
//! process exit code so that scripts can tell them apart.

use std::path::PathBuf;

/// Variants that wrap a cause keep it as `source` and leave it out of their
/// own message: printed with `{:#}` (as every CLI here does) it follows once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: no valid GPT (primary: {primary}; backup: {backup})")]
    NoGpt {
        path: PathBuf,
        primary: String,
        backup: String,
    },

    #[error("{path}: no partition named {name:?}: not a Switchback disk")]
    MissingPartition { path: PathBuf, name: &'static str },

    #[error("{path}: partition name {name:?} appears {count} times; slots must be unique")]
    DuplicatePartition {
        path: PathBuf,
        name: &'static str,
        count: usize,
    },

    #[error("{path}: sector size {size} is not supported (512 or 4096)")]
    SectorSize { path: PathBuf, size: u64 },

    #[error("{slot} is not a successful release (priority {priority}, tries {tries}): refusing to make it active")]
    NotSuccessful {
        slot: &'static str,
        priority: u8,
        tries: u8,
    },

    #[error("the booted slot is unknown: name the slot (a or b) or pass --booted-slot")]
    BootedUnknown,

    #[error("{path}: read-back after writing the GPT does not match what was written")]
    VerifyFailed { path: PathBuf },

    #[error("{path}: the partition table is unsafe to use: {reason}")]
    BadTable { path: PathBuf, reason: String },

    #[error("{path}: busy: another process holds the disk's lock (waited {waited_s} s); try again when it is done")]
    Busy { path: PathBuf, waited_s: u64 },

    #[error("the kernel command line says {booted} is running, not {given}: --booted-slot must agree with it")]
    BootedMismatch {
        booted: &'static str,
        given: &'static str,
    },

    #[error("{path}: not a disk or disk image (a regular file or block device)")]
    NotADisk { path: PathBuf },

    #[error("the root cannot be opened through dm-verity: {0}")]
    Verity(String),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Distinct exit codes; documented in docs/boot-control.md.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } => 10,
            Error::NoGpt { .. } => 11,
            Error::MissingPartition { .. } => 12,
            Error::DuplicatePartition { .. } => 13,
            Error::SectorSize { .. } => 14,
            Error::NotSuccessful { .. } => 15,
            Error::BootedUnknown => 16,
            Error::VerifyFailed { .. } => 17,
            Error::BadTable { .. } => 18,
            Error::Busy { .. } => 19,
            Error::BootedMismatch { .. } => 39,
            Error::NotADisk { .. } => 10,
            Error::Invalid(_) => 2,
            Error::Verity(_) => 20,
        }
    }

    pub fn io<'a>(
        path: &'a std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// A word that names no slot, as the CLIs have always reported it.
impl From<crate::slots::ParseSlotError> for Error {
    fn from(e: crate::slots::ParseSlotError) -> Error {
        Error::Invalid(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
