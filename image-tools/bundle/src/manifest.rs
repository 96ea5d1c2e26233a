//! The manifest: what the bundle holds, with every chunk's hash. It is
//! parsed only after its signature verified, and then checked against the
//! format's rules before any payload byte is read.

use super::error::{BundleError, Result};
use super::{CHUNK_ALIGN, FORMAT_VERSION, MAX_CHUNK_SIZE, MAX_IMAGES, MAX_REF_LEN, MIN_CHUNK_SIZE};
use alloc::borrow::Cow;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest, written in JSON as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Digest, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        if s.len() != 64 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "sha256 must be 64 lowercase hex digits",
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(Digest(out))
    }
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// SHA-256 of `len` zero bytes, without a buffer of that size.
    pub fn of_zeros(len: u64) -> Digest {
        use sha2::Digest as _;
        static ZEROS: [u8; 65536] = [0; 65536];
        let mut h = sha2::Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            h.update(&ZEROS[..n as usize]);
            left -= n;
        }
        Digest(h.finalize().into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Equal to the header's format version.
    pub format: u32,
    /// The product this release is for; a device refuses any other.
    pub compatible: String,
    /// Semantic version of the release.
    pub version: String,
    /// Anti-rollback counter; a device refuses anything below its floor.
    pub security_version: u64,
    /// Seconds since the Unix epoch.
    pub build_time: u64,
    /// The data schema this release expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_schema: Option<u32>,
    /// Total length of the payload region.
    pub payload_size: u64,
    pub images: Vec<ImageSpec>,
    /// Data migrations; each one's executable is the image it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<MigrationSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the flip, while the old release runs; must keep it working.
    Expand,
    /// After the new release is committed; drops what the old one needed.
    Finalize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    /// Target name of the image holding the executable (`migration-N`).
    pub image: String,
    pub from: u32,
    pub to: u32,
    pub phase: Phase,
    /// Directories under the data directory to snapshot before it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Where the image goes on the device (`rootfs`: the inactive slot).
    pub target: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Uncompressed size of every chunk but the last.
    pub chunk_size: u64,
    pub chunks: Vec<ChunkSpec>,
    /// Set for a delta image: the image its chunks are decoded against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseSpec>,
    /// Set when the image ends in a dm-verity hash tree over the rest
    /// (`rootfs` only): the device opens it through the kernel's verity
    /// target with these parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<crate::verity::VeritySpec>,
}

/// The base of a delta image: what must be in the running slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    pub size: u64,
    /// Image digest of the base, chunked at this image's `chunk_size`.
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkSpec {
    /// Offset of the compressed chunk from the start of the payload region.
    pub offset: u64,
    /// Compressed length; 0 for a zero chunk.
    pub length: u64,
    /// SHA-256 of the chunk's uncompressed bytes.
    pub sha256: Digest,
    /// SHA-256 of the stored zstd frame, checked before the frame reaches
    /// the decoder; absent for a zero chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_sha256: Option<Digest>,
    /// The chunk is all zeros: no frame in the payload, nothing to
    /// decompress or hash; written as the medium likes zeros best.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub zero: bool,
    /// Delta chunks: `[offset, length]` ranges of the base image whose
    /// concatenation is the zstd reference prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_ranges: Vec<[u64; 2]>,
}

impl ImageSpec {
    /// Uncompressed length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk_size;
        self.chunk_size.min(self.size - start)
    }

    /// The image's identity: SHA-256 over its chunks' SHA-256 digests in
    /// order. Checking every chunk checks the whole image, and a slot's
    /// digest can be computed chunk by chunk on all cores.
    pub fn digest(&self) -> Digest {
        image_digest(self.chunks.iter().map(|c| &c.sha256))
    }

    /// Compressed size of all chunks.
    pub fn compressed_size(&self) -> u64 {
        self.chunks.iter().map(|c| c.length).sum()
    }

    /// Uncompressed bytes carried as zero chunks.
    pub fn zero_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| self.chunks[i].zero)
            .map(|i| self.chunk_len(i))
            .sum()
    }
}

/// SHA-256 over a sequence of chunk digests: an image's digest.
pub fn image_digest<'a>(chunks: impl IntoIterator<Item = &'a Digest>) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for d in chunks {
        h.update(d.0);
    }
    Digest(h.finalize().into())
}

/// Largest compressed chunk a writer can produce for `chunk_size` bytes:
/// zstd's worst-case bound, `ZSTD_COMPRESSBOUND` of zstd.h (a formula of
/// zstd's format, so a verifier without zstd applies the same rule; a test
/// holds it to `ZSTD_compressBound` for every valid chunk size).
pub fn max_compressed_len(chunk_size: u64) -> u64 {
    const KIB_128: u64 = 128 << 10;
    let margin = if chunk_size < KIB_128 {
        (KIB_128 - chunk_size) >> 11
    } else {
        0
    };
    chunk_size
        .saturating_add(chunk_size >> 8)
        .saturating_add(margin)
}

/// Whether `dir` names a directory inside another one: not empty, not
/// absolute, no `..`, and not starting with `.` as a whole component. The
/// rule of `std::path::Path::components` yielding only normal components
/// (a `.` inside the path is normalised away), written for `str` so that it
/// holds without std.
fn is_plain_relative(dir: &str) -> bool {
    !dir.is_empty()
        && !dir.starts_with('/')
        && dir.split('/').next() != Some(".")
        && dir.split('/').all(|c| c != "..")
}

fn bad(msg: String) -> BundleError {
    BundleError::BadManifest(msg)
}

impl Manifest {
    /// Parses signed manifest bytes and checks them against the header's
    /// payload length and the format's rules.
    pub fn parse(bytes: &[u8], payload_len: u64) -> Result<Manifest> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid: {e}")))?;
        m.validate(payload_len)?;
        Ok(m)
    }

    pub fn validate(&self, payload_len: u64) -> Result<()> {
        if self.format != FORMAT_VERSION {
            return Err(bad(format!(
                "format {} does not match the header's {FORMAT_VERSION}",
                self.format
            )));
        }
        if self.compatible.is_empty() || self.compatible.len() > 256 {
            return Err(bad("compatible must be 1 to 256 bytes".into()));
        }
        semver::Version::parse(&self.version).map_err(|e| {
            bad(format!(
                "version {:?} is not semantic versioning: {e}",
                self.version
            ))
        })?;
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Err(bad(format!(
                "{} images; a bundle holds 1 to {MAX_IMAGES}",
                self.images.len()
            )));
        }
        if self.payload_size != payload_len {
            return Err(bad(format!(
                "payload_size {} but the header says {payload_len}",
                self.payload_size
            )));
        }
        let mut next_offset = 0u64;
        for (n, image) in self.images.iter().enumerate() {
            let t = &image.target;
            let name_ok = !t.is_empty()
                && t.len() <= 32
                && t.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
                });
            if !name_ok {
                return Err(bad(format!(
                    "image target {t:?} must be 1 to 32 of [a-z0-9_-]"
                )));
            }
            if self.images[..n].iter().any(|o| &o.target == t) {
                return Err(bad(format!("image target {t:?} appears twice")));
            }
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&image.chunk_size)
                || image.chunk_size % CHUNK_ALIGN != 0
            {
                return Err(bad(format!(
                    "image {t}: chunk_size {} is not a multiple of {CHUNK_ALIGN} in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    image.chunk_size
                )));
            }
            if image.size == 0 || image.size > 1 << 50 {
                return Err(bad(format!("image {t}: size {} out of range", image.size)));
            }
            if let Some(v) = &image.verity {
                if t != crate::ROOTFS {
                    return Err(bad(format!(
                        "image {t}: only the rootfs image has a verity hash tree"
                    )));
                }
                v.check(image.size)
                    .map_err(|e| bad(format!("image {t}: verity: {e}")))?;
            }
            let expected_chunks = image.size.div_ceil(image.chunk_size);
            if image.chunks.len() as u64 != expected_chunks {
                return Err(bad(format!(
                    "image {t}: {} chunks listed, {expected_chunks} needed for {} bytes",
                    image.chunks.len(),
                    image.size
                )));
            }
            let max_len = max_compressed_len(image.chunk_size);
            let mut zero_digests: Vec<(u64, Digest)> = Vec::new();
            for (i, c) in image.chunks.iter().enumerate() {
                let ref_len: u64 = c.base_ranges.iter().map(|r| r[1]).sum();
                match &image.base {
                    None if !c.base_ranges.is_empty() => {
                        return Err(bad(format!(
                            "image {t} chunk {i}: base ranges in an image without a base"
                        )));
                    }
                    Some(b)
                        if c.base_ranges.iter().any(|r| {
                            r[1] == 0 || r[0].checked_add(r[1]).is_none_or(|end| end > b.size)
                        }) =>
                    {
                        return Err(bad(format!(
                            "image {t} chunk {i}: a base range lies outside the {}-byte base",
                            b.size
                        )));
                    }
                    _ if ref_len > MAX_REF_LEN => {
                        return Err(bad(format!(
                            "image {t} chunk {i}: reference of {ref_len} bytes exceeds {}",
                            MAX_REF_LEN
                        )));
                    }
                    _ => {}
                }
                if c.offset != next_offset {
                    return Err(bad(format!(
                        "image {t} chunk {i}: offset {} but the previous chunk ends at {next_offset}",
                        c.offset
                    )));
                }
                if c.zero {
                    if c.length != 0 || c.frame_sha256.is_some() || !c.base_ranges.is_empty() {
                        return Err(bad(format!(
                            "image {t} chunk {i}: a zero chunk has no frame, frame digest or base ranges"
                        )));
                    }
                    // A reader that writes zeros without hashing them still
                    // records the image digest: it must be that of zeros.
                    // At most two lengths per image, each hashed once.
                    let len = image.chunk_len(i);
                    let want = match zero_digests.iter().find(|(l, _)| *l == len) {
                        Some((_, d)) => *d,
                        None => {
                            let d = Digest::of_zeros(len);
                            zero_digests.push((len, d));
                            d
                        }
                    };
                    if c.sha256 != want {
                        return Err(bad(format!(
                            "image {t} chunk {i}: a zero chunk's sha256 is not that of {len} zero bytes"
                        )));
                    }
                } else {
                    if c.length == 0 || c.length > max_len {
                        return Err(bad(format!(
                            "image {t} chunk {i}: length {} outside 1..={max_len}",
                            c.length
                        )));
                    }
                    if c.frame_sha256.is_none() {
                        return Err(bad(format!("image {t} chunk {i}: no frame_sha256")));
                    }
                }
                next_offset += c.length;
            }
        }
        for (i, mig) in self.migrations.iter().enumerate() {
            if !self.images.iter().any(|img| img.target == mig.image)
                || !mig.image.starts_with("migration-")
            {
                return Err(bad(format!(
                    "migration {i}: image {:?} is not a migration image of this bundle",
                    mig.image
                )));
            }
            if mig.from >= mig.to {
                return Err(bad(format!(
                    "migration {i}: from {} must be below to {}",
                    mig.from, mig.to
                )));
            }
            if self.data_schema.is_none() {
                return Err(bad(
                    "a bundle with migrations must state its data_schema".into()
                ));
            }
            for dir in &mig.snapshot {
                if !is_plain_relative(dir) {
                    return Err(bad(format!("migration {i}: snapshot {dir:?} must be a relative path inside the data directory")));
                }
            }
        }
        if next_offset != self.payload_size {
            return Err(bad(format!(
                "chunks cover {next_offset} bytes of a {} byte payload",
                self.payload_size
            )));
        }
        Ok(())
    }

    pub fn image(&self, target: &str) -> Result<&ImageSpec> {
        self.images
            .iter()
            .find(|i| i.target == target)
            .ok_or_else(|| BundleError::NoSuchImage(target.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound is zstd's for every chunk size a manifest may have.
    #[cfg(feature = "std")]
    #[test]
    fn the_compressed_length_bound_is_zstds() {
        let sizes = (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE)
            .step_by(CHUNK_ALIGN as usize)
            .chain([0, 1, 4095, 4096, 65535, (128 << 10) - 1, 128 << 10, 1 << 30]);
        for size in sizes {
            assert_eq!(
                max_compressed_len(size),
                zstd::zstd_safe::compress_bound(size as usize) as u64,
                "{size}"
            );
        }
    }

    /// The snapshot rule is `Path::components` yielding only normal
    /// components, for every path of up to 6 of `a`, `.`, `..` and `/`.
    #[cfg(feature = "std")]
    #[test]
    fn plain_relative_paths_are_those_std_finds_plain() {
        let mut paths = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..6 {
            last = last
                .iter()
                .flat_map(|p| ["a", ".", "/", ".."].map(|c| format!("{p}{c}")))
                .collect();
            paths.extend(last.iter().cloned());
        }
        for dir in paths {
            let p = std::path::Path::new(&dir);
            let std_plain = !dir.is_empty()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            assert_eq!(is_plain_relative(&dir), std_plain, "{dir:?}");
        }
    }

    #[test]
    fn snapshot_directories_stay_inside_the_data_directory() {
        for plain in ["db", "a/b", "a/./b", "a//b", "a/", "a/.", ".db", "a.."] {
            assert!(is_plain_relative(plain), "{plain:?}");
        }
        for not in ["", "/", "/db", ".", "./db", "..", "../db", "a/../b", "a/.."] {
            assert!(!is_plain_relative(not), "{not:?}");
        }
    }
}
