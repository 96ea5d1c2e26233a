//! The factory disk image: GPT with the EFI system partition holding the
//! boot stage ([`crate::esp`]), `slot_a` holding the first release,
//! `slot_b` empty and unbootable, and an ext4 `data` partition.

use crate::size::parse_size;
use anyhow::{bail, Context, Result};
use bootctl::host::SectorSize;
use bootctl::provision::{self, Layout, Provisioned};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, clap::Args)]
pub struct MkdiskOptions {
    /// The disk image to write (replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Size of the EFI system partition; 0 leaves it out (the boot stage
    /// then comes from elsewhere, e.g. the board's flash).
    #[arg(long, value_parser = parse_size, default_value = "32M")]
    pub esp_size: u64,
    /// The boot stage as an EFI program (`image-tools uki`), installed as
    /// the firmware's default loader \EFI\BOOT\BOOTX64.EFI.
    #[arg(long)]
    pub boot_efi: Option<PathBuf>,
    #[arg(long, value_parser = parse_size)]
    pub slot_size: u64,
    #[arg(long, value_parser = parse_size)]
    pub data_size: u64,
    /// The first release for slot_a: a signed bundle (.swb, checked
    /// against --public; its signed record is kept at the slot's end, so
    /// the device knows what it runs from its first boot on), or a raw
    /// root file system image.
    #[arg(long)]
    pub slot_a: Option<PathBuf>,
    /// The vendor key a bundle given as --slot-a must be signed with.
    #[arg(long, requires = "slot_a")]
    pub public: Option<PathBuf>,
    /// Logical sector size of the disk the image is for.
    #[arg(long, value_enum, default_value = "512")]
    pub sector_size: SectorSize,
}

/// One line on where everything landed.
pub fn summary(opts: &MkdiskOptions, disk: &Provisioned) -> String {
    let esp = match (disk.esp, &opts.boot_efi) {
        (Some(esp), Some(_)) => format!(
            "ESP {} MiB at {} with the boot stage, ",
            esp.size >> 20,
            esp.offset
        ),
        (Some(esp), None) => format!(
            "ESP {} MiB at {} (empty: no --boot-efi, the disk will not boot on its own), ",
            esp.size >> 20,
            esp.offset
        ),
        (None, _) => String::new(),
    };
    format!(
        "{}: {esp}slot_a {} MiB at {}, slot_b {} MiB at {}, data {} MiB at {}",
        opts.out.display(),
        disk.slots[0].size >> 20,
        disk.slots[0].offset,
        disk.slots[1].size >> 20,
        disk.slots[1].offset,
        disk.data.size >> 20,
        disk.data.offset
    )
}

/// Finds a program the way a shell would, plus the sbin directories that a
/// non-root PATH often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn mkdisk(opts: &MkdiskOptions) -> Result<Provisioned> {
    // Check everything that can be checked before the output file exists.
    let mkfs = find_program("mkfs.ext4")
        .context("mkfs.ext4 not found: install e2fsprogs to format the data partition")?;
    let image = match &opts.slot_a {
        Some(path) => Some(first_release(path, opts)?),
        None => None,
    };
    if opts.boot_efi.is_some() && opts.esp_size == 0 {
        bail!("--boot-efi needs an ESP to go on: give --esp-size above 0");
    }
    let esp_size = opts.esp_size.div_ceil(provision::ALIGN) * provision::ALIGN;
    let fat = match esp_size {
        0 => None,
        size => Some(crate::esp::build(
            size,
            opts.sector_size.bytes(),
            opts.boot_efi.as_deref(),
        )?),
    };
    let layout = Layout {
        esp_size: opts.esp_size,
        slot_size: opts.slot_size,
        data_size: opts.data_size,
        sector_size: opts.sector_size.bytes(),
    };
    let disk = provision::create(&opts.out, layout)?;
    // A disk image cut short by a failure below would still be flashable:
    // it goes.
    fill(opts, &disk, image, fat.as_ref(), &mkfs).inspect_err(|_| {
        let _ = std::fs::remove_file(&opts.out);
    })?;
    Ok(disk)
}

/// Writes slot_a, the ESP and the data file system into the new disk.
fn fill(
    opts: &MkdiskOptions,
    disk: &Provisioned,
    image: Option<First>,
    fat: Option<&Vec<u8>>,
    mkfs: &Path,
) -> Result<()> {
    if let Some(first) = image {
        let out = File::options().write(true).open(&opts.out)?;
        let slot = disk.slots[0];
        let context = || format!("writing slot_a of {}", opts.out.display());
        match first {
            First::Image(mut src) => {
                copy_at(&mut src, &out, slot.offset).with_context(context)?;
            }
            First::Bundle {
                path,
                keyring,
                head,
            } => {
                // Checked whole before the disk existed; the same signed
                // head (so the same sizes), and every chunk checked again
                // as it is written.
                let bundle = crate::ops::open(&path)?.verify(&keyring)?;
                if bundle.head != head {
                    bail!("{} changed while the factory disk was made", path.display());
                }
                let read = crate::bundle::ReadOptions::checked(crate::bundle::default_threads());
                bundle.read_chunks(read, |image, chunk| -> Result<()> {
                    if !chunk.zero {
                        debug_assert_eq!(image.target, crate::bundle::ROOTFS);
                        out.write_all_at(&chunk.data, slot.offset + chunk.offset)
                            .with_context(context)?;
                    }
                    Ok(())
                })?;
                crate::bundle::trailer::write(&out, slot.offset, slot.size, &head)
                    .with_context(context)?;
            }
        }
        out.sync_all()?;
    }
    if let (Some(esp), Some(fat)) = (disk.esp, fat) {
        let out = File::options().write(true).open(&opts.out)?;
        crate::esp::write(&out, &opts.out, esp, fat)?;
        out.sync_all()?;
    }
    format_ext4(mkfs, &opts.out, disk.data.offset, disk.data.size)
}

/// What goes into slot_a, checked before the disk image is made.
enum First {
    Image(File),
    /// A bundle whose signature verified, with its signed head as read.
    Bundle {
        path: PathBuf,
        keyring: crate::bundle::Keyring,
        head: Vec<u8>,
    },
}

fn first_release(path: &Path, opts: &MkdiskOptions) -> Result<First> {
    let mut file =
        File::open(path).with_context(|| format!("opening slot image {}", path.display()))?;
    let mut magic = [0u8; 8];
    let is_bundle = match file.read_exact(&mut magic) {
        Ok(()) => &magic == crate::bundle::MAGIC,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !is_bundle {
        if magic.starts_with(b"07070") {
            bail!(
                "{} is a .swu wrapper: give the .swb bundle inside it",
                path.display()
            );
        }
        if opts.public.is_some() {
            bail!(
                "--public is for a bundle, and {} is not one (a raw image is written as it is)",
                path.display()
            );
        }
        let len = file.metadata()?.len();
        if len > opts.slot_size {
            bail!(
                "slot image {} is {len} bytes, larger than the slot size {}",
                path.display(),
                opts.slot_size
            );
        }
        file.rewind()?;
        return Ok(First::Image(file));
    }
    let key = opts.public.as_deref().with_context(|| {
        format!(
            "{} is a bundle: name the vendor key it must be signed with (--public KEY.pem)",
            path.display()
        )
    })?;
    let keyring = crate::bundle::Keyring::from_key(key)?;
    let bundle = crate::ops::open(path)?.verify(&keyring)?;
    let m = &bundle.manifest;
    // What a factory release can be: one whole root file system. Updates
    // bring migrations and deltas; the data partition here is new.
    let refuse = |why: &str| -> Result<First> {
        bail!(
            "{} ({} {}) cannot be a factory release: {why}",
            path.display(),
            m.compatible,
            m.version
        )
    };
    if !m.migrations.is_empty() {
        return refuse("it carries data migrations, which only an update runs");
    }
    if let Some(other) = m.images.iter().find(|i| i.target != crate::bundle::ROOTFS) {
        return refuse(&format!(
            "it holds image {:?} besides {}",
            other.target,
            crate::bundle::ROOTFS
        ));
    }
    let image = m.image(crate::bundle::ROOTFS)?;
    if image.base.is_some() {
        return refuse("it is a delta, and the factory disk has no base release");
    }
    let needed = image.size + crate::bundle::trailer::reserved(bundle.head.len() as u64);
    if needed > opts.slot_size {
        bail!(
            "{} needs {needed} bytes of slot (its {} byte image and its signed record), more than the slot size {}",
            path.display(),
            image.size,
            opts.slot_size
        );
    }
    let head = bundle.head.clone();
    // Every chunk, before the disk image exists.
    let read = crate::bundle::ReadOptions::checked(crate::bundle::default_threads());
    bundle.read_chunks(read, |_, _| -> Result<()> { Ok(()) })?;
    Ok(First::Bundle {
        path: path.to_path_buf(),
        keyring,
        head,
    })
}

/// Copies all of `src` into `out` starting at byte `offset`.
fn copy_at(src: &mut impl Read, out: &File, offset: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(at - offset);
        }
        out.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
}

fn format_ext4(mkfs: &Path, disk: &Path, offset: u64, size: u64) -> Result<()> {
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-L", "data", "-E"])
        .arg(format!("offset={offset}"))
        .arg(disk)
        .arg(format!("{}k", size / 1024))
        .output()
        .with_context(|| format!("running {}", mkfs.display()))?;
    if !output.status.success() {
        let mut err = std::io::stderr();
        err.write_all(&output.stderr).ok();
        bail!(
            "{} failed on the data partition of {} ({})",
            mkfs.display(),
            disk.display(),
            output.status
        );
    }
    Ok(())
}
