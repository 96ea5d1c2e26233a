// Shared by the fuzz targets: the test-vector key (docs/bundle-format.md)
// and a full read of a bundle whose chunks are discarded.
use image_tools::bundle::{BundleError, Envelope, Keyring};

pub fn vector_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x42; 32])
}

pub fn read_all(bytes: &[u8], keyring: &Keyring) {
    let Ok(env) = Envelope::read(std::io::Cursor::new(bytes)) else { return };
    let _ = env.unverified_manifest();
    let Ok(verified) = env.verify(keyring) else { return };
    let _ = verified.read_chunks(2, None, |_, _| Ok::<(), BundleError>(()));
}
