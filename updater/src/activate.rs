//! "Install now, activate later": the second half of an install made with
//! `--no-activate` (docs/updater.md, `updater activate`). The slot was
//! written, read back and recorded as `ready`, and left unbootable; time
//! has passed since, so what it holds is proven again before it may boot:
//! its signed record against the running release's keyring, the same
//! release as the state's record, the policy of an install (the floor may
//! have risen), and every byte of the image against the signed chunk
//! digests. Then it is flipped as an install flips.

use crate::config::Config;
use crate::events::{Event, Observer};
use crate::evidence::{self, SlotArea};
use crate::memory::MappedBase;
use crate::state::{Outcome, SlotRecord};
use crate::UpdateError;
use anyhow::{Context, Result};
use bootctl::{Disk, Slot};
use std::path::PathBuf;
use switchback_bundle::{Keyring, Manifest, ROOTFS};

#[derive(Debug, Clone)]
pub struct ActivateOptions {
    pub disk: PathBuf,
    pub sector_size: Option<u64>,
    pub booted: Slot,
    pub allow_downgrade: bool,
    pub threads: usize,
    /// The fleet action this activation carries out (its verdict is
    /// reported to it).
    pub fleet_action: Option<String>,
}

/// Makes the ready slot boot next, on trial; returns it and its release.
pub fn activate(
    config: &Config,
    opts: &ActivateOptions,
    observer: &mut dyn Observer,
) -> Result<(Slot, Manifest)> {
    let mut session = crate::machine::begin(config, &opts.disk)?;
    let state = &mut session.state;
    let target = opts.booted.other();
    let ready = state
        .state
        .last_install
        .clone()
        .filter(|r| r.outcome == Outcome::Ready && r.slot == target);
    let Some(ready) = ready else {
        let last = state.state.last_install.as_ref().map_or_else(
            || "no install yet".to_string(),
            |r| {
                format!(
                    "the last install, {} into {}, is {}",
                    r.version, r.slot, r.outcome
                )
            },
        );
        return Err(UpdateError::NothingToActivate { last }.into());
    };
    let changed = |why: String| UpdateError::ReadyChanged {
        slot: target.name(),
        version: ready.version.clone(),
        why,
    };
    let disk_state = Disk::open(&opts.disk, opts.sector_size, false)?.read()?;
    let keyring = Keyring::load_dir(&config.keyring)?;
    let (releases, floor) = evidence::signed_view(&opts.disk, &disk_state, &keyring, &state.state);
    // Nothing but `activate` makes a ready slot bootable.
    if disk_state.attrs()[target.index()].priority > 0 {
        return Err(changed(
            "it is bootable already (its flags were changed by another tool)".into(),
        )
        .into());
    }
    let manifest = releases[target.index()]
        .clone()
        .ok_or_else(|| changed("its signed release record is gone or no longer verifies".into()))?;
    let image = manifest.image(ROOTFS)?.clone();
    if manifest.version != ready.version {
        return Err(changed(format!("its signed record is of {} now", manifest.version)).into());
    }
    let recorded = state.state.slots.get(&target);
    if recorded.map(|r| r.digest.clone()) != Some(image.digest().to_string()) {
        return Err(
            changed("the state file's record of it is gone or names other bytes".into()).into(),
        );
    }
    let area = SlotArea::of(&disk_state, target);
    if image.size
        > area
            .size
            .saturating_sub(switchback_bundle::trailer::reserved(0))
    {
        return Err(changed(format!(
            "its record describes an image of {} bytes, more than the slot holds",
            image.size
        ))
        .into());
    }
    // What the commit records (the floor it raises to, the schema) comes
    // from the slot's signed record, not from the state file.
    let installed_at = recorded.map_or_else(crate::state::now, |r| r.installed_at);
    let record = SlotRecord::of(&manifest, &image, installed_at);
    let from_version = evidence::running_version(&state.state, opts.booted, &releases);
    crate::install::check_policy(
        config,
        floor,
        from_version.as_deref(),
        &manifest,
        opts.allow_downgrade,
    )?;
    // Every byte of the image, hashed on every core, against the signed
    // chunk digests: read from the medium, not from what the page cache
    // kept of the install's writes.
    let dev = std::fs::File::open(&opts.disk)
        .with_context(|| format!("opening {}", opts.disk.display()))?;
    let _ = nix::fcntl::posix_fadvise(
        &dev,
        area.offset as i64,
        image.size as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let map = MappedBase::map(&opts.disk, area.offset, image.size)
        .with_context(|| format!("reading {target} to check it"))?;
    use switchback_bundle::delta::Base;
    let digest = switchback_bundle::delta::base_digest(map.bytes(), image.chunk_size, opts.threads);
    if digest != image.digest() {
        return Err(
            changed("its bytes differ from the signed image (written to since?)".into()).into(),
        );
    }
    drop(map);
    observer.event(&Event::ReadBack {
        slot: target.name().into(),
        digest: digest.to_string(),
    });
    state
        .state
        .activating(target, record, opts.fleet_action.clone());
    crate::recover::save(state)?;
    crate::install::flip(
        config,
        &opts.disk,
        opts.sector_size,
        target,
        state,
        observer,
    )?;
    Ok((target, manifest))
}
