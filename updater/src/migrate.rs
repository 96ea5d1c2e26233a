//! Data migrations, ahead of time (docs/updater.md, "Data migrations").
//!
//! A bundle carries migration executables as signed images, each with the
//! schema it leads `from` and `to` and its phase. `expand` migrations run
//! during the install, before the flip, while the old release still runs:
//! they may only add, so the old release keeps working and a rollback loses
//! nothing. Before they run, the data directories they declare are
//! snapshotted (reflinked where the file system can, copied otherwise); a
//! failure restores the snapshot and the install stops without a flip.
//! `finalize` migrations run when the new release is committed.
//!
//! A migration runs with this environment (documented in docs/updater.md):
//! `SWITCHBACK_DATA_DIR`, `SWITCHBACK_FROM`, `SWITCHBACK_TO`,
//! `SWITCHBACK_PHASE`, `SWITCHBACK_NEW_SLOT`; it runs confined
//! ([`crate::confine`]): no device node of a disk, no mount, nothing
//! writable but the directories it declared.

use crate::config::Config;
use crate::confine::Confinement;
use crate::error::UpdateError;
use crate::runner::run_command;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use switchback_bundle::{Envelope, Keyring, Manifest, MigrationSpec, Phase};

/// The schema of a device that never recorded one: the first.
pub const INITIAL_SCHEMA: u32 = 1;
const SNAPSHOT_DIR: &str = ".switchback-snapshot";
const SNAPSHOT_RECORD: &str = "snapshot.json";
/// The release's signed head, kept with its migrations.
const HEAD_FILE: &str = "release.swb-head";

/// Where a release's migrations wait for its finalize phase.
pub fn release_dir(config: &Config, version: &str) -> PathBuf {
    config.state_dir().join("migrations").join(version)
}

/// The expand migrations that lead from `current` to the release's schema,
/// in order. Refused as a whole when the chain has a gap, before any runs.
pub fn expand_chain(m: &Manifest, current: u32) -> Result<Vec<MigrationSpec>, UpdateError> {
    let Some(wanted) = m.data_schema else {
        return Ok(Vec::new());
    };
    let mut chain = Vec::new();
    let mut at = current;
    while at < wanted {
        let next = m
            .migrations
            .iter()
            .find(|g| g.phase == Phase::Expand && g.from == at && g.to <= wanted);
        let Some(next) = next else {
            let have = m
                .migrations
                .iter()
                .map(|g| format!("{:?} {}->{}", g.phase, g.from, g.to).to_lowercase())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(UpdateError::MigrationPath {
                from: current,
                to: wanted,
                have: if have.is_empty() { "none".into() } else { have },
            });
        };
        chain.push(next.clone());
        at = next.to;
    }
    Ok(chain)
}

/// Keeps a release's migration executables, with the release's signed head
/// ([`switchback_bundle::VerifiedBundle::head`]), until its finalize
/// phase, replacing what an earlier attempt left. Synced: a power cut
/// after the flip must not lose the finalize migrations.
pub fn store(dir: &Path, head: &[u8], executables: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files: Vec<(PathBuf, &[u8])> = executables
        .iter()
        .map(|(name, bytes)| (dir.join(name), bytes.as_slice()))
        .collect();
    files.push((dir.join(HEAD_FILE), head));
    for (path, bytes) in files {
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(0o755)))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Makes everything written under `dir`'s file system durable.
fn syncfs(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::unistd::syncfs(&d).with_context(|| format!("syncing the file system of {}", dir.display()))
}

/// What a migration is told about the install.
pub struct MigrationEnv {
    /// The release the migrations belong to.
    pub release: String,
    pub data_dir: PathBuf,
    pub new_slot: String,
}

/// Written into the snapshot once it is complete: which directories it
/// holds, and the schema the migrations lead to.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    /// Relative directory, and whether it existed before.
    entries: Vec<(String, bool)>,
    phase: Phase,
    to: u32,
    /// The release whose migrations these are.
    release: String,
}

/// Copies of the data directories a chain of migrations declares.
///
/// Write order, and what a cut leaves ([`recover_snapshot`] acts on it):
/// 1. copy the directories into `.switchback-snapshot/`, `syncfs`; cut here:
///    no record, the live data untouched: the partial copy is removed;
/// 2. write `snapshot.json` (temporary file, fsync, rename, fsync); from
///    here on a cut restores the data from the snapshot;
/// 3. the migrations run, `syncfs`; the state records the new schema;
/// 4. `snapshot.json` removed, then the copy: a cut between 3 and 4 finds
///    the schema recorded, and removes the snapshot.
struct Snapshot {
    root: PathBuf,
    record: SnapshotRecord,
}

impl Snapshot {
    fn take(
        data_dir: &Path,
        dirs: &[String],
        phase: Phase,
        to: u32,
        release: &str,
    ) -> Result<Snapshot> {
        let root = data_dir.join(SNAPSHOT_DIR);
        // Not `exists()`: a dangling link planted there counts too.
        if root.symlink_metadata().is_ok() {
            bail!(
                "{} is left from an interrupted migration and was not recovered",
                root.display()
            );
        }
        let taken = Snapshot::copy(data_dir, &root, dirs, (phase, to, release));
        if taken.is_err() {
            // Nothing has changed yet: leave no partial copy filling the disk.
            let _ = std::fs::remove_dir_all(&root);
        }
        taken
    }

    fn copy(
        data_dir: &Path,
        root: &Path,
        dirs: &[String],
        (phase, to, release): (Phase, u32, &str),
    ) -> Result<Snapshot> {
        let failed = |dir: &Path, reason: String| UpdateError::Snapshot {
            dir: dir.to_path_buf(),
            reason,
        };
        // One new directory, made here: never one reached through a link.
        std::fs::create_dir(root).map_err(|e| failed(root, e.to_string()))?;
        let mut entries = Vec::new();
        for rel in dirs {
            let src = data_dir.join(rel);
            let existed = src.exists();
            if existed {
                let dst = root.join(rel);
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| failed(&src, e.to_string()))?;
                }
                // cp picks reflinks where the file system has them.
                let out = Command::new("cp")
                    .arg("-a")
                    .arg("--reflink=auto")
                    .arg(&src)
                    .arg(&dst)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| failed(&src, format!("running cp: {e}")))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let last = err.lines().last().unwrap_or("").to_string();
                    return Err(failed(&src, format!("cp {}: {last}", out.status)).into());
                }
            }
            entries.push((rel.clone(), existed));
        }
        syncfs(root)?;
        let record = SnapshotRecord {
            entries,
            phase,
            to,
            release: release.to_string(),
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(root).map_err(|e| failed(root, e.to_string()))?;
        serde_json::to_writer(&mut tmp, &record)?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| failed(root, e.to_string()))?;
        tmp.persist(root.join(SNAPSHOT_RECORD))
            .map_err(|e| failed(root, e.error.to_string()))?;
        sync_dir(root)?;
        Ok(Snapshot {
            root: root.to_path_buf(),
            record,
        })
    }

    /// Puts every directory back as it was. Safe to run again after a cut
    /// anywhere in it: an entry whose copy is gone was renamed back already.
    fn restore(self, data_dir: &Path) -> Result<()> {
        let remove = |live: &Path| -> Result<()> {
            if live.is_dir() && !live.is_symlink() {
                std::fs::remove_dir_all(live)
            } else if live.symlink_metadata().is_ok() {
                std::fs::remove_file(live)
            } else {
                Ok(())
            }
            .with_context(|| format!("removing {} to restore it", live.display()))
        };
        for (rel, existed) in &self.record.entries {
            let live = inside(data_dir, rel)?;
            let copy = inside(&self.root, rel)?;
            if !existed {
                remove(&live)?;
            } else if copy.symlink_metadata().is_ok() {
                remove(&live)?;
                std::fs::rename(&copy, &live)
                    .with_context(|| format!("restoring {} from its snapshot", live.display()))?;
            }
        }
        syncfs(data_dir)?;
        self.discard()
    }

    fn discard(self) -> Result<()> {
        let record = self.root.join(SNAPSHOT_RECORD);
        if record.exists() {
            std::fs::remove_file(&record)
                .with_context(|| format!("removing {}", record.display()))?;
            sync_dir(&self.root)?;
        }
        std::fs::remove_dir_all(&self.root)
            .with_context(|| format!("removing {}", self.root.display()))
    }
}

/// The manifest of `release`, from the signed head kept with its
/// migrations ([`store`]), verified against the keyring again.
fn kept_manifest(config: &Config, release: &str) -> Result<Manifest> {
    let head_path = release_dir(config, release).join(HEAD_FILE);
    let head =
        std::fs::read(&head_path).with_context(|| format!("reading {}", head_path.display()))?;
    let keyring = Keyring::load_dir(&config.keyring)?;
    let manifest = Envelope::read(head.as_slice())?
        .verify(&keyring)
        .with_context(|| format!("checking {}", head_path.display()))?
        .manifest;
    if manifest.version != release {
        bail!(
            "{} is the head of {}",
            head_path.display(),
            manifest.version
        );
    }
    Ok(manifest)
}

/// The directories the signed release `release` declares for its
/// migrations of `phase`; `None` when no such signed release is kept here
/// (the record is then not to be trusted). An error only when it cannot be
/// told now (the keyring cannot be read).
pub fn declared_dirs(config: &Config, release: &str, phase: Phase) -> Result<Option<Vec<String>>> {
    // The name comes from a file anyone with the data directory can write:
    // it becomes a path part only as a version.
    if semver::Version::parse(release).is_err() {
        return Ok(None);
    }
    Keyring::load_dir(&config.keyring)?;
    let Ok(manifest) = kept_manifest(config, release) else {
        return Ok(None);
    };
    Ok(Some(
        manifest
            .migrations
            .iter()
            .filter(|g| g.phase == phase)
            .flat_map(|g| g.snapshot.iter().cloned())
            .collect(),
    ))
}

/// `data_dir/rel` when `rel` is plain (relative, no `..`) and no directory
/// on the way to it is a symbolic link: a link planted there would make a
/// restore remove or replace files outside the data directory.
fn inside(data_dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        bail!("{rel:?} is not a plain relative path");
    }
    let mut at = data_dir.to_path_buf();
    let parts: Vec<_> = p.components().collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        match at.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is not a directory", at.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", at.display())),
        }
    }
    Ok(data_dir.join(p))
}

/// Finishes what an interrupted migration left in `data_dir` (see
/// [`Snapshot`]), before anything else touches the data: a complete
/// snapshot is restored unless its migrations were recorded as done (the
/// expand's schema is `schema`, or its release is `finalized`); a recorded
/// one, and a partial copy, are removed. Says what it did.
///
/// The record is not trusted: anyone who can write the data directory can
/// write it, and it runs as root at every boot. It is acted on only when
/// every entry is a plain relative path that the signed release
/// (`declared`, normally [`declared_dirs`]) declares for that phase;
/// otherwise nothing is restored or removed, and the snapshot is moved
/// aside to `.switchback-snapshot.refused` for a person to look at.
pub fn recover_snapshot(
    data_dir: &Path,
    schema: u32,
    finalized: Option<&str>,
    declared: impl Fn(&str, Phase) -> Result<Option<Vec<String>>>,
) -> Result<Option<String>> {
    let root = data_dir.join(SNAPSHOT_DIR);
    match root.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("checking {}", root.display())),
        Ok(m) if !m.is_dir() => {
            return refuse(&root, "it is not a directory".into());
        }
        Ok(_) => {}
    }
    let record_path = root.join(SNAPSHOT_RECORD);
    let record: Option<SnapshotRecord> = match std::fs::read(&record_path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => return refuse(&root, format!("{} is damaged ({e})", record_path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", record_path.display())),
    };
    if let Some(r) = &record {
        let allowed = declared(&r.release, r.phase)?;
        let trusted = (|| {
            let Some(allowed) = allowed else {
                bail!("no signed release {:?} is kept on this device", r.release);
            };
            for (rel, _) in &r.entries {
                inside(data_dir, rel)?;
                inside(&root, rel)?;
                if !allowed.contains(rel) {
                    bail!(
                        "{rel:?} is not a directory the signed release {} declares",
                        r.release
                    );
                }
            }
            Ok(())
        })();
        if let Err(e) = trusted {
            return refuse(&root, format!("{}: {e:#}", record_path.display()));
        }
    }
    let snapshot = |record| Snapshot {
        root: root.clone(),
        record,
    };
    Ok(Some(match record {
        None => {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing {}", root.display()))?;
            format!(
                "removed {}, a snapshot cut short before any migration ran",
                root.display()
            )
        }
        Some(r)
            if match r.phase {
                Phase::Expand => schema >= r.to,
                Phase::Finalize => finalized == Some(r.release.as_str()),
            } =>
        {
            snapshot(r).discard()?;
            format!(
                "removed the snapshot of a completed migration in {}",
                data_dir.display()
            )
        }
        Some(r) => {
            snapshot(r).restore(data_dir)?;
            format!(
                "restored the data in {} from the snapshot of an interrupted migration",
                data_dir.display()
            )
        }
    }))
}

/// Moves a snapshot that is not to be trusted out of the way, touching
/// nothing it names, and says why.
fn refuse(root: &Path, why: String) -> Result<Option<String>> {
    let aside = root.with_extension("refused");
    if aside.symlink_metadata().is_ok() {
        // An older one: ours to remove (a link is removed, not followed).
        let _ = std::fs::remove_dir_all(&aside).or_else(|_| std::fs::remove_file(&aside));
    }
    std::fs::rename(root, &aside)
        .with_context(|| format!("moving {} aside ({why})", root.display()))?;
    if let Some(parent) = root.parent() {
        sync_dir(parent)?;
    }
    let said = format!(
        "REFUSED the snapshot of an interrupted migration: {why}; nothing was restored or removed, and it is kept as {}",
        aside.display()
    );
    log::warn!("{said}");
    Ok(Some(said))
}

/// A directory a migration declared, made if missing, and refused when it
/// is reached through a symbolic link (the snapshot would copy the link,
/// not what it points to) or holds the updater's own state or snapshot.
fn declared_dir(config: &Config, data_dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let d = data_dir.join(rel);
    std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    let canon = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let (real, data) = (canon(&d)?, canon(data_dir)?);
    if real != data.join(rel) {
        return Err(format!(
            "declared directory {} is reached through a symbolic link ({}): refused",
            d.display(),
            real.display()
        ));
    }
    for own in [config.state_dir(), data_dir.join(SNAPSHOT_DIR)] {
        let own = std::fs::canonicalize(&own).unwrap_or(own);
        if own.starts_with(&real) || real.starts_with(&own) {
            return Err(format!(
                "declared directory {} holds the updater's own {}: refused",
                d.display(),
                own.display()
            ));
        }
    }
    Ok(d)
}

fn run_one(
    config: &Config,
    dir: &Path,
    g: &MigrationSpec,
    env: &MigrationEnv,
) -> Result<(), String> {
    let phase = match g.phase {
        Phase::Expand => "expand",
        Phase::Finalize => "finalize",
    };
    let vars = [
        ("SWITCHBACK_DATA_DIR", env.data_dir.display().to_string()),
        ("SWITCHBACK_FROM", g.from.to_string()),
        ("SWITCHBACK_TO", g.to.to_string()),
        ("SWITCHBACK_PHASE", phase.to_string()),
        ("SWITCHBACK_NEW_SLOT", env.new_slot.clone()),
        // Its scratch space: the rest of the file system is read-only.
        ("TMPDIR", "/dev/shm".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    // It may change the directories it declared, nothing else.
    for rel in &g.snapshot {
        declared_dir(config, &env.data_dir, rel)?;
    }
    let confinement = Confinement::migration(&env.data_dir, &g.snapshot)
        .map_err(|e| format!("cannot prepare its confinement: {e}"))?;
    log::info!(
        "{phase} migration {}->{} ({}) started, confined",
        g.from,
        g.to,
        g.image
    );
    let argv = [dir.join(&g.image).display().to_string()];
    let r = run_command(
        &g.image,
        &argv,
        &vars,
        Duration::from_secs(config.migration_timeout_s),
        None,
        Some(&confinement),
    );
    if r.passed {
        log::info!("{phase} migration {}->{} ({}) done", g.from, g.to, g.image);
        Ok(())
    } else {
        Err(r.detail)
    }
}

/// The one way migrations run, expand and finalize alike: snapshot the
/// directories they declare, run them in order, restore on the first
/// failure; on success sync, `record` (the state says they took effect),
/// then drop the snapshot (see [`Snapshot`] for why in that order).
/// `unchanged` says, in a failure's message, what else stayed as it was.
fn run_snapshotted(
    config: &Config,
    dir: &Path,
    migrations: &[&MigrationSpec],
    env: &MigrationEnv,
    unchanged: &str,
    record: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Some(first) = migrations.first() else {
        return record();
    };
    let phase = first.phase;
    let mut dirs: Vec<String> = migrations
        .iter()
        .flat_map(|g| g.snapshot.iter().cloned())
        .collect();
    dirs.sort();
    dirs.dedup();
    let to = migrations.iter().map(|g| g.to).max().unwrap_or(0);
    let snapshot = Snapshot::take(&env.data_dir, &dirs, phase, to, &env.release)?;
    for g in migrations {
        if let Err(detail) = run_one(config, dir, g, env) {
            let aftermath = match snapshot.restore(&env.data_dir) {
                Ok(()) => format!("the data is restored from its snapshot and {unchanged}"),
                Err(e) => format!("RESTORING THE DATA FAILED ({e:#}); {unchanged}"),
            };
            return Err(UpdateError::MigrationFailed {
                phase: match phase {
                    Phase::Expand => "expand",
                    Phase::Finalize => "finalize",
                },
                image: g.image.clone(),
                from: g.from,
                to: g.to,
                detail,
                aftermath,
            }
            .into());
        }
    }
    syncfs(&env.data_dir)?;
    record()?;
    snapshot.discard()
}

/// Runs the expand chain; on any failure restores the data and fails.
/// `record` saves the new schema once the data has it.
pub fn expand(
    config: &Config,
    dir: &Path,
    chain: &[MigrationSpec],
    env: &MigrationEnv,
    record: impl FnOnce(u32) -> Result<()>,
) -> Result<()> {
    let Some(to) = chain.last().map(|g| g.to) else {
        return Ok(());
    };
    let chain: Vec<&MigrationSpec> = chain.iter().collect();
    run_snapshotted(config, dir, &chain, env, "nothing was flipped", || {
        record(to)
    })
}

/// Runs the finalize migrations kept for `version`, if any, after checking
/// the kept executables against the release's signed manifest again. Their
/// declared directories are snapshotted as for expand: a failure, or a cut,
/// restores them, so that `record` (called once they are done and synced)
/// marks the one time they took effect. The release stays committed
/// whatever they do. Returns how many ran.
pub fn finalize(
    config: &Config,
    version: &str,
    env: &MigrationEnv,
    record: impl FnOnce() -> Result<()>,
) -> Result<usize> {
    let dir = release_dir(config, version);
    let head_path = dir.join(HEAD_FILE);
    if !head_path.exists() {
        record()?;
        return Ok(0);
    }
    let failed =
        |g: &MigrationSpec, detail: String, aftermath: &str| UpdateError::MigrationFailed {
            phase: "finalize",
            image: g.image.clone(),
            from: g.from,
            to: g.to,
            detail,
            aftermath: aftermath.into(),
        };
    let manifest = kept_manifest(config, version)?;
    let finals: Vec<&MigrationSpec> = manifest
        .migrations
        .iter()
        .filter(|g| g.phase == Phase::Finalize)
        .collect();
    for g in &finals {
        let path = dir.join(&g.image);
        let image = manifest.image(&g.image)?;
        let bytes = std::fs::read(&path)
            .map_err(|e| failed(g, format!("reading {}: {e}", path.display()), "not run"))?;
        if bytes.len() as u64 != image.size
            || switchback_bundle::delta::base_digest(&bytes, image.chunk_size, 1) != image.digest()
        {
            let why = format!("{} differs from the signed release", path.display());
            return Err(failed(g, why, "not run; the release stays committed").into());
        }
    }
    run_snapshotted(
        config,
        &dir,
        &finals,
        env,
        "the release stays committed",
        record,
    )?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(finals.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.ends_with(SNAPSHOT_DIR) {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_restore_cut_half_way_is_finished_by_the_next_one_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        for d in ["a", "b"] {
            std::fs::create_dir_all(data.join(d)).unwrap();
            std::fs::write(data.join(d).join("f"), d).unwrap();
        }
        let before = tree(data);
        let dirs = ["a".to_string(), "b".to_string(), "new".to_string()];
        let snap = Snapshot::take(data, &dirs, Phase::Expand, 2, "2.0.0").unwrap();
        // The migrations change all three, then fail.
        for d in ["a", "b", "new"] {
            std::fs::create_dir_all(data.join(d)).unwrap();
            std::fs::write(data.join(d).join("f"), "changed").unwrap();
        }
        // A restore cut after its first rename: "a" is back, "b" not yet.
        std::fs::remove_dir_all(data.join("a")).unwrap();
        std::fs::rename(snap.root.join("a"), data.join("a")).unwrap();
        drop(snap);
        for _ in 0..2 {
            let declared = |_: &str, _: Phase| Ok(Some(dirs.to_vec()));
            let done = recover_snapshot(data, 1, None, declared).unwrap();
            assert!(done.is_none_or(|d| d.contains("restored")));
        }
        assert_eq!(tree(data), before);
        assert!(!data.join(SNAPSHOT_DIR).exists());
    }
}
