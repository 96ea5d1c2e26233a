//! A slot's release, checked before anything in the slot is used: its
//! signed head (the slot trailer, docs/bundle-format.md) against the
//! stage's keyring, then every byte the stage reads from the slot (ext4's
//! metadata, the kernel, the initramfs) against the SHA-256 of its chunk
//! in that signed manifest. A slot changed after its install, by a bit
//! flip or by someone with the disk, is not started.
//!
//! Only the chunks the reads touch are hashed (a few MiB for the kernel
//! and initramfs), not the whole image: the rest of the root file system
//! is not checked at boot. A zero chunk is served as the zeros it signs,
//! not read.

use crate::disk::{Disk, DiskError};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bootctl_core::device::BlockDevice;
use core::cell::Cell;
use sha2::{Digest as _, Sha256};
use switchback_bundle::trailer;
use switchback_bundle::{ImageSpec, Keyring, Manifest, ROOTFS};

/// Why a slot's release is refused: `what` for `switchback.start_failed`.
pub struct Refused {
    pub what: &'static str,
    pub detail: String,
}

fn refused(what: &'static str, detail: String) -> Refused {
    Refused { what, detail }
}

/// The slot's signed release, verified against `keyring`.
pub fn release(slot: &mut Disk, keyring: &Keyring) -> Result<Manifest, Refused> {
    let io = |e: DiskError| refused("mount", format!("reading its trailer: {e}"));
    let size = slot.size();
    let sector = trailer::TRAILER_SECTOR;
    let mut footer = vec![0u8; sector as usize];
    if size < sector {
        return Err(refused("unsigned", "it is too small for a trailer".into()));
    }
    slot.read_at(&mut footer, size - sector).map_err(io)?;
    let (len, crc) = trailer::parse_footer(&footer, size)
        .map_err(|e| refused("unsigned", format!("its trailer is unreadable: {e}")))?
        .ok_or_else(|| refused("unsigned", "it holds no signed release (no trailer)".into()))?;
    let mut head = vec![0u8; len as usize];
    slot.read_at(&mut head, size - trailer::reserved(len))
        .map_err(io)?;
    trailer::verify_head(&head, crc, keyring).map_err(|e| {
        refused(
            "bad-signature",
            format!("its release is not signed by a trusted key: {e}"),
        )
    })
}

/// The first chunk found not to match, shared with whoever reads through
/// ext4 (whose errors do not carry ours).
pub type Mismatch = Rc<Cell<Option<usize>>>;

/// The slot's `rootfs` image, each chunk checked against the signed
/// manifest when first read; the last few are kept, so ext4's many small
/// reads hash each chunk once.
pub struct Verified {
    slot: Disk,
    image: ImageSpec,
    cache: Vec<(usize, Vec<u8>)>,
    mismatch: Mismatch,
}

/// Chunks kept: the kernel's data, its extent blocks, and the inode and
/// directory blocks ext4 goes back to. 3 × the default 4 MiB.
const CACHED: usize = 3;

impl Verified {
    pub fn new(slot: Disk, manifest: Manifest) -> Result<(Verified, Mismatch), Refused> {
        let image = manifest
            .images
            .into_iter()
            .find(|i| i.target == ROOTFS)
            .ok_or_else(|| refused("unsigned", "its release has no rootfs image".into()))?;
        if image.size > slot.size() {
            return Err(refused(
                "unsigned",
                "its rootfs image does not fit the slot".into(),
            ));
        }
        let mismatch = Mismatch::default();
        let verified = Verified {
            slot,
            image,
            cache: Vec::new(),
            mismatch: mismatch.clone(),
        };
        Ok((verified, mismatch))
    }

    fn chunk(&mut self, index: usize) -> Result<&[u8], String> {
        if let Some(at) = self.cache.iter().position(|(i, _)| *i == index) {
            let hit = self.cache.remove(at);
            self.cache.push(hit);
        } else {
            let spec = self
                .image
                .chunks
                .get(index)
                .ok_or_else(|| format!("chunk {index} is not in the signed manifest"))?;
            let len = usize::try_from(self.image.chunk_len(index))
                .map_err(|_| format!("chunk {index} is too large"))?;
            let mut data = vec![0u8; len];
            if !spec.zero {
                let at = index as u64 * self.image.chunk_size;
                self.slot
                    .read_at(&mut data, at)
                    .map_err(|e| format!("reading chunk {index}: {e}"))?;
            }
            if !spec.zero && Sha256::digest(&data).as_slice() != spec.sha256.0 {
                self.mismatch.set(Some(index));
                return Err(format!("chunk {index} does not match the signed release"));
            }
            if self.cache.len() == CACHED {
                self.cache.remove(0);
            }
            self.cache.push((index, data));
        }
        Ok(self
            .cache
            .last()
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default())
    }
}

impl ext4_view::Ext4Read for Verified {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn core::error::Error + Send + Sync + 'static>> {
        let end = start
            .checked_add(dst.len() as u64)
            .filter(|&e| e <= self.image.size)
            .ok_or("a read past the signed image")?;
        let chunk_size = self.image.chunk_size;
        let mut at = start;
        while at < end {
            let index = usize::try_from(at / chunk_size).map_err(|_| "chunk index")?;
            let offset = (at % chunk_size) as usize;
            let chunk = self.chunk(index)?;
            let n = (chunk.len().saturating_sub(offset) as u64).min(end - at) as usize;
            if n == 0 {
                return Err("a chunk shorter than the manifest says".into());
            }
            let from = (at - start) as usize;
            dst[from..from + n].copy_from_slice(&chunk[offset..offset + n]);
            at += n as u64;
        }
        Ok(())
    }
}
