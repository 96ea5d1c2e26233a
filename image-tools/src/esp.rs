//! The EFI system partition of a factory disk: a FAT file system with the
//! boot stage as the firmware's default loader, `\EFI\BOOT\BOOTX64.EFI`.
//! That is the removable-media path (UEFI 2.10 §3.5.1.1): firmware boots it
//! from a disk with no boot entries of its own, so a freshly flashed disk
//! needs no `efibootmgr` step in the factory.

use anyhow::{bail, Context, Result};
use bootctl::provision::Region;
use std::fs::File;
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where the firmware looks for the loader, as a path inside the ESP.
pub const DEFAULT_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";

/// Formats `region` of `disk` as FAT and puts `loader` (when given) at
/// [`DEFAULT_LOADER`]. The file system is built in memory and written in
/// one piece: an ESP is tens of MiB, and a half-formatted one is never on
/// the disk for the firmware to trip over.
pub fn write(
    disk: &File,
    disk_path: &Path,
    region: Region,
    sector_size: u64,
    loader: Option<&Path>,
) -> Result<()> {
    let size = usize::try_from(region.size).context("the ESP does not fit in memory")?;
    let mut volume = Cursor::new(vec![0u8; size]);
    let bytes_per_sector = u16::try_from(sector_size)
        .ok()
        .filter(|s| *s == 512 || *s == 4096)
        .with_context(|| format!("{sector_size}-byte sectors: a FAT ESP takes 512 or 4096"))?;
    fatfs::format_volume(
        &mut volume,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_sector(bytes_per_sector)
            .volume_label(*b"ESP        "),
    )
    .with_context(|| format!("formatting the {} MiB ESP as FAT", region.size >> 20))?;
    if let Some(loader) = loader {
        let mut src = File::open(loader)
            .with_context(|| format!("opening the boot loader {}", loader.display()))?;
        let len = src.metadata()?.len();
        let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new())
            .context("opening the fresh ESP")?;
        {
            let root = fs.root_dir();
            root.create_dir("EFI")?;
            root.create_dir("EFI/BOOT")?;
            let mut dest = root.create_file(DEFAULT_LOADER)?;
            if let Err(e) = std::io::copy(&mut src, &mut dest).and_then(|_| dest.flush()) {
                bail!(
                    "{} ({len} bytes) does not fit on the {} MiB ESP: {e}; give a larger --esp-size",
                    loader.display(),
                    region.size >> 20
                );
            }
        }
        fs.unmount().context("closing the ESP's file system")?;
    }
    disk.write_all_at(volume.get_ref(), region.offset)
        .with_context(|| format!("writing the ESP of {}", disk_path.display()))?;
    Ok(())
}

/// Reads the file at `path` inside the FAT file system of `region`:
/// what the firmware would load, for tests and `image-tools` checks.
pub fn read_file(disk: &File, region: Region, path: &str) -> Result<Vec<u8>> {
    let mut volume = vec![0u8; usize::try_from(region.size)?];
    disk.read_exact_at(&mut volume, region.offset)
        .context("reading the ESP")?;
    let fs = fatfs::FileSystem::new(Cursor::new(volume), fatfs::FsOptions::new())
        .context("the ESP holds no FAT file system")?;
    let mut file = fs
        .root_dir()
        .open_file(path)
        .with_context(|| format!("the ESP has no {path}"))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut out)?;
    Ok(out)
}
