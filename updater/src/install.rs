//! The install pipeline (docs/architecture.md, "Write order"), in the order that keeps the device
//! safe at every step:
//!
//! 1. verify the bundle's signature, then `compatible`, the security floor,
//!    the version and the image's fit, all before touching the disk;
//! 2. mark the inactive slot unbootable and persist that;
//! 3. stream read → decompress → hash → compare → write, with reading,
//!    the CPU work (on every core) and writing overlapped, within the
//!    memory budget ([`crate::memory`]) whatever the core count;
//! 4. flush, drop the slot from the page cache, read it back and compare
//!    every chunk with the manifest, hashing on every core;
//! 5. run the expand data migrations (snapshot, run, restore on failure);
//! 6. flip: the new slot boots next, on trial;
//! 7. record the install in the state file.
//!
//! A failure anywhere leaves the new slot unbootable, the running slot and
//! the data partition as they were, and the reason in the state file.

use crate::config::Config;
use crate::error::UpdateError;
use crate::events::{Event, Observer};
use crate::evidence::{self, SlotArea};
use crate::memory::{self, MappedBase};
use crate::migrate;
use crate::recover::save;
use crate::slot_writer::{self, SlotError, SlotWriter};
use crate::state::{now, SlotRecord, StateFile};
use anyhow::{Context, Result};
use bootctl::{BootAttrs, Disk, Slot};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use switchback_bundle::delta::Base;
use switchback_bundle::keys::short_ids;
use switchback_bundle::manifest::BaseSpec;
use switchback_bundle::{
    BundleError, Envelope, ImageSpec, Keyring, Manifest, MigrationSpec, ReadOptions,
};

use switchback_bundle::ROOTFS;
/// Bytes whose writeback may be outstanding at once: page cache, not the
/// process's memory, but a memory cgroup counts it too.
const WRITEBACK_WINDOW: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub disk: PathBuf,
    pub sector_size: Option<u64>,
    pub booted: Slot,
    pub allow_downgrade: bool,
    pub threads: usize,
    /// The most memory the install may use, whole process, in bytes.
    pub memory: u64,
    /// The fleet action this install carries out (recorded with it).
    pub fleet_action: Option<String>,
    /// Flip when written (the default); otherwise the slot is left ready
    /// and unbootable until [`crate::activate::activate`].
    pub activate: bool,
    /// The version a fleet server assigned (its chunk's): a bundle signed
    /// as another release is refused before anything is written, so that
    /// a swapped link cannot install a release the server never chose.
    pub expect_version: Option<String>,
    /// The download's SHA-256 as a fleet server announced it: checked over
    /// the whole artifact once the slot is written, before the flip (or
    /// the slot made ready), so that a swapped file is never booted.
    pub artifact_digest: Option<crate::source::ArtifactDigest>,
}

#[derive(Debug, Clone)]
pub struct Installed {
    pub slot: Slot,
    pub manifest: Manifest,
    /// The slot boots next on trial; otherwise it waits for `activate`.
    pub activated: bool,
}

/// Refusals that need only the manifest and what the device knows: the
/// floor (the state's, or the disk's evidence when higher) and the running
/// release (the state's record, else the running slot's trailer).
pub(crate) fn check_policy(
    config: &Config,
    floor: u64,
    running: Option<&str>,
    m: &Manifest,
    allow_downgrade: bool,
) -> Result<()> {
    if m.compatible != config.compatible {
        return Err(UpdateError::Incompatible {
            bundle: m.compatible.clone(),
            device: config.compatible.clone(),
        }
        .into());
    }
    let verity = m.image(ROOTFS).ok().and_then(|i| i.verity.as_ref());
    if config.require_verity && verity.is_none() {
        return Err(UpdateError::NoVerity {
            version: format!("{} {}", m.compatible, m.version),
        }
        .into());
    }
    if m.security_version < floor {
        return Err(UpdateError::SecurityVersion {
            bundle: m.security_version,
            floor,
        }
        .into());
    }
    if let Some(running) = running {
        let parse = |v: &str| semver::Version::parse(v).ok();
        if let (Some(new), Some(old)) = (parse(&m.version), parse(running)) {
            if new < old && !allow_downgrade {
                return Err(UpdateError::Downgrade {
                    bundle: m.version.clone(),
                    running: running.to_string(),
                }
                .into());
            }
        }
    } else {
        log::info!("the running release's version is not known; no downgrade check");
    }
    let is_migration = |t: &str| m.migrations.iter().any(|g| g.image == t);
    if let Some(other) = m
        .images
        .iter()
        .find(|i| i.target != ROOTFS && !is_migration(&i.target))
    {
        return Err(UpdateError::UnsupportedTarget(other.target.clone()).into());
    }
    Ok(())
}

/// Refuses to overwrite the only committed release: the target slot may
/// be written only while the running slot is committed and bootable, or
/// when the target holds nothing committed.
fn check_target(attrs: [BootAttrs; 2], booted: Slot) -> Result<()> {
    let (running, target) = (attrs[booted.index()], attrs[booted.other().index()]);
    if !target.successful || (running.successful && running.is_bootable()) {
        return Ok(());
    }
    let why = if running.priority == 0 {
        format!("the running {booted} is marked unbootable")
    } else {
        format!(
            "the running {booted} is still on trial: commit it (updater health) or roll back first"
        )
    };
    Err(UpdateError::LastGoodSlot {
        target: booted.other().name(),
        why,
    }
    .into())
}

/// Installs the bundle read from `source` into the slot that is not booted.
///
/// What the state file says at each step, and what a crash there leaves
/// (settled by [`crate::recover`] at the next command):
/// 1. `installing` (the target's record dropped), then the target is
///    marked unbootable and its trailer erased: a crash leaves it so;
/// 2. written, read back, expand migrations run, trailer written;
/// 3. `flipping`, with the target's record: a crash before or during the
///    flip is settled from the target's flags;
/// 4. the flip; 5. `installed`. If only step 5 cannot be saved, the error
///    says that the flip took effect.
pub fn install(
    config: &Config,
    source: Box<dyn Read + Send>,
    opts: &InstallOptions,
    observer: &mut dyn Observer,
) -> Result<Installed> {
    let mut session = crate::machine::begin(config, &opts.disk)?;
    let state = &mut session.state;
    let keyring = Keyring::load_dir(&config.keyring)?;
    let bundle = Envelope::read(source)?.verify(&keyring)?;
    let manifest = bundle.manifest.clone();
    if let Some(assigned) = opts
        .expect_version
        .as_ref()
        .filter(|v| **v != manifest.version)
    {
        return Err(UpdateError::NotAssigned {
            assigned: assigned.clone(),
            signed: manifest.version.clone(),
        }
        .into());
    }
    let target = opts.booted.other();
    let disk_state = Disk::open(&opts.disk, opts.sector_size, false)?.read()?;
    let (releases, floor) = evidence::signed_view(&opts.disk, &disk_state, &keyring, &state.state);
    let from_version = evidence::running_version(&state.state, opts.booted, &releases);
    check_policy(
        config,
        floor,
        from_version.as_deref(),
        &manifest,
        opts.allow_downgrade,
    )?;
    let image = manifest.image(ROOTFS)?.clone();
    // A lost or replayed state file must not make expand migrations run
    // twice: the running release's signed schema says where the data is
    // at least.
    let signed_schema = releases[opts.booted.index()]
        .as_ref()
        .and_then(|m| m.data_schema);
    let schema = state
        .state
        .data_schema
        .max(signed_schema)
        .unwrap_or(migrate::INITIAL_SCHEMA);
    let chain = migrate::expand_chain(&manifest, schema)?;
    // Measured before a delta's base is read: its pages are page cache.
    // Kept beside the buffers: two more copies of the signed head, and the
    // migration executables until they are stored.
    let kept = 2 * bundle.head.len() as u64
        + manifest
            .images
            .iter()
            .filter(|i| i.target != ROOTFS)
            .map(|i| i.size)
            .sum::<u64>();
    let plan = memory::plan(
        opts.memory,
        switchback_bundle::budget::chunk_memory(&manifest.images),
        kept,
        opts.threads,
    )?;
    // A delta's base is checked before anything is written.
    let base = match &image.base {
        Some(b) => Some(map_base(opts, &manifest, b, observer)?),
        None => None,
    };

    check_target(disk_state.attrs(), opts.booted)?;
    let area = SlotArea::of(&disk_state, target);
    let room = area
        .size
        .saturating_sub(switchback_bundle::trailer::reserved(
            bundle.head.len() as u64
        ));
    if image.size > room {
        return Err(UpdateError::TooLarge {
            image: image.target.clone(),
            size: image.size,
            slot: target.name(),
            slot_size: room,
        }
        .into());
    }
    observer.event(&Event::Verified {
        compatible: manifest.compatible.clone(),
        version: manifest.version.clone(),
        signer: short_ids(&bundle.signers),
        slot: target.name().into(),
        bytes: image.size,
        memory: opts.memory,
    });

    state.state.begin_install(
        target,
        &manifest.version,
        from_version.clone(),
        opts.fleet_action.clone(),
    );
    save(state)?;
    crate::crash_point!("install-begun");

    let written = write_slot(
        config,
        bundle,
        &image,
        &area,
        base.as_ref(),
        plan,
        opts,
        &chain,
        state,
        observer,
    );
    if let Err(e) = written {
        let e = blame_the_base(e, base.as_ref(), &manifest, opts);
        state.state.install_failed(&format!("{e:#}"));
        // The install's own error matters more than a failure to record it.
        let _ = save(state);
        return Err(e);
    }
    let record = SlotRecord::of(&manifest, &image, now());
    if !opts.activate {
        state.state.ready(target, record);
        save(state)?;
        observer.event(&Event::Ready {
            slot: target.name().into(),
            version: manifest.version.clone(),
        });
        return Ok(Installed {
            slot: target,
            manifest,
            activated: false,
        });
    }
    state.state.flipping(target, record);
    if let Err(e) = save(state) {
        state.state.install_failed(&format!("{e:#}"));
        let _ = save(state);
        return Err(e);
    }
    flip(
        config,
        &opts.disk,
        opts.sector_size,
        target,
        state,
        observer,
    )?;
    Ok(Installed {
        slot: target,
        manifest,
        activated: true,
    })
}

/// Install steps 6 and 7 (`activate` takes them too): with the state saved
/// as `flipping`, `target` boots next on trial, and the install is
/// recorded. A flip that reports an error is settled from what the disk's
/// flags say.
pub(crate) fn flip(
    config: &Config,
    disk: &Path,
    sector_size: Option<u64>,
    target: Slot,
    state: &mut StateFile,
    observer: &mut dyn Observer,
) -> Result<()> {
    crate::crash_point!("install-flipping");
    let version = state
        .state
        .last_install
        .as_ref()
        .map_or_else(String::new, |r| r.version.clone());
    let flipped = Disk::open(disk, sector_size, true)
        .and_then(|mut d| d.set_active(target, config.boot_tries));
    if let Err(e) = flipped {
        // A flip cut short may or may not have taken effect: the disk says.
        let attrs = Disk::open(disk, sector_size, false)?.read()?.attrs();
        state.state.settle_from_flags(attrs);
        let _ = save(state);
        if attrs[target.index()].priority > 0 {
            return Err(UpdateError::PartlyDone {
                done: format!("{version} is installed in {target} and boots next on trial"),
                failed: format!("the flip reported an error: {e:#}"),
            }
            .into());
        }
        return Err(e.into());
    }
    crate::crash_point!("install-flipped");
    observer.event(&Event::Flipped {
        slot: target.name().into(),
        tries: config.boot_tries,
    });
    state.state.installed();
    save(state).map_err(|e| UpdateError::PartlyDone {
        done: format!("{version} is installed in {target} and boots next on trial"),
        failed: format!(
            "recording that failed ({e:#}); the next updater command completes the record"
        ),
    })?;
    Ok(())
}

/// A delta chunk that fails its check after the base was checked: either
/// the bundle is damaged or the running slot changed under the install.
/// Checking the base again tells which, so the message blames the right one.
fn blame_the_base(
    e: anyhow::Error,
    base: Option<&MappedBase>,
    manifest: &Manifest,
    opts: &InstallOptions,
) -> anyhow::Error {
    let chunk_failed = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BundleError>(),
            Some(BundleError::ChunkHash { .. } | BundleError::ChunkDecode { .. })
        )
    });
    match base {
        Some(map)
            if chunk_failed
                && switchback_bundle::delta::check_base(manifest, map.bytes(), opts.threads)
                    .is_err() =>
        {
            UpdateError::BaseChanged {
                slot: opts.booted.name(),
            }
            .into()
        }
        _ => e,
    }
}

/// Steps 1 (after the record) and 2 of [`install`]: everything up to the flip.
#[allow(clippy::too_many_arguments)]
fn write_slot(
    config: &Config,
    bundle: switchback_bundle::VerifiedBundle<Box<dyn Read + Send>>,
    image: &ImageSpec,
    area: &SlotArea,
    base: Option<&MappedBase>,
    plan: memory::Plan,
    opts: &InstallOptions,
    chain: &[MigrationSpec],
    state: &mut StateFile,
    observer: &mut dyn Observer,
) -> Result<()> {
    let manifest = bundle.manifest.clone();
    let head = bundle.head.clone();
    let slot = area.slot.name();
    let write_err = |offset: u64| {
        move |source| UpdateError::Write {
            slot,
            disk: opts.disk.clone(),
            offset,
            source,
        }
    };
    Disk::open(&opts.disk, opts.sector_size, true)?.mark_bad(area.slot)?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&opts.disk)
        .map_err(write_err(area.offset))?;
    // A half-written slot must not claim a release.
    evidence::erase(&dev, area).map_err(write_err(area.offset + area.size))?;
    crate::crash_point!("install-target-unbootable");
    // A chunk that reads back different is the medium's fault, named by
    // its index; any other failure is a write error at its offset.
    let slot_err = |e: SlotError| -> anyhow::Error {
        match e {
            SlotError::Io { offset, source } => {
                write_err(offset.unwrap_or(area.offset))(source).into()
            }
            SlotError::Read { offset, source } => UpdateError::ReadBackIo {
                slot,
                offset: offset - area.offset,
                source,
            }
            .into(),
            SlotError::Differs { tag, offset } => UpdateError::ReadBack {
                slot,
                index: tag,
                offset: offset - area.offset,
            }
            .into(),
        }
    };
    let mut done = 0u64;
    let mut writer = SlotWriter::new(&dev, &opts.disk, WRITEBACK_WINDOW).map_err(slot_err)?;
    let mut executables: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let read = ReadOptions {
        threads: plan.threads,
        base: base.map(|b| b as &dyn Base),
        memory: Some(plan.buffers),
        // The signed frame digests prove a full image's bytes.
        plaintext_sha256: false,
        fast_digest: true,
    };
    // Each worker writes the chunk it decoded, so that its buffer is free
    // again at once; this thread waits for the writeback and reads back,
    // in order.
    let write_in_worker = |spec: &ImageSpec, chunk: &mut switchback_bundle::Chunk| -> Result<()> {
        if spec.target != ROOTFS {
            return Ok(());
        }
        let digest = chunk
            .fast_digest
            .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(&chunk.data));
        chunk.fast_digest = Some(digest);
        slot_writer::write_range(&dev, &chunk.data, area.offset + chunk.offset)
            .map_err(slot_err)?;
        chunk.data = Default::default();
        Ok(())
    };
    bundle.read_chunks_with(read, write_in_worker, |spec, chunk| -> Result<()> {
        if spec.target != ROOTFS {
            // A migration executable: small, kept in memory until stored.
            chunk.append_to(executables.entry(spec.target.clone()).or_default());
            return Ok(());
        }
        let at = area.offset + chunk.offset;
        match (chunk.zero, chunk.fast_digest) {
            (true, _) => writer.zero_at(chunk.len, at, chunk.index),
            (false, Some(digest)) => writer.written(at, chunk.len, chunk.index, digest),
            (false, None) => anyhow::bail!("chunk {} reached the writer unwritten", chunk.index),
        }
        .map_err(slot_err)?;
        done += chunk.len;
        observer.event(&Event::Progress {
            done,
            total: image.size,
        });
        Ok(())
    })?;
    // Flushed, and every chunk read back from the medium.
    let t = std::time::Instant::now();
    writer.finish().map_err(slot_err)?;
    log::debug!(
        "{slot}: the last writes flushed and read back in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    observer.event(&Event::Written {
        slot: slot.into(),
        bytes: image.size,
    });
    observer.event(&Event::ReadBack {
        slot: slot.into(),
        digest: image.digest().to_string(),
    });
    // Every chunk is read: the artifact's own hash is checked over the
    // whole download before a migration touches the data or the slot
    // names its release.
    if let Some(d) = &opts.artifact_digest {
        d.check()?;
    }
    if !manifest.migrations.is_empty() {
        let dir = migrate::release_dir(config, &manifest.version);
        migrate::store(&dir, &head, &executables)?;
        let env = migrate::MigrationEnv {
            release: manifest.version.clone(),
            data_dir: config.data_dir.clone(),
            new_slot: slot.into(),
        };
        // Recorded as soon as the data has it, before the flip.
        migrate::expand(config, &dir, chain, &env, |to| {
            state.state.data_schema = Some(to);
            save(state)
        })?;
    }
    // The slot names its release only once nothing can fail before the
    // flip: a migration that fails, or a power cut while one runs, leaves
    // the unbootable slot naming nothing (`status`, the fleet's
    // attributes). Nothing reads the target's trailer before this point.
    crate::crash_point!("install-migrated");
    evidence::write(&dev, area, &head).map_err(write_err(area.offset + area.size))?;
    Ok(())
}

/// Maps the running slot read-only as the base of a delta, after checking
/// (reading it once, hashing on all cores) that it is the base the delta
/// names. If it changes later, decoded chunks fail their hashes.
fn map_base(
    opts: &InstallOptions,
    manifest: &Manifest,
    base: &BaseSpec,
    observer: &mut dyn Observer,
) -> Result<MappedBase> {
    let running = opts.booted;
    let st = Disk::open(&opts.disk, opts.sector_size, false)?.read()?;
    let entry = st.table.entry(running);
    let ss = st.gpt.sector_size;
    let (offset, size) = (
        entry.first_lba * ss,
        (entry.last_lba + 1 - entry.first_lba) * ss,
    );
    let mismatch = || UpdateError::DeltaBase {
        slot: running.name(),
        want: base.digest.to_string(),
    };
    if base.size > size {
        return Err(mismatch().into());
    }
    let map = MappedBase::map(&opts.disk, offset, base.size)
        .with_context(|| format!("mapping {} as the delta's base", running.name()))?;
    switchback_bundle::delta::check_base(manifest, map.bytes(), opts.threads)
        .map_err(|_| mismatch())?;
    observer.event(&Event::BaseChecked {
        slot: running.name().into(),
        digest: base.digest.to_string(),
    });
    Ok(map)
}
