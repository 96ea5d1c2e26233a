//! Data migrations, ahead of time (DESIGN §6).
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
//! `SWITCHBACK_PHASE`, `SWITCHBACK_DISK`, `SWITCHBACK_NEW_SLOT`,
//! `SWITCHBACK_NEW_SLOT_OFFSET` (bytes into the disk).

use crate::config::Config;
use crate::error::UpdateError;
use crate::runner::run_command;
use anyhow::{bail, Context, Result};
use image_tools::bundle::{Manifest, MigrationSpec, Phase};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The schema of a device that never recorded one: the first.
pub const INITIAL_SCHEMA: u32 = 1;
const SNAPSHOT_DIR: &str = ".switchback-snapshot";
const SPECS_FILE: &str = "migrations.json";

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

/// Keeps a release's migration executables (and their specs) until its
/// finalize phase, replacing what an earlier attempt left.
pub fn store(dir: &Path, m: &Manifest, executables: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in executables {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(
        dir.join(SPECS_FILE),
        serde_json::to_vec_pretty(&m.migrations)?,
    )?;
    Ok(())
}

/// What a migration is told about the install.
pub struct MigrationEnv {
    pub data_dir: PathBuf,
    pub disk: PathBuf,
    pub new_slot: String,
    pub new_slot_offset: u64,
}

/// Copies of the data directories a chain of migrations declares.
struct Snapshot {
    root: PathBuf,
    /// Relative directory, and whether it existed before.
    entries: Vec<(String, bool)>,
}

impl Snapshot {
    fn take(data_dir: &Path, dirs: &[String]) -> Result<Snapshot> {
        let root = data_dir.join(SNAPSHOT_DIR);
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing a stale {}", root.display()))?;
        }
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut entries = Vec::new();
        for rel in dirs {
            let src = data_dir.join(rel);
            let existed = src.exists();
            if existed {
                let dst = root.join(rel);
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // cp picks reflinks where the file system has them.
                let status = Command::new("cp")
                    .arg("-a")
                    .arg("--reflink=auto")
                    .arg(&src)
                    .arg(&dst)
                    .status()
                    .context("running cp for the data snapshot")?;
                if !status.success() {
                    bail!("snapshot of {} failed ({status})", src.display());
                }
            }
            entries.push((rel.clone(), existed));
        }
        Ok(Snapshot { root, entries })
    }

    fn restore(self, data_dir: &Path) -> Result<()> {
        for (rel, existed) in &self.entries {
            let live = data_dir.join(rel);
            if live.is_dir() {
                std::fs::remove_dir_all(&live)?;
            } else if live.exists() {
                std::fs::remove_file(&live)?;
            }
            if *existed {
                std::fs::rename(self.root.join(rel), &live)
                    .with_context(|| format!("restoring {} from its snapshot", live.display()))?;
            }
        }
        self.discard()
    }

    fn discard(self) -> Result<()> {
        std::fs::remove_dir_all(&self.root)
            .with_context(|| format!("removing {}", self.root.display()))
    }
}

fn run_one(
    config: &Config,
    dir: &Path,
    g: &MigrationSpec,
    env: &MigrationEnv,
    deadline: Instant,
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
        ("SWITCHBACK_DISK", env.disk.display().to_string()),
        ("SWITCHBACK_NEW_SLOT", env.new_slot.clone()),
        (
            "SWITCHBACK_NEW_SLOT_OFFSET",
            env.new_slot_offset.to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let argv = [dir.join(&g.image).display().to_string()];
    let r = run_command(
        &g.image,
        &argv,
        &vars,
        Duration::from_secs(config.migration_timeout_s),
        deadline,
    );
    if r.passed {
        log::info!("{phase} migration {}->{} ({}) done", g.from, g.to, g.image);
        Ok(())
    } else {
        Err(r.detail)
    }
}

/// Runs the expand chain; on any failure restores the data and fails.
pub fn expand(
    config: &Config,
    dir: &Path,
    chain: &[MigrationSpec],
    env: &MigrationEnv,
) -> Result<()> {
    if chain.is_empty() {
        return Ok(());
    }
    let mut dirs: Vec<String> = chain
        .iter()
        .flat_map(|g| g.snapshot.iter().cloned())
        .collect();
    dirs.sort();
    dirs.dedup();
    std::fs::create_dir_all(&env.data_dir)
        .with_context(|| format!("creating {}", env.data_dir.display()))?;
    let snapshot = Snapshot::take(&env.data_dir, &dirs)?;
    let deadline = Instant::now()
        + Duration::from_secs(
            config
                .migration_timeout_s
                .saturating_mul(chain.len() as u64),
        );
    for g in chain {
        if let Err(detail) = run_one(config, dir, g, env, deadline) {
            let aftermath = match snapshot.restore(&env.data_dir) {
                Ok(()) => {
                    "the data is restored from its snapshot and nothing was flipped".to_string()
                }
                Err(e) => format!("RESTORING THE DATA FAILED ({e:#}); nothing was flipped"),
            };
            return Err(UpdateError::MigrationFailed {
                phase: "expand",
                image: g.image.clone(),
                from: g.from,
                to: g.to,
                detail,
                aftermath,
            }
            .into());
        }
    }
    snapshot.discard()
}

/// Runs the finalize migrations kept for `version`, if any; the release
/// stays committed whatever they do. Returns how many ran.
pub fn finalize(config: &Config, version: &str, env: &MigrationEnv) -> Result<usize> {
    let dir = release_dir(config, version);
    let specs_path = dir.join(SPECS_FILE);
    if !specs_path.exists() {
        return Ok(0);
    }
    let specs: Vec<MigrationSpec> = serde_json::from_slice(&std::fs::read(&specs_path)?)
        .with_context(|| format!("reading {}", specs_path.display()))?;
    let finals: Vec<&MigrationSpec> = specs
        .iter()
        .filter(|g| g.phase == Phase::Finalize)
        .collect();
    let deadline = Instant::now()
        + Duration::from_secs(
            config
                .migration_timeout_s
                .saturating_mul(finals.len() as u64),
        );
    for g in &finals {
        run_one(config, &dir, g, env, deadline).map_err(|detail| UpdateError::MigrationFailed {
            phase: "finalize",
            image: g.image.clone(),
            from: g.from,
            to: g.to,
            detail,
            aftermath: "the release stays committed".into(),
        })?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(finals.len())
}
