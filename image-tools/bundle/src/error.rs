//! What can be wrong with a bundle or a key, each with its own exit code.
//!
//! Without std (a verifier of slot trailers) there is no `BundleError::Io`:
//! nothing here reads a file then, and a key's [`KeyPath`] is a label.

use alloc::string::String;

/// Where a key came from: its file, or a label (`<raw key 0>`) for keys
/// handed over in memory. Without std, always a label.
#[cfg(feature = "std")]
pub type KeyPath = std::path::PathBuf;
/// Where a key came from: its file, or a label (`<raw key 0>`) for keys
/// handed over in memory. Without std, always a label.
#[cfg(not(feature = "std"))]
pub type KeyPath = String;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[cfg(feature = "std")]
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("bundle is truncated: it ends inside the {region}")]
    Truncated { region: String },

    #[error("not a Switchback bundle (bad magic)")]
    BadMagic,

    #[error("bundle format version {0} is not supported (this build reads version {reads}): rebuild the bundle with a matching image-tools", reads = crate::FORMAT_VERSION)]
    UnsupportedVersion(u32),

    #[error("bundle header: {field} = {value} is out of range (limit {limit})")]
    BadLength {
        field: &'static str,
        value: u64,
        limit: u64,
    },

    #[error("bundle header: signatures_len = {0} is not a whole number of 96-byte signatures: the header is damaged")]
    SignaturesLen(u32),

    #[error("bundle is damaged: its manifest is not JSON, so the header's manifest_len ({0}) is likely wrong, and no trusted signature was found")]
    ManifestLenDamaged(u32),

    #[error("bundle is signed by no trusted key (signers: {signers})")]
    UntrustedSigner { signers: String },

    #[error(
        "signature by trusted key {key_id} does not verify: manifest altered or signature damaged"
    )]
    BadSignature { key_id: String },

    #[error("bundle is not signed (image-tools sign adds a signature)")]
    Unsigned,

    #[error(
        "signed by {valid} of the {need} trusted keys the keyring requires (signed: {signed}; not signed by: {missing})"
    )]
    TooFewSigners {
        need: usize,
        valid: usize,
        signed: String,
        missing: String,
    },

    #[error("bundle manifest: {0}")]
    BadManifest(String),

    #[error(
        "image {image} chunk {index} (payload offset {offset}): sha256 does not match the manifest"
    )]
    ChunkHash {
        image: String,
        index: usize,
        offset: u64,
    },

    #[error("image {image} chunk {index} (payload offset {offset}): cannot decompress: {reason}")]
    ChunkDecode {
        image: String,
        index: usize,
        offset: u64,
        reason: String,
    },

    #[error("bundle has data after its last payload chunk")]
    TrailingData,

    #[error("not a Switchback release wrapper (.swu): {0}")]
    Wrapper(String),

    #[error("{path}: {reason}")]
    Key { path: KeyPath, reason: String },

    #[error("bundle has no image named {0:?}")]
    NoSuchImage(String),

    #[error("image {image} is a delta: it needs its {size}-byte base image (pass --base)")]
    NeedsBase { image: String, size: u64 },

    #[error("image {image} is a delta against another base (digest {digest})")]
    WrongBase { image: String, digest: String },

    #[error("the bundle's largest chunk needs {need} bytes of buffers (its stored frame and decoded bytes), over the reader's limit of {limit} bytes")]
    OverMemory { need: u64, limit: u64 },
}

impl BundleError {
    /// Distinct exit codes; documented in docs/bundle-format.md.
    pub fn exit_code(&self) -> i32 {
        match self {
            #[cfg(feature = "std")]
            BundleError::Io { .. } => 20,
            BundleError::Truncated { .. } => 21,
            BundleError::BadMagic => 22,
            BundleError::UnsupportedVersion(_) => 23,
            BundleError::BadLength { .. } | BundleError::SignaturesLen(_) => 24,
            BundleError::ManifestLenDamaged(_) => 36,
            BundleError::UntrustedSigner { .. } => 25,
            BundleError::BadSignature { .. } => 26,
            BundleError::Unsigned => 25,
            BundleError::TooFewSigners { .. } => 30,
            BundleError::BadManifest(_) => 27,
            BundleError::ChunkHash { .. } => 28,
            BundleError::ChunkDecode { .. } => 29,
            BundleError::TrailingData => 31,
            BundleError::Key { .. } => 32,
            BundleError::NoSuchImage(_) => 33,
            BundleError::NeedsBase { .. } => 34,
            BundleError::WrongBase { .. } => 35,
            BundleError::Wrapper(_) => 37,
            BundleError::OverMemory { .. } => 38,
        }
    }

    #[cfg(feature = "std")]
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
        let what = what.into();
        move |source| BundleError::Io { what, source }
    }
}

pub type Result<T, E = BundleError> = core::result::Result<T, E>;
