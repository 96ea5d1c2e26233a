//! The UEFI boot stage with the keys it trusts: `image-tools stage` adds a
//! `.keyring` section to the stage's EFI program (`switchback-boot.efi`,
//! built by `.ci/boot-efi`), which the stage reads from its own image at
//! every boot to verify a slot's signed release before it starts the
//! slot's kernel (docs/boot-flow.md, "The UEFI boot stage"). Under Secure
//! Boot the vendor signs the result, so the keyring is covered by the
//! firmware's check like the code that uses it.
//!
//! The section: the magic `SWKEYS1\0`, then each trusted ed25519 public key
//! as its 32 raw bytes.

use crate::arch::{self, Arch};
use crate::bundle::Keyring;
use crate::uki;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub const KEYRING_SECTION: &str = ".keyring";
pub const KEYRING_MAGIC: &[u8; 8] = b"SWKEYS1\0";
/// What only Switchback's boot stage says (its console lines).
const STAGE_MARK: &[u8] = b"switchback boot stage: ";

#[derive(Debug, Clone, clap::Args)]
pub struct StageOptions {
    /// The machine the stage is built for.
    #[arg(long, value_enum, default_value_t)]
    pub arch: Arch,
    /// The stage as built (`.ci/boot-efi` prints its path).
    #[arg(long)]
    pub efi: PathBuf,
    #[command(flatten)]
    pub trust: crate::cli::Trust,
    /// Signed for Secure Boot, after the keyring is in.
    #[command(flatten)]
    pub db: crate::secureboot::DbKey,
    /// The EFI program to write, for the ESP (replaced).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `image-tools stage`: the stage with the keys `opts.trust` names; what
/// it made, in words.
pub fn build(opts: &StageOptions) -> Result<String> {
    let keys = opts.trust.load()?.raw_keys();
    // Made beside --out and renamed over it when whole: a refused
    // signature leaves what --out held before.
    let work = uki::work_dir_beside(&opts.out)?;
    let tmp = work.path().join("stage.efi");
    with_keyring(opts.arch, &opts.efi, &keys, &tmp)?;
    let signed = match (&opts.db.db_key, &opts.db.db_cert) {
        (Some(key), Some(cert)) => {
            // The signature covers the keyring: signing before adding it
            // would leave a program Secure Boot refuses.
            crate::secureboot::sign(&tmp, key, cert)?;
            format!(", signed for Secure Boot by {}", cert.display())
        }
        _ => String::new(),
    };
    std::fs::rename(&tmp, &opts.out).with_context(|| format!("writing {}", opts.out.display()))?;
    Ok(format!(
        "{}: the UEFI boot stage, trusting {} key(s){signed}",
        opts.out.display(),
        keys.len()
    ))
}

/// The `.keyring` section's bytes for `keys`.
pub fn keyring_section(keys: &[[u8; 32]]) -> Vec<u8> {
    let mut out = KEYRING_MAGIC.to_vec();
    for k in keys {
        out.extend_from_slice(k);
    }
    out
}

/// The keys the EFI program at `efi` trusts: `None` when it has no
/// keyring (a stage as built, another loader, or a PE file whose sections
/// cannot be read: the stage has none of those, and a program that is not
/// one is for the firmware to judge).
pub fn keyring_of(efi: &Path) -> Result<Option<Keyring>> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(efi).with_context(|| format!("reading {}", efi.display()))?;
    let Ok(pe) = object::read::pe::PeFile64::parse(&*data) else {
        return Ok(None);
    };
    let Some(section) = pe.section_by_name(KEYRING_SECTION) else {
        return Ok(None);
    };
    let bytes = section.data()?;
    let len = usize::try_from(section.size())?.min(bytes.len());
    let keys = bytes[..len]
        .strip_prefix(KEYRING_MAGIC.as_slice())
        .filter(|k| !k.is_empty() && k.len() % 32 == 0)
        .with_context(|| {
            format!(
                "{}'s {KEYRING_SECTION} section is not a keyring (image-tools stage makes one)",
                efi.display()
            )
        })?;
    let keys: Vec<[u8; 32]> = keys
        .chunks_exact(32)
        .filter_map(|k| k.try_into().ok())
        .collect();
    Keyring::from_raw_keys(&keys)
        .map(Some)
        .with_context(|| format!("the keyring of {}", efi.display()))
}

/// Writes `out`: the stage at `efi` with `keys` as its keyring.
pub fn with_keyring(arch: Arch, efi: &Path, keys: &[[u8; 32]], out: &Path) -> Result<()> {
    ensure!(
        !keys.is_empty(),
        "a boot stage needs at least one trusted key"
    );
    let data = std::fs::read(efi).with_context(|| format!("reading {}", efi.display()))?;
    arch::check_pe_machine(&data, &efi.display().to_string(), arch)?;
    if !data.windows(STAGE_MARK.len()).any(|w| w == STAGE_MARK) {
        bail!(
            "{} is not Switchback's UEFI boot stage (build it with .ci/boot-efi)",
            efi.display()
        );
    }
    if uki::section(efi, KEYRING_SECTION).is_ok() {
        bail!(
            "{} has a keyring already: start from the stage as built",
            efi.display()
        );
    }
    let section = keyring_section(keys);
    let stage = crate::pe::add_sections(&data, efi, &[(KEYRING_SECTION, &section)])
        .with_context(|| format!("building {}", out.display()))?;
    uki::write_whole(out, &stage)
}
