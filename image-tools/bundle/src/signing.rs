//! Signing a bundle, wherever the key lives: a [`Signer`] turns the
//! manifest's exact bytes into an ed25519 signature. A PEM key in memory is
//! one (`SigningKey`); `image-tools` adds a PKCS#11 token and an external
//! command. Every signature a signer returns is checked against its public
//! key before it is written, so a misbehaving HSM or script cannot leave a
//! bundle no device accepts.
//!
//! A signature covers the manifest only (docs/bundle-format.md, "Signature
//! block"), so signatures can be added to or removed from a built bundle
//! without touching its payload: [`resign`].

use super::error::{BundleError, Result};
use super::header::{Header, SignatureEntry, SIGNATURE_ENTRY_LEN};
use super::keys::{key_id, short_id};
use super::manifest::Manifest;
use super::reader::Envelope;
use super::MAX_SIGNATURES;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Something that signs with an ed25519 key it may never show.
pub trait Signer {
    /// The key's public half: what the signature is checked against.
    fn public_key(&self) -> Result<VerifyingKey>;
    /// The 64-byte ed25519 signature (RFC 8032, pure) of `message`.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64]>;
    /// Where the key is, for messages (a file, a token URI, a command).
    fn describe(&self) -> String;
}

impl Signer for SigningKey {
    fn public_key(&self) -> Result<VerifyingKey> {
        Ok(self.verifying_key())
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64]> {
        Ok(ed25519_dalek::Signer::sign(self, message).to_bytes())
    }
    fn describe(&self) -> String {
        format!("the key {}", short_id(&key_id(&self.verifying_key())))
    }
}

/// `signer`'s signature entry for `manifest`, checked against its public
/// key (`verify_strict`, as every reader checks it).
pub fn sign_manifest(signer: &dyn Signer, manifest: &[u8]) -> Result<SignatureEntry> {
    let public = signer.public_key()?;
    let signature = signer.sign(manifest)?;
    public
        .verify_strict(manifest, &Signature::from_bytes(&signature))
        .map_err(|_| BundleError::BadSignature {
            key_id: format!(
                "{} (made by {}: not a signature of this manifest by that key)",
                short_id(&key_id(&public)),
                signer.describe()
            ),
        })?;
    Ok(SignatureEntry {
        key_id: key_id(&public),
        signature,
    })
}

/// `entries` with `signer`'s signature of `manifest` in place of any it had
/// made before, or appended.
fn add_signature(
    entries: &mut Vec<SignatureEntry>,
    signer: &dyn Signer,
    manifest: &[u8],
) -> Result<()> {
    let entry = sign_manifest(signer, manifest)?;
    // Every earlier entry of the key goes (a hostile bundle may carry
    // several); the new one takes the first one's place.
    let at = entries.iter().position(|e| e.key_id == entry.key_id);
    entries.retain(|e| e.key_id != entry.key_id);
    entries.insert(at.unwrap_or(entries.len()), entry);
    Ok(())
}

/// The signature block for `manifest` by `signers`, in their order; none
/// for an unsigned bundle. Two signers of the same key are refused.
pub fn signature_block(signers: &[&dyn Signer], manifest: &[u8]) -> Result<Vec<SignatureEntry>> {
    let mut entries = Vec::new();
    for signer in signers {
        let before = entries.len();
        add_signature(&mut entries, *signer, manifest)?;
        if entries.len() == before {
            return Err(BundleError::BadManifest(format!(
                "{} signs with a key given twice",
                signer.describe()
            )));
        }
    }
    if entries.len() > MAX_SIGNATURES {
        return Err(too_many(entries.len()));
    }
    Ok(entries)
}

fn too_many(n: usize) -> BundleError {
    BundleError::BadManifest(format!(
        "{n} signatures; a bundle holds at most {MAX_SIGNATURES}"
    ))
}

/// What [`resign`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resigned {
    pub manifest: Manifest,
    /// The key ids that sign the bundle now, in the block's order.
    pub signers: Vec<[u8; 32]>,
    /// How many signatures `remove` took away.
    pub removed: usize,
}

/// Writes `out` (possibly `bundle` itself: a temporary file beside it,
/// renamed when whole) as `bundle` with the signatures whose key id starts
/// with one of `remove` (hex, at least 8 digits) taken away and one by each
/// of `add` added (replacing the key's earlier one). The manifest and
/// payload bytes are copied unchanged; the manifest is parsed first, so
/// nothing that is not a bundle's manifest gets signed.
pub fn resign(
    bundle: &Path,
    out: &Path,
    add: &[&dyn Signer],
    remove: &[String],
) -> Result<Resigned> {
    let file = std::fs::File::open(bundle)
        .map_err(BundleError::io(format!("opening {}", bundle.display())))?;
    // The signed bundle keeps the file's permissions (a bundle kept 0600
    // before publication stays so).
    let mode = file
        .metadata()
        .map_err(BundleError::io(format!("reading {}", bundle.display())))?
        .permissions()
        .mode();
    let mut env = Envelope::read(std::io::BufReader::new(file))?;
    let manifest = env.unverified_manifest()?;
    let mut entries = env.signatures.clone();
    let mut removed = 0;
    for prefix in remove {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 8 || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(BundleError::BadManifest(format!(
                "{prefix:?} is not a key id (at least 8 hex digits, as inspect shows them)"
            )));
        }
        let before = entries.len();
        entries.retain(|e| !hex::encode(e.key_id).starts_with(&prefix));
        if entries.len() == before {
            return Err(BundleError::BadManifest(format!(
                "{} has no signature by a key {prefix}…",
                bundle.display()
            )));
        }
        removed += before - entries.len();
    }
    for signer in add {
        add_signature(&mut entries, *signer, &env.manifest_bytes)?;
    }
    if entries.len() > MAX_SIGNATURES {
        return Err(too_many(entries.len()));
    }
    let header = Header {
        signatures_len: (entries.len() * SIGNATURE_ENTRY_LEN) as u32,
        ..env.header
    };
    let signers = entries.iter().map(|e| e.key_id).collect();
    let manifest_bytes = std::mem::take(&mut env.manifest_bytes);
    let mut payload = env.into_reader();
    super::writer::write_bundle(out, &header, &manifest_bytes, &entries, &mut payload, mode)?;
    Ok(Resigned {
        manifest,
        signers,
        removed,
    })
}
