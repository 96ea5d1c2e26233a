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
use crate::state::Outcome;
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
    let recorded = state.state.slots.get(&target).map(|r| r.digest.clone());
    if manifest.version != ready.version || recorded != Some(image.digest().to_string()) {
        return Err(changed(format!("its signed record is of {} now", manifest.version)).into());
    }
    let from_version = evidence::running_version(&state.state, opts.booted, &releases);
    crate::install::check_policy(
        config,
        floor,
        from_version.as_deref(),
        &manifest,
        opts.allow_downgrade,
    )?;
    // Every byte of the image, hashed on every core, against the signed
    // chunk digests.
    let area = SlotArea::of(&disk_state, target);
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
    state.state.activating();
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
