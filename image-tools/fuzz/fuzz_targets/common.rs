// Shared by the fuzz targets: the test-vector key (docs/bundle-format.md),
// a fixed 1 MiB base image for delta chunks, and a full read of a bundle
// whose chunks are discarded.
use image_tools::bundle::{BundleError, Envelope, Keyring, ReadOptions};

pub fn vector_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x42; 32])
}

fn base() -> &'static [u8] {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect())
}

pub fn read_all(bytes: &[u8], keyring: &Keyring) {
    let Ok(env) = Envelope::read(std::io::Cursor::new(bytes)) else { return };
    let _ = env.unverified_manifest();
    let Ok(verified) = env.verify(keyring) else { return };
    // Both ways a reader reads: the install (frame digests only) and verify.
    let base = base();
    let read = ReadOptions { threads: 2, base: Some(&base), plaintext_sha256: bytes.len() % 2 == 0, fast_digest: true, memory: None };
    let _ = verified.read_chunks(read, |_, _| Ok::<(), BundleError>(()));
}
