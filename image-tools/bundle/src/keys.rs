//! ed25519 keys: private keys as PKCS#8 PEM, public keys as SPKI PEM, and
//! the keyring, a directory of trusted public keys. A key's id is the
//! SHA-256 of its 32 raw public bytes: it tells a device which of its keys
//! a signature claims, without trying them all.

use super::error::{BundleError, Result};
use super::manifest::Digest;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use std::fs;
use std::path::{Path, PathBuf};
#[cfg(feature = "writer")]
use {
    ed25519_dalek::pkcs8::spki::der::pem::LineEnding,
    ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey},
    ed25519_dalek::SigningKey,
    std::io::Write,
    std::os::unix::fs::OpenOptionsExt,
};

pub fn key_id(key: &VerifyingKey) -> [u8; 32] {
    Digest::of(key.as_bytes()).0
}

/// The short form people read: the first 16 hex digits.
pub fn short_id(id: &[u8; 32]) -> String {
    hex::encode(&id[..8])
}

fn key_err(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Creates a key pair; the private key file is readable by its owner only.
#[cfg(feature = "writer")]
pub fn keygen(private: &Path, public: &Path) -> Result<VerifyingKey> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    // PKCS#8 v1 (RFC 8410: the seed alone): OpenSSL 3 refuses the v2 form
    // with the public key that `SigningKey::to_pkcs8_pem` writes.
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| key_err(private, e.to_string()))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(private)
        .map_err(|e| key_err(private, format!("cannot create: {e}")))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| key_err(private, e.to_string()))?;
    let verifying = key.verifying_key();
    let pub_pem = verifying
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_err(public, e.to_string()))?;
    fs::write(public, pub_pem).map_err(|e| key_err(public, format!("cannot write: {e}")))?;
    Ok(verifying)
}

/// Reads a PEM key file and decodes it with `decode`; anything that is not
/// a key of the wanted kind, binary junk included, gets the same message.
fn load_pem<K, E>(path: &Path, kind: &str, decode: impl Fn(&str) -> Result<K, E>) -> Result<K> {
    let bytes = fs::read(path).map_err(|e| key_err(path, format!("cannot read {kind}: {e}")))?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| decode(text).ok())
        .ok_or_else(|| key_err(path, format!("not an ed25519 {kind} (PEM)")))
}

#[cfg(feature = "writer")]
pub fn load_private(path: &Path) -> Result<SigningKey> {
    load_pem(path, "private key", SigningKey::from_pkcs8_pem)
}

pub fn load_public(path: &Path) -> Result<VerifyingKey> {
    load_pem(path, "public key", VerifyingKey::from_public_key_pem)
}

/// The public keys a device trusts.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<(PathBuf, VerifyingKey)>,
}

impl Keyring {
    /// A keyring of keys already in memory (tests, fuzzing, embedders).
    pub fn from_verifying_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Keyring {
        Keyring {
            keys: keys
                .into_iter()
                .map(|k| (PathBuf::from("<memory>"), k))
                .collect(),
        }
    }

    pub fn from_key(path: &Path) -> Result<Keyring> {
        Ok(Keyring {
            keys: vec![(path.to_path_buf(), load_public(path)?)],
        })
    }

    /// Every `*.pem` and `*.pub` file in `dir`. A file there that is not a
    /// key is an error, not skipped: a broken keyring is a misconfiguration
    /// that should be seen, not an update that mysteriously fails later.
    pub fn load_dir(dir: &Path) -> Result<Keyring> {
        let entries = fs::read_dir(dir)
            .map_err(|e| key_err(dir, format!("cannot read keyring directory: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pem" | "pub")))
            .collect();
        paths.sort();
        let keys = paths
            .into_iter()
            .map(|p| load_public(&p).map(|k| (p, k)))
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(key_err(dir, "keyring holds no public keys (*.pem, *.pub)"));
        }
        Ok(Keyring { keys })
    }

    pub fn find(&self, id: &[u8; 32]) -> Option<&VerifyingKey> {
        self.keys.iter().map(|(_, k)| k).find(|k| &key_id(k) == id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
