//! Whole-machine tests: build a small but real guest from Debian's kernel,
//! busybox and Switchback's own static binaries, boot it in QEMU (TCG, no
//! KVM here), and talk to it over the serial console.
//!
//! Built artifacts are cached under `target/qemu-cache`, keyed by their
//! inputs (the kernel by its package version; the static binaries by cargo).

pub mod appliance;
/// The goosebit fleet server, shared with the updater's fleet tests.
pub use switchback_test_support::goosebit;
pub mod guest;
pub mod qemu;

use std::path::PathBuf;

/// The workspace root (this crate's parent directory).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn cache_dir() -> PathBuf {
    workspace().join("target").join("qemu-cache")
}
