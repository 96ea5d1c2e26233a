//! The argument types of `image-tools` and what its `build` and `delta`
//! verbs do with them; the binary's `main.rs` only parses and prints.

use crate::bundle::size::parse_size;
use crate::bundle::writer::{DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL};
use crate::bundle::{
    self, default_threads, keys, BuildOptions, ImageSource, Keyring, MigrationSource, Phase,
};
use crate::progress::byte_bar;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Which public keys a check trusts.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Trust {
    /// A public key (PEM) to trust.
    #[arg(long)]
    pub public: Option<PathBuf>,
    /// A directory of trusted public keys (*.pem, *.pub).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
}

impl Trust {
    pub fn load(&self) -> Result<Keyring> {
        Ok(match (&self.public, &self.keyring) {
            (Some(p), _) => Keyring::from_key(p)?,
            (None, Some(d)) => Keyring::load_dir(d)?,
            (None, None) => bail!("name a trusted key with --public or --keyring"),
        })
    }
}

/// `TARGET=PATH`, e.g. `rootfs=rootfs.img`.
pub fn parse_image(s: &str) -> Result<ImageSource, String> {
    let (target, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write TARGET=PATH, e.g. rootfs=rootfs.img"))?;
    Ok(ImageSource {
        target: target.to_string(),
        path: PathBuf::from(path),
    })
}

/// `PATH:FROM:TO:PHASE[:DIR,DIR...]`, e.g. `migrate-db:1:2:expand:db,cfg`:
/// the executable, the data schemas it leads from and to, `expand` or
/// `finalize`, and the data directories to snapshot before it runs. Read
/// from the right, so a path may hold colons.
pub fn parse_migration(s: &str) -> Result<MigrationSource, String> {
    let usage =
        || format!("{s:?}: write PATH:FROM:TO:PHASE[:DIR,DIR...], e.g. migrate-db:1:2:expand:db");
    let mut parts: Vec<&str> = s.split(':').collect();
    let snapshot = match parts.last() {
        Some(&"expand" | &"finalize") => Vec::new(),
        Some(dirs) if parts.len() >= 5 => {
            let dirs: Vec<String> = dirs.split(',').map(str::to_string).collect();
            if dirs.iter().any(String::is_empty) {
                return Err(format!("{s:?}: an empty snapshot directory"));
            }
            parts.pop();
            dirs
        }
        _ => return Err(usage()),
    };
    let [path @ .., from, to, phase] = parts.as_slice() else {
        return Err(usage());
    };
    if path.is_empty() || path.concat().is_empty() {
        return Err(usage());
    }
    let schema = |v: &str, what: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{s:?}: {what} schema {v:?} is not a number"))
    };
    Ok(MigrationSource {
        path: PathBuf::from(path.join(":")),
        from: schema(from, "from")?,
        to: schema(to, "to")?,
        phase: match *phase {
            "expand" => Phase::Expand,
            "finalize" => Phase::Finalize,
            other => return Err(format!("{s:?}: phase {other:?} is expand or finalize")),
        },
        snapshot,
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub signers: crate::signers::SignerArgs,
    /// Build without a signature, for `image-tools sign` to add one where
    /// the key lives (no device installs an unsigned bundle).
    #[arg(long)]
    pub unsigned: bool,
    /// TARGET=PATH, e.g. rootfs=rootfs.img; repeatable.
    #[arg(long = "image", required = true, value_parser = parse_image)]
    pub images: Vec<ImageSource>,
    #[arg(long)]
    pub compatible: String,
    /// Release version (semver).
    #[arg(long = "version")]
    pub release_version: String,
    #[arg(long, default_value_t = 0)]
    pub security_version: u64,
    /// The data schema this release expects.
    #[arg(long)]
    pub data_schema: Option<u32>,
    /// zstd level (1-19).
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_size)]
    pub chunk_size: u64,
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    #[arg(long)]
    pub out: PathBuf,
    /// A data migration, PATH:FROM:TO:PHASE[:DIR,DIR...] (phase expand or
    /// finalize; the DIRs, relative to the data directory, are snapshotted
    /// before it runs); repeatable, in the order they run.
    #[arg(long = "migration", value_parser = parse_migration)]
    pub migrations: Vec<MigrationSource>,
    /// Append a dm-verity hash tree to the rootfs image, its root hash
    /// signed in the manifest: the device opens its root through it, so a
    /// changed block fails the read that touches it.
    #[arg(long)]
    pub verity: bool,
}

/// SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn build_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

/// Builds the bundle `args` describe (a delta against `base` when given);
/// returns the line that says what was built.
pub fn build(args: BuildArgs, base: Option<PathBuf>) -> Result<String> {
    match (args.signers.is_empty(), args.unsigned) {
        (true, false) => bail!(
            "name a signer (--key, --pkcs11, --sign-command), or --unsigned to sign later with image-tools sign"
        ),
        (false, true) => bail!("--unsigned and a signer contradict each other"),
        _ => {}
    }
    // Opened before the build: a wrong PIN or a missing key is said at
    // once, not after minutes of compression.
    let signing = args.signers.load()?;
    let signers: Vec<&dyn bundle::signing::Signer> = signing.iter().map(|s| s.as_ref()).collect();
    let opts = BuildOptions {
        compatible: args.compatible,
        version: args.release_version,
        security_version: args.security_version,
        data_schema: args.data_schema,
        build_time: build_time()?,
        level: args.level,
        chunk_size: args.chunk_size,
        threads: args.threads,
        migrations: args.migrations,
        base,
        verity: args.verity,
    };
    let total = args
        .images
        .iter()
        .map(|i| std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = byte_bar(total, "build");
    let manifest = bundle::build(&opts, &args.images, &signers, &args.out, &mut |n| {
        bar.inc(n)
    })?;
    bar.finish_and_clear();
    if let Some(warning) = memory_warning(&manifest) {
        eprintln!("image-tools: warning: {warning}");
    }
    let size = std::fs::metadata(&args.out)?.len();
    Ok(format!(
        "{}: {} {} for {}, {} bytes from {} bytes of images, {} signature(s)",
        args.out.display(),
        manifest.compatible,
        manifest.version,
        manifest
            .images
            .iter()
            .map(|i| i.target.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        size,
        total,
        signing.len()
    ))
}

#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The bundle to sign (replaced, unless --out names another file).
    pub bundle: PathBuf,
    #[command(flatten)]
    pub signers: crate::signers::SignerArgs,
    /// Take away the signature by this key id (its first 8 or more hex
    /// digits, as `inspect` shows them); repeatable.
    #[arg(long, value_name = "KEY_ID")]
    pub remove: Vec<String>,
    /// Write the signed bundle here instead.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// `image-tools sign`: adds, replaces or removes signatures of a built
/// bundle; its payload is copied unchanged. Returns what it did, in words.
pub fn sign(args: SignArgs) -> Result<String> {
    if args.signers.is_empty() && args.remove.is_empty() {
        bail!("name a signer (--key, --pkcs11, --sign-command) or a signature to --remove");
    }
    let signing = args.signers.load()?;
    let signers: Vec<&dyn bundle::signing::Signer> = signing.iter().map(|s| s.as_ref()).collect();
    let out = args.out.as_deref().unwrap_or(&args.bundle);
    let done = bundle::signing::resign(&args.bundle, out, &signers, &args.remove)?;
    Ok(format!(
        "{}: {} {}, {} signature(s) now: {}{}",
        out.display(),
        done.manifest.compatible,
        done.manifest.version,
        done.signers.len(),
        if done.signers.is_empty() {
            "unsigned".to_string()
        } else {
            keys::short_ids(&done.signers)
        },
        if done.removed > 0 {
            format!(" ({} removed)", done.removed)
        } else {
            String::new()
        }
    ))
}

/// `image-tools pubkey`: writes the public half of the one signer `args`
/// names (a token's key, a command's) as SPKI PEM, for keyrings and
/// `--sign-command`; returns its key id.
pub fn public_key(args: &crate::signers::SignerArgs, out: &Path) -> Result<String> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    let signers = args.load()?;
    let [signer] = signers.as_slice() else {
        bail!("name exactly one signer (--key, --pkcs11, --sign-command)");
    };
    let public = signer.public_key()?;
    let pem = public
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the public key")?;
    std::fs::write(out, pem).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "key id {}: the public key of {}, in {}",
        keys::short_id(&keys::key_id(&public)),
        signer.describe(),
        out.display()
    ))
}

/// What to say when a device with the default memory budget would refuse
/// the bundle: its largest chunk (stored frame plus decoded bytes) and the
/// updater's own share do not fit.
fn memory_warning(manifest: &bundle::Manifest) -> Option<String> {
    use bundle::budget::{chunk_memory, DEVICE_MEMORY, DEVICE_OVERHEAD};
    let need = chunk_memory(&manifest.images) + DEVICE_OVERHEAD;
    let mib = |b: u64| b.div_ceil(1 << 20);
    (need > DEVICE_MEMORY).then(|| {
        format!(
            "installing this bundle needs about {} MiB of memory on the device, over the {} MiB an updater uses by default: devices refuse it unless installed with --memory {}M (or install_memory in their config); with --chunk-size 4M it fits",
            mib(need),
            mib(DEVICE_MEMORY),
            mib(need)
        )
    })
}

/// `image-tools swu`: a signed bundle wrapped for fleet servers that
/// take SWUpdate files (docs/fleet.md).
#[derive(Debug, Clone, clap::Args)]
pub struct SwuArgs {
    /// The signed bundle (.swb).
    pub bundle: PathBuf,
    /// The bundle is checked against these keys before it is wrapped.
    #[command(flatten)]
    pub trust: Trust,
    /// A hardware revision the release fits (what devices report as
    /// `hw_revision`); repeat for several.
    #[arg(long = "hw-revision", required = true)]
    pub hw_revisions: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
}

/// Verifies the bundle as `verify` does, then wraps it
/// ([`bundle::swu::wrap_file`]).
pub fn swu(args: &SwuArgs) -> Result<String> {
    let (manifest, signer) =
        crate::ops::verify(&args.bundle, &args.trust.load()?, args.threads, None)?;
    bundle::swu::wrap_file(&args.bundle, &manifest, &args.hw_revisions, &args.out)?;
    Ok(format!(
        "{}: {} {} (signed by {signer}) wrapped for hardware revision(s) {}",
        args.out.display(),
        manifest.compatible,
        manifest.version,
        args.hw_revisions.join(", ")
    ))
}

/// The process exit code for an error: the code of the typed error inside
/// it when there is one (the bundle's 20–38, the disk's 10–19), 1
/// otherwise (docs/bundle-format.md).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<bundle::BundleError>()
                .map(bundle::BundleError::exit_code)
                .or_else(|| {
                    c.downcast_ref::<bootctl::Error>()
                        .map(bootctl::Error::exit_code)
                })
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_is_one_value() {
        let m = parse_migration("migrate-db:1:2:expand:db,cfg").unwrap();
        assert_eq!(m.path, PathBuf::from("migrate-db"));
        assert_eq!((m.from, m.to, m.phase), (1, 2, Phase::Expand));
        assert_eq!(m.snapshot, ["db", "cfg"]);
        let m = parse_migration("/opt/a:b/drop:2:3:finalize").unwrap();
        assert_eq!(m.path, PathBuf::from("/opt/a:b/drop"));
        assert_eq!((m.from, m.to, m.phase), (2, 3, Phase::Finalize));
        assert!(m.snapshot.is_empty());
        for bad in [
            "m.sh",
            "m.sh:1:2",
            "m.sh:1:2:sideways",
            "m.sh:one:2:expand",
            "m.sh:1:2:expand:",
            ":1:2:expand",
            "m.sh:1:2:later:db",
        ] {
            let e = parse_migration(bad).map(|_| ()).unwrap_err();
            assert!(e.starts_with(&format!("{bad:?}")), "{e}");
        }
    }
}
