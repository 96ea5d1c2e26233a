//! The slot trailer: a release's signed head (bundle header, manifest and
//! signatures, `VerifiedBundle::head`) kept at the end of the slot
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
//!
//! Checking a trailer ([`parse_footer`], then [`verify_head`]) builds
//! without std: the UEFI boot stage verifies the slot it boots with this
//! code. Writing one (`write`) needs std.

use super::error::{BundleError, Result};
use super::header::{Head, HEADER_LEN};
use super::{Keyring, Manifest, MAX_MANIFEST_LEN, MAX_SIGNATURES};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

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
#[cfg(feature = "std")]
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
/// and returns the release's manifest, parsed and validated only after the
/// signature verified: what `Envelope::read` and `Envelope::verify` check
/// of a bundle, with the same errors.
pub fn verify_head(head: &[u8], crc: u32, keyring: &Keyring) -> Result<Manifest> {
    if crc32fast::hash(head) != crc {
        return Err(BundleError::BadManifest(
            "slot trailer: head CRC mismatch".into(),
        ));
    }
    let head = Head::parse(head)?;
    keyring.verify_signatures(head.manifest_bytes, &head.signatures())?;
    Manifest::parse(head.manifest_bytes, head.header.payload_len)
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

    /// What a boot stage does, without std: the footer, then the head
    /// against raw keys, then the manifest's images and chunks.
    #[test]
    fn a_signed_head_verifies_against_raw_keys_and_nothing_else_does() {
        use crate::header::{encode_signatures, Header, SignatureEntry};
        use crate::keys::key_id;
        use crate::manifest::{ChunkSpec, Digest, ImageSpec};
        use alloc::string::ToString;
        use ed25519_dalek::{Signer, SigningKey};

        let zeros = Digest::of_zeros(64 << 10);
        let zero_chunk = |offset| ChunkSpec {
            offset,
            length: 0,
            sha256: zeros,
            frame_sha256: None,
            zero: true,
            base_ranges: Vec::new(),
        };
        let manifest = Manifest {
            format: crate::FORMAT_VERSION,
            compatible: "acme-gw".to_string(),
            version: "1.2.0".to_string(),
            security_version: 3,
            build_time: 0,
            data_schema: None,
            payload_size: 0,
            images: vec![ImageSpec {
                target: crate::ROOTFS.to_string(),
                size: 128 << 10,
                chunk_size: 64 << 10,
                chunks: vec![zero_chunk(0), zero_chunk(0)],
                base: None,
                verity: None,
            }],
            migrations: Vec::new(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let signatures = encode_signatures(&[SignatureEntry {
            key_id: key_id(&key.verifying_key()),
            signature: key.sign(&manifest_bytes).to_bytes(),
        }]);
        let header = Header {
            manifest_len: manifest_bytes.len() as u32,
            signatures_len: signatures.len() as u32,
            payload_len: 0,
        };
        let head = [&header.encode()[..], &manifest_bytes, &signatures].concat();

        let slot_size = 1 << 20;
        let (len, crc) = parse_footer(&footer(&head), slot_size).unwrap().unwrap();
        assert_eq!(len, head.len() as u64);
        let stranger = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        let ring = Keyring::from_raw_keys(&[stranger, key.verifying_key().to_bytes()]).unwrap();
        let verified = verify_head(&head, crc, &ring).unwrap();
        assert_eq!(verified, manifest);
        let rootfs = verified.image(crate::ROOTFS).unwrap();
        assert_eq!((rootfs.size, rootfs.chunk_size), (128 << 10, 64 << 10));
        assert!(rootfs.chunks.iter().all(|c| c.zero && c.sha256 == zeros));

        // Another key's keyring: no trusted signer.
        let other = Keyring::from_raw_keys(&[stranger]).unwrap();
        let e = verify_head(&head, crc, &other).unwrap_err();
        assert_eq!(e.exit_code(), 25, "{e}");
        // A damaged head: its CRC, then (CRC recomputed) its signature.
        let mut altered = head.clone();
        let at = 32 + manifest_bytes.len() - 3;
        altered[at] ^= 1;
        let e = verify_head(&altered, crc, &ring).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bundle manifest: slot trailer: head CRC mismatch"
        );
        let e = verify_head(&altered, crc32fast::hash(&altered), &ring).unwrap_err();
        assert_eq!(e.exit_code(), 26, "{e}");
        // A head cut short, with a CRC that matches what is left.
        let cut = &head[..head.len() - 1];
        let e = verify_head(cut, crc32fast::hash(cut), &ring).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bundle is truncated: it ends inside the signature block"
        );

        // The same verdict as the streaming reader's, for every cut and
        // every flipped bit of the head (CRC recomputed).
        #[cfg(feature = "std")]
        {
            let streamed = |h: &[u8]| {
                crate::Envelope::read(h)
                    .and_then(|env| env.verify(&ring))
                    .map(|v| v.manifest)
                    .map_err(|e| (e.exit_code(), e.to_string()))
            };
            let in_memory = |h: &[u8]| {
                verify_head(h, crc32fast::hash(h), &ring)
                    .map_err(|e| (e.exit_code(), e.to_string()))
            };
            for n in 0..=head.len() {
                assert_eq!(in_memory(&head[..n]), streamed(&head[..n]), "cut at {n}");
            }
            for bit in 0..head.len() * 8 {
                let mut flipped = head.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(in_memory(&flipped), streamed(&flipped), "bit {bit}");
            }
        }
    }
}
