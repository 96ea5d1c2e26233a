//! The EFI system partition of a factory disk: a FAT file system with the
//! boot stage, in one of two forms.
//!
//! - For UEFI firmware (OVMF, EDK2, U-Boot's EBBR distro boot): the boot
//!   stage's EFI program as the default loader, `\EFI\BOOT\BOOTX64.EFI` or
//!   `BOOTAA64.EFI`. That is the removable-media path (UEFI 2.10 §3.5.1.1):
//!   firmware boots it from a disk with no boot entries of its own, so a
//!   freshly flashed disk needs no `efibootmgr` step in the factory.
//! - For U-Boot without UEFI: `/extlinux/extlinux.conf`, which U-Boot's
//!   distro boot reads, naming the boot stage's kernel and initramfs in
//!   `/switchback/`. The file is static: which slot boots is decided by the
//!   boot stage from the GPT flags, never by U-Boot's environment
//!   (docs/boot-flow.md, "U-Boot without UEFI").
//!
//! The file system is made by dosfstools' `mkfs.vfat` and filled by
//! `mtools`, in a file of its own that is then copied into the partition:
//! no loop device, no mount, no root.

use crate::arch::Arch;
use crate::programs::find_program;
use anyhow::{bail, Context, Result};
use bootctl::provision::Region;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What starts the boot stage from the ESP.
#[derive(Debug, Clone, Copy)]
pub enum BootStage<'a> {
    /// Nothing: the disk does not boot on its own.
    None,
    /// The boot stage's EFI program, the default loader for `arch`.
    Efi { program: &'a Path, arch: Arch },
    /// U-Boot's extlinux.conf, starting `kernel` with `initrd` and `cmdline`.
    Extlinux {
        kernel: &'a Path,
        initrd: &'a Path,
        cmdline: &'a str,
    },
}

/// Where U-Boot's distro boot finds the extlinux configuration, and where
/// it names the boot stage's kernel and initramfs.
pub const EXTLINUX_CONF: &str = "/extlinux/extlinux.conf";
pub const EXTLINUX_KERNEL: &str = "/switchback/Image";
pub const EXTLINUX_INITRD: &str = "/switchback/initrd.img";

/// The extlinux.conf that boots the boot stage: one entry, no menu, no
/// timeout. It names no slot: the boot stage reads the GPT flags.
pub fn extlinux_conf(cmdline: &str) -> String {
    format!(
        "# Written by image-tools mkdisk: U-Boot starts the Switchback boot stage,\n\
         # which picks the slot from the GPT flags. Nothing here changes at updates.\n\
         default switchback\n\
         timeout 0\n\
         label switchback\n\
         \x20 kernel {EXTLINUX_KERNEL}\n\
         \x20 initrd {EXTLINUX_INITRD}\n\
         \x20 append {cmdline}\n"
    )
}

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

/// The ESP's file system, `size` bytes of FAT with the boot stage: made
/// before the disk image is touched, so that a boot stage that does not
/// fit leaves no half-made disk behind.
pub fn build(size: u64, sector_size: u64, boot: BootStage) -> Result<Vec<u8>> {
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
    let conf = work.path().join("extlinux.conf");
    let (dirs, files): (&[&str], Vec<(&Path, String)>) = match boot {
        BootStage::None => (&[], Vec::new()),
        BootStage::Efi { program, arch } => (
            &["/EFI", "/EFI/BOOT"],
            vec![(program, format!("/EFI/BOOT/{}", arch.efi_loader()))],
        ),
        BootStage::Extlinux {
            kernel,
            initrd,
            cmdline,
        } => {
            std::fs::write(&conf, extlinux_conf(cmdline))
                .context("writing the extlinux.conf for the ESP")?;
            (
                &["/extlinux", "/switchback"],
                vec![
                    (kernel, EXTLINUX_KERNEL.to_string()),
                    (initrd, EXTLINUX_INITRD.to_string()),
                    (conf.as_path(), EXTLINUX_CONF.to_string()),
                ],
            )
        }
    };
    if !dirs.is_empty() {
        run(
            Command::new(need("mmd", "mtools")?)
                .arg("-i")
                .arg(&fat)
                .args(dirs.iter().map(|d| format!("::{d}"))),
            &format!("making {} on the ESP", dirs.join(" and ")),
        )?;
    }
    for (src, dest) in files {
        let len = std::fs::metadata(src)
            .with_context(|| format!("opening {}", src.display()))?
            .len();
        run(
            Command::new(need("mcopy", "mtools")?)
                .arg("-i")
                .arg(&fat)
                .arg(src)
                .arg(format!("::{dest}")),
            &format!(
                "copying {} ({len} bytes) to {dest} on the {} MiB ESP (a larger --esp-size?)",
                src.display(),
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
