//! The bundle format against good and bad input: every refusal is the
//! right error, and no altered bundle is ever accepted.

use ed25519_dalek::{Signer, SigningKey};
use image_tools::bundle::header::{encode_signatures, Header, SignatureEntry};
use image_tools::bundle::keys::key_id;
use image_tools::bundle::{
    self, BuildOptions, BundleError, Envelope, ImageSource, Keyring, Manifest, ReadOptions,
};
use std::io::Cursor;
use std::path::{Path, PathBuf};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn keyring(keys: &[&SigningKey]) -> (tempfile::TempDir, Keyring) {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    let dir = tempfile::tempdir().unwrap();
    for (i, k) in keys.iter().enumerate() {
        let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.path().join(format!("k{i}.pem")), pem).unwrap();
    }
    let ring = Keyring::load_dir(dir.path()).unwrap();
    (dir, ring)
}

/// Bytes that zstd compresses partly: a pattern with noise.
fn image_bytes(len: usize, salt: u32) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ salt;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 3 == 0 {
                (x >> 24) as u8
            } else {
                (i / 7) as u8
            }
        })
        .collect()
}

fn opts(chunk_size: u64) -> BuildOptions {
    BuildOptions {
        compatible: "acme-gw".into(),
        version: "1.2.0".into(),
        security_version: 4,
        data_schema: Some(2),
        build_time: 1_700_000_000,
        level: 3,
        chunk_size,
        threads: 2,
        migrations: Vec::new(),
        base: None,
        verity: false,
    }
}

fn build_file(dir: &Path, images: &[(&str, Vec<u8>)], keys: &[SigningKey]) -> PathBuf {
    let sources: Vec<ImageSource> = images
        .iter()
        .map(|(t, bytes)| {
            let p = dir.join(format!("{t}.img"));
            std::fs::write(&p, bytes).unwrap();
            ImageSource {
                target: t.to_string(),
                path: p,
            }
        })
        .collect();
    let out = dir.join("bundle.swb");
    let signers: Vec<&dyn bundle::signing::Signer> = keys
        .iter()
        .map(|k| k as &dyn bundle::signing::Signer)
        .collect();
    bundle::build(&opts(64 << 10), &sources, &signers, &out, &mut |_| {}).unwrap();
    out
}

/// Reads a whole bundle from memory; returns every image's bytes.
fn read_all(bytes: &[u8], ring: &Keyring) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let verified = Envelope::read(Cursor::new(bytes))?.verify(ring)?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    verified.read_chunks(
        ReadOptions::checked(2),
        |image, chunk| -> Result<(), BundleError> {
            if chunk.index == 0 {
                out.push((image.target.clone(), Vec::new()));
            }
            chunk.append_to(&mut out.last_mut().unwrap().1);
            Ok(())
        },
    )?;
    Ok(out)
}

/// A bundle from raw parts, signed over `manifest` by `signers`.
fn craft(manifest: &[u8], signers: &[&SigningKey], payload: &[u8]) -> Vec<u8> {
    let sigs: Vec<SignatureEntry> = signers
        .iter()
        .map(|k| SignatureEntry {
            key_id: key_id(&k.verifying_key()),
            signature: k.sign(manifest).to_bytes(),
        })
        .collect();
    let sig_block = encode_signatures(&sigs);
    let header = Header {
        manifest_len: manifest.len() as u32,
        signatures_len: sig_block.len() as u32,
        payload_len: payload.len() as u64,
    };
    [&header.encode()[..], manifest, &sig_block, payload].concat()
}

struct Regions {
    manifest: std::ops::Range<usize>,
    signatures: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

fn regions(bytes: &[u8]) -> Regions {
    let h = Header::decode(bytes[..32].try_into().unwrap()).unwrap();
    let m_end = 32 + h.manifest_len as usize;
    let s_end = m_end + h.signatures_len as usize;
    Regions {
        manifest: 32..m_end,
        signatures: m_end..s_end,
        payload: s_end..bytes.len(),
    }
}

#[test]
fn round_trip_two_images_two_signers() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = image_bytes(300_000, 1);
    let extra = image_bytes(70_000, 2);
    let path = build_file(
        dir.path(),
        &[("rootfs", rootfs.clone()), ("boot", extra.clone())],
        &[key(1), key(2)],
    );
    let bytes = std::fs::read(&path).unwrap();
    // One trusted signer of the two is enough, whichever it is.
    for trusted in [key(1), key(2)] {
        let (_d, ring) = keyring(&[&trusted]);
        let got = read_all(&bytes, &ring).unwrap();
        assert_eq!(
            got,
            vec![
                ("rootfs".to_string(), rootfs.clone()),
                ("boot".to_string(), extra.clone())
            ]
        );
    }
    let m = Envelope::read(Cursor::new(&bytes))
        .unwrap()
        .unverified_manifest()
        .unwrap();
    assert_eq!(m.images[0].chunks.len(), 5);
    assert_eq!(m.data_schema, Some(2));
    let chunk_digests: Vec<bundle::Digest> =
        rootfs.chunks(64 << 10).map(bundle::Digest::of).collect();
    assert_eq!(
        m.images[0].digest(),
        bundle::manifest::image_digest(&chunk_digests)
    );
}

#[test]
fn truncation_anywhere_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_file(
        dir.path(),
        &[("rootfs", image_bytes(200_000, 3))],
        &[key(1)],
    );
    let bytes = std::fs::read(&path).unwrap();
    let (_d, ring) = keyring(&[&key(1)]);
    let r = regions(&bytes);
    let cuts = [
        (0, "header"),
        (31, "header"),
        (r.manifest.start + 10, "manifest"),
        (r.signatures.start + 5, "signature block"),
        (r.payload.start, "payload (image rootfs chunk 0)"),
        (
            r.payload.start + (r.payload.len() / 2),
            "payload (image rootfs chunk",
        ),
        (bytes.len() - 1, "payload (image rootfs chunk 3)"),
    ];
    for (cut, region) in cuts {
        match read_all(&bytes[..cut], &ring) {
            Err(BundleError::Truncated { region: got }) => {
                assert!(got.starts_with(region), "cut {cut}: {got}")
            }
            other => panic!("cut at {cut}: expected truncation in {region}, got {other:?}"),
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        read_all(&longer, &ring),
        Err(BundleError::TrailingData)
    ));
}

#[test]
fn no_flipped_byte_anywhere_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_file(
        dir.path(),
        &[("rootfs", image_bytes(200_000, 4))],
        &[key(1)],
    );
    let bytes = std::fs::read(&path).unwrap();
    let (_d, ring) = keyring(&[&key(1)]);
    assert!(read_all(&bytes, &ring).is_ok());
    let r = regions(&bytes);
    let mut positions: Vec<usize> = (0..32).collect();
    positions.extend(r.manifest.clone().step_by(7));
    positions.extend(r.signatures.clone());
    positions.extend(r.payload.clone().step_by(97));
    positions.push(bytes.len() - 1);
    let mut by_kind = std::collections::BTreeMap::new();
    for &pos in &positions {
        for mask in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            match read_all(&bad, &ring) {
                Ok(_) => panic!("flipping bit {mask:#x} of byte {pos} was accepted"),
                Err(e) => *by_kind.entry(e.exit_code()).or_insert(0) += 1,
            }
        }
    }
    assert!(positions.len() > 1000, "{} positions", positions.len());
    // Header, signature and payload damage all show up as what they are.
    for code in [22, 23, 24, 26, 28] {
        assert!(
            by_kind.contains_key(&code),
            "no error with exit code {code}: {by_kind:?}"
        );
    }
}

#[test]
fn trust_failures() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(build_file(
        dir.path(),
        &[("rootfs", image_bytes(100_000, 5))],
        &[key(1)],
    ))
    .unwrap();
    let (_d, other) = keyring(&[&key(9)]);
    match read_all(&bytes, &other) {
        Err(BundleError::UntrustedSigner { signers }) => {
            assert_eq!(
                signers,
                image_tools::bundle::keys::short_id(&key_id(&key(1).verifying_key()))
            )
        }
        other => panic!("{other:?}"),
    }

    // A genuine signature moved onto another manifest.
    let r = regions(&bytes);
    let manifest = &bytes[r.manifest.clone()];
    let altered = String::from_utf8(manifest.to_vec())
        .unwrap()
        .replace("1.2.0", "9.2.0");
    let mut moved = craft(altered.as_bytes(), &[&key(1)], &bytes[r.payload.clone()]);
    let r2 = regions(&moved);
    moved[r2.signatures.clone()].copy_from_slice(&bytes[r.signatures.clone()]);
    let (_d, ring) = keyring(&[&key(1)]);
    assert!(matches!(
        read_all(&moved, &ring),
        Err(BundleError::BadSignature { .. })
    ));

    // A damaged manifest_len shifts the signature block onto other bytes:
    // the header is blamed, not an "unknown signer" made of garbage.
    for delta in [-7i64, 13] {
        let mut damaged = bytes.clone();
        let len = u32::from_le_bytes(damaged[12..16].try_into().unwrap());
        let len = (i64::from(len) + delta) as u32;
        damaged[12..16].copy_from_slice(&len.to_le_bytes());
        match read_all(&damaged, &ring) {
            Err(e @ BundleError::ManifestLenDamaged(_)) => {
                assert!(e.to_string().contains("manifest_len"), "{e}");
                assert_eq!(e.exit_code(), 36);
            }
            other => panic!("manifest_len {delta:+}: {other:?}"),
        }
    }
}

#[test]
fn signed_but_malformed_manifests_are_refused() {
    let k = key(1);
    let (_d, ring) = keyring(&[&k]);
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(build_file(
        dir.path(),
        &[("rootfs", image_bytes(100_000, 6))],
        std::slice::from_ref(&k),
    ))
    .unwrap();
    let r = regions(&good);
    let payload = &good[r.payload.clone()];
    let m: serde_json::Value = serde_json::from_slice(&good[r.manifest.clone()]).unwrap();

    let expect_manifest_error = |manifest: &[u8], payload: &[u8], needle: &str| match read_all(
        &craft(manifest, &[&k], payload),
        &ring,
    ) {
        Err(BundleError::BadManifest(msg)) => {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
        }
        other => panic!("expected a manifest error with {needle:?}, got {other:?}"),
    };
    expect_manifest_error(b"not json at all", payload, "not valid");
    let mut missing = m.clone();
    missing.as_object_mut().unwrap().remove("compatible");
    expect_manifest_error(
        &serde_json::to_vec(&missing).unwrap(),
        payload,
        "missing field `compatible`",
    );
    let mut unknown = m.clone();
    unknown["surprise"] = 1.into();
    expect_manifest_error(
        &serde_json::to_vec(&unknown).unwrap(),
        payload,
        "unknown field",
    );
    let mut huge = m.clone();
    huge["images"][0]["chunks"][0]["length"] = serde_json::json!(u64::MAX - 1);
    expect_manifest_error(&serde_json::to_vec(&huge).unwrap(), payload, "length");
    let mut huge_size = m.clone();
    huge_size["images"][0]["size"] = serde_json::json!(u64::MAX);
    expect_manifest_error(&serde_json::to_vec(&huge_size).unwrap(), payload, "size");
    let mut bad_version = m.clone();
    bad_version["version"] = "one".into();
    expect_manifest_error(
        &serde_json::to_vec(&bad_version).unwrap(),
        payload,
        "semantic",
    );
    let mut gap = m.clone();
    gap["images"][0]["chunks"][1]["offset"] = serde_json::json!(1);
    expect_manifest_error(&serde_json::to_vec(&gap).unwrap(), payload, "offset");

    // A header that claims a payload near u64::MAX disagrees with the
    // signed manifest and is refused before any payload is read.
    let mut long = good.clone();
    long[24..32].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
    assert!(
        matches!(read_all(&long, &ring), Err(BundleError::BadManifest(m)) if m.contains("payload_size"))
    );
    let mut long_manifest = good.clone();
    long_manifest[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        read_all(&long_manifest, &ring),
        Err(BundleError::BadLength {
            field: "manifest_len",
            ..
        })
    ));
    for other in [1u8, 3] {
        let mut v = good.clone();
        v[8] = other;
        assert!(matches!(
            read_all(&v, &ring),
            Err(BundleError::UnsupportedVersion(n)) if n == u32::from(other)
        ));
    }

    // Format 2's chunk rules: a frame has its digest, a zero chunk has no
    // frame.
    let mut no_frame_digest = m.clone();
    no_frame_digest["images"][0]["chunks"][0]
        .as_object_mut()
        .unwrap()
        .remove("frame_sha256");
    expect_manifest_error(
        &serde_json::to_vec(&no_frame_digest).unwrap(),
        payload,
        "no frame_sha256",
    );
    let mut zero_with_frame = m.clone();
    zero_with_frame["images"][0]["chunks"][0]["zero"] = true.into();
    expect_manifest_error(
        &serde_json::to_vec(&zero_with_frame).unwrap(),
        payload,
        "a zero chunk has no frame",
    );
    // A signed frame digest that the frame does not match: refused before
    // the frame is decoded, naming the chunk.
    let mut wrong_frame = m.clone();
    wrong_frame["images"][0]["chunks"][1]["frame_sha256"] = serde_json::json!("00".repeat(32));
    match read_all(
        &craft(&serde_json::to_vec(&wrong_frame).unwrap(), &[&k], payload),
        &ring,
    ) {
        Err(e @ BundleError::ChunkHash { index: 1, .. }) => assert_eq!(e.exit_code(), 28, "{e}"),
        other => panic!("expected chunk 1's hash to fail, got {other:?}"),
    }
}

#[test]
fn zero_chunks_travel_without_payload_and_are_checked_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(9);
    let (_d, ring) = keyring(&[&k]);
    // Free space: three whole chunks and the tail of a fourth are zero.
    let mut image = image_bytes(64 << 10, 3);
    image.extend(vec![0u8; 3 * (64 << 10)]);
    image.extend(image_bytes(1000, 4));
    image.extend(vec![0u8; 5000]);
    let good = std::fs::read(build_file(
        dir.path(),
        &[("rootfs", image.clone())],
        std::slice::from_ref(&k),
    ))
    .unwrap();
    let r = regions(&good);
    let m: serde_json::Value = serde_json::from_slice(&good[r.manifest.clone()]).unwrap();
    let chunks = m["images"][0]["chunks"].as_array().unwrap();
    let zero: Vec<bool> = chunks.iter().map(|c| c["zero"] == true).collect();
    assert_eq!(zero, [false, true, true, true, false]);
    assert!(chunks[1..4]
        .iter()
        .all(|c| c["length"] == 0 && c.get("frame_sha256").is_none()));
    // Only the two chunks with data are in the payload.
    let stored: u64 = [&chunks[0], &chunks[4]]
        .iter()
        .map(|c| c["length"].as_u64().unwrap())
        .sum();
    assert_eq!(r.payload.len() as u64, stored);
    assert_eq!(
        read_all(&good, &ring).unwrap(),
        vec![("rootfs".to_string(), image)]
    );

    // A zero chunk whose signed plaintext digest is not that of zeros is
    // refused with the manifest, before any payload is read.
    let mut lying = m.clone();
    lying["images"][0]["chunks"][2]["sha256"] = serde_json::json!("11".repeat(32));
    match read_all(
        &craft(
            &serde_json::to_vec(&lying).unwrap(),
            &[&k],
            &good[r.payload.clone()],
        ),
        &ring,
    ) {
        Err(BundleError::BadManifest(msg)) => {
            assert!(msg.contains("chunk 2: a zero chunk's sha256"), "{msg}")
        }
        other => panic!("expected the manifest to be refused, got {other:?}"),
    }
    // Nor does a chunk size off the 4 KiB grid pass.
    let mut odd = m.clone();
    odd["images"][0]["chunk_size"] = serde_json::json!(65_537);
    match read_all(
        &craft(
            &serde_json::to_vec(&odd).unwrap(),
            &[&k],
            &good[r.payload.clone()],
        ),
        &ring,
    ) {
        Err(BundleError::BadManifest(msg)) => assert!(msg.contains("multiple of 4096"), "{msg}"),
        other => panic!("expected the manifest to be refused, got {other:?}"),
    }
}

#[test]
fn keys_that_are_not_keys() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = image_tools::bundle::keys::load_private(&junk).unwrap_err();
    assert!(
        e.to_string()
            .contains("junk.pem: not an ed25519 private key (PEM)"),
        "{e}"
    );
    let e = Keyring::from_key(&junk).unwrap_err();
    assert_eq!(e.exit_code(), 32);
    let e = Keyring::load_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert!(Keyring::load_dir(empty.path())
        .unwrap_err()
        .to_string()
        .contains("no public keys"));
}

#[test]
fn chunk_hash_error_names_the_chunk() {
    let k = key(1);
    let (_d, ring) = keyring(&[&k]);
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(build_file(
        dir.path(),
        &[("rootfs", image_bytes(200_000, 7))],
        std::slice::from_ref(&k),
    ))
    .unwrap();
    let r = regions(&good);
    // Re-sign a manifest whose chunk 2 hash is wrong: the payload is intact,
    // so only the hash comparison can catch it.
    let mut m: Manifest = serde_json::from_slice(&good[r.manifest.clone()]).unwrap();
    m.images[0].chunks[2].sha256 = bundle::Digest([7; 32]);
    let bad = craft(
        &serde_json::to_vec(&m).unwrap(),
        &[&k],
        &good[r.payload.clone()],
    );
    match read_all(&bad, &ring) {
        Err(e @ BundleError::ChunkHash { index: 2, .. }) => {
            assert!(e.to_string().starts_with("image rootfs chunk 2 "), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// Under a memory limit of exactly one chunk in flight, every image still
/// reads back whole and in order, through the worker hook too; a limit
/// below one chunk is refused before any chunk is read; and a sink that
/// fails while the reader may be waiting for buffers ends the read with
/// its error.
#[test]
fn a_tight_memory_limit_reads_everything_and_a_failing_sink_ends_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = image_bytes(40 * (64 << 10) + 999, 3);
    let app = image_bytes(5 * (64 << 10), 4);
    let b = build_file(
        dir.path(),
        &[("rootfs", rootfs.clone()), ("app", app.clone())],
        &[key(1)],
    );
    let (_d, ring) = keyring(&[&key(1)]);
    let bytes = std::fs::read(&b).unwrap();
    let open = || {
        Envelope::read(Cursor::new(&bytes))
            .unwrap()
            .verify(&ring)
            .unwrap()
    };
    let need = bundle::budget::chunk_memory(&open().manifest.images);
    for threads in [1, 4] {
        let read = ReadOptions {
            memory: Some(need),
            ..ReadOptions::checked(threads)
        };
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        open()
            .read_chunks_with(
                read,
                |_, chunk| -> Result<(), BundleError> {
                    assert_eq!(chunk.data.len() as u64, chunk.len);
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                },
                |image, chunk| -> Result<(), BundleError> {
                    if chunk.index == 0 {
                        out.push((image.target.clone(), Vec::new()));
                    }
                    chunk.append_to(&mut out.last_mut().unwrap().1);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(
            out,
            vec![
                ("rootfs".into(), rootfs.clone()),
                ("app".into(), app.clone())
            ]
        );
        assert!(seen.into_inner() > 40);
    }
    // A sink that fails, or a worker that panics, while the producer waits
    // for buffers that chunks behind the failure hold: the read ends.
    for (limit, threads) in [(need, 1), (need * 3 / 2, 2), (need * 3, 4)] {
        let read = ReadOptions {
            memory: Some(limit),
            ..ReadOptions::checked(threads)
        };
        let ends = |what: &str, panic_at: Option<usize>| {
            let (tx, rx) = std::sync::mpsc::channel();
            let open = &open;
            std::thread::scope(|s| {
                s.spawn(move || {
                    let mut consumed = 0;
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        open().read_chunks_with(
                            read,
                            |_, chunk| -> Result<(), BundleError> {
                                if Some(chunk.index) == panic_at {
                                    panic!("a worker fails");
                                }
                                chunk.data = Default::default();
                                Ok(())
                            },
                            |_, _| -> Result<(), BundleError> {
                                std::thread::sleep(std::time::Duration::from_millis(30));
                                consumed += 1;
                                if consumed == 5 {
                                    return Err(BundleError::TrailingData);
                                }
                                Ok(())
                            },
                        )
                    }));
                    let _ = tx.send(!matches!(r, Ok(Ok(()))));
                });
                let ended = rx.recv_timeout(std::time::Duration::from_secs(30));
                assert_eq!(
                    ended,
                    Ok(true),
                    "{what}: the read did not end ({limit} bytes, {threads} threads)"
                );
            });
        };
        ends("a failing sink", None);
        ends("a panicking worker", Some(2));
    }
    let read = ReadOptions {
        memory: Some(need - 1),
        ..ReadOptions::checked(2)
    };
    match open().read_chunks(read, |_, _| -> Result<(), BundleError> {
        panic!("read a chunk")
    }) {
        Err(BundleError::OverMemory { need: n, limit }) => assert_eq!((n, limit), (need, need - 1)),
        other => panic!("expected OverMemory, got {other:?}"),
    }
}
