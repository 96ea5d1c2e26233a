//! The slot trailer: a release's signed head (bundle header, manifest and
//! signatures, [`super::VerifiedBundle::head`]) kept at the end of the slot
//! it was installed into. It is the device's evidence of what each slot
//! holds, and of its security version, that survives the loss of the
//! updater's state file: anyone with the keyring can check it again.
//!
//! ```text
//! slot end − TRAILER_SECTOR − round_up(head_len, TRAILER_SECTOR):  head
//! slot end − TRAILER_SECTOR:  footer: magic "SWTRAILR", version (u32 LE),
//!                             head_len (u32 LE), CRC-32 of head (u32 LE),
//!                             zeros to the end of the sector
//! ```
//!
//! The footer is written after the head and synced with it; erasing the
//! footer alone removes the evidence. Nothing in a trailer is trusted before
//! its signature verifies.

use super::error::{BundleError, Result};
use super::header::HEADER_LEN;
use super::{Envelope, Keyring, Manifest, MAX_MANIFEST_LEN, MAX_SIGNATURES};

pub const TRAILER_MAGIC: &[u8; 8] = b"SWTRAILR";
pub const TRAILER_VERSION: u32 = 1;
/// The footer's size and the head's alignment: one 4 KiB sector.
pub const TRAILER_SECTOR: u64 = 4096;
const MAX_HEAD_LEN: u64 = HEADER_LEN as u64 + MAX_MANIFEST_LEN as u64 + 96 * MAX_SIGNATURES as u64;

/// Bytes a trailer with a head of `head_len` bytes takes at a slot's end.
pub fn reserved(head_len: u64) -> u64 {
    head_len.div_ceil(TRAILER_SECTOR) * TRAILER_SECTOR + TRAILER_SECTOR
}

/// The footer sector for `head`.
pub fn footer(head: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; TRAILER_SECTOR as usize];
    f[..8].copy_from_slice(TRAILER_MAGIC);
    f[8..12].copy_from_slice(&TRAILER_VERSION.to_le_bytes());
    f[12..16].copy_from_slice(&(head.len() as u32).to_le_bytes());
    f[16..20].copy_from_slice(&crc32fast::hash(head).to_le_bytes());
    f
}

/// Writes `head` as the trailer of the slot at `offset` (`size` bytes) of
/// `dev`: the head, then the footer that makes it count, then a sync. The
/// footer carries the head's CRC, so a cut that lands the footer without
/// the whole head leaves a trailer that does not count.
pub fn write(dev: &std::fs::File, offset: u64, size: u64, head: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let room = size
        .checked_sub(reserved(head.len() as u64))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a {size}-byte slot has no room for a {}-byte trailer",
                    head.len()
                ),
            )
        })?;
    dev.write_all_at(head, offset + room)?;
    dev.write_all_at(&footer(head), offset + size - TRAILER_SECTOR)?;
    dev.sync_data()
}

/// The head's length and CRC from a footer, or `None` when there is no
/// trailer (no magic: an empty or never-installed slot).
pub fn parse_footer(f: &[u8], slot_size: u64) -> Result<Option<(u64, u32)>> {
    let bad = |why: String| BundleError::BadManifest(format!("slot trailer: {why}"));
    if f.len() < 20 || &f[..8] != TRAILER_MAGIC {
        return Ok(None);
    }
    let word = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    if word(8) != TRAILER_VERSION {
        return Err(bad(format!("version {} is not {TRAILER_VERSION}", word(8))));
    }
    let len = u64::from(word(12));
    if len < HEADER_LEN as u64 || len > MAX_HEAD_LEN || reserved(len) > slot_size {
        return Err(bad(format!("head length {len} is out of range")));
    }
    Ok(Some((len, word(16))))
}

/// Checks a trailer's head (its CRC, then its signature against `keyring`)
/// and returns the release's manifest.
pub fn verify_head(head: &[u8], crc: u32, keyring: &Keyring) -> Result<Manifest> {
    if crc32fast::hash(head) != crc {
        return Err(BundleError::BadManifest(
            "slot trailer: head CRC mismatch".into(),
        ));
    }
    Ok(Envelope::read(head)?.verify(keyring)?.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footers_round_trip_and_bound_the_head() {
        let head = vec![7u8; 5000];
        let f = footer(&head);
        assert_eq!(
            parse_footer(&f, 1 << 20).unwrap(),
            Some((5000, crc32fast::hash(&head)))
        );
        assert_eq!(reserved(5000), 3 * TRAILER_SECTOR);
        assert!(parse_footer(&f, 8192).is_err(), "larger than the slot");
        assert_eq!(parse_footer(&[0u8; 4096], 1 << 20).unwrap(), None);
        let mut huge = f.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_footer(&huge, u64::MAX).is_err());
    }
}
