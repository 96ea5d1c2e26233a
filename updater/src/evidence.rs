//! What each slot holds, read from the disk alone: the signed head that an
//! install leaves at the end of the slot ([`switchback_bundle::trailer`]).
//! The state file says the same faster; this is what remains when the state
//! file is lost, truncated or replaced, so that the security floor (the
//! highest security version of a committed slot) and each slot's release
//! cannot be reset by deleting a file.

use bootctl::{BootAttrs, Slot};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use switchback_bundle::trailer::{self, TRAILER_SECTOR};
use switchback_bundle::{BundleError, Keyring, Manifest};

/// Where a slot is on the disk.
#[derive(Debug, Clone, Copy)]
pub struct SlotArea {
    pub slot: Slot,
    pub offset: u64,
    pub size: u64,
}

impl SlotArea {
    pub fn of(state: &bootctl::State, slot: Slot) -> SlotArea {
        let entry = state.table.entry(slot);
        let ss = state.gpt.sector_size;
        SlotArea {
            slot,
            offset: entry.first_lba * ss,
            size: (entry.last_lba + 1 - entry.first_lba) * ss,
        }
    }

    fn footer_at(&self) -> u64 {
        self.offset + self.size - TRAILER_SECTOR
    }
}

/// Removes the slot's evidence (its footer), durably: done before a slot
/// is rewritten, so a half-written slot never claims a release.
pub fn erase(dev: &File, area: &SlotArea) -> std::io::Result<()> {
    dev.write_all_at(&[0u8; TRAILER_SECTOR as usize], area.footer_at())?;
    dev.sync_data()
}

/// Writes `head` as the slot's evidence ([`trailer::write`]).
pub fn write(dev: &File, area: &SlotArea, head: &[u8]) -> std::io::Result<()> {
    trailer::write(dev, area.offset, area.size, head)
}

/// The release whose signed head is at the end of the slot: `None` when
/// there is none; an error when one is there but does not verify.
pub fn read(
    dev: &File,
    area: &SlotArea,
    keyring: &Keyring,
) -> Result<Option<Manifest>, BundleError> {
    let io = |what: &str| BundleError::io(format!("reading {} of {}'s trailer", what, area.slot));
    if area.size < TRAILER_SECTOR {
        return Ok(None);
    }
    let mut footer = vec![0u8; TRAILER_SECTOR as usize];
    dev.read_exact_at(&mut footer, area.footer_at())
        .map_err(io("the footer"))?;
    let Some((len, crc)) = trailer::parse_footer(&footer, area.size)? else {
        return Ok(None);
    };
    let mut head = vec![0u8; len as usize];
    dev.read_exact_at(&mut head, area.offset + area.size - trailer::reserved(len))
        .map_err(io("the head"))?;
    trailer::verify_head(&head, crc, keyring).map(Some)
}

/// Both slots' releases as the disk shows them, with a warning for each
/// trailer that is there but does not verify (taken as no evidence).
pub fn releases(
    disk: &Path,
    state: &bootctl::State,
    keyring: &Keyring,
) -> ([Option<Manifest>; 2], Vec<String>) {
    let mut warnings = Vec::new();
    let dev = match File::open(disk) {
        Ok(f) => f,
        Err(e) => {
            warnings.push(format!(
                "{}: cannot read slot trailers: {e}",
                disk.display()
            ));
            return ([None, None], warnings);
        }
    };
    let found = Slot::ALL.map(
        |slot| match read(&dev, &SlotArea::of(state, slot), keyring) {
            Ok(m) => m,
            Err(e) => {
                warnings.push(format!("{slot}: its release record does not verify: {e}"));
                None
            }
        },
    );
    (found, warnings)
}

/// The version of the release in `slot`: its signed trailer's (from
/// [`releases`]), else the state's record. The trailer wins: it is signed
/// and written with the slot, while the state file can be lost or replaced
/// by an older copy ([`disagreements`] says when they differ).
pub fn version_of(
    state: &crate::state::State,
    slot: Slot,
    releases: &[Option<Manifest>; 2],
) -> Option<String> {
    releases[slot.index()]
        .as_ref()
        .map(|m| m.version.clone())
        .or_else(|| state.slots.get(&slot).map(|r| r.version.clone()))
}

/// The version of the running release ([`version_of`] the booted slot).
pub fn running_version(
    state: &crate::state::State,
    booted: Slot,
    releases: &[Option<Manifest>; 2],
) -> Option<String> {
    version_of(state, booted, releases)
}

/// Where the state file's record of a slot differs from the slot's signed
/// trailer: a warning each, saying that the trailer is what counts.
pub fn disagreements(state: &crate::state::State, releases: &[Option<Manifest>; 2]) -> Vec<String> {
    Slot::ALL
        .into_iter()
        .filter_map(|slot| {
            let (rec, signed) = (state.slots.get(&slot)?, releases[slot.index()].as_ref()?);
            let signed_digest = signed.image(switchback_bundle::ROOTFS).ok()?.digest().to_string();
            (rec.version != signed.version || rec.digest != signed_digest).then(|| {
                format!(
                    "the state file says {slot} holds {}, its signed record on the disk says {}: the disk's record counts (was the state file replaced by an older copy?)",
                    rec.version, signed.version
                )
            })
        })
        .collect()
}

/// Both slots' signed records and the security floor that counts (the
/// state's, or what the records of committed slots prove, whichever is
/// higher), with every warning about them logged: records that do not
/// verify, and a state file that disagrees with them.
pub fn signed_view(
    disk: &Path,
    disk_state: &bootctl::State,
    keyring: &Keyring,
    state: &crate::state::State,
) -> ([Option<Manifest>; 2], u64) {
    let (releases, warnings) = releases(disk, disk_state, keyring);
    for w in warnings.iter().chain(&disagreements(state, &releases)) {
        log::warn!("{w}");
    }
    let floor = state
        .security_floor
        .max(floor(disk_state.attrs(), &releases));
    (releases, floor)
}

/// The floor the disk proves: the highest security version of a slot that
/// has passed its health check.
pub fn floor(attrs: [BootAttrs; 2], releases: &[Option<Manifest>; 2]) -> u64 {
    Slot::ALL
        .into_iter()
        .filter(|s| attrs[s.index()].successful)
        .filter_map(|s| releases[s.index()].as_ref().map(|m| m.security_version))
        .max()
        .unwrap_or(0)
}
