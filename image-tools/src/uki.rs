//! The boot stage as one EFI program: a unified kernel image (UKI) made of
//! systemd's EFI stub (`linuxx64.efi.stub` or `linuxaa64.efi.stub`,
//! Debian's `systemd-boot-efi` of that architecture) with the kernel, the boot stage's initramfs and its command line added
//! as PE sections (`.linux`, `.initrd`, `.cmdline`, `.osrel`). The stub
//! finds them by name and boots the kernel with that initramfs and command
//! line. One file is what a vendor signs for Secure Boot, so the initramfs
//! and command line are covered by the same signature as the kernel
//! (docs/boot-flow.md). Debian 12 has no `ukify`: the sections are added
//! with binutils' `objcopy` (for arm64, the cross binutils': the native one
//! cannot write arm64's PE), placed after the stub's own as `ukify` does.

use crate::arch::{self, Arch};
use crate::programs::find_program;
use anyhow::{bail, Context, Result};
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sections start on page boundaries, as the firmware maps them.
const PAGE: u64 = 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct UkiOptions {
    /// The machine the program is for: the stub, the kernel and the
    /// initramfs's programs must all be for it.
    #[arg(long, value_enum, default_value_t)]
    pub arch: Arch,
    /// The kernel with its EFI stub (Debian's vmlinuz: a bzImage on
    /// x86-64, an Image on arm64).
    #[arg(long)]
    pub kernel: PathBuf,
    /// The boot stage's initramfs (`bootctl` as /init, the disk's modules).
    #[arg(long)]
    pub initrd: PathBuf,
    /// The boot stage kernel's command line.
    #[arg(long, default_value = "console=ttyS0 quiet")]
    pub cmdline: String,
    /// systemd's EFI stub [default: Debian's for --arch,
    /// /usr/lib/systemd/boot/efi/linuxx64.efi.stub or linuxaa64.efi.stub]
    #[arg(long)]
    pub stub: Option<PathBuf>,
    /// The EFI program to write (replaced).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// The image base of the PE image `data` and the end of its last section
/// relative to that base: where added sections may start.
pub fn program_end(data: &[u8], what: &Path) -> Result<(u64, u64)> {
    let pe = PeFile64::parse(data)
        .with_context(|| format!("{} is not a 64-bit EFI program", what.display()))?;
    let base = pe.relative_address_base();
    let end = pe
        .sections()
        .map(|s| s.address().saturating_sub(base) + s.size())
        .max()
        .unwrap_or(0);
    Ok((base, end))
}

/// [`program_end`] of systemd's EFI stub, which is refused when it is not
/// one.
fn image_end(data: &[u8], what: &Path) -> Result<(u64, u64)> {
    let pe = PeFile64::parse(data)
        .with_context(|| format!("{} is not a 64-bit EFI program", what.display()))?;
    // systemd's EFI programs say what they are: in an .sdmagic section, or
    // (arm64 stubs of systemd 252, built with gnu-efi) in their data.
    // systemd-boot says so too, and is not a stub.
    let mut systemd_stub = data
        .windows(29)
        .any(|w| w == b"#### LoaderInfo: systemd-stub");
    for s in pe.sections() {
        if s.name() == Ok(".sdmagic") {
            let magic = s.data().unwrap_or_default();
            systemd_stub |= magic.windows(12).any(|w| w == b"systemd-stub");
        }
    }
    if !systemd_stub {
        bail!(
            "{} is not systemd's EFI stub (it does not say \"systemd-stub\"): use linuxx64.efi.stub or linuxaa64.efi.stub from systemd-boot-efi",
            what.display()
        );
    }
    program_end(data, what)
}

/// The kernel the stub hands over to must be a Linux kernel with its own
/// EFI entry, for `arch`: anything else would only fail at boot, on the
/// device. Linux's headers say what it is ([`arch::kernel_arch`]).
fn check_kernel(kernel: &[u8], path: &Path, arch: Arch) -> Result<()> {
    let not_efi = || {
        anyhow::anyhow!(
            "{} is not an EFI-bootable kernel (one built with CONFIG_EFI_STUB)",
            path.display()
        )
    };
    let pe = PeFile64::parse(kernel).map_err(|_| not_efi())?;
    if pe.section_by_name(".sdmagic").is_some() {
        bail!(
            "{} is a systemd EFI program (it has an .sdmagic section), not a kernel",
            path.display()
        );
    }
    let machine = arch::pe_machine(kernel).ok_or_else(not_efi)?;
    if let Some(a) = Arch::from_pe_machine(machine).filter(|&a| a != arch) {
        bail!("{} is a kernel for {a}, not {arch}", path.display());
    }
    match arch::kernel_arch(kernel) {
        Some(a) if a == arch => Ok(()),
        Some(a) => bail!("{} is a kernel for {a}, not {arch}", path.display()),
        None => bail!(
            "{} is an EFI program for {} but not a Linux kernel (no Linux boot header)",
            path.display(),
            arch::pe_machine_name(machine)
        ),
    }
}

/// Builds the UKI at `opts.out` (replaced whole: written beside it, then
/// renamed).
pub fn build(opts: &UkiOptions) -> Result<()> {
    let arch = opts.arch;
    let objcopy = objcopy_for(arch)?;
    let stub_path = opts
        .stub
        .clone()
        .unwrap_or_else(|| PathBuf::from(arch.default_stub()));
    let stub = std::fs::read(&stub_path).with_context(|| {
        format!(
            "reading the EFI stub {} (systemd-boot-efi for {arch})",
            stub_path.display()
        )
    })?;
    let (base, at) = image_end(&stub, &stub_path)?;
    arch::check_pe_machine(
        &stub,
        &format!("the EFI stub {}", stub_path.display()),
        arch,
    )?;
    let kernel = std::fs::read(&opts.kernel)
        .with_context(|| format!("reading the kernel {}", opts.kernel.display()))?;
    check_kernel(&kernel, &opts.kernel, arch)?;
    if opts.cmdline.contains('\0') || opts.cmdline.contains('\n') {
        bail!("the boot stage's command line must be one line without NUL bytes");
    }
    let initrd = std::fs::read(&opts.initrd)
        .with_context(|| format!("reading the initramfs {}", opts.initrd.display()))?;
    arch::check_initramfs(&initrd, &opts.initrd, arch)?;
    let work = work_dir_beside(&opts.out)?;
    let osrel = work.path().join("osrel");
    std::fs::write(
        &osrel,
        format!(
            "ID=switchback\nNAME=\"Switchback boot stage\"\nVERSION_ID={}\n",
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    let cmdline = work.path().join("cmdline");
    std::fs::write(&cmdline, &opts.cmdline)?;

    // `.linux` last, as `ukify` places it: the kernel's EFI stub may
    // decompress into the room behind it.
    let tmp = work.path().join("uki.efi");
    add_sections(
        &objcopy,
        &stub_path,
        (base, at),
        &[
            (".osrel", osrel.as_path()),
            (".cmdline", cmdline.as_path()),
            (".initrd", opts.initrd.as_path()),
            (".linux", opts.kernel.as_path()),
        ],
        &tmp,
    )
    .with_context(|| format!("building {}", opts.out.display()))?;
    check_layout(&tmp)?;
    std::fs::rename(&tmp, &opts.out).with_context(|| format!("writing {}", opts.out.display()))?;
    Ok(())
}

/// The objcopy that writes `arch`'s PE images.
pub fn objcopy_for(arch: Arch) -> Result<PathBuf> {
    let (objcopy, package) = arch.objcopy();
    find_program(objcopy).with_context(|| {
        format!("{objcopy} not found: install {package} to build an {arch} EFI program")
    })
}

/// A work directory beside `out`, so that the finished program is renamed
/// over it (never half-written under its name).
pub fn work_dir_beside(out: &Path) -> Result<tempfile::TempDir> {
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::tempdir_in(out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))
}

/// Copies the EFI program `input` to `out` with `sections` (name, file)
/// added in order, each page-aligned after the program's end (`base`, the
/// image base, and `end`, the end of its last section relative to it).
/// Addresses are absolute, as objcopy takes them (the image base plus the
/// offset): stubs from systemd 254 on have a base far from 0.
pub fn add_sections(
    objcopy: &Path,
    input: &Path,
    (base, end): (u64, u64),
    sections: &[(&str, &Path)],
    out: &Path,
) -> Result<()> {
    let mut cmd = Command::new(objcopy);
    let mut at = end;
    for (name, path) in sections {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        at = at.div_ceil(PAGE) * PAGE;
        let vma = base + at;
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
        at += len;
    }
    let output = cmd
        .arg(input)
        .arg(out)
        .output()
        .with_context(|| format!("running {}", objcopy.display()))?;
    if !output.status.success() {
        bail!(
            "objcopy failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Checks what objcopy made: every section starts after the one before it
/// ends, the added ones page-aligned, `.linux` last.
fn check_layout(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pe = PeFile64::parse(&*data)
        .with_context(|| format!("objcopy made no EFI program at {}", path.display()))?;
    let mut sections: Vec<(u64, u64, String)> = pe
        .sections()
        .map(|s| (s.address(), s.size(), s.name().unwrap_or("?").to_string()))
        .collect();
    sections.sort();
    for pair in sections.windows(2) {
        let ((a, a_len, a_name), (b, _, b_name)) = (&pair[0], &pair[1]);
        if a + a_len > *b {
            bail!("the EFI program's sections {a_name} and {b_name} overlap");
        }
    }
    if sections.last().map(|s| s.2.as_str()) != Some(".linux") {
        bail!("the EFI program's .linux section is not its last");
    }
    Ok(())
}

/// The named section's bytes in the UKI at `path` (for checks and tests).
pub fn section(path: &Path, name: &str) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pe = PeFile64::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit EFI program", path.display()))?;
    let s = pe
        .section_by_name(name)
        .with_context(|| format!("{} has no {name} section", path.display()))?;
    let bytes = s.data()?;
    // The file holds the section rounded up to the file alignment.
    let len = usize::try_from(s.size())?.min(bytes.len());
    Ok(bytes[..len].to_vec())
}
