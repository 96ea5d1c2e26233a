//! The EFI system partition of a factory disk: a FAT file system with the
//! boot stage as the firmware's default loader, `\EFI\BOOT\BOOTX64.EFI`.
//! That is the removable-media path (UEFI 2.10 §3.5.1.1): firmware boots it
//! from a disk with no boot entries of its own, so a freshly flashed disk
//! needs no `efibootmgr` step in the factory.
//!
//! The file system is made by dosfstools' `mkfs.vfat` and filled by
//! `mtools`, in a file of its own that is then copied into the partition:
//! no loop device, no mount, no root.

use crate::mkdisk::find_program;
use anyhow::{bail, Context, Result};
use bootctl::provision::Region;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the firmware looks for the loader, in mtools' spelling.
pub const DEFAULT_LOADER: &str = "::/EFI/BOOT/BOOTX64.EFI";

/// The programs needed, found before anything is written.
pub struct Tools {
    mkfs: PathBuf,
    mmd: PathBuf,
    mcopy: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools> {
        let need = |name: &str, package: &str| {
            find_program(name).with_context(|| {
                format!("{name} not found: install {package} to make the EFI system partition")
            })
        };
        Ok(Tools {
            mkfs: need("mkfs.vfat", "dosfstools")?,
            mmd: need("mmd", "mtools")?,
            mcopy: need("mcopy", "mtools")?,
        })
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    // mtools refuses images whose size is not a whole number of its
    // notional tracks; the geometry means nothing to a partition.
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("running {:?} ({what})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Formats `region` of `disk` as FAT and puts `loader` (when given) at
/// [`DEFAULT_LOADER`].
pub fn write(
    tools: &Tools,
    disk: &File,
    disk_path: &Path,
    region: Region,
    sector_size: u64,
    loader: Option<&Path>,
) -> Result<()> {
    let work = tempfile::tempdir().context("creating a work directory for the ESP")?;
    let fat = work.path().join("esp.fat");
    run(
        Command::new(&tools.mkfs)
            .args(["-n", "ESP", "-S"])
            .arg(sector_size.to_string())
            .arg("-C")
            .arg(&fat)
            .arg((region.size / 1024).to_string()),
        "formatting the ESP",
    )?;
    if let Some(loader) = loader {
        run(
            Command::new(&tools.mmd)
                .arg("-i")
                .arg(&fat)
                .args(["::/EFI", "::/EFI/BOOT"]),
            "making \\EFI\\BOOT on the ESP",
        )?;
        let len = std::fs::metadata(loader)
            .with_context(|| format!("reading the boot loader {}", loader.display()))?
            .len();
        run(
            Command::new(&tools.mcopy)
                .arg("-i")
                .arg(&fat)
                .arg(loader)
                .arg(DEFAULT_LOADER),
            &format!(
                "copying {} ({len} bytes) onto the {} MiB ESP (a larger --esp-size?)",
                loader.display(),
                region.size >> 20
            ),
        )?;
    }
    let bytes = std::fs::read(&fat).context("reading the formatted ESP")?;
    if bytes.len() as u64 > region.size {
        bail!("mkfs.vfat made a file system larger than the ESP");
    }
    disk.write_all_at(&bytes, region.offset)
        .with_context(|| format!("writing the ESP of {}", disk_path.display()))?;
    Ok(())
}
