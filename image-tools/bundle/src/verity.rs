//! dm-verity for a release's root file system: the hash tree a bundle's
//! `rootfs` image carries after its data, and the parameters its signed
//! manifest records so that the device opens the root through the kernel's
//! `verity` target (docs/bundle-format.md, "Verity"; docs/boot-flow.md).
//!
//! The layout is the kernel's and `veritysetup`'s, format 1 without a
//! superblock: SHA-256 of the salt followed by each block; the hash blocks
//! of the level nearest the root first, the level that hashes the data
//! last, each level's digests packed from the start of its blocks and the
//! rest of a block zero; the root hash is that of the single top block.
//! Computed here, checked against `veritysetup format` by a test.

use crate::manifest::Digest;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The only hash this format uses (the kernel's name for it).
pub const ALGORITHM: &str = "sha256";
const DIGEST_LEN: u64 = 32;
/// The block size `image-tools build --verity` uses for data and hashes:
/// the page size of the machines we boot, what veritysetup picks too.
pub const BLOCK_SIZE: u32 = 4096;
/// The kernel takes at most this many salt bytes.
pub const MAX_SALT_LEN: usize = 256;

/// What the signed manifest says of an image's verity: enough to open it
/// (the kernel's table line) and to check the image's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeritySpec {
    /// Always "sha256".
    pub algorithm: alloc::string::String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// The data covered: the image's first `data_blocks` blocks.
    pub data_blocks: u64,
    /// Where the hash tree starts in the image, in bytes: right after the
    /// data.
    pub hash_offset: u64,
    /// Hex; up to 256 bytes.
    pub salt: alloc::string::String,
    pub root_hash: Digest,
}

impl VeritySpec {
    /// The salt's bytes; `None` when it is not even-length hex or too long.
    pub fn salt_bytes(&self) -> Option<Vec<u8>> {
        let s = self.salt.as_bytes();
        if s.len() % 2 != 0
            || s.len() / 2 > MAX_SALT_LEN
            || s.iter().any(|c| c.is_ascii_uppercase())
        {
            return None;
        }
        hex::decode(s).ok()
    }

    /// The bytes of the image this describes: its data and its tree.
    pub fn image_len(&self) -> Option<u64> {
        let tree = Layout::new(self.data_blocks, self.hash_block_size)?.tree_blocks();
        self.hash_offset
            .checked_add(tree.checked_mul(u64::from(self.hash_block_size))?)
    }

    /// The rules a reader holds a manifest's verity to; the reason when it
    /// breaks one. `image_size` is the image's size in the manifest.
    pub fn check(&self, image_size: u64) -> Result<(), alloc::string::String> {
        use alloc::format;
        if self.algorithm != ALGORITHM {
            return Err(format!("algorithm {:?} is not sha256", self.algorithm));
        }
        for (what, size) in [
            ("data_block_size", self.data_block_size),
            ("hash_block_size", self.hash_block_size),
        ] {
            if !size.is_power_of_two() || !(512..=BLOCK_SIZE).contains(&size) {
                return Err(format!(
                    "{what} {size} is not a power of two in 512..={BLOCK_SIZE}"
                ));
            }
        }
        if self.data_blocks == 0 {
            return Err("no data blocks".into());
        }
        if Some(self.hash_offset)
            != self
                .data_blocks
                .checked_mul(u64::from(self.data_block_size))
        {
            return Err(format!(
                "hash_offset {} is not where {} blocks of {} bytes end",
                self.hash_offset, self.data_blocks, self.data_block_size
            ));
        }
        if self.hash_offset % u64::from(self.hash_block_size) != 0 {
            return Err(format!(
                "hash_offset {} is not a multiple of hash_block_size",
                self.hash_offset
            ));
        }
        if self.salt_bytes().is_none() {
            return Err(format!(
                "salt must be lowercase hex of at most {MAX_SALT_LEN} bytes"
            ));
        }
        match self.image_len() {
            Some(len) if len == image_size => Ok(()),
            Some(len) => Err(format!(
                "the image is {image_size} bytes; its data and hash tree are {len}"
            )),
            None => Err("the hash tree's size overflows".into()),
        }
    }

    /// The kernel's table parameters for the `verity` target over `device`
    /// holding both the data and the tree (`dm-verity.rst`), without
    /// optional arguments: a block that does not match gives an I/O error.
    pub fn table_params(&self, device: &str) -> alloc::string::String {
        alloc::format!(
            "1 {device} {device} {} {} {} {} {} {} {}",
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_offset / u64::from(self.hash_block_size),
            self.algorithm,
            self.root_hash,
            if self.salt.is_empty() {
                "-"
            } else {
                &self.salt
            },
        )
    }
}

/// The kernel command line parameter by which the boot stage hands a
/// slot's verified verity parameters to the release's initramfs
/// (`bootctl open-root`).
pub const CMDLINE_KEY: &str = "switchback.verity";

impl VeritySpec {
    /// The value of [`CMDLINE_KEY`]: every field, `:`-separated, no spaces.
    pub fn cmdline_value(&self) -> alloc::string::String {
        alloc::format!(
            "{}:{}:{}:{}:{}:{}:{}",
            self.algorithm,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_offset,
            self.root_hash,
            self.salt
        )
    }

    /// Parses [`VeritySpec::cmdline_value`]; `None` when it is not one.
    /// The caller still applies [`VeritySpec::check`].
    pub fn from_cmdline_value(value: &str) -> Option<VeritySpec> {
        let mut f = value.split(':');
        let spec = VeritySpec {
            algorithm: f.next()?.into(),
            data_block_size: f.next()?.parse().ok()?,
            hash_block_size: f.next()?.parse().ok()?,
            data_blocks: f.next()?.parse().ok()?,
            hash_offset: f.next()?.parse().ok()?,
            root_hash: {
                let hex_root = f.next()?;
                let mut d = [0u8; 32];
                if hex_root.len() != 64 || hex_root.bytes().any(|c| c.is_ascii_uppercase()) {
                    return None;
                }
                hex::decode_to_slice(hex_root, &mut d).ok()?;
                Digest(d)
            },
            salt: f.next()?.into(),
        };
        f.next().is_none().then_some(spec)
    }
}

/// Where each level of a tree lies, as the kernel computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    hash_block_size: u64,
    /// Blocks per level, level 0 hashing the data.
    level_blocks: Vec<u64>,
}

impl Layout {
    /// `None` for a hash block too small for two digests or sizes that
    /// overflow.
    pub fn new(data_blocks: u64, hash_block_size: u32) -> Option<Layout> {
        let per_block = u64::from(hash_block_size) / DIGEST_LEN;
        if per_block < 2 || !per_block.is_power_of_two() {
            return None;
        }
        let bits = per_block.trailing_zeros();
        // The kernel's count: levels until one block covers the data.
        let mut levels = 0u32;
        while bits * levels < 64 && data_blocks.saturating_sub(1) >> (bits * levels) != 0 {
            levels += 1;
        }
        let level_blocks = (0..levels)
            .map(|i| {
                let shift = bits * (i + 1);
                if shift >= 64 {
                    1
                } else {
                    data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        Some(Layout {
            hash_block_size: u64::from(hash_block_size),
            level_blocks,
        })
    }

    pub fn tree_blocks(&self) -> u64 {
        self.level_blocks.iter().sum()
    }

    /// Where level `i`'s first block is, in blocks from the tree's start:
    /// the levels nearer the root come first.
    fn level_start(&self, i: usize) -> u64 {
        self.level_blocks[i + 1..].iter().sum()
    }
}

/// SHA-256 of the salt then `block`: the digest of every block in format 1.
pub fn block_digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The tree over data whose block digests are `leaves` (in order), and the
/// root hash: the bytes to append after the data.
pub fn tree(layout: &Layout, salt: &[u8], leaves: &[[u8; 32]]) -> (Vec<u8>, Digest) {
    let hbs = layout.hash_block_size as usize;
    let mut tree = alloc::vec![0u8; layout.tree_blocks() as usize * hbs];
    let mut below: Vec<[u8; 32]> = leaves.to_vec();
    for (i, &blocks) in layout.level_blocks.iter().enumerate() {
        let start = layout.level_start(i) as usize * hbs;
        let level = &mut tree[start..start + blocks as usize * hbs];
        for (n, d) in below.iter().enumerate() {
            let at = n * DIGEST_LEN as usize;
            level[at..at + DIGEST_LEN as usize].copy_from_slice(d);
        }
        below = level.chunks(hbs).map(|b| block_digest(salt, b)).collect();
    }
    // The top level is one block (or, for a single data block, there is
    // no level and the root is that block's digest).
    let root = below.first().copied().unwrap_or([0; 32]);
    (tree, Digest(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_counted_as_the_kernel_counts_them() {
        let l = |n| Layout::new(n, 4096).unwrap().level_blocks;
        assert_eq!(l(1), Vec::<u64>::new());
        assert_eq!(l(2), [1]);
        assert_eq!(l(128), [1]);
        assert_eq!(l(129), [2, 1]);
        assert_eq!(l(128 * 128), [128, 1]);
        assert_eq!(l(128 * 128 + 1), [129, 2, 1]);
        assert!(Layout::new(10, 32).is_none());
    }

    #[test]
    fn the_spec_is_held_to_the_image_it_describes() {
        let data_blocks = 300;
        let spec = VeritySpec {
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks,
            hash_offset: data_blocks * 4096,
            salt: "00ff".into(),
            root_hash: Digest([1; 32]),
        };
        // 300 blocks: 3 leaf hash blocks and 1 above them.
        let size = (300 + 4) * 4096;
        assert_eq!(spec.check(size), Ok(()));
        assert!(spec.check(size + 4096).is_err());
        let broken = [
            VeritySpec {
                algorithm: "sha1".into(),
                ..spec.clone()
            },
            VeritySpec {
                data_block_size: 3000,
                ..spec.clone()
            },
            VeritySpec {
                hash_block_size: 8192,
                ..spec.clone()
            },
            VeritySpec {
                hash_offset: 4096,
                ..spec.clone()
            },
            VeritySpec {
                salt: "0".into(),
                ..spec.clone()
            },
            VeritySpec {
                salt: "AB".into(),
                ..spec.clone()
            },
            VeritySpec {
                salt: "00".repeat(257),
                ..spec.clone()
            },
            VeritySpec {
                data_blocks: 0,
                hash_offset: 0,
                ..spec.clone()
            },
        ];
        for b in broken {
            assert!(b.check(size).is_err(), "{b:?}");
        }
        let arg = spec.cmdline_value();
        assert!(!arg.contains(' '));
        assert_eq!(VeritySpec::from_cmdline_value(&arg), Some(spec.clone()));
        assert_eq!(VeritySpec::from_cmdline_value(&(arg.clone() + ":x")), None);
        assert_eq!(VeritySpec::from_cmdline_value("sha256:4096"), None);
        assert_eq!(
            spec.table_params("/dev/vda3"),
            format!(
                "1 /dev/vda3 /dev/vda3 4096 4096 300 300 sha256 {} 00ff",
                Digest([1; 32])
            )
        );
    }
}
