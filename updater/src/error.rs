//! Install refusals and failures. Each has its own exit code
//! (docs/updater.md), given at the edge by `cli::exit`; this module
//! depends on nothing of the updater's.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    /// A file the config names (the fleet token, a CA file): exit 40 too;
    /// the reason names the file as what it is.
    #[error("{0}")]
    ConfigFile(String),

    #[error("bundle is for {bundle:?} but this device is {device:?}")]
    Incompatible { bundle: String, device: String },

    #[error("{version}'s root has no dm-verity hash tree, and this device's config requires one (require_verity): build it with image-tools build --verity")]
    NoVerity { version: String },

    #[error("bundle security version {bundle} is below this device's floor {floor}")]
    SecurityVersion { bundle: u64, floor: u64 },

    #[error("bundle version {bundle} is older than the running {running}: pass --allow-downgrade to install it")]
    Downgrade { bundle: String, running: String },

    #[error("image {image} is {size} bytes, larger than {slot} holds ({slot_size} bytes, less the release record at its end)")]
    TooLarge {
        image: String,
        size: u64,
        slot: &'static str,
        slot_size: u64,
    },

    #[error("this install needs {} MiB of memory, over the {} MiB it may use: the bundle's largest chunk alone needs {} MiB of buffers (its stored frame and decoded bytes); allow more with --memory or install_memory in the config, or rebuild the bundle with a smaller --chunk-size", mib(*need), mib(*memory), mib(*chunk_need))]
    OverMemory {
        need: u64,
        memory: u64,
        chunk_need: u64,
    },

    #[error("writing {slot} of {disk} at byte {offset}")]
    Write {
        slot: &'static str,
        disk: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("read-back of {slot}: chunk {index} (byte {offset}) differs from what was written")]
    ReadBack {
        slot: &'static str,
        index: usize,
        offset: u64,
    },

    #[error("read-back of {slot}: reading byte {offset} of the image failed")]
    ReadBackIo {
        slot: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "data snapshot of {dir} failed: {reason}; the partial copy is removed and nothing changed"
    )]
    Snapshot { dir: PathBuf, reason: String },

    #[error("{done}; but {failed}")]
    PartlyDone { done: String, failed: String },

    #[error("the running {slot} changed during the install: it no longer matches the delta's base, so its chunks cannot be decoded; nothing was flipped (is something writing to the running slot?)")]
    BaseChanged { slot: &'static str },

    #[error("refusing to overwrite {target}, the only committed release: {why}")]
    LastGoodSlot { target: &'static str, why: String },

    #[error("download {url}: {reason}")]
    Http { url: String, reason: String },

    #[error("bundle image {0:?} has no place on this device (only \"rootfs\" is installed)")]
    UnsupportedTarget(String),

    #[error("state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{slot} ({version}) was rolled back: {reason}")]
    RolledBack {
        slot: &'static str,
        version: String,
        reason: String,
    },

    #[error("{slot} failed its health check and is marked bad; {fallback} boots next: {reason}")]
    HealthFailed {
        slot: &'static str,
        fallback: &'static str,
        reason: String,
    },

    #[error("rollback not confirmed: answer y, or pass --yes")]
    NotConfirmed,

    #[error("rollback not confirmed: the request must name {to}, the release in {slot} it goes back to (\"confirm\": \"{to}\")")]
    RollbackNotNamed { slot: &'static str, to: String },

    #[error("bundle {path} is {kind}: give a bundle file, or - to read standard input")]
    NotABundleFile { path: PathBuf, kind: &'static str },

    #[error("{state} belongs to the disk with GUID {recorded}, not to {disk} (GUID {guid}): give this disk a state_dir of its own in the config, or remove that file if its disk is gone")]
    StateOfAnotherDisk {
        state: PathBuf,
        recorded: String,
        disk: PathBuf,
        guid: String,
    },

    #[error("{path} is of state format {found}, newer than this updater's {known}: a newer release wrote it (this one came back by a rollback?); nothing changed. Install that release again or one as new, which reads it")]
    StateTooNew {
        path: PathBuf,
        found: u64,
        known: u32,
    },

    #[error("{slot} holds {version} (security version {security_version}), below this device's security floor {floor}: it has known holes; pass --below-security-floor to boot it anyway")]
    BelowSecurityFloor {
        slot: &'static str,
        version: String,
        security_version: String,
        floor: u64,
    },

    #[error("the fleet server assigned {assigned}, but the bundle it linked is signed as {signed}: nothing was written")]
    NotAssigned { assigned: String, signed: String },

    #[error("the artifact {artifact} is not the one the fleet server announced: {detail}; nothing was flipped")]
    ArtifactMismatch { artifact: String, detail: String },

    #[error("nothing to confirm as action {id}: {why}")]
    NothingToConfirm { id: String, why: String },

    /// `updater password`: a user name or password that cannot be kept.
    #[error("{0}")]
    Password(String),

    #[error("nothing to activate: {last} (install with --no-activate first)")]
    NothingToActivate { last: String },

    #[error("{slot} no longer holds the {version} installed into it: {why}; nothing was flipped, install it again")]
    ReadyChanged {
        slot: &'static str,
        version: String,
        why: String,
    },

    #[error("no expand migration leads from data schema {from} to {to} (this bundle has: {have})")]
    MigrationPath { from: u32, to: u32, have: String },

    #[error("{phase} migration {from}->{to} ({image}) failed: {detail}; {aftermath}")]
    MigrationFailed {
        phase: &'static str,
        image: String,
        from: u32,
        to: u32,
        detail: String,
        aftermath: String,
    },

    #[error("this delta applies to another release: the running {slot} does not match the base it was made against (it needs a base whose digest is {want})")]
    DeltaBase { slot: &'static str, want: String },
}

/// The first error of type `T` in `e`'s chain (see [`typed`]).
pub fn find<T: std::error::Error + 'static>(e: &anyhow::Error) -> Option<&T> {
    e.chain().find_map(typed)
}

/// `link` as a `T`, or what it wraps when it is an `io::Error` around a
/// `T`: a download failure travels through the bundle reader as an
/// `io::Error`, whose `source()` skips what it wraps.
pub fn typed<'a, T: std::error::Error + 'static>(
    link: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    link.downcast_ref::<T>().or_else(|| {
        link.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<T>())
    })
}

/// Bytes as MiB with one decimal, rounded up: a figure a user can pass back.
fn mib(bytes: u64) -> String {
    let tenths = (bytes * 10).div_ceil(1 << 20);
    format!("{}.{}", tenths / 10, tenths % 10)
}
