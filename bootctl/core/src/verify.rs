//! What both boot stages check in a slot before they start its kernel
//! (docs/boot-flow.md, "Integrity at every boot"): its signed head (the
//! slot trailer, docs/bundle-format.md) against the stage's keyring, then
//! every byte the stage reads from the slot (ext4's metadata, the kernel,
//! the initramfs) against the SHA-256 of its chunk in that signed
//! manifest. A slot changed after its install, by a bit flip or by someone
//! with the disk, is not started. The UEFI stage reads through the
//! firmware's block I/O, the Linux stage through the partition's device
//! node: the same checks, the same messages, the same reasons.
//!
//! Only the chunks the reads touch are hashed (a few MiB for the kernel
//! and initramfs), not the whole image: the rest of the root file system
//! is dm-verity's to check, when the release has a tree. A zero chunk is
//! served as the zeros it signs, not read.

use crate::device::BlockDevice;
use crate::Slot;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use sha2::{Digest as _, Sha256};
use switchback_bundle::stage_sections::Policy;
use switchback_bundle::trailer;
use switchback_bundle::{verity, ImageSpec, Keyring, Manifest, ROOTFS};

/// Why a slot is not started: `what` and `code` for
/// `switchback.start_failed` (docs/boot-flow.md lists them), and the
/// detail for the console.
#[derive(Debug, Clone)]
pub struct Refused {
    pub what: &'static str,
    pub code: u64,
    pub detail: String,
}

fn refused(what: &'static str, detail: String) -> Refused {
    Refused {
        what,
        code: 0,
        detail,
    }
}

/// What a stage checks slots with: its keyring (`None` for a stage without
/// one, which starts slots unverified and says so) and its policy.
pub struct Trust {
    pub keyring: Option<Keyring>,
    pub policy: Policy,
}

impl Trust {
    /// The trust of a stage from its keyring and policy as `image-tools
    /// stage` wrote them (`switchback_bundle::stage_sections`): `None` for
    /// a stage without a keyring.
    pub fn from_sections(keyring: Option<&[u8]>, policy: Option<&[u8]>) -> Result<Trust, String> {
        let policy = match policy {
            None => Policy::default(),
            Some(p) => Policy::parse(p).map_err(|e| format!("its policy: {e}"))?,
        };
        let Some(keyring) = keyring else {
            // A policy says the stage was keyed: without its keyring it
            // would start anything, which is never what a policy asked.
            if policy != Policy::default() {
                return Err("its policy has no keyring beside it".into());
            }
            return Ok(Trust {
                keyring: None,
                policy,
            });
        };
        let keys = switchback_bundle::stage_sections::parse_keyring(keyring)
            .map_err(|e| format!("its keyring: {e}"))?;
        let keyring = Keyring::from_raw_keys(&keys)
            .and_then(|k| match policy.threshold {
                0 => Ok(k),
                n => k.with_threshold(n as usize),
            })
            .map_err(|e| format!("its keyring: {e}"))?;
        Ok(Trust {
            keyring: Some(keyring),
            policy,
        })
    }

    /// What the stage says of its trust when it starts.
    pub fn describe(&self) -> String {
        match &self.keyring {
            None => "WARNING: this stage has no keyring (image-tools stage adds one): slots start unverified".into(),
            Some(k) => format!(
                "trusting {} key(s), {} signature(s) required{}",
                k.len(),
                k.threshold(),
                if self.policy.require_verity {
                    "; starting only roots under dm-verity"
                } else {
                    ""
                }
            ),
        }
    }
}

/// The slot's signed release, verified against `keyring`.
pub fn release<D: BlockDevice>(slot: &mut D, keyring: &Keyring) -> Result<Manifest, Refused> {
    let io = |e: D::Error| refused("mount", format!("reading its trailer: {e}"));
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
pub struct Verified<D> {
    slot: D,
    image: ImageSpec,
    cache: Vec<(usize, Vec<u8>)>,
    mismatch: Mismatch,
}

/// Chunks kept: the kernel's data, its extent blocks, and the inode and
/// directory blocks ext4 goes back to. 3 × the default 4 MiB.
const CACHED: usize = 3;

impl<D: BlockDevice> Verified<D> {
    pub fn new(slot: D, manifest: Manifest) -> Result<(Verified<D>, Mismatch), Refused> {
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

impl<D: BlockDevice> ext4_view::Ext4Read for Verified<D> {
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

/// A slot read as it is, for a stage without a keyring.
struct Unverified<D>(D);

impl<D: BlockDevice> ext4_view::Ext4Read for Unverified<D> {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn core::error::Error + Send + Sync + 'static>> {
        self.0.read_at(dst, start).map_err(|e| e.to_string().into())
    }
}

/// The largest kernel or initramfs a stage reads into memory: far above
/// any real one, far below what a hostile file system could claim.
pub const MAX_BOOT_FILE: u64 = 256 << 20;

/// The longest command line the kernel keeps whole (its COMMAND_LINE_SIZE,
/// 2048 with the NUL on x86-64 and arm64): a longer one is cut, and what a
/// cut drops is not for a stage to choose.
pub const MAX_CMDLINE: usize = 2047;

/// What a stage starts: the slot's kernel, its initramfs when it has one,
/// and the `switchback.verity=` parameter when its signed release has a
/// hash tree (to go right after `root=`, before anything a build
/// appended: the kernel and the initramfs take a parameter's first
/// occurrence).
pub struct BootFiles {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub verity: Option<String>,
}

/// Reads `slot`'s `/boot/vmlinuz` and `/boot/initrd.img` from its
/// partition `part`, checked against its signed release when `trust` has
/// a keyring; what it found is told to `say`.
pub fn boot_files<D: BlockDevice + 'static>(
    slot: Slot,
    mut part: D,
    trust: &Trust,
    say: &mut dyn FnMut(&str),
) -> Result<BootFiles, Refused> {
    let mut mismatch = None;
    let mut verity_param = None;
    let reader: Box<dyn ext4_view::Ext4Read> = match trust.keyring.as_ref() {
        None => Box::new(Unverified(part)),
        Some(keyring) => {
            let manifest = release(&mut part, keyring)?;
            say(&format!(
                "{slot} holds {} {}, signed by a trusted key",
                manifest.compatible, manifest.version
            ));
            // The root hash goes to the release's initramfs from here,
            // where its signature was checked.
            match manifest.image(ROOTFS).ok().and_then(|i| i.verity.as_ref()) {
                Some(v) => {
                    verity_param = Some((
                        format!("{}={}", verity::CMDLINE_KEY, v.cmdline_value()),
                        v.root_hash.to_string(),
                    ));
                }
                None if trust.policy.require_verity => {
                    return Err(refused(
                        "no-verity",
                        format!(
                            "{} {} has no dm-verity hash tree for its root, and this stage starts none without one",
                            manifest.compatible, manifest.version
                        ),
                    ))
                }
                None => say(&format!(
                    "{slot}'s root has no dm-verity hash tree: its blocks are not checked after this boot stage"
                )),
            }
            let (verified, m) = Verified::new(part, manifest)?;
            mismatch = Some(m);
            Box::new(verified)
        }
    };
    // A read that met a chunk unlike its signed hash is why, whatever ext4
    // made of it.
    let why = |detail: String| -> Refused {
        match mismatch.as_ref().and_then(|m| m.get()) {
            Some(chunk) => refused(
                "tampered",
                format!("chunk {chunk} of its image does not match its signed release"),
            ),
            None => refused("mount", detail),
        }
    };
    // The file system and the verified chunks it kept are dropped on
    // return, before the kernel needs the memory.
    let fs =
        ext4_view::Ext4::load(reader).map_err(|e| why(format!("reading its file system: {e}")))?;
    let read = |path: &str| -> Result<Option<Vec<u8>>, Refused> {
        let len = match fs.metadata(path) {
            Ok(m) => m.len(),
            Err(ext4_view::Ext4Error::NotFound) => return Ok(None),
            Err(e) => return Err(why(format!("reading {path}: {e}"))),
        };
        if len > MAX_BOOT_FILE {
            return Err(why(format!(
                "{path} is {len} bytes, more than {MAX_BOOT_FILE}"
            )));
        }
        fs.read(path)
            .map(Some)
            .map_err(|e| why(format!("reading {path}: {e}")))
    };
    // ENOENT, as a missing file is reported by either stage.
    let kernel = read("/boot/vmlinuz")?.ok_or(Refused {
        what: "no-kernel",
        code: 2,
        detail: "it has no /boot/vmlinuz".into(),
    })?;
    let initrd = read("/boot/initrd.img")?;
    // The tree is opened by the release's initramfs: without one, nothing
    // reads the parameter and the root would be mounted unchecked.
    let verity_param = match verity_param {
        Some((_, _)) if initrd.is_none() && trust.policy.require_verity => {
            return Err(refused(
                "no-verity",
                "its release has a dm-verity tree but no /boot/initrd.img to open it, and this stage starts no root unchecked".into(),
            ))
        }
        Some((_, _)) if initrd.is_none() => {
            say(&format!(
                "{slot}'s release has a dm-verity tree but no /boot/initrd.img to open it: its root is not checked after this boot stage"
            ));
            None
        }
        Some((param, root_hash)) => {
            say(&format!(
                "{slot}'s root is opened through dm-verity, root hash {root_hash}"
            ));
            Some(param)
        }
        None => None,
    };
    Ok(BootFiles {
        kernel,
        initrd,
        verity: verity_param,
    })
}
