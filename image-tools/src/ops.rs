//! What the `image-tools` verbs do, on bundle files.

use crate::bundle::keys::{short_id, short_ids};
use crate::bundle::{delta, BundleError, Envelope, Keyring, Manifest, ReadOptions};
use crate::progress::byte_bar;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The bundle at `path`, or the bundle inside the `.swu` at `path` (as
/// the updater reads one).
pub fn open(path: &Path) -> Result<Envelope<crate::bundle::swu::Opened<BufReader<File>>>> {
    let file = File::open(path).map_err(BundleError::io(format!(
        "opening bundle {}",
        path.display()
    )))?;
    let opened = crate::bundle::swu::open(BufReader::with_capacity(1 << 20, file))?;
    Ok(Envelope::read(opened)?)
}

fn total_size(m: &Manifest) -> u64 {
    m.images.iter().map(|i| i.size).sum()
}

/// Checks the signature and every chunk. Returns the manifest and the
/// signer's short key id.
/// The base image a delta is decoded against, mapped and checked.
fn load_base(m: &Manifest, base: Option<&Path>, threads: usize) -> Result<Option<memmap2::Mmap>> {
    let Some(path) = base else { return Ok(None) };
    let file = File::open(path).map_err(BundleError::io(format!(
        "opening base image {}",
        path.display()
    )))?;
    // SAFETY: a read-only map; if the file changes under it, decoded chunks
    // fail their hash check, nothing worse.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(BundleError::io(format!(
        "mapping base image {}",
        path.display()
    )))?;
    delta::check_base(m, &map, threads)
        .with_context(|| format!("base image {}", path.display()))?;
    Ok(Some(map))
}

pub fn verify(
    path: &Path,
    keyring: &Keyring,
    threads: usize,
    base: Option<&Path>,
) -> Result<(Manifest, String)> {
    let bundle = open(path)?.verify(keyring)?;
    let base = load_base(&bundle.manifest, base, threads)?;
    let manifest = bundle.manifest.clone();
    let signer = short_ids(&bundle.signers);
    let bar = byte_bar(total_size(&manifest), "verify");
    let read = ReadOptions {
        base: base.as_ref().map(|m| m as &dyn delta::Base),
        ..ReadOptions::checked(threads)
    };
    bundle.read_chunks(read, |_, chunk| -> Result<()> {
        bar.inc(chunk.len);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok((manifest, signer))
}

/// Writes image `target` to `out` after verifying the whole bundle; `out`
/// appears only when every chunk checked (which checks the whole image: its
/// digest is made of the chunks' digests).
pub fn extract(
    path: &Path,
    keyring: &Keyring,
    target: &str,
    out: &Path,
    threads: usize,
    base: Option<&Path>,
) -> Result<Manifest> {
    let bundle = open(path)?.verify(keyring)?;
    let base = load_base(&bundle.manifest, base, threads)?;
    let manifest = bundle.manifest.clone();
    manifest.image(target)?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let bar = byte_bar(total_size(&manifest), "extract");
    let read = ReadOptions {
        base: base.as_ref().map(|m| m as &dyn delta::Base),
        ..ReadOptions::checked(threads)
    };
    let file = tmp.as_file();
    bundle.read_chunks(read, |image, chunk| -> Result<()> {
        bar.inc(chunk.len);
        // A zero chunk stays a hole: the file reads zeros there.
        if image.target == target && !chunk.zero {
            file.write_all_at(&chunk.data, chunk.offset)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    file.set_len(manifest.image(target)?.size)
        .with_context(|| format!("writing {}", out.display()))?;
    let mut perms = tmp.as_file().metadata()?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    tmp.as_file()
        .set_permissions(perms)
        .with_context(|| format!("setting permissions of {}", out.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("renaming into {}", out.display()))?;
    Ok(manifest)
}

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub target: String,
    pub size: u64,
    pub compressed: u64,
    pub ratio: f64,
    /// Bytes carried as zero chunks (no payload).
    pub zero: u64,
    pub chunks: usize,
    pub chunk_size: u64,
    pub digest: String,
    /// Set for a delta image: the base it must be applied to.
    pub base: Option<crate::bundle::manifest::BaseSpec>,
    /// Set when the image ends in a dm-verity hash tree.
    pub verity: Option<crate::bundle::verity::VeritySpec>,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub file: String,
    pub file_size: u64,
    pub format: u32,
    /// Always false: inspect checks no signature.
    pub signature_checked: bool,
    pub signers: Vec<String>,
    pub compatible: String,
    pub version: String,
    pub security_version: u64,
    pub build_time: u64,
    pub data_schema: Option<u32>,
    pub images: Vec<ImageReport>,
    pub migrations: Vec<crate::bundle::MigrationSpec>,
}

/// The manifest as the bundle states it, no key needed: nothing here is
/// trusted, and the report says so.
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let env = open(path)?;
    let m = env.unverified_manifest()?;
    let file_size = std::fs::metadata(path)?.len();
    Ok(InspectReport {
        file: path.display().to_string(),
        file_size,
        format: m.format,
        signature_checked: false,
        signers: env.signatures.iter().map(|s| short_id(&s.key_id)).collect(),
        compatible: m.compatible.clone(),
        version: m.version.clone(),
        security_version: m.security_version,
        build_time: m.build_time,
        data_schema: m.data_schema,
        images: m
            .images
            .iter()
            .map(|i| ImageReport {
                target: i.target.clone(),
                size: i.size,
                compressed: i.compressed_size(),
                ratio: i.compressed_size() as f64 / i.size as f64,
                zero: i.zero_bytes(),
                chunks: i.chunks.len(),
                chunk_size: i.chunk_size,
                digest: i.digest().to_string(),
                base: i.base.clone(),
                verity: i.verity.clone(),
            })
            .collect(),
        migrations: m.migrations.clone(),
    })
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bundle      {} ({} bytes, format {})",
            self.file, self.file_size, self.format
        )?;
        writeln!(
            f,
            "signature   NOT CHECKED (use `image-tools verify`); signers: {}",
            if self.signers.is_empty() {
                "(none): unsigned, no device installs it (image-tools sign)".to_string()
            } else {
                self.signers.join(", ")
            }
        )?;
        writeln!(f, "compatible  {}", self.compatible)?;
        writeln!(
            f,
            "version     {} (security version {})",
            self.version, self.security_version
        )?;
        writeln!(f, "built       {} (unix time)", self.build_time)?;
        if let Some(s) = self.data_schema {
            writeln!(f, "data schema {s}")?;
        }
        for i in &self.images {
            writeln!(
                f,
                "image       {}: {} bytes, {} compressed ({:.1}%), {} of them zero chunks, {} chunks of {} KiB, digest {}",
                i.target,
                i.size,
                i.compressed,
                i.ratio * 100.0,
                i.zero,
                i.chunks,
                i.chunk_size >> 10,
                i.digest
            )?;
        }
        for i in &self.images {
            if let Some(b) = &i.base {
                writeln!(
                    f,
                    "delta       {} applies to a {}-byte base image with digest {}",
                    i.target, b.size, b.digest
                )?;
            }
        }
        for i in &self.images {
            if let Some(v) = &i.verity {
                writeln!(
                    f,
                    "verity      {}: root hash {}, {} data blocks of {} bytes, hash tree at byte {}",
                    i.target, v.root_hash, v.data_blocks, v.data_block_size, v.hash_offset
                )?;
            }
        }
        for g in &self.migrations {
            let snap = if g.snapshot.is_empty() {
                String::new()
            } else {
                format!(", snapshots {}", g.snapshot.join(", "))
            };
            writeln!(
                f,
                "migration   {:?} {} -> {} ({}){snap}",
                g.phase, g.from, g.to, g.image
            )?;
        }
        Ok(())
    }
}
