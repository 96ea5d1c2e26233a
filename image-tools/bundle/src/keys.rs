//! ed25519 keys: private keys as PKCS#8 PEM, public keys as SPKI PEM, and
//! the keyring, a directory of trusted public keys. A key's id is the
//! SHA-256 of its 32 raw public bytes: it tells a device which of its keys
//! a signature claims, without trying them all.
//!
//! Without std the keyring comes from raw keys in memory
//! ([`Keyring::from_raw_keys`]) and checks signatures the same way; PEM
//! files and keyring directories need std.

use super::error::{BundleError, KeyPath, Result};
use super::header::SignatureEntry;
use super::manifest::Digest;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ed25519_dalek::{Signature, VerifyingKey};
#[cfg(feature = "writer")]
use {
    ed25519_dalek::pkcs8::spki::der::pem::LineEnding,
    ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey},
    ed25519_dalek::SigningKey,
    std::io::Write,
    std::os::unix::fs::OpenOptionsExt,
};
#[cfg(feature = "std")]
use {
    ed25519_dalek::pkcs8::DecodePublicKey,
    std::fs,
    std::path::{Path, PathBuf},
};

pub fn key_id(key: &VerifyingKey) -> [u8; 32] {
    Digest::of(key.as_bytes()).0
}

/// The short form people read: the first 16 hex digits.
pub fn short_id(id: &[u8; 32]) -> String {
    hex::encode(&id[..8])
}

/// Several keys' short ids, `, `-separated.
pub fn short_ids<'a>(ids: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    ids.into_iter().map(short_id).collect::<Vec<_>>().join(", ")
}

#[cfg(feature = "std")]
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
#[cfg(feature = "std")]
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

#[cfg(feature = "std")]
pub fn load_public(path: &Path) -> Result<VerifyingKey> {
    load_pem(path, "public key", VerifyingKey::from_public_key_pem)
}

/// The public keys a device trusts, and how many of them must have signed
/// a bundle (M of N; 1 unless the keyring says otherwise).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// Each key with where it came from (its file, or `<memory>`).
    keys: Vec<(String, VerifyingKey)>,
    /// 0 stands for 1 (a `Default` keyring).
    threshold: usize,
}

/// The file of a keyring directory that holds its threshold: one number,
/// how many of its keys must have signed.
#[cfg(feature = "std")]
pub const THRESHOLD_FILE: &str = "threshold";

impl Keyring {
    /// A keyring of keys already in memory (tests, fuzzing, embedders).
    pub fn from_verifying_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Keyring {
        Keyring {
            keys: keys
                .into_iter()
                .map(|k| (String::from("<memory>"), k))
                .collect(),
            threshold: 1,
        }
    }

    /// This keyring, demanding `threshold` of its keys' signatures; a
    /// threshold of 0 or above the number of keys is [`BundleError::Key`].
    pub fn with_threshold(mut self, threshold: usize) -> Result<Keyring> {
        if threshold == 0 || threshold > self.keys.len() {
            return Err(BundleError::Key {
                path: KeyPath::from(format!("<threshold {threshold}>")),
                reason: format!(
                    "a threshold must be 1 to the keyring's {} key(s)",
                    self.keys.len()
                ),
            });
        }
        self.threshold = threshold;
        Ok(self)
    }

    /// How many of its keys must have signed.
    pub fn threshold(&self) -> usize {
        self.threshold.max(1)
    }

    /// A keyring of raw 32-byte ed25519 public keys, as built into a
    /// program that has no file system (the UEFI boot stage). A key that is
    /// not a point of the curve is [`BundleError::Key`], named
    /// `<raw key N>` by its index.
    pub fn from_raw_keys(keys: &[[u8; 32]]) -> Result<Keyring> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(n, raw)| {
                VerifyingKey::from_bytes(raw)
                    .map(|k| (String::from("<memory>"), k))
                    .map_err(|_| BundleError::Key {
                        path: KeyPath::from(format!("<raw key {n}>")),
                        reason: "not an ed25519 public key".to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Keyring { keys, threshold: 1 })
    }

    #[cfg(feature = "std")]
    pub fn from_key(path: &Path) -> Result<Keyring> {
        Ok(Keyring {
            keys: vec![(path.display().to_string(), load_public(path)?)],
            threshold: 1,
        })
    }

    /// Every `*.pem` and `*.pub` file in `dir`, and the number of them that
    /// must have signed from its [`THRESHOLD_FILE`] (1 without one). A file
    /// there that is not a key, or a threshold that is not a number of its
    /// keys, is an error, not skipped: a broken keyring is a
    /// misconfiguration that should be seen, not an update that
    /// mysteriously fails later.
    #[cfg(feature = "std")]
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
            .map(|p| load_public(&p).map(|k| (p.display().to_string(), k)))
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(key_err(dir, "keyring holds no public keys (*.pem, *.pub)"));
        }
        // A key in two files would count twice toward the threshold's
        // reach while its signature counts once: a keyring no bundle meets.
        for (i, (path, key)) in keys.iter().enumerate() {
            if let Some((first, _)) = keys[..i].iter().find(|(_, k)| k == key) {
                return Err(key_err(
                    Path::new(path),
                    format!("the same key as {first}: a keyring holds each key once"),
                ));
            }
        }
        let path = dir.join(THRESHOLD_FILE);
        let threshold = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=keys.len()).contains(n))
                .ok_or_else(|| {
                    key_err(
                        &path,
                        format!(
                            "not a number of signatures from 1 to the keyring's {} key(s)",
                            keys.len()
                        ),
                    )
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(key_err(&path, format!("cannot read: {e}"))),
        };
        Ok(Keyring { keys, threshold })
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

    /// The keys' raw 32-byte forms, in the keyring's order: what
    /// [`Keyring::from_raw_keys`] takes back (a keyring built into a
    /// program).
    pub fn raw_keys(&self) -> Vec<[u8; 32]> {
        self.keys.iter().map(|(_, k)| k.to_bytes()).collect()
    }

    /// Checks a bundle's `signatures` over its `manifest_bytes` (ed25519
    /// `verify_strict`): valid signatures by at least [`Keyring::threshold`]
    /// distinct trusted keys are needed, and those keys' ids are returned in
    /// the order they signed. Signatures by keys not in the keyring are
    /// skipped, never counted. The manifest itself is not parsed here, only
    /// after this succeeded ([`Manifest::parse`](crate::manifest::Manifest::parse)).
    pub fn verify_signatures(
        &self,
        manifest_bytes: &[u8],
        signatures: &[SignatureEntry],
    ) -> Result<Vec<[u8; 32]>> {
        if signatures.is_empty() {
            return Err(BundleError::Unsigned);
        }
        let mut valid: Vec<[u8; 32]> = Vec::new();
        let mut bad_trusted = None;
        for entry in signatures {
            let Some(key) = self.find(&entry.key_id) else {
                continue;
            };
            let sig = Signature::from_bytes(&entry.signature);
            if key.verify_strict(manifest_bytes, &sig).is_ok() {
                if !valid.contains(&entry.key_id) {
                    valid.push(entry.key_id);
                }
            } else {
                bad_trusted = Some(entry.key_id);
            }
        }
        if valid.len() >= self.threshold() {
            return Ok(valid);
        }
        if let Some(id) = bad_trusted {
            return Err(BundleError::BadSignature {
                key_id: short_id(&id),
            });
        }
        if !valid.is_empty() {
            let missing: Vec<[u8; 32]> = self
                .keys
                .iter()
                .map(|(_, k)| key_id(k))
                .filter(|id| !valid.contains(id))
                .collect();
            return Err(BundleError::TooFewSigners {
                need: self.threshold(),
                valid: valid.len(),
                signed: short_ids(&valid),
                missing: short_ids(&missing),
            });
        }
        // With a wrong manifest_len the "signatures" are bytes from the
        // middle of the manifest or payload: say that, not "unknown signer
        // <garbage>".
        if serde_json::from_slice::<serde::de::IgnoredAny>(manifest_bytes).is_err() {
            // At most MAX_MANIFEST_LEN (16 MiB) for a manifest read after
            // its header.
            let len = u32::try_from(manifest_bytes.len()).unwrap_or(u32::MAX);
            return Err(BundleError::ManifestLenDamaged(len));
        }
        Err(BundleError::UntrustedSigner {
            signers: short_ids(signatures.iter().map(|s| &s.key_id)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_make_a_keyring_and_a_non_point_is_refused() {
        // RFC 8032's TEST 1: a public key and its signature over the
        // empty message.
        let mut public = [0u8; 32];
        hex::decode_to_slice(
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            &mut public,
        )
        .unwrap();
        let mut signature = [0u8; 64];
        hex::decode_to_slice(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            &mut signature,
        )
        .unwrap();
        let ring = Keyring::from_raw_keys(&[public]).unwrap();
        assert_eq!(ring.raw_keys(), [public]);
        let id = key_id(ring.find(&Digest::of(&public).0).unwrap());
        let entry = SignatureEntry {
            key_id: id,
            signature,
        };
        assert_eq!(
            ring.verify_signatures(b"", core::slice::from_ref(&entry))
                .unwrap(),
            [id]
        );
        let e = ring
            .verify_signatures(b"{}", core::slice::from_ref(&entry))
            .unwrap_err();
        assert_eq!(e.exit_code(), 26, "{e}");
        let stranger = SignatureEntry {
            key_id: [9; 32],
            ..entry
        };
        let e = ring
            .verify_signatures(b"{}", core::slice::from_ref(&stranger))
            .unwrap_err();
        assert_eq!(e.exit_code(), 25, "{e}");
        let e = ring.verify_signatures(b"{", &[stranger]).unwrap_err();
        assert!(matches!(e, BundleError::ManifestLenDamaged(1)), "{e}");

        // y = 2 is not the y-coordinate of any point of the curve.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let e = Keyring::from_raw_keys(&[public, not_a_point]).unwrap_err();
        assert_eq!(e.exit_code(), 32);
        assert_eq!(e.to_string(), "<raw key 1>: not an ed25519 public key");
        assert!(Keyring::from_raw_keys(&[]).unwrap().is_empty());
    }
}
