//! The Switchback release bundle (`.swb`): the format, its reader (what a
//! device needs), and, with the `writer` feature, its writer (what a
//! vendor's build pipeline needs). `image-tools` and the updater both use
//! this crate, so there is one definition of the format.
//!
//! The byte-exact specification, with test vectors, is
//! `docs/bundle-format.md`; this is its summary:
//!
//! ```text
//! offset  size             field
//! 0       32               header: magic "SWBUNDLE", format version (u32 LE),
//!                          manifest_len (u32 LE), signatures_len (u32 LE),
//!                          reserved (u32, zero), payload_len (u64 LE)
//! 32      manifest_len     manifest: UTF-8 JSON, the exact bytes signed
//! …       signatures_len   signatures: n × (key id [32] ‖ ed25519 signature [64])
//! …       payload_len      payload: every image's chunks but its zero chunks,
//!                          each one zstd frame, back to back in manifest order
//! ```
//!
//! A reader trusts nothing past the header until a signature by a trusted
//! key verifies over the manifest bytes; the manifest then carries the
//! SHA-256 of every chunk's stored zstd frame, checked before the frame
//! reaches the decoder, and of its uncompressed bytes, so each chunk is
//! checked before anyone sees it. Everything is readable front to back from
//! a pipe.
//!
//! # Features
//!
//! - `std` (default): everything above, the streaming reader with its
//!   pipeline, deltas and `.swu` wrapper, PEM keys and keyring directories,
//!   writing a slot trailer.
//! - `writer` (implies `std`): building and signing bundles, making keys.
//!
//! Without `std` the crate is `no_std` with `alloc` and keeps what checks
//! a slot trailer ([`trailer`]), so that the UEFI boot stage verifies the
//! slot it boots with this definition of the format, not a second one: the
//! header ([`header`]), the manifest, its serde form and the rules a reader
//! applies to it ([`manifest`]), the keyring built from raw ed25519 keys
//! and the signature check ([`keys`], `verify_strict` as the reader),
//! [`trailer::parse_footer`] and [`trailer::verify_head`], [`BundleError`]
//! (without its `Io` variant), [`all_zero`], the format's constants, and
//! the stage's own sections ([`stage_sections`]).
//! Built for a UEFI target (soft-float), curve25519-dalek needs its portable
//! backend: `--cfg curve25519_dalek_backend="serial"`, as `.ci/boot-efi`
//! sets it.

#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod budget;
#[cfg(feature = "std")]
pub mod delta;
pub mod error;
pub mod header;
pub mod keys;
pub mod manifest;
#[cfg(feature = "std")]
pub mod pipeline;
#[cfg(feature = "std")]
pub mod reader;
#[cfg(feature = "writer")]
pub mod signing;
#[cfg(feature = "std")]
pub mod size;
pub mod stage_sections;
#[cfg(feature = "std")]
pub mod swu;
pub mod trailer;
pub mod verity;
#[cfg(feature = "writer")]
pub mod writer;

pub use error::BundleError;
pub use keys::Keyring;
pub use manifest::{ChunkSpec, Digest, ImageSpec, Manifest, MigrationSpec, Phase};
#[cfg(feature = "std")]
pub use reader::{Chunk, Envelope, ReadOptions, VerifiedBundle};
#[cfg(feature = "writer")]
pub use writer::{build, BuildOptions, ImageSource, MigrationSource};

pub const MAGIC: &[u8; 8] = b"SWBUNDLE";
pub const FORMAT_VERSION: u32 = 2;
/// Manifests of real bundles are a few hundred KiB at most (a 16 GiB image
/// in 4 MiB chunks lists 4096 chunks, ~600 KiB of JSON).
pub const MAX_MANIFEST_LEN: u32 = 16 << 20;
pub const MAX_SIGNATURES: usize = 16;
pub const MAX_IMAGES: usize = 8;
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
/// Bounds the memory a reader spends per chunk in flight.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Chunks start on 4 KiB boundaries of the image, so that a reader can
/// write and read them back with direct I/O.
pub const CHUNK_ALIGN: u64 = 4096;
/// Largest delta reference a reader accepts; bounds its memory per chunk.
pub const MAX_REF_LEN: u64 = 64 << 20;

/// The image a device installs into its slot.
pub const ROOTFS: &str = "rootfs";

/// Worker threads to use by default: every core.
#[cfg(feature = "std")]
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Whether `bytes` are all zero: what makes a chunk a zero chunk, and what
/// a zero run must read back as. OR-folded in blocks, which compiles to
/// vector code; a byte-wise `all` stops to branch at every byte, and zero
/// runs are a quarter of a typical root file system image.
pub fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    #[test]
    fn a_single_set_bit_anywhere_makes_a_range_not_zero() {
        let mut buf = vec![0u8; 3 * 4096 + 17];
        assert!(super::all_zero(&buf) && super::all_zero(&[]));
        for at in [0, 4095, 4096, 2 * 4096 + 1, buf.len() - 1] {
            buf[at] = 0x80;
            assert!(!super::all_zero(&buf), "byte {at}");
            buf[at] = 0;
        }
    }
}
