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

fn need(name: &str, package: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| {
        format!("{name} not found: install {package} to make the EFI system partition")
    })
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

/// The ESP's file system, `size` bytes of FAT with `loader` (when given)
/// at [`DEFAULT_LOADER`]: made before the disk image is touched, so that a
/// loader that does not fit leaves no half-made disk behind.
pub fn build(size: u64, sector_size: u64, loader: Option<&Path>) -> Result<Vec<u8>> {
    let mkfs = need("mkfs.vfat", "dosfstools")?;
    let work = tempfile::tempdir().context("creating a work directory for the ESP")?;
    let fat = work.path().join("esp.fat");
    run(
        Command::new(mkfs)
            .args(["-n", "ESP", "-S"])
            .arg(sector_size.to_string())
            .arg("-C")
            .arg(&fat)
            .arg((size / 1024).to_string()),
        "formatting the ESP",
    )?;
    if let Some(loader) = loader {
        let len = std::fs::metadata(loader)
            .with_context(|| format!("opening the boot loader {}", loader.display()))?
            .len();
        run(
            Command::new(need("mmd", "mtools")?)
                .arg("-i")
                .arg(&fat)
                .args(["::/EFI", "::/EFI/BOOT"]),
            "making \\EFI\\BOOT on the ESP",
        )?;
        run(
            Command::new(need("mcopy", "mtools")?)
                .arg("-i")
                .arg(&fat)
                .arg(loader)
                .arg(DEFAULT_LOADER),
            &format!(
                "copying {} ({len} bytes) onto the {} MiB ESP (a larger --esp-size?)",
                loader.display(),
                size >> 20
            ),
        )?;
    }
    let bytes = std::fs::read(&fat).context("reading the formatted ESP")?;
    if bytes.len() as u64 > size {
        bail!("mkfs.vfat made a file system larger than the ESP");
    }
    Ok(bytes)
}

/// Writes the ESP's file system (from [`build`]) into `region` of `disk`.
pub fn write(disk: &File, disk_path: &Path, region: Region, fat: &[u8]) -> Result<()> {
    disk.write_all_at(fat, region.offset)
        .with_context(|| format!("writing the ESP of {}", disk_path.display()))
}
