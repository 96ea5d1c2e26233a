//! The bundle writer: images cut into fixed-size chunks, each compressed as
//! an independent zstd frame on all cores, hashed, and listed in a manifest
//! signed by one or more keys.

use super::delta::{self, BaseIndex};
use super::error::{BundleError, Result};
use super::header::{encode_signatures, Header, SignatureEntry};
use super::manifest::{BaseSpec, ChunkSpec, Digest, ImageSpec, Manifest, MigrationSpec, Phase};
use super::pipeline::ordered_map;
use super::signing::{signature_block, Signer};
use super::verity::{self, VeritySpec};
use super::{CHUNK_ALIGN, FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
pub const DEFAULT_LEVEL: i32 = 3;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub compatible: String,
    pub version: String,
    pub security_version: u64,
    pub data_schema: Option<u32>,
    /// Seconds since the epoch; callers pass SOURCE_DATE_EPOCH for
    /// reproducible bundles.
    pub build_time: u64,
    pub level: i32,
    pub chunk_size: u64,
    pub threads: usize,
    pub migrations: Vec<MigrationSource>,
    /// Makes a delta bundle: the `rootfs` image is encoded against this
    /// base image, which the device must be running.
    pub base: Option<PathBuf>,
    /// Appends a dm-verity hash tree to the `rootfs` image and records its
    /// root hash in the manifest ([`crate::verity`]).
    pub verity: bool,
}

/// A migration executable to pack, and when it runs.
#[derive(Debug, Clone)]
pub struct MigrationSource {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
    pub phase: Phase,
    pub snapshot: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ImageSource {
    pub target: String,
    pub path: PathBuf,
}

/// Fills `buf` from `r` as far as the stream goes; returns the byte count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An image's bytes (and the hash tree after them, if any), read by the
/// workers, each its own chunk at its own offset: no single thread reads
/// the whole image, which bounded the build at one core's copy rate.
struct ImageBytes<'a> {
    src: &'a ImageSource,
    file: &'a File,
    data_size: u64,
    tail: &'a [u8],
}

impl ImageBytes<'_> {
    fn len(&self) -> u64 {
        self.data_size + self.tail.len() as u64
    }

    /// The (offset, length) of each `chunk`-byte piece, in order.
    fn pieces(&self, chunk: u64) -> impl FnMut() -> Result<Option<(u64, usize)>> + Send {
        let (len, mut next) = (self.len(), 0u64);
        move || {
            let n = chunk.min(len - next);
            let piece = (n > 0).then_some((next, n as usize));
            next += n;
            Ok(piece)
        }
    }

    /// `buf` filled from `offset`; an image that shrank since it was
    /// measured is an error naming it.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let in_file = self.data_size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, rest) = buf.split_at_mut(in_file);
        self.file.read_exact_at(head, offset).map_err(|e| {
            let e = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => self.changed(),
                _ => e,
            };
            BundleError::io(format!("reading image {}", self.src.path.display()))(e)
        })?;
        if !rest.is_empty() {
            let at = (offset + in_file as u64 - self.data_size) as usize;
            rest.copy_from_slice(&self.tail[at..at + rest.len()]);
        }
        Ok(())
    }

    /// Refuses an image whose size changed while it was read: what was read
    /// may mix two versions of it.
    fn unchanged(&self) -> Result<()> {
        match self.file.metadata() {
            Ok(m) if m.len() == self.data_size => Ok(()),
            Ok(_) => Err(BundleError::io(format!(
                "reading image {}",
                self.src.path.display()
            ))(self.changed())),
            Err(e) => Err(BundleError::io(format!(
                "measuring image {}",
                self.src.path.display()
            ))(e)),
        }
    }

    fn changed(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "changed size while being read (it was {} bytes)",
            self.data_size
        ))
    }
}

/// One chunk as a worker leaves it.
struct Compressed {
    /// The zstd frame; empty for a zero chunk.
    bytes: Vec<u8>,
    sha256: Digest,
    /// The frame's, hashed by the worker: the writing thread only writes.
    frame_sha256: Option<Digest>,
    zero: bool,
    raw_len: usize,
    base_ranges: Vec<[u64; 2]>,
}

/// Compresses one image into `payload`, whose current length is where its
/// first chunk starts; against `base` (a delta) when given. `progress` gets
/// the uncompressed bytes done.
fn write_image(
    opts: &BuildOptions,
    src: &ImageSource,
    base: Option<&BaseIndex>,
    payload: &mut File,
    payload_offset: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> Result<ImageSpec> {
    let path_err = |what: &str| BundleError::io(format!("{what} image {}", src.path.display()));
    let file = File::open(&src.path).map_err(path_err("opening"))?;
    let data_size = file.metadata().map_err(path_err("measuring"))?.len();
    if data_size == 0 {
        return Err(BundleError::BadManifest(format!(
            "image {} is empty",
            src.path.display()
        )));
    }
    // The hash tree goes after the data, in the same chunks: the slot
    // holds both, written and checked like any other byte.
    let (tree, verity) = match opts.verity && src.target == crate::ROOTFS {
        true => {
            let (tree, spec) = verity_tree(opts, src, data_size)?;
            (tree, Some(spec))
        }
        false => (Vec::new(), None),
    };
    let bytes = ImageBytes {
        src,
        file: &file,
        data_size,
        tail: &tree,
    };
    let size = bytes.len();
    let mut chunks = Vec::new();
    // Where the time goes (`RUST_LOG=debug`): the workers read, hash and
    // compress; only writing the frames in order is left to one thread.
    let started = Instant::now();
    let mut writing = Duration::ZERO;
    let working = AtomicU64::new(0);
    let zstd_err = |e: String| BundleError::io("compressing")(std::io::Error::other(e));
    ordered_map(
        opts.threads,
        bytes.pieces(opts.chunk_size),
        || {
            let cctx = zstd::bulk::Compressor::new(opts.level);
            (cctx, Vec::new(), Vec::new())
        },
        |(cctx, reference, raw), (offset, len)| -> Result<Compressed> {
            let t = Instant::now();
            let done = |c: Compressed| {
                working.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Ok(c)
            };
            raw.resize(len, 0);
            bytes.read_at(offset, raw)?;
            let raw = &raw[..];
            let sha256 = Digest::of(raw);
            // Free space in a file system image: nothing to store.
            if crate::all_zero(raw) {
                return done(Compressed {
                    bytes: Vec::new(),
                    sha256,
                    frame_sha256: None,
                    zero: true,
                    raw_len: raw.len(),
                    base_ranges: Vec::new(),
                });
            }
            if let Some(index) = base {
                let base_ranges = index.ranges_for(raw, offset, 4 * opts.chunk_size);
                delta::assemble(index.base(), &base_ranges, reference);
                let bytes = delta::compress(raw, reference, opts.level).map_err(zstd_err)?;
                return done(Compressed {
                    frame_sha256: Some(Digest::of(&bytes)),
                    bytes,
                    sha256,
                    zero: false,
                    raw_len: raw.len(),
                    base_ranges,
                });
            }
            let cctx = cctx.as_mut().map_err(|e| zstd_err(e.to_string()))?;
            let bytes = cctx.compress(raw).map_err(BundleError::io("compressing"))?;
            done(Compressed {
                frame_sha256: Some(Digest::of(&bytes)),
                bytes,
                sha256,
                zero: false,
                raw_len: raw.len(),
                base_ranges: Vec::new(),
            })
        },
        |Compressed {
             bytes: compressed,
             sha256,
             frame_sha256,
             zero,
             raw_len,
             base_ranges,
         }| {
            let t = Instant::now();
            payload
                .write_all(&compressed)
                .map_err(BundleError::io("writing the payload"))?;
            writing += t.elapsed();
            chunks.push(ChunkSpec {
                offset: *payload_offset,
                length: compressed.len() as u64,
                sha256,
                frame_sha256,
                zero,
                base_ranges,
            });
            *payload_offset += compressed.len() as u64;
            progress(raw_len as u64);
            Ok(())
        },
    )?;
    bytes.unchanged()?;
    log::debug!(
        "image {}: {:.3} s: reading, hashing and compressing {:.3} s over {} threads, writing {:.3} s",
        src.path.display(),
        started.elapsed().as_secs_f64(),
        Duration::from_nanos(working.into_inner()).as_secs_f64(),
        opts.threads,
        writing.as_secs_f64()
    );
    let base = base.map(|b| BaseSpec {
        size: b.base().len() as u64,
        digest: delta::base_digest(b.base(), opts.chunk_size, opts.threads),
    });
    Ok(ImageSpec {
        target: src.target.clone(),
        size,
        chunk_size: opts.chunk_size,
        chunks,
        base,
        verity,
    })
}

/// Refuses an ext4 image whose blocks are smaller than dm-verity's: the
/// kernel cannot mount it on the verity device (its logical blocks are
/// the data block size), so the release would never boot. Other file
/// systems are not looked into.
fn check_fs_block_size(src: &ImageSource) -> Result<()> {
    let mut head = [0u8; 2048];
    let mut f = File::open(&src.path).map_err(BundleError::io(format!(
        "opening image {}",
        src.path.display()
    )))?;
    let n = read_full(&mut f, &mut head).map_err(BundleError::io(format!(
        "reading image {}",
        src.path.display()
    )))?;
    // The ext4 superblock: at byte 1024, its magic 0xEF53 at +56 and
    // log2(block size) - 10 at +24.
    if n == head.len() && head[1024 + 56..1024 + 58] == [0x53, 0xef] {
        let log = u32::from_le_bytes([head[1048], head[1049], head[1050], head[1051]]);
        let size = 1024u64.checked_shl(log).unwrap_or(0);
        if size < u64::from(verity::BLOCK_SIZE) {
            return Err(BundleError::BadManifest(format!(
                "image {} is ext4 with {size}-byte blocks: the kernel cannot mount it on a dm-verity device of {}-byte blocks; make it with mkfs.ext4 -b 4096",
                src.path.display(),
                verity::BLOCK_SIZE
            )));
        }
    }
    Ok(())
}

/// The dm-verity hash tree over the image `src` of `data_size` bytes, and
/// what the manifest says of it. Its salt is derived from the release
/// (product, version, size), so that the same inputs give the same bundle.
fn verity_tree(
    opts: &BuildOptions,
    src: &ImageSource,
    data_size: u64,
) -> Result<(Vec<u8>, VeritySpec)> {
    let block = u64::from(verity::BLOCK_SIZE);
    if data_size % block != 0 {
        return Err(BundleError::BadManifest(format!(
            "image {} is {data_size} bytes, not a whole number of {block}-byte blocks: dm-verity cannot cover it",
            src.path.display()
        )));
    }
    check_fs_block_size(src)?;
    let data_blocks = data_size / block;
    let salt = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for part in ["switchback verity salt", &opts.compatible, &opts.version] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(data_size.to_le_bytes());
        h.finalize().to_vec()
    };
    let layout = verity::Layout::new(data_blocks, verity::BLOCK_SIZE).ok_or_else(|| {
        BundleError::BadManifest(format!("image {}: no hash tree layout", src.path.display()))
    })?;
    let path_err = |what: &str| BundleError::io(format!("{what} image {}", src.path.display()));
    let file = File::open(&src.path).map_err(path_err("opening"))?;
    let bytes = ImageBytes {
        src,
        file: &file,
        data_size,
        tail: &[],
    };
    let mut leaves = Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0));
    ordered_map(
        opts.threads,
        bytes.pieces(1 << 20),
        Vec::new,
        |buf, (offset, len)| -> Result<Vec<[u8; 32]>> {
            buf.resize(len, 0);
            bytes.read_at(offset, buf)?;
            Ok(buf
                .chunks(block as usize)
                .map(|b| verity::block_digest(&salt, b))
                .collect())
        },
        |digests| {
            leaves.extend(digests);
            Ok(())
        },
    )?;
    bytes.unchanged()?;
    let (tree, root_hash) = verity::tree(&layout, &salt, &leaves);
    let spec = VeritySpec {
        algorithm: verity::ALGORITHM.into(),
        data_block_size: verity::BLOCK_SIZE,
        hash_block_size: verity::BLOCK_SIZE,
        data_blocks,
        hash_offset: data_size,
        salt: hex::encode(&salt),
        root_hash,
    };
    Ok((tree, spec))
}

/// The directory a file at `out` goes in.
pub(crate) fn dir_of(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a whole bundle at `out` from its parts, `payload` read to its
/// end: through a temporary file beside it, synced, renamed over `out` and
/// the rename synced, so that `out` is the old file or the new one whole
/// after any cut. A payload of other than `header.payload_len` bytes
/// leaves `out` as it was (one byte past it is read, never more).
pub(crate) fn write_bundle(
    out: &Path,
    header: &Header,
    manifest_bytes: &[u8],
    signatures: &[SignatureEntry],
    payload: impl Read,
    mode: u32,
) -> Result<()> {
    let dir = dir_of(out);
    let out_err = |what: &'static str| BundleError::io(format!("{what} {}", out.display()));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(out_err("creating a temporary file for"))?;
    let f = tmp.as_file_mut();
    f.write_all(&header.encode()).map_err(out_err("writing"))?;
    f.write_all(manifest_bytes).map_err(out_err("writing"))?;
    f.write_all(&encode_signatures(signatures))
        .map_err(out_err("writing"))?;
    // From a file (a build's payload), std copies in the kernel
    // (copy_file_range): no pass through this process.
    let mut payload = payload.take(header.payload_len.saturating_add(1));
    let copied = std::io::copy(&mut payload, f).map_err(out_err("writing the payload of"))?;
    if copied != header.payload_len {
        return Err(if copied < header.payload_len {
            BundleError::Truncated {
                region: "payload".into(),
            }
        } else {
            BundleError::TrailingData
        });
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(out_err("setting permissions of"))?;
    f.sync_all().map_err(out_err("syncing"))?;
    tmp.persist(out)
        .map_err(|e| BundleError::io(format!("renaming into {}", out.display()))(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BundleError::io(format!("syncing {}", dir.display())))
}

/// Builds a bundle at `out` (written to a temporary file beside it, then
/// renamed, so `out` never holds half a bundle), signed by `signers` (none:
/// unsigned, for `image-tools sign` to sign later). Returns its manifest.
pub fn build(
    opts: &BuildOptions,
    images: &[ImageSource],
    signers: &[&dyn Signer],
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size)
        || opts.chunk_size % CHUNK_ALIGN != 0
    {
        return Err(BundleError::BadManifest(format!(
            "chunk size {} is not a multiple of {CHUNK_ALIGN} in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
            opts.chunk_size
        )));
    }
    let dir = dir_of(out);
    let tmp_err = BundleError::io(format!("creating a temporary file in {}", dir.display()));
    let mut payload = tempfile::tempfile_in(dir).map_err(tmp_err)?;
    let mut offset = 0u64;
    // Migration executables travel as images of their own, after the
    // others, so their bytes are checked like every other chunk.
    let mut sources = images.to_vec();
    let mut migrations = Vec::new();
    for (n, m) in opts.migrations.iter().enumerate() {
        let target = format!("migration-{}", n + 1);
        sources.push(ImageSource {
            target: target.clone(),
            path: m.path.clone(),
        });
        migrations.push(MigrationSpec {
            image: target,
            from: m.from,
            to: m.to,
            phase: m.phase,
            snapshot: m.snapshot.clone(),
        });
    }
    // Read whole: a vendor's build machine has the memory, and this crate
    // maps nothing (it forbids unsafe code).
    let base_bytes = match &opts.base {
        Some(path) => Some(std::fs::read(path).map_err(BundleError::io(format!(
            "reading base image {}",
            path.display()
        )))?),
        None => None,
    };
    let index = base_bytes.as_deref().map(BaseIndex::build);
    let specs = sources
        .iter()
        .map(|src| {
            let base = index.as_ref().filter(|_| src.target == "rootfs");
            write_image(opts, src, base, &mut payload, &mut offset, progress)
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        format: FORMAT_VERSION,
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        security_version: opts.security_version,
        build_time: opts.build_time,
        data_schema: opts.data_schema,
        payload_size: offset,
        images: specs,
        migrations,
    };
    manifest.validate(offset)?;
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let signatures = signature_block(signers, &manifest_bytes)?;
    let header = Header {
        manifest_len: u32::try_from(manifest_bytes.len())
            .map_err(|_| BundleError::BadManifest("manifest too large".into()))?,
        signatures_len: (signatures.len() * super::header::SIGNATURE_ENTRY_LEN) as u32,
        payload_len: offset,
    };
    payload.rewind().map_err(BundleError::io(format!(
        "rewinding the payload of {}",
        out.display()
    )))?;
    // A bundle is meant to be published; the temporary file's 0600 is not.
    let started = Instant::now();
    write_bundle(
        out,
        &header,
        &manifest_bytes,
        &signatures,
        &mut payload,
        0o644,
    )?;
    log::debug!(
        "{}: head and payload written and synced in {:.3} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}
