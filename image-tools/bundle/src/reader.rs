//! The streaming reader. It needs only `Read`: a file, a pipe or an HTTP
//! body. It parses nothing but the fixed header and the signature block
//! before a signature over the manifest bytes verifies, and hands out no
//! payload byte that has not matched its chunk's hash.

use super::budget::{buffer_sizes, BufferPool, PoolBuf};
use super::delta::Base;
use super::error::{BundleError, Result};
use super::header::{decode_signatures, Header, SignatureEntry, HEADER_LEN};
use super::keys::Keyring;
use super::manifest::{Digest, ImageSpec, Manifest};
use super::pipeline::ordered_map_until;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads exactly `buf.len()` bytes, naming `region` when the stream ends early.
fn read_region(r: &mut impl Read, buf: &mut [u8], region: impl Fn() -> String) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => BundleError::Truncated { region: region() },
        _ => BundleError::Io {
            what: format!("reading the bundle's {}", region()),
            source: e,
        },
    })
}

/// A bundle whose header, manifest bytes and signatures have been read, and
/// nothing checked but the header's own fields.
pub struct Envelope<R> {
    pub header: Header,
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
    signature_block: Vec<u8>,
    reader: R,
}

impl<R: Read> Envelope<R> {
    pub fn read(mut reader: R) -> Result<Envelope<R>> {
        let mut h = [0u8; HEADER_LEN];
        read_region(&mut reader, &mut h, || "header".into())?;
        let header = Header::decode(&h)?;
        // Lengths are bounded by Header::decode (16 MiB and 1.5 KiB).
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        read_region(&mut reader, &mut manifest_bytes, || "manifest".into())?;
        let mut sig_block = vec![0u8; header.signatures_len as usize];
        read_region(&mut reader, &mut sig_block, || "signature block".into())?;
        Ok(Envelope {
            header,
            manifest_bytes,
            signatures: decode_signatures(&sig_block),
            signature_block: sig_block,
            reader,
        })
    }

    /// What follows the signature block: the payload, unread.
    pub fn into_reader(self) -> R {
        self.reader
    }

    /// The manifest without any signature check, for `inspect`.
    pub fn unverified_manifest(&self) -> Result<Manifest> {
        Manifest::parse(&self.manifest_bytes, self.header.payload_len)
    }

    /// Checks the signatures against `keyring`: as many valid signatures by
    /// trusted keys as its threshold. Only then is the manifest parsed.
    pub fn verify(self, keyring: &Keyring) -> Result<VerifiedBundle<R>> {
        let signers = keyring.verify_signatures(&self.manifest_bytes, &self.signatures)?;
        let manifest = Manifest::parse(&self.manifest_bytes, self.header.payload_len)?;
        let head = [
            &self.header.encode()[..],
            &self.manifest_bytes,
            &self.signature_block,
        ]
        .concat();
        Ok(VerifiedBundle {
            manifest,
            signers,
            head,
            reader: self.reader,
        })
    }
}

/// A decompressed chunk whose hashes matched the signed manifest.
#[derive(Debug)]
pub struct Chunk {
    /// Index into `manifest.images`.
    pub image: usize,
    /// Chunk index within the image.
    pub index: usize,
    /// Byte offset of this chunk within the uncompressed image.
    pub offset: u64,
    /// Uncompressed length.
    pub len: u64,
    /// A zero chunk: `data` is empty, the chunk is `len` zero bytes.
    pub zero: bool,
    /// Back in the reader's pool when the chunk is dropped.
    pub data: PoolBuf,
    /// XXH3-128 of `data`, when asked for ([`ReadOptions::fast_digest`]).
    pub fast_digest: Option<u128>,
}

impl Chunk {
    /// Appends the chunk's bytes to `out` (zeros for a zero chunk).
    pub fn append_to(&self, out: &mut Vec<u8>) {
        if self.zero {
            out.resize(out.len() + self.len as usize, 0);
        } else {
            out.extend_from_slice(&self.data);
        }
    }
}

/// How [`VerifiedBundle::read_chunks`] reads.
#[derive(Clone, Copy)]
pub struct ReadOptions<'a> {
    pub threads: usize,
    /// The image a delta image is decoded against (the caller checks that
    /// it is the one the manifest names).
    pub base: Option<&'a dyn Base>,
    /// Also check each chunk's decoded bytes against its signed SHA-256.
    /// The signed frame digest alone proves them for a full image: zstd
    /// decodes a frame one way. A delta chunk's bytes also depend on the
    /// base, outside the frame, so delta images are always checked.
    pub plaintext_sha256: bool,
    /// Compute XXH3-128 of each decoded chunk (a reader's read-back
    /// compares the medium with it: fast, and the bytes are already
    /// proven).
    pub fast_digest: bool,
    /// Bytes the buffers of chunks in flight (stored frames and decoded
    /// chunks) may hold at once, whatever `threads` is; `None`: enough for
    /// every worker to stay busy. A limit below what the costliest chunk
    /// needs is refused ([`BundleError::OverMemory`]) before any chunk is
    /// read.
    pub memory: Option<u64>,
}

impl ReadOptions<'_> {
    /// Everything checked, nothing extra computed: `verify`, `extract`.
    pub fn checked(threads: usize) -> ReadOptions<'static> {
        ReadOptions {
            threads,
            base: None,
            plaintext_sha256: true,
            fast_digest: false,
            memory: None,
        }
    }
}

/// A bundle whose manifest is signed by a trusted key.
pub struct VerifiedBundle<R> {
    pub manifest: Manifest,
    /// Ids of the trusted keys whose signatures verified, at least the
    /// keyring's threshold of them.
    pub signers: Vec<[u8; 32]>,
    /// The bundle's header, manifest and signatures as read: signed
    /// evidence of the release that [`Envelope::read`] and
    /// [`Envelope::verify`] check again later, without the payload.
    pub head: Vec<u8>,
    reader: R,
}

struct Job {
    image: usize,
    index: usize,
    bundle_offset: u64,
    /// Empty for a zero chunk.
    compressed: PoolBuf,
    /// Room for the decoded chunk, taken with the frame (see
    /// [`crate::budget`] for why both at once).
    decoded: PoolBuf,
}

impl<R: Read + Send> VerifiedBundle<R> {
    /// Streams every chunk of every image, in order, to `sink`, each already
    /// checked and decompressed, using `opts.threads` workers. Each frame's
    /// SHA-256 is checked by its worker before it is decompressed, so
    /// nothing unsigned reaches the decoder. Checks that the bundle ends where the manifest
    /// says.
    pub fn read_chunks<E>(
        self,
        opts: ReadOptions<'_>,
        sink: impl FnMut(&ImageSpec, &Chunk) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<BundleError> + Send,
    {
        self.read_chunks_with(opts, |_, _| Ok(()), sink)
    }

    /// [`Self::read_chunks`], with `in_worker` run on each checked chunk
    /// but zero chunks by the worker that decoded it, before the chunk waits for its turn.
    /// Taking `chunk.data` there (writing it out at its offset) gives its
    /// buffer back at once, so that a tight memory limit still keeps every
    /// worker busy.
    pub fn read_chunks_with<E>(
        self,
        opts: ReadOptions<'_>,
        in_worker: impl Fn(&ImageSpec, &mut Chunk) -> Result<(), E> + Sync,
        mut sink: impl FnMut(&ImageSpec, &Chunk) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<BundleError> + Send,
    {
        let ReadOptions {
            threads,
            base,
            plaintext_sha256,
            fast_digest,
            memory,
        } = opts;
        let VerifiedBundle {
            manifest,
            mut reader,
            ..
        } = self;
        let mut order = manifest.images.iter().enumerate().flat_map(|(i, img)| {
            img.chunks
                .iter()
                .enumerate()
                .map(move |(c, spec)| (i, c, spec.offset, spec.length, spec.zero))
        });
        let images = &manifest.images;
        for image in images {
            if let Some(b) = &image.base {
                match base {
                    Some(have) if have.bytes().len() as u64 >= b.size => {}
                    _ => {
                        return Err(BundleError::NeedsBase {
                            image: image.target.clone(),
                            size: b.size,
                        }
                        .into())
                    }
                }
            }
        }
        let (frame_cap, decoded_cap) = buffer_sizes(images);
        let per_chunk = frame_cap + decoded_cap;
        let limit = match memory {
            Some(limit) if limit < per_chunk => {
                return Err(BundleError::OverMemory {
                    need: per_chunk,
                    limit,
                }
                .into())
            }
            Some(limit) => limit,
            // A chunk in each worker, one queued for each, one being read
            // and one being consumed.
            None => per_chunk * (2 * threads.max(1) as u64 + 2),
        };
        let pool = BufferPool::new(limit);
        let stopped = std::sync::Arc::clone(&pool);
        // Where the time goes (`RUST_LOG=debug`): one thread reads the
        // stream and one takes the chunks in order; the workers do the rest.
        let started = std::time::Instant::now();
        let [reading, working, sinking] = [(); 3].map(|_| AtomicU64::new(0));
        let (reading, working, sinking) = (&reading, &working, &sinking);
        let timed = |total: &AtomicU64, since: std::time::Instant| {
            total.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        };
        let result = ordered_map_until(
            threads,
            move || -> Result<Option<Job>, E> {
                let Some((image, index, bundle_offset, length, zero)) = order.next() else {
                    let mut extra = [0u8; 1];
                    return match reader.read(&mut extra) {
                        Ok(0) => Ok(None),
                        Ok(_) => Err(BundleError::TrailingData.into()),
                        Err(e) => Err(BundleError::io("reading the end of the bundle")(e).into()),
                    };
                };
                let mut compressed = PoolBuf::default();
                let mut decoded = PoolBuf::default();
                if !zero {
                    // Every buffer of one of two sizes: reused, never
                    // reallocated. The frame is read before the decoded
                    // buffer is waited for, so that reading overlaps
                    // decoding where the limit leaves room.
                    // Closed: the consumer stopped, and its error is the one
                    // reported.
                    let Some(buf) = pool.get(frame_cap as usize) else {
                        return Ok(None);
                    };
                    compressed = buf;
                    compressed.resize(length as usize, 0);
                    let spec = &images[image];
                    let t = std::time::Instant::now();
                    read_region(&mut reader, &mut compressed, || {
                        format!("payload (image {} chunk {index})", spec.target)
                    })?;
                    timed(reading, t);
                    let Some(buf) = pool.get(decoded_cap as usize) else {
                        return Ok(None);
                    };
                    decoded = buf;
                }
                Ok(Some(Job {
                    image,
                    index,
                    bundle_offset,
                    compressed,
                    decoded,
                }))
            },
            || (zstd::bulk::Decompressor::new(), base.map(|b| b.window())),
            |(dctx, window), job| -> Result<Chunk, E> {
                let t = std::time::Instant::now();
                let spec = &images[job.image];
                let expected = spec.chunk_len(job.index) as usize;
                let decode_err = |reason: String| BundleError::ChunkDecode {
                    image: spec.target.clone(),
                    index: job.index,
                    offset: job.bundle_offset,
                    reason,
                };
                let chunk_spec = &spec.chunks[job.index];
                let hash_err = || BundleError::ChunkHash {
                    image: spec.target.clone(),
                    index: job.index,
                    offset: job.bundle_offset,
                };
                let check_plaintext = plaintext_sha256 || spec.base.is_some();
                let mut chunk = Chunk {
                    image: job.image,
                    index: job.index,
                    offset: job.index as u64 * spec.chunk_size,
                    len: expected as u64,
                    zero: chunk_spec.zero,
                    data: PoolBuf::default(),
                    fast_digest: None,
                };
                if chunk_spec.zero {
                    if check_plaintext && Digest::of_zeros(expected as u64) != chunk_spec.sha256 {
                        return Err(hash_err().into());
                    }
                    return Ok(chunk);
                }
                // The frame is signed: checked before any decoder sees it,
                // here in the worker, so that no one thread hashes the whole
                // stream (it bounded the install at about 1 GB/s of frames
                // whatever the cores).
                if Some(Digest::of(&job.compressed)) != chunk_spec.frame_sha256 {
                    return Err(hash_err().into());
                }
                let mut data = job.decoded;
                match window.as_mut().filter(|_| spec.base.is_some()) {
                    Some(window) => {
                        let reference = window
                            .reference(&chunk_spec.base_ranges)
                            .map_err(decode_err)?;
                        super::delta::decompress(&job.compressed, reference, &mut data)
                            .map_err(decode_err)?;
                    }
                    None => {
                        let dctx = dctx.as_mut().map_err(|e| decode_err(e.to_string()))?;
                        dctx.decompress_to_buffer(&job.compressed, &mut *data)
                            .map_err(|e| decode_err(e.to_string()))?;
                    }
                }
                if data.len() != expected {
                    return Err(
                        decode_err(format!("{} bytes, expected {expected}", data.len())).into(),
                    );
                }
                if check_plaintext && Digest::of(&data) != chunk_spec.sha256 {
                    return Err(hash_err().into());
                }
                if fast_digest {
                    chunk.fast_digest = Some(xxhash_rust::xxh3::xxh3_128(&data));
                }
                // The frame's buffer is free for the next chunk before this
                // one waits its turn.
                drop(job.compressed);
                chunk.data = data;
                in_worker(spec, &mut chunk)?;
                timed(working, t);
                Ok(chunk)
            },
            |chunk| {
                let t = std::time::Instant::now();
                let r = sink(&images[chunk.image], &chunk);
                timed(sinking, t);
                r
            },
            move || stopped.close(),
        );
        let secs = |total: &AtomicU64| total.load(Ordering::Relaxed) as f64 / 1e9;
        log::debug!(
            "payload: {:.3} s: reading the stream {:.3} s, decoding, checking and the workers' part {:.3} s over {threads} threads, in order {:.3} s",
            started.elapsed().as_secs_f64(),
            secs(reading),
            secs(working),
            secs(sinking)
        );
        result
    }
}
