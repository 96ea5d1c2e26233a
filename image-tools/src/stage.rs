//! A boot stage with the keys it trusts: `image-tools stage` adds a
//! `.keyring` section to the UEFI stage's EFI program
//! (`switchback-boot.efi`, built by `.ci/boot-efi`), which the stage reads
//! from its own image at every boot to verify a slot's signed release
//! before it starts the slot's kernel (docs/boot-flow.md, "The UEFI boot
//! stage"). Under Secure Boot the vendor signs the result, so the keyring
//! is covered by the firmware's check like the code that uses it.
//! With `--require-verity` a `.policy` section makes the stage refuse a
//! slot whose release has no dm-verity tree. The sections' format:
//! `switchback_bundle::stage_sections`.
//!
//! For the Linux boot stage (`bootctl` as the init of its own initramfs,
//! for U-Boot without UEFI), `--initrd` appends the same two as the files
//! `/switchback/keyring` and `/switchback/policy`, in a newc archive of
//! their own after the stage's: the kernel unpacks concatenated archives
//! in order, a later file replacing an earlier one.

use crate::arch::{self, Arch};
use crate::bundle::stage_sections::{keyring_section, Policy, KEYRING_SECTION, POLICY_SECTION};
use crate::bundle::Keyring;
use crate::uki;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// What only Switchback's boot stage says (its console lines).
const STAGE_MARK: &[u8] = b"switchback boot stage: ";

#[derive(Debug, Clone, clap::Args)]
pub struct StageOptions {
    /// The machine the stage is built for.
    #[arg(long, value_enum, default_value_t)]
    pub arch: Arch,
    /// The UEFI stage as built (`.ci/boot-efi` prints its path).
    #[arg(long, required_unless_present = "initrd", conflicts_with = "initrd")]
    pub efi: Option<PathBuf>,
    /// Or the Linux boot stage's initramfs (`bootctl` as its `/init`,
    /// newc cpio, plain or zstd).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    #[command(flatten)]
    pub trust: crate::cli::Trust,
    /// Start no slot whose signed release has no dm-verity hash tree for
    /// its root (`image-tools build --verity`): the stage marks it and
    /// boots the other slot.
    #[arg(long)]
    pub require_verity: bool,
    /// Signed for Secure Boot, after the keyring is in.
    #[command(flatten)]
    pub db: crate::secureboot::DbKey,
    /// The EFI program or initramfs to write, for the ESP (replaced).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `image-tools stage`: the stage with the keys `opts.trust` names; what
/// it made, in words.
pub fn build(opts: &StageOptions) -> Result<String> {
    let trust = opts.trust.load()?;
    let keys = trust.raw_keys();
    // Made beside --out and renamed over it when whole: a refused
    // signature leaves what --out held before.
    let work = uki::work_dir_beside(&opts.out)?;
    let tmp = work.path().join("stage.efi");
    // The keyring's threshold goes with its keys: a stage checking one
    // signature would boot what the updater refuses to install.
    let threshold = u32::try_from(trust.threshold()).context("the keyring's threshold")?;
    let policy = Policy {
        require_verity: opts.require_verity,
        threshold: if threshold > 1 { threshold } else { 0 },
    };
    let (efi, initrd) = (opts.efi.as_deref(), opts.initrd.as_deref());
    if let Some(initrd) = initrd {
        if opts.db.db_key.is_some() || opts.db.db_cert.is_some() {
            bail!(
                "an initramfs is not signed for Secure Boot: sign the UKI made of it (image-tools uki, then sbsign), or the FIT image U-Boot verifies"
            );
        }
        initrd_with_keyring(opts.arch, initrd, &keys, policy, &tmp)?;
    } else if let Some(efi) = efi {
        with_keyring(opts.arch, efi, &keys, policy, &tmp)?;
    } else {
        bail!("give the stage: --efi for the UEFI stage or --initrd for the Linux one");
    }
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
    let verity = if opts.require_verity {
        ", starting only releases whose root is under dm-verity"
    } else {
        ""
    };
    let needs = if threshold > 1 {
        format!(", {threshold} of them required")
    } else {
        String::new()
    };
    Ok(format!(
        "{}: the {} boot stage, trusting {} key(s){needs}{verity}{signed}",
        opts.out.display(),
        if initrd.is_some() { "Linux" } else { "UEFI" },
        keys.len()
    ))
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
    let section = |name| -> Result<Option<&[u8]>> {
        let Some(section) = pe.section_by_name(name) else {
            return Ok(None);
        };
        let bytes = section.data()?;
        let len = usize::try_from(section.size())?.min(bytes.len());
        Ok(Some(&bytes[..len]))
    };
    trusted(section(KEYRING_SECTION)?, section(POLICY_SECTION)?, efi)
}

/// The keys the Linux boot stage's initramfs at `initrd` trusts (the last
/// of its files `/switchback/keyring` and `/switchback/policy`, as the
/// kernel unpacks them): `None` when it has no keyring.
pub fn keyring_of_initrd(initrd: &Path) -> Result<Option<Keyring>> {
    use bootctl::boot_stage::{KEYRING_FILE, POLICY_FILE};
    let data = std::fs::read(initrd).with_context(|| format!("reading {}", initrd.display()))?;
    let archive = arch::initramfs_archive(&data, initrd)?;
    let files = arch::initramfs_files(&archive);
    let last = |path: &str| {
        let name = path.trim_start_matches('/').as_bytes();
        files
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    };
    trusted(last(KEYRING_FILE), last(POLICY_FILE), initrd)
}

/// A stage's keyring from its keyring and policy, as the stage itself
/// reads them (`bootctl::verify::Trust`).
fn trusted(keyring: Option<&[u8]>, policy: Option<&[u8]>, stage: &Path) -> Result<Option<Keyring>> {
    if keyring.is_none() {
        return Ok(None);
    }
    let trust = bootctl::verify::Trust::from_sections(keyring, policy)
        .map_err(|e| anyhow::anyhow!("{}: {e} (image-tools stage makes one)", stage.display()))?;
    Ok(trust.keyring)
}

/// Writes `out`: the stage at `efi` with `keys` as its keyring and, when
/// it demands anything, `policy`.
pub fn with_keyring(
    arch: Arch,
    efi: &Path,
    keys: &[[u8; 32]],
    policy: Policy,
    out: &Path,
) -> Result<()> {
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
    let keyring = keyring_section(keys);
    let policy = policy.section();
    let mut sections = vec![(KEYRING_SECTION, keyring.as_slice())];
    if policy != Policy::default().section() {
        sections.push((POLICY_SECTION, policy.as_slice()));
    }
    let stage = crate::pe::add_sections(&data, efi, &sections)
        .with_context(|| format!("building {}", out.display()))?;
    uki::write_whole(out, &stage)
}

/// Writes `out`: the Linux boot stage's initramfs at `initrd` followed by
/// an archive of `keys` and `policy` where the stage reads them
/// (`bootctl::boot_stage::KEYRING_FILE`, `POLICY_FILE`). The policy is
/// always written, so that a stage keyed again never keeps an earlier
/// one's `--require-verity`.
pub fn initrd_with_keyring(
    arch: Arch,
    initrd: &Path,
    keys: &[[u8; 32]],
    policy: Policy,
    out: &Path,
) -> Result<()> {
    use bootctl::boot_stage::{KEYRING_FILE, POLICY_FILE};
    ensure!(
        !keys.is_empty(),
        "a boot stage needs at least one trusted key"
    );
    let data = std::fs::read(initrd).with_context(|| format!("reading {}", initrd.display()))?;
    arch::check_initramfs(&data, initrd, arch)?;
    let archive = arch::initramfs_archive(&data, initrd)?;
    if !archive.windows(STAGE_MARK.len()).any(|w| w == STAGE_MARK) {
        bail!(
            "{} holds no Switchback boot stage (bootctl as its /init)",
            initrd.display()
        );
    }
    let mut stage = data;
    // Archives start 4-byte aligned; the kernel skips the zeros between.
    stage.resize(stage.len().div_ceil(4) * 4, 0);
    let dir = KEYRING_FILE
        .rsplit_once('/')
        .map(|(d, _)| d.trim_start_matches('/'))
        .unwrap_or_default();
    let entry = |name: &str, mode: u32| {
        cpio::newc::Builder::new(name.trim_start_matches('/'))
            .mode(mode)
            .nlink(1)
    };
    let mut w = entry(dir, 0o040755).write(&mut stage, 0).finish()?;
    for (path, bytes) in [
        (KEYRING_FILE, keyring_section(keys)),
        (POLICY_FILE, policy.section()),
    ] {
        let len = u32::try_from(bytes.len()).context("a keyring of that size")?;
        let mut file = entry(path, 0o100644).write(w, len);
        std::io::Write::write_all(&mut file, &bytes)?;
        w = file.finish()?;
    }
    cpio::newc::trailer(w)?;
    uki::write_whole(out, &stage)
}
