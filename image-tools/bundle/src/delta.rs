//! Delta chunks: a chunk compressed with bytes of the base image (the
//! release the device runs) as zstd's reference prefix ("patch-from").
//!
//! Each chunk names its reference as a list of base byte ranges, in the
//! signed manifest; the reference is their concatenation. The writer picks
//! them so that they hold what the chunk is likely made of:
//!
//! - every 4 KiB block of the chunk is looked up by CRC32 in an index of the
//!   base's 4 KiB blocks; the base blocks found are coalesced into runs (a
//!   file system moves files around between releases, but a file's blocks
//!   mostly move together);
//! - the base region at the chunk's own offset, for metadata changed in place.
//!
//! A reader needs only the base image and the ranges; a wrong guess costs
//! compression, never correctness, since every chunk is hash-checked.

use super::MAX_REF_LEN;
#[cfg(feature = "writer")]
pub use index::{BaseIndex, BLOCK};

/// The writer's side: which base ranges a chunk is likely made of, and
/// compressing against them.
#[cfg(feature = "writer")]
mod index {
    use std::collections::HashMap;

    pub const BLOCK: usize = 4096;
    /// Bytes two matched runs may be apart and still merge into one range.
    const MERGE_GAP: u64 = 64 << 10;

    /// Where each distinct 4 KiB block of the base first appears.
    pub struct BaseIndex<'a> {
        base: &'a [u8],
        blocks: HashMap<u32, u64>,
    }

    impl<'a> BaseIndex<'a> {
        pub fn build(base: &'a [u8]) -> BaseIndex<'a> {
            let mut blocks = HashMap::with_capacity(base.len() / BLOCK);
            for (i, block) in base.chunks_exact(BLOCK).enumerate() {
                blocks
                    .entry(crc32fast::hash(block))
                    .or_insert((i * BLOCK) as u64);
            }
            BaseIndex { base, blocks }
        }

        pub fn base(&self) -> &'a [u8] {
            self.base
        }

        /// The base ranges to use as reference for the new chunk `data`, which
        /// sits at `offset` in the new image; at most `max_len` bytes in all.
        pub fn ranges_for(&self, data: &[u8], offset: u64, max_len: u64) -> Vec<[u64; 2]> {
            let base_len = self.base.len() as u64;
            let mut hits: Vec<u64> = data
                .chunks_exact(BLOCK)
                .filter_map(|b| {
                    let at = *self.blocks.get(&crc32fast::hash(b))?;
                    // Equal CRCs of unequal blocks would only waste reference.
                    (self.base[at as usize..at as usize + BLOCK] == *b).then_some(at)
                })
                .collect();
            // The same region of the base: metadata blocks changed in place.
            let own_start = offset.min(base_len);
            let own_end = (offset + data.len() as u64).min(base_len);
            let mut ranges: Vec<[u64; 2]> = Vec::new();
            if own_end > own_start {
                ranges.push([own_start, own_end - own_start]);
            }
            hits.sort_unstable();
            hits.dedup();
            for at in hits {
                ranges.push([at, BLOCK as u64]);
            }
            ranges.sort_unstable();
            let mut merged: Vec<[u64; 2]> = Vec::new();
            for [start, len] in ranges {
                match merged.last_mut() {
                    Some(last) if start <= last[0] + last[1] + MERGE_GAP => {
                        let end = (start + len).max(last[0] + last[1]);
                        last[1] = end - last[0];
                    }
                    _ => merged.push([start, len]),
                }
            }
            // Over budget: keep the largest ranges, in base order.
            if merged.iter().map(|r| r[1]).sum::<u64>() > max_len {
                let mut by_size = merged.clone();
                by_size.sort_unstable_by(|a, b| b[1].cmp(&a[1]));
                let mut kept = Vec::new();
                let mut total = 0;
                for r in by_size {
                    if total + r[1] <= max_len {
                        total += r[1];
                        kept.push(r);
                    }
                }
                kept.sort_unstable();
                merged = kept;
            }
            merged
        }
    }
}

/// The image digest of `base` cut into `chunk_size` chunks, hashed on
/// `threads` cores: what a delta's manifest names and the device checks.
pub fn base_digest(base: &[u8], chunk_size: u64, threads: usize) -> super::Digest {
    let mut digests = Vec::new();
    let mut chunks = base.chunks(chunk_size as usize);
    let _ = super::pipeline::ordered_map(
        threads,
        || Ok::<_, ()>(chunks.next()),
        || (),
        |_, c| Ok(super::Digest::of(c)),
        |d| {
            digests.push(d);
            Ok(())
        },
    );
    super::manifest::image_digest(&digests)
}

/// Checks that `base` is the base every delta image of `m` was made against.
pub fn check_base(
    m: &super::Manifest,
    base: &[u8],
    threads: usize,
) -> Result<(), super::BundleError> {
    for image in &m.images {
        if let Some(b) = &image.base {
            let have = base
                .get(..b.size as usize)
                .map(|s| base_digest(s, image.chunk_size, threads));
            if have.as_ref() != Some(&b.digest) {
                return Err(super::BundleError::WrongBase {
                    image: image.target.clone(),
                    digest: b.digest.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The image a delta is decoded against: the release the device runs.
pub trait Base: Sync {
    /// The base image's bytes.
    fn bytes(&self) -> &[u8];
    /// Where one decoding worker makes its chunks' references. The default
    /// copies the ranges into a buffer of its own (up to [`MAX_REF_LEN`]
    /// bytes, outside any [`crate::budget::BufferPool`]); a device maps
    /// them instead, so a reference costs page cache, not memory.
    fn window(&self) -> Box<dyn Window + '_> {
        Box::new(CopyWindow {
            base: self.bytes(),
            buf: Vec::new(),
        })
    }
}

impl<T: AsRef<[u8]> + Sync> Base for T {
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }
}

/// One worker's place for references, reused chunk after chunk.
pub trait Window {
    /// The concatenation of `ranges` of the base: zstd's reference prefix.
    fn reference(&mut self, ranges: &[[u64; 2]]) -> Result<&[u8], String>;
}

struct CopyWindow<'a> {
    base: &'a [u8],
    buf: Vec<u8>,
}

impl Window for CopyWindow<'_> {
    fn reference(&mut self, ranges: &[[u64; 2]]) -> Result<&[u8], String> {
        assemble(self.base, ranges, &mut self.buf);
        Ok(&self.buf)
    }
}

/// Concatenates the base ranges into `out` (reused between chunks).
pub fn assemble(base: &[u8], ranges: &[[u64; 2]], out: &mut Vec<u8>) {
    out.clear();
    for [start, len] in ranges {
        out.extend_from_slice(&base[*start as usize..(*start + *len) as usize]);
    }
}

fn window_log(reference: usize, data: usize) -> u32 {
    let total = (reference + data).max(1 << 10) as u64;
    (64 - (total - 1).leading_zeros()).clamp(10, 30)
}

/// Compresses `data` with `reference` as prefix, one zstd frame.
#[cfg(feature = "writer")]
pub fn compress(data: &[u8], reference: &[u8], level: i32) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |c: usize| zstd::zstd_safe::get_error_name(c).to_string();
    let mut cctx: CCtx<'_> = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(
        reference.len(),
        data.len(),
    )))
    .map_err(err)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    cctx.ref_prefix(reference).map_err(err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

/// Decompresses one delta frame into `out`, which must have room for exactly
/// the expected bytes; a frame that wants more is an error.
pub fn decompress(frame: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let err = |c: usize| zstd::zstd_safe::get_error_name(c).to_string();
    let mut dctx: DCtx<'_> = DCtx::create();
    // The window a frame may ask for is bounded by the reference limit.
    dctx.set_parameter(DParameter::WindowLogMax(window_log(
        MAX_REF_LEN as usize,
        64 << 20,
    )))
    .map_err(err)?;
    dctx.ref_prefix(reference).map_err(err)?;
    dctx.decompress(out, frame).map_err(err)?;
    Ok(())
}

#[cfg(all(test, feature = "writer"))]
mod tests {
    use super::*;

    #[test]
    fn finds_moved_blocks_and_round_trips() {
        let base: Vec<u8> = (0..(4u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 23) as u8)
            .collect();
        // The new chunk: a run of the base moved by 1 MiB plus 3 changed bytes.
        let mut new = base[(2 << 20)..(3 << 20)].to_vec();
        new[5000] ^= 0xFF;
        new[70000] ^= 0x0F;
        new[900_000] ^= 1;
        let index = BaseIndex::build(&base);
        let ranges = index.ranges_for(&new, 1 << 20, 16 << 20);
        assert!(
            ranges
                .iter()
                .any(|r| r[0] <= 2 << 20 && r[0] + r[1] >= 3 << 20),
            "{ranges:?}"
        );
        let mut reference = Vec::new();
        assemble(&base, &ranges, &mut reference);
        let frame = compress(&new, &reference, 3).unwrap();
        // Without the reference this chunk does not compress at all (~1 MiB).
        assert!(frame.len() < 10_000, "delta frame is {} bytes", frame.len());
        let mut out = Vec::with_capacity(new.len());
        decompress(&frame, &reference, &mut out).unwrap();
        assert_eq!(out, new);
        // Against another reference it does not come out as the chunk
        // (zstd counts match distances back from the reference's end).
        let mut wrong = Vec::with_capacity(new.len());
        let decoded = decompress(&frame, &reference[..reference.len() - 1], &mut wrong).is_ok();
        assert!(!decoded || wrong != new);
    }

    #[test]
    fn reference_stays_within_budget() {
        let base = vec![7u8; 8 << 20];
        let index = BaseIndex::build(&base);
        let ranges = index.ranges_for(&base[..1 << 20], 6 << 20, 1 << 20);
        assert!(ranges.iter().map(|r| r[1]).sum::<u64>() <= 1 << 20);
    }
}
