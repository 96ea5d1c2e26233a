//! The boot stage as one EFI program: a unified kernel image (UKI) made of
//! systemd's EFI stub (`linuxx64.efi.stub`, Debian's `systemd-boot-efi`)
//! with the kernel, the boot stage's initramfs and its command line added
//! as PE sections (`.linux`, `.initrd`, `.cmdline`, `.osrel`). The stub
//! finds them by name and boots the kernel with that initramfs and command
//! line. One file is what a vendor signs for Secure Boot, so the initramfs
//! and command line are covered by the same signature as the kernel
//! (docs/boot-flow.md). Debian 12 has no `ukify`: the sections are added
//! with binutils' `objcopy`, placed after the stub's own as `ukify` does.

use crate::mkdisk::find_program;
use anyhow::{bail, Context, Result};
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's `systemd-boot-efi` puts the stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Sections start on page boundaries, as the firmware maps them.
const PAGE: u64 = 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct UkiOptions {
    /// The kernel (a bzImage with its EFI stub, e.g. Debian's vmlinuz).
    #[arg(long)]
    pub kernel: PathBuf,
    /// The boot stage's initramfs (`bootctl` as /init, the disk's modules).
    #[arg(long)]
    pub initrd: PathBuf,
    /// The boot stage kernel's command line.
    #[arg(long, default_value = "console=ttyS0 quiet")]
    pub cmdline: String,
    /// systemd's EFI stub.
    #[arg(long, default_value = DEFAULT_STUB)]
    pub stub: PathBuf,
    /// The EFI program to write (replaced).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// The image base of the PE image `data` and the end of its last section
/// relative to that base: where added sections may start.
fn image_end(data: &[u8], what: &Path) -> Result<(u64, u64)> {
    let pe = PeFile64::parse(data)
        .with_context(|| format!("{} is not a 64-bit EFI program", what.display()))?;
    let base = pe.relative_address_base();
    let mut end = 0;
    let mut systemd_stub = false;
    for s in pe.sections() {
        // systemd's EFI programs say what they are here; systemd-boot has
        // one too, and is not a stub.
        if s.name() == Ok(".sdmagic") {
            let magic = s.data().unwrap_or_default();
            systemd_stub |= magic.windows(12).any(|w| w == b"systemd-stub");
        }
        end = end.max(s.address().saturating_sub(base) + s.size());
    }
    if !systemd_stub {
        bail!(
            "{} is not systemd's EFI stub (no \"systemd-stub\" in its .sdmagic section): use {DEFAULT_STUB} from systemd-boot-efi",
            what.display()
        );
    }
    Ok((base, end))
}

/// The COFF machine of a PE image (0x8664 x86-64, 0xaa64 arm64).
fn pe_machine(data: &[u8]) -> Option<u16> {
    let at = u32::from_le_bytes(data.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if data.get(at..at.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(
        data.get(at + 4..at + 6)?.try_into().ok()?,
    ))
}

fn machine_name(machine: u16) -> String {
    match machine {
        0x8664 => "x86-64".into(),
        0xaa64 => "arm64".into(),
        m => format!("machine {m:#06x}"),
    }
}

/// The kernel the stub hands over to must be a Linux kernel with its own
/// EFI entry, for the stub's machine: anything else would only fail at
/// boot, on the device. Linux's headers say what it is: x86's boot
/// protocol (`HdrS` at 0x202), arm64's Image header (`ARM\x64` at 0x38).
fn check_kernel(kernel: &[u8], path: &Path, stub_machine: Option<u16>) -> Result<()> {
    let not_efi = || {
        anyhow::anyhow!(
            "{} is not an EFI-bootable kernel (a bzImage built with CONFIG_EFI_STUB)",
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
    let machine = pe_machine(kernel).ok_or_else(not_efi)?;
    if let Some(stub) = stub_machine.filter(|&m| m != machine) {
        bail!(
            "{} is a kernel for {}, and the stub is for {}",
            path.display(),
            machine_name(machine),
            machine_name(stub)
        );
    }
    let linux = match machine {
        0x8664 => kernel.get(0x202..0x206) == Some(b"HdrS"),
        0xaa64 => kernel.get(0x38..0x3c) == Some(b"ARM\x64"),
        _ => false,
    };
    if !linux {
        bail!(
            "{} is an EFI program for {} but not a Linux kernel (no Linux boot header)",
            path.display(),
            machine_name(machine)
        );
    }
    Ok(())
}

/// Builds the UKI at `opts.out` (replaced whole: written beside it, then
/// renamed).
pub fn build(opts: &UkiOptions) -> Result<()> {
    let objcopy = find_program("objcopy")
        .context("objcopy not found: install binutils to build the boot stage's EFI program")?;
    let stub = std::fs::read(&opts.stub).with_context(|| {
        format!(
            "reading the EFI stub {} (apt-get install systemd-boot-efi)",
            opts.stub.display()
        )
    })?;
    let (base, mut at) = image_end(&stub, &opts.stub)?;
    let kernel = std::fs::read(&opts.kernel)
        .with_context(|| format!("reading the kernel {}", opts.kernel.display()))?;
    check_kernel(&kernel, &opts.kernel, pe_machine(&stub))?;
    if opts.cmdline.contains('\0') || opts.cmdline.contains('\n') {
        bail!("the boot stage's command line must be one line without NUL bytes");
    }
    std::fs::metadata(&opts.initrd)
        .with_context(|| format!("reading the initramfs {}", opts.initrd.display()))?;
    let out_dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let work = tempfile::tempdir_in(out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
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

    let mut cmd = Command::new(&objcopy);
    // `.linux` last, as `ukify` places it: the kernel's EFI stub may
    // decompress into the room behind it. Addresses are absolute, as
    // objcopy takes them (the image base plus the offset): stubs from
    // systemd 254 on have a base far from 0.
    for (name, path) in [
        (".osrel", osrel.as_path()),
        (".cmdline", cmdline.as_path()),
        (".initrd", opts.initrd.as_path()),
        (".linux", opts.kernel.as_path()),
    ] {
        let len = std::fs::metadata(path)?.len();
        at = at.div_ceil(PAGE) * PAGE;
        let vma = base + at;
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
        at += len;
    }
    let tmp = work.path().join("uki.efi");
    let output = cmd
        .arg(&opts.stub)
        .arg(&tmp)
        .output()
        .with_context(|| format!("running {}", objcopy.display()))?;
    if !output.status.success() {
        bail!(
            "objcopy failed building {}: {}",
            opts.out.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    check_layout(&tmp)?;
    std::fs::rename(&tmp, &opts.out).with_context(|| format!("writing {}", opts.out.display()))?;
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
