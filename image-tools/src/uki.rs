//! The boot stage as one EFI program: a unified kernel image (UKI) made of
//! systemd's EFI stub (`linuxx64.efi.stub` or `linuxaa64.efi.stub`,
//! Debian's `systemd-boot-efi` of that architecture) with the kernel, the boot stage's initramfs and its command line added
//! as PE sections (`.linux`, `.initrd`, `.cmdline`, `.osrel`). The stub
//! finds them by name and boots the kernel with that initramfs and command
//! line. One file is what a vendor signs for Secure Boot, so the initramfs
//! and command line are covered by the same signature as the kernel
//! (docs/boot-flow.md). Debian 12 has no `ukify`: the sections are added
//! by [`crate::pe`], placed after the stub's own as `ukify` does.

use crate::arch::{self, Arch};
use anyhow::{bail, Context, Result};
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};

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

/// Refuses `data` unless it is systemd's EFI stub.
fn check_stub(data: &[u8], what: &Path) -> Result<()> {
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
    Ok(())
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
    check_stub(&stub, &stub_path)?;
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
    let osrel = format!(
        "ID=switchback\nNAME=\"Switchback boot stage\"\nVERSION_ID={}\n",
        env!("CARGO_PKG_VERSION")
    );
    // `.linux` last, as `ukify` places it: the kernel's EFI stub may
    // decompress into the room behind it.
    let uki = crate::pe::add_sections(
        &stub,
        &stub_path,
        &[
            (".osrel", osrel.as_bytes()),
            (".cmdline", opts.cmdline.as_bytes()),
            (".initrd", &initrd),
            (".linux", &kernel),
        ],
    )
    .with_context(|| format!("building {}", opts.out.display()))?;
    write_whole(&opts.out, &uki)
}

/// Writes `bytes` to `out` whole: beside it, synced, then renamed over it,
/// so that `out` is never a half-written program.
pub fn write_whole(out: &Path, bytes: &[u8]) -> Result<()> {
    let work = work_dir_beside(out)?;
    let tmp = work.path().join("program.efi");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    write().with_context(|| format!("writing {}", out.display()))
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
