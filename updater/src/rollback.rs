//! A field technician's rollback: the other slot boots next, provided it
//! holds a release that has proven itself, and, unless the technician says
//! so in as many words, one at or above the security floor.

use crate::config::Config;
use crate::evidence;
use crate::UpdateError;
use anyhow::{Context, Result};
use bootctl::{Disk, Slot};
use std::path::Path;
use switchback_bundle::Keyring;

/// Makes the slot other than `booted` boot next; returns it. A release
/// below the security floor (the state's, or what the disk's signed
/// records prove) is refused unless `below_security_floor`; then the event
/// is recorded as `rollback-below-security-floor`.
pub fn rollback(
    config: &Config,
    disk_path: &Path,
    sector_size: Option<u64>,
    booted: Slot,
    below_security_floor: bool,
) -> Result<Slot> {
    let mut session = crate::machine::begin(config, disk_path)?;
    let state = &mut session.state;
    let target = booted.other();
    let disk_state = Disk::open(disk_path, sector_size, false)?.read()?;
    let keyring = Keyring::load_dir(&config.keyring)?;
    let (releases, floor) = evidence::signed_view(disk_path, &disk_state, &keyring, &state.state);
    let target_security = releases[target.index()]
        .as_ref()
        .map(|m| m.security_version)
        .or_else(|| state.state.slots.get(&target).map(|r| r.security_version));
    let (to, from) = (
        evidence::version_of(&state.state, target, &releases),
        evidence::version_of(&state.state, booted, &releases),
    );
    // A record at the slot's end that does not verify (tampered, or signed
    // by a key no longer trusted) hides what the release is: it counts as
    // below the floor. No record at all (a factory image written raw) and
    // no state: nothing says it is below.
    let unverifiable = {
        let dev = std::fs::File::open(disk_path)
            .with_context(|| format!("opening {}", disk_path.display()))?;
        let area = evidence::SlotArea::of(&disk_state, target);
        evidence::read(&dev, &area, &keyring).is_err()
    };
    let below = floor > 0
        && match target_security {
            Some(sv) => sv < floor,
            None => unverifiable,
        };
    if below && !below_security_floor {
        return Err(UpdateError::BelowSecurityFloor {
            slot: target.name(),
            version: to.unwrap_or_else(|| "an unknown release".into()),
            security_version: target_security.map_or("unknown".into(), |v| v.to_string()),
            floor,
        }
        .into());
    }
    let (target, _) = Disk::open(disk_path, sector_size, true)?.rollback(Some(booted))?;
    crate::crash_point!("rollback-flipped");
    let below_floor = below.then(|| {
        format!(
            "requested by a technician, below the security floor {floor} (security version {})",
            target_security.map_or("unknown".into(), |v| v.to_string())
        )
    });
    state.state.technician_rollback(
        target,
        to.as_deref(),
        from.as_deref(),
        below_floor.as_deref(),
    );
    crate::recover::save(state)?;
    Ok(target)
}
