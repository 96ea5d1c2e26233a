//! The updater's exit codes (the table in docs/updater.md; the fleet's in
//! docs/fleet.md): the first typed error in a failure's chain decides. Kept
//! at the edge, so the error types stay leaves that anything can use.

use crate::error::typed;
use crate::fleet::ddi::DdiError;
use crate::UpdateError;
use switchback_bundle::BundleError;

/// The process exit code for `e`: the updater's own errors first, then the
/// fleet server's, then the bundle's and the disk's codes (10–39), which
/// pass through unchanged; 1 for anything untyped.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|link| {
            typed::<UpdateError>(link).map(update_code).or_else(|| {
                // The disk's lock is bootctl's; the updater kept its own
                // code for it.
                match typed::<bootctl::Error>(link) {
                    Some(bootctl::Error::Busy { .. }) => Some(47),
                    _ => typed::<DdiError>(link).map(ddi_code),
                }
            })
        })
        .or_else(|| {
            e.chain().find_map(|link| {
                typed::<BundleError>(link)
                    .map(BundleError::exit_code)
                    .or_else(|| typed::<bootctl::Error>(link).map(bootctl::Error::exit_code))
            })
        })
        .unwrap_or(1)
}

fn update_code(e: &UpdateError) -> i32 {
    match e {
        UpdateError::Config { .. } | UpdateError::ConfigFile(_) => 40,
        UpdateError::Incompatible { .. } => 41,
        UpdateError::SecurityVersion { .. } => 42,
        UpdateError::Downgrade { .. } => 43,
        UpdateError::TooLarge { .. } => 44,
        UpdateError::Write { .. } => 45,
        UpdateError::ReadBack { .. } | UpdateError::ReadBackIo { .. } => 46,
        UpdateError::Http { .. } => 48,
        UpdateError::UnsupportedTarget(_) => 49,
        UpdateError::State { .. } => 50,
        UpdateError::RolledBack { .. } => 51,
        UpdateError::HealthFailed { .. } => 52,
        UpdateError::NotConfirmed | UpdateError::RollbackNotNamed { .. } => 53,
        UpdateError::MigrationPath { .. } => 54,
        UpdateError::MigrationFailed { .. } => 55,
        UpdateError::DeltaBase { .. } => 56,
        UpdateError::LastGoodSlot { .. } => 57,
        UpdateError::Snapshot { .. } => 58,
        UpdateError::PartlyDone { .. } => 59,
        UpdateError::BaseChanged { .. } => 60,
        UpdateError::BelowSecurityFloor { .. } => 63,
        UpdateError::NotABundleFile { .. } => 64,
        UpdateError::StateOfAnotherDisk { .. } => 65,
        UpdateError::OverMemory { .. } => 66,
        UpdateError::StateTooNew { .. } => 67,
        UpdateError::NoVerity { .. } => 68,
        UpdateError::NothingToActivate { .. } => 69,
        UpdateError::ReadyChanged { .. } => 70,
        UpdateError::NotAssigned { .. } => 71,
        UpdateError::ArtifactMismatch { .. } => 72,
        UpdateError::NothingToConfirm { .. } => 73,
        UpdateError::Password(_) => 74,
    }
}

fn ddi_code(e: &DdiError) -> i32 {
    match e {
        DdiError::Unauthorized { .. } => 62,
        DdiError::TooMany { .. }
        | DdiError::Gone { .. }
        | DdiError::Status { .. }
        | DdiError::Network { .. }
        | DdiError::Protocol { .. } => 61,
    }
}
