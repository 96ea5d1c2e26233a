//! The test vectors of docs/bundle-format.md: the stored bundle must read
//! with the stored key, and building from the documented inputs must give
//! the same bytes (same key seed, image, options and build time).

use ed25519_dalek::SigningKey;
use image_tools::bundle::{self, BuildOptions, Envelope, ImageSource, Keyring};
use std::io::Cursor;
use std::path::Path;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

/// The documented vector image: byte i is (i * 7 + i / 1000) mod 256, 100 000 bytes.
fn vector_image() -> Vec<u8> {
    (0..100_000u32)
        .map(|i| ((i * 7 + i / 1000) % 256) as u8)
        .collect()
}

fn vector_options() -> BuildOptions {
    BuildOptions {
        compatible: "switchback-test-vector".into(),
        version: "1.0.0".into(),
        security_version: 1,
        data_schema: None,
        build_time: 1_700_000_000,
        level: 3,
        chunk_size: 65_536,
        threads: 2,
        migrations: Vec::new(),
        base: None,
    }
}

#[test]
fn stored_vector_reads_and_rebuilds_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.img");
    std::fs::write(&image, vector_image()).unwrap();
    let key = SigningKey::from_bytes(&[0x42; 32]);
    // The stored PKCS#8 file (written by another implementation) is that key.
    let stored_key =
        image_tools::bundle::keys::load_private(&Path::new(VECTORS).join("v1-key.pem")).unwrap();
    assert_eq!(stored_key.to_bytes(), key.to_bytes());
    let out = dir.path().join("v1.swb");
    let src = [ImageSource {
        target: "rootfs".into(),
        path: image,
    }];
    bundle::build(&vector_options(), &src, &[key], &out, &mut |_| {}).unwrap();
    let built = std::fs::read(&out).unwrap();

    let stored_path = Path::new(VECTORS).join("v1-small.swb");
    if std::env::var_os("SWITCHBACK_WRITE_VECTORS").is_some() {
        std::fs::write(&stored_path, &built).unwrap();
    }
    let stored = std::fs::read(&stored_path).unwrap();
    assert!(
        built == stored,
        "the writer no longer produces the documented vector"
    );

    let ring = Keyring::from_key(&Path::new(VECTORS).join("v1-key.pub")).unwrap();
    let verified = Envelope::read(Cursor::new(&stored))
        .unwrap()
        .verify(&ring)
        .unwrap();
    let mut got = Vec::new();
    verified
        .read_chunks(1, None, |_, c| -> Result<(), bundle::BundleError> {
            got.extend_from_slice(&c.data);
            Ok(())
        })
        .unwrap();
    assert_eq!(got, vector_image());

    // The documented header and manifest.
    assert_eq!(
        hex::encode(&stored[..32]),
        include_str!("vectors/v1-header.hex").trim()
    );
    let manifest_len = u32::from_le_bytes(stored[12..16].try_into().unwrap()) as usize;
    assert_eq!(
        std::str::from_utf8(&stored[32..32 + manifest_len]).unwrap(),
        include_str!("vectors/v1-manifest.json").trim()
    );
}
