//! The streaming reader. It needs only `Read`: a file, a pipe or an HTTP
//! body. It parses nothing but the fixed header and the signature block
//! before a signature over the manifest bytes verifies, and hands out no
//! payload byte that has not matched its chunk's hash.

use super::error::{BundleError, Result};
use super::header::{decode_signatures, Header, SignatureEntry, HEADER_LEN};
use super::keys::{short_id, Keyring};
use super::manifest::{Digest, ImageSpec, Manifest};
use super::pipeline::ordered_map;
use ed25519_dalek::Signature;
use std::io::{ErrorKind, Read};

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

    /// The manifest without any signature check, for `inspect`.
    pub fn unverified_manifest(&self) -> Result<Manifest> {
        Manifest::parse(&self.manifest_bytes, self.header.payload_len)
    }

    /// Checks the signatures against `keyring`; one valid signature by a
    /// trusted key is enough. Only then is the manifest parsed.
    pub fn verify(self, keyring: &Keyring) -> Result<VerifiedBundle<R>> {
        let mut bad_trusted = None;
        let mut signer = None;
        for entry in &self.signatures {
            let Some(key) = keyring.find(&entry.key_id) else {
                continue;
            };
            let sig = Signature::from_bytes(&entry.signature);
            if key.verify_strict(&self.manifest_bytes, &sig).is_ok() {
                signer = Some(entry.key_id);
                break;
            }
            bad_trusted = Some(entry.key_id);
        }
        let signer = match (signer, bad_trusted) {
            (Some(id), _) => id,
            (None, Some(id)) => {
                return Err(BundleError::BadSignature {
                    key_id: short_id(&id),
                })
            }
            (None, None) => {
                // With a wrong manifest_len the "signatures" are bytes from
                // the middle of the manifest or payload: say that, not
                // "unknown signer <garbage>".
                if serde_json::from_slice::<serde::de::IgnoredAny>(&self.manifest_bytes).is_err() {
                    return Err(BundleError::ManifestLenDamaged(self.header.manifest_len));
                }
                let signers = self
                    .signatures
                    .iter()
                    .map(|s| short_id(&s.key_id))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(BundleError::UntrustedSigner { signers });
            }
        };
        let manifest = Manifest::parse(&self.manifest_bytes, self.header.payload_len)?;
        let head = [
            &self.header.encode()[..],
            &self.manifest_bytes,
            &self.signature_block,
        ]
        .concat();
        Ok(VerifiedBundle {
            manifest,
            signer,
            head,
            reader: self.reader,
        })
    }
}

/// A decompressed chunk whose hash matched the signed manifest.
#[derive(Debug)]
pub struct Chunk {
    /// Index into `manifest.images`.
    pub image: usize,
    /// Chunk index within the image.
    pub index: usize,
    /// Byte offset of this chunk within the uncompressed image.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A bundle whose manifest is signed by a trusted key.
pub struct VerifiedBundle<R> {
    pub manifest: Manifest,
    /// Id of the key whose signature verified.
    pub signer: [u8; 32],
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
    compressed: Vec<u8>,
}

impl<R: Read + Send> VerifiedBundle<R> {
    /// Streams every chunk of every image, in order, to `sink`, each already
    /// decompressed and checked, using `threads` workers. Checks that the
    /// bundle ends where the manifest says. A delta image is decoded against
    /// `base`, the image its manifest names (the caller checks its digest).
    pub fn read_chunks<E>(
        self,
        threads: usize,
        base: Option<&[u8]>,
        mut sink: impl FnMut(&ImageSpec, &Chunk) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<BundleError> + Send,
    {
        let VerifiedBundle {
            manifest,
            mut reader,
            ..
        } = self;
        let mut order = manifest.images.iter().enumerate().flat_map(|(i, img)| {
            img.chunks
                .iter()
                .enumerate()
                .map(move |(c, spec)| (i, c, spec.offset, spec.length))
        });
        let images = &manifest.images;
        for image in images {
            if let Some(b) = &image.base {
                match base {
                    Some(have) if have.len() as u64 >= b.size => {}
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
        // Decompressed buffers go back to the workers once the sink is done
        // with them: a fresh 4 MiB buffer per chunk costs a thousand page
        // faults, a reused one none.
        let (pool_tx, pool_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        ordered_map(
            threads,
            move || -> Result<Option<Job>, E> {
                let Some((image, index, bundle_offset, length)) = order.next() else {
                    let mut extra = [0u8; 1];
                    return match reader.read(&mut extra) {
                        Ok(0) => Ok(None),
                        Ok(_) => Err(BundleError::TrailingData.into()),
                        Err(e) => Err(BundleError::io("reading the end of the bundle")(e).into()),
                    };
                };
                let mut compressed = vec![0u8; length as usize];
                read_region(&mut reader, &mut compressed, || {
                    format!("payload (image {} chunk {index})", images[image].target)
                })?;
                Ok(Some(Job {
                    image,
                    index,
                    bundle_offset,
                    compressed,
                }))
            },
            || (zstd::bulk::Decompressor::new(), Vec::new()),
            |(dctx, reference), job| -> Result<Chunk, E> {
                let spec = &images[job.image];
                let expected = spec.chunk_len(job.index) as usize;
                let decode_err = |reason: String| BundleError::ChunkDecode {
                    image: spec.target.clone(),
                    index: job.index,
                    offset: job.bundle_offset,
                    reason,
                };
                let mut data = pool_rx.try_recv().unwrap_or_default();
                data.clear();
                data.reserve_exact(expected);
                let ranges = &spec.chunks[job.index].base_ranges;
                match base.filter(|_| spec.base.is_some()) {
                    Some(base) => {
                        super::delta::assemble(base, ranges, reference);
                        super::delta::decompress(&job.compressed, reference, &mut data)
                            .map_err(decode_err)?;
                    }
                    None => {
                        let dctx = dctx.as_mut().map_err(|e| decode_err(e.to_string()))?;
                        dctx.decompress_to_buffer(&job.compressed, &mut data)
                            .map_err(|e| decode_err(e.to_string()))?;
                    }
                }
                if data.len() != expected {
                    return Err(
                        decode_err(format!("{} bytes, expected {expected}", data.len())).into(),
                    );
                }
                if Digest::of(&data) != spec.chunks[job.index].sha256 {
                    return Err(BundleError::ChunkHash {
                        image: spec.target.clone(),
                        index: job.index,
                        offset: job.bundle_offset,
                    }
                    .into());
                }
                Ok(Chunk {
                    image: job.image,
                    index: job.index,
                    offset: job.index as u64 * spec.chunk_size,
                    data,
                })
            },
            |chunk| {
                sink(&images[chunk.image], &chunk)?;
                let _ = pool_tx.send(chunk.data);
                Ok(())
            },
        )
    }
}
