//! The factory disk image: GPT with the EFI system partition holding the
//! boot stage ([`crate::esp`]), `slot_a` holding the first release,
//! `slot_b` empty and unbootable, and an ext4 `data` partition.

use crate::arch::{self, Arch};
use crate::bundle::size::parse_size;
use crate::bundle::Keyring;
use crate::esp::BootStage;
use crate::programs::find_program;
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
    /// The machine the disk is for: the boot stage's programs must be for
    /// it, and its EFI program is installed under that machine's name.
    #[arg(long, value_enum, default_value_t)]
    pub arch: Arch,
    /// The boot stage as an EFI program (`image-tools uki`), installed as
    /// the firmware's default loader \EFI\BOOT\BOOTX64.EFI (BOOTAA64.EFI
    /// for arm64): for UEFI firmware, U-Boot's included.
    #[arg(long, conflicts_with = "boot_kernel")]
    pub boot_efi: Option<PathBuf>,
    /// For U-Boot without UEFI: the boot stage's kernel (an arm64 Image),
    /// started by an extlinux.conf on the ESP with --boot-initrd.
    #[arg(long, requires = "boot_initrd")]
    pub boot_kernel: Option<PathBuf>,
    /// The boot stage's initramfs, with --boot-kernel.
    #[arg(long, requires = "boot_kernel")]
    pub boot_initrd: Option<PathBuf>,
    /// The boot stage kernel's command line, with --boot-kernel.
    #[arg(long, default_value = "console=ttyAMA0 panic=-1 quiet")]
    pub boot_cmdline: String,
    /// Size of each of slot_a and slot_b: the largest root image a release
    /// will have, plus its signed record at the slot's end: 4 KiB plus the
    /// bundle's head (about 200 bytes a chunk) rounded up to 4 KiB; 1 MiB
    /// spare is plenty (docs/bundle-format.md, "The slot trailer"). Bytes,
    /// or with K, M, G or T (powers of 1024): 512M, 2G.
    #[arg(long, value_parser = parse_size)]
    pub slot_size: u64,
    /// Size of the data partition (ext4, label `data`), same syntax.
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
    let booted = opts.boot_efi.is_some() || opts.boot_kernel.is_some();
    let esp = match disk.esp {
        Some(esp) if booted => format!(
            "ESP {} MiB at {} with the {} boot stage{}, ",
            esp.size >> 20,
            esp.offset,
            opts.arch,
            if opts.boot_kernel.is_some() {
                " (extlinux.conf)"
            } else {
                ""
            }
        ),
        Some(esp) => format!(
            "ESP {} MiB at {} (empty: no --boot-efi, the disk will not boot on its own), ",
            esp.size >> 20,
            esp.offset
        ),
        None => String::new(),
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

pub fn mkdisk(opts: &MkdiskOptions) -> Result<Provisioned> {
    // Check everything that can be checked before the output file exists.
    let mkfs = find_program("mkfs.ext4")
        .context("mkfs.ext4 not found: install e2fsprogs to format the data partition")?;
    check_out(opts)?;
    let layout = Layout {
        esp_size: opts.esp_size,
        slot_size: opts.slot_size,
        data_size: opts.data_size,
        sector_size: opts.sector_size.bytes(),
    };
    if layout.total_size().is_none() {
        bail!(
            "--slot-size {}, --data-size {} and --esp-size {} make a disk larger than {} TiB",
            opts.slot_size,
            opts.data_size,
            opts.esp_size,
            provision::MAX_DISK >> 40
        );
    }
    let image = match &opts.slot_a {
        Some(path) => Some(first_release(path, opts)?),
        None => None,
    };
    let boot = boot_stage(opts)?;
    if !matches!(boot, BootStage::None) && opts.esp_size == 0 {
        bail!("the boot stage needs an ESP to go on: give --esp-size above 0");
    }
    if let Some(first) = &image {
        match &boot {
            BootStage::Efi { program, .. } => {
                check_stage_boots(program, crate::stage::keyring_of(program)?, first)?
            }
            BootStage::Extlinux { initrd, .. } => {
                check_stage_boots(initrd, crate::stage::keyring_of_initrd(initrd)?, first)?
            }
            BootStage::None => {}
        }
    }
    let esp_size = opts.esp_size.div_ceil(provision::ALIGN) * provision::ALIGN;
    let fat = match esp_size {
        0 => None,
        size => Some(crate::esp::build(size, opts.sector_size.bytes(), boot)?),
    };
    // Made under a temporary name beside --out and renamed over it only
    // when whole: a failure (or a cut) never leaves a half-made disk that
    // looks flashable, and never destroys what --out held before.
    let dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = opts.out.file_name().unwrap_or_default().to_string_lossy();
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating the disk image in {}", dir.display()))?
        .into_temp_path();
    let disk = provision::create_for(&partial, layout, opts.arch.root_partition_type())
        .with_context(|| format!("creating {}", opts.out.display()))?;
    fill(&partial, &disk, image, fat.as_ref(), &mkfs)?;
    partial
        .persist(&opts.out)
        .with_context(|| format!("renaming the new disk image to {}", opts.out.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(disk)
}

/// The boot stage for the ESP, each program checked to be for `--arch`: a
/// disk whose boot stage is for another machine would only fail at its
/// first boot, in the factory or the field.
fn boot_stage(opts: &MkdiskOptions) -> Result<BootStage<'_>> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    if let Some(program) = &opts.boot_efi {
        let data = read(program, "boot stage's EFI program")?;
        match arch::pe_machine(&data) {
            Some(m) if Arch::from_pe_machine(m) == Some(opts.arch) => {}
            Some(m) => bail!(
                "--boot-efi {} is an EFI program for {}, and the disk is for {} (--arch)",
                program.display(),
                arch::pe_machine_name(m),
                opts.arch
            ),
            None => bail!("--boot-efi {} is not an EFI program", program.display()),
        }
        return Ok(BootStage::Efi {
            program,
            arch: opts.arch,
        });
    }
    let (Some(kernel), Some(initrd)) = (&opts.boot_kernel, &opts.boot_initrd) else {
        return Ok(BootStage::None);
    };
    match arch::kernel_arch(&read(kernel, "boot stage's kernel")?) {
        Some(a) if a == opts.arch => {}
        Some(a) => bail!(
            "--boot-kernel {} is a kernel for {a}, and the disk is for {} (--arch)",
            kernel.display(),
            opts.arch
        ),
        None => bail!(
            "--boot-kernel {} is not a Linux kernel (no arm64 Image or x86 boot header)",
            kernel.display()
        ),
    }
    arch::check_initramfs(&read(initrd, "boot stage's initramfs")?, initrd, opts.arch)?;
    if opts.boot_cmdline.contains(['\n', '\0']) {
        bail!("--boot-cmdline must be one line without NUL bytes");
    }
    Ok(BootStage::Extlinux {
        kernel,
        initrd,
        cmdline: &opts.boot_cmdline,
    })
}

/// A boot stage with a keyring (`image-tools stage`, `trusted`) starts
/// only a slot whose signed release verifies against it: a factory disk
/// whose slot_a it would refuse boots nothing, and is refused here instead.
fn check_stage_boots(program: &Path, trusted: Option<Keyring>, first: &First) -> Result<()> {
    let Some(trusted) = trusted else {
        return Ok(());
    };
    match first {
        First::Image { name, .. } => bail!(
            "{name} is a raw image, and the boot stage {} starts only signed releases: slot_a would never boot; give the factory release as its signed bundle (with --public)",
            program.display()
        ),
        First::Bundle { path, .. } => {
            crate::ops::open(path)?.verify(&trusted).with_context(|| {
                format!(
                    "the boot stage {} does not trust {}'s signers ({} key(s) in its keyring): slot_a would never boot",
                    program.display(),
                    path.display(),
                    trusted.len()
                )
            })?;
            Ok(())
        }
    }
}

/// `--out` is a disk image file to be made: not a device or a directory,
/// and not one of the inputs (it would be replaced while it is read).
fn check_out(opts: &MkdiskOptions) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(out) = std::fs::metadata(&opts.out) else {
        return Ok(());
    };
    let kind = out.file_type();
    if !kind.is_file() {
        let what = if kind.is_block_device() {
            "a block device"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        bail!(
            "--out {} is {what}: mkdisk makes a disk image file (write it to a device afterwards, e.g. with dd or bmaptool)",
            opts.out.display()
        );
    }
    let inputs = [
        ("--slot-a", opts.slot_a.as_ref()),
        ("--boot-efi", opts.boot_efi.as_ref()),
        ("--boot-kernel", opts.boot_kernel.as_ref()),
        ("--boot-initrd", opts.boot_initrd.as_ref()),
        ("--public", opts.public.as_ref()),
    ];
    for (flag, path) in inputs {
        let Some(path) = path else { continue };
        if let Ok(m) = std::fs::metadata(path) {
            if (m.dev(), m.ino()) == (out.dev(), out.ino()) {
                bail!(
                    "--out {} is the same file as {flag} {}: it would be replaced while it is read; write the disk image elsewhere",
                    opts.out.display(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Writes slot_a, the ESP and the data file system into the new disk.
fn fill(
    path: &Path,
    disk: &Provisioned,
    image: Option<First>,
    fat: Option<&Vec<u8>>,
    mkfs: &Path,
) -> Result<()> {
    if let Some(first) = image {
        let out = File::options().write(true).open(path)?;
        let slot = disk.slots[0];
        let context = || format!("writing slot_a of {}", path.display());
        match first {
            First::Image { mut src, name } => {
                let written =
                    copy_at(&mut src, &out, slot.offset, slot.size).with_context(context)?;
                let mut more = [0u8; 1];
                if src
                    .read(&mut more)
                    .with_context(|| format!("reading {name}"))?
                    > 0
                {
                    bail!(
                        "slot image {name} holds more than the slot size {} bytes ({written} written, and it goes on)",
                        slot.size
                    );
                }
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
        let out = File::options().write(true).open(path)?;
        crate::esp::write(&out, path, esp, fat)?;
        out.sync_all()?;
    }
    format_ext4(mkfs, path, disk.data.offset, disk.data.size)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// What goes into slot_a, checked before the disk image is made.
enum First {
    /// A raw image, read once as a stream (it may be a pipe).
    Image { src: Box<dyn Read>, name: String },
    /// A bundle whose signature verified, with its signed head as read.
    Bundle {
        path: PathBuf,
        keyring: crate::bundle::Keyring,
        head: Vec<u8>,
    },
}

fn first_release(path: &Path, opts: &MkdiskOptions) -> Result<First> {
    use std::os::unix::fs::FileTypeExt;
    let mut file =
        File::open(path).with_context(|| format!("opening slot image {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("reading slot image {}", path.display()))?
        .file_type();
    if kind.is_dir() {
        bail!("slot image {} is a directory", path.display());
    }
    // What the input holds when that can be known before reading it: a
    // file's length, a block device's size. A pipe or a character device
    // is measured as it is read, up to the slot's size.
    let known_len = if kind.is_file() {
        Some(file.metadata()?.len())
    } else if kind.is_block_device() {
        let len = file.seek(std::io::SeekFrom::End(0))?;
        file.rewind()?;
        Some(len)
    } else {
        None
    };
    let mut magic = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut magic)
        .with_context(|| format!("reading {}", path.display()))?;
    let is_bundle = magic.as_slice() == crate::bundle::MAGIC.as_slice();
    if is_bundle && known_len.is_none() {
        bail!(
            "bundle {} must be a regular file: it is checked whole before the disk is made, then read again",
            path.display()
        );
    }
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
        if let Some(len) = known_len.filter(|&len| len > opts.slot_size) {
            bail!(
                "slot image {} is {len} bytes, larger than the slot size {}",
                path.display(),
                opts.slot_size
            );
        }
        // The bytes read to tell what it is, then the rest: no seek back,
        // so a pipe works too.
        let src = std::io::Cursor::new(magic).chain(file);
        return Ok(First::Image {
            src: Box::new(src),
            name: path.display().to_string(),
        });
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

/// Copies `src` into `out` starting at byte `offset`, at most `limit`
/// bytes; returns how many.
fn copy_at(src: &mut impl Read, out: &File, offset: u64, limit: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < limit {
        let want = buf
            .len()
            .min(usize::try_from(limit - done).unwrap_or(usize::MAX));
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        out.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(done)
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
