//! The machine a boot stage is built for. Everything that differs between
//! x86-64 and arm64 on the vendor side is here: the firmware's default
//! loader name, systemd's stub, and how to tell a kernel or an executable of one from the other. A UKI or a
//! factory disk for the wrong machine would only fail on the device, at
//! its first boot, so `uki` and `mkdisk` refuse one before writing.

use anyhow::{bail, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Arch {
    #[default]
    #[value(name = "x86-64", alias = "x86_64", alias = "amd64")]
    X86_64,
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
        })
    }
}

impl Arch {
    /// The removable-media loader the firmware starts (UEFI 2.10 §3.5.1.1).
    /// The Discoverable Partitions type of this machine's root partition,
    /// which the slots get.
    pub fn root_partition_type(self) -> &'static str {
        match self {
            Arch::X86_64 => bootctl::slots::ROOT_X86_64_TYPE,
            Arch::Arm64 => bootctl::slots::ROOT_ARM64_TYPE,
        }
    }

    pub fn efi_loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// Where Debian's `systemd-boot-efi` (of this architecture) puts the stub.
    pub fn default_stub(self) -> &'static str {
        match self {
            Arch::X86_64 => "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            Arch::Arm64 => "/usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        }
    }

    /// The COFF machine field of a PE image.
    fn pe_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// Ours, by the COFF machine field of a PE image.
    pub fn from_pe_machine(m: u16) -> Option<Arch> {
        [Arch::X86_64, Arch::Arm64]
            .into_iter()
            .find(|a| a.pe_machine() == m)
    }

    fn from_elf_machine(m: u16) -> Option<Arch> {
        [Arch::X86_64, Arch::Arm64]
            .into_iter()
            .find(|a| a.elf_machine() == m)
    }
}

/// The COFF machine of a PE image, if `data` is one.
pub fn pe_machine(data: &[u8]) -> Option<u16> {
    let at = u32::from_le_bytes(data.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if data.get(at..at.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(
        data.get(at + 4..at + 6)?.try_into().ok()?,
    ))
}

/// Refuses a PE image that is not for `arch`; `named` says which file, as
/// the message starts ("the EFI stub /usr/lib/...").
pub fn check_pe_machine(data: &[u8], named: &str, arch: Arch) -> anyhow::Result<()> {
    match pe_machine(data) {
        Some(m) if Arch::from_pe_machine(m) == Some(arch) => Ok(()),
        m => anyhow::bail!(
            "{named} is for {}, not {arch}",
            m.map_or_else(|| "no known machine".into(), pe_machine_name)
        ),
    }
}

/// A machine named for a message: ours by name, others by number.
pub fn pe_machine_name(m: u16) -> String {
    Arch::from_pe_machine(m).map_or_else(|| format!("machine {m:#06x}"), |a| a.to_string())
}

/// Which machine a Linux kernel file is for, by its own headers: arm64's
/// Image header (`ARM\x64` at 0x38, with or without an EFI stub around it,
/// as U-Boot's `booti` takes it) or x86's boot protocol (`HdrS` at 0x202).
pub fn kernel_arch(data: &[u8]) -> Option<Arch> {
    if data.get(0x38..0x3c) == Some(b"ARM\x64") {
        Some(Arch::Arm64)
    } else if data.get(0x202..0x206) == Some(b"HdrS") {
        Some(Arch::X86_64)
    } else {
        None
    }
}

/// The machine of an ELF executable, if `data` starts one of ours.
fn elf_arch(data: &[u8]) -> Option<Result<Arch, u16>> {
    if data.get(..4) != Some(b"\x7fELF") {
        return None;
    }
    let m = u16::from_le_bytes(data.get(18..20)?.try_into().ok()?);
    Some(Arch::from_elf_machine(m).ok_or(m))
}

/// The newc archives of an initramfs, each as is or zstd-decompressed
/// (one compressed otherwise is returned as it is). An initramfs may be
/// several archives one after the other, zeros between them (the kernel's
/// buffer format): a keyed Linux boot stage is its compressed archive,
/// then the plain one `image-tools stage --initrd` appends.
pub fn initramfs_archive<'a>(data: &'a [u8], path: &Path) -> Result<std::borrow::Cow<'a, [u8]>> {
    const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if !data.starts_with(&ZSTD) {
        return Ok(data.into());
    }
    let broken = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("the initramfs {} does not decompress: {e}", path.display())
    };
    let mut out = Vec::new();
    let mut rest = data;
    while rest.starts_with(&ZSTD) {
        let frame = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|code| broken(&zstd::zstd_safe::get_error_name(code)))?;
        out.extend(zstd::stream::decode_all(&rest[..frame]).map_err(|e| broken(&e))?);
        rest = &rest[frame..];
        rest = &rest[rest.iter().take_while(|&&b| b == 0).count()..];
    }
    out.resize(out.len().div_ceil(4) * 4, 0);
    out.extend_from_slice(rest);
    Ok(out.into())
}

/// The files of the newc archives `cpio` (from [`initramfs_archive`]):
/// each name, without a leading `./`, and its bytes, in the order the
/// kernel unpacks them (a later file of one name replaces an earlier one).
/// Reading stops at the first thing that is not a newc header.
pub fn initramfs_files(cpio: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut files = Vec::new();
    let mut at = 0usize;
    // newc: a 110-byte ASCII header, the name, the data, each padded to 4.
    while let Some(h) = cpio.get(at..at + 110) {
        if &h[..6] != b"070701" && &h[..6] != b"070702" {
            break;
        }
        let field = |i: usize| {
            std::str::from_utf8(&h[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok())
        };
        let (Some(size), Some(namesize)) = (field(6), field(11)) else {
            break;
        };
        let name_end = at + 110 + namesize;
        let raw = cpio
            .get(at + 110..name_end.saturating_sub(1))
            .unwrap_or_default();
        if raw == b"TRAILER!!!" {
            // The next archive, if any, after the zeros that pad this one.
            at = name_end.div_ceil(4) * 4;
            at += cpio
                .get(at..)
                .unwrap_or_default()
                .iter()
                .take_while(|&&b| b == 0)
                .count();
            continue;
        }
        let data_at = name_end.div_ceil(4) * 4;
        let Some(data) = cpio.get(data_at..data_at.saturating_add(size)) else {
            break;
        };
        files.push((raw.strip_prefix(b"./").unwrap_or(raw), data));
        at = (data_at + size).div_ceil(4) * 4;
    }
    files
}

/// Refuses an initramfs holding an executable for another machine: its
/// `/init` (or anything else) would not run. A newc cpio archive is read
/// as is, or zstd-compressed; one compressed otherwise is not looked into.
pub fn check_initramfs(data: &[u8], path: &Path, arch: Arch) -> Result<()> {
    let cpio = initramfs_archive(data, path)?;
    for (name, data) in initramfs_files(&cpio) {
        match elf_arch(&data[..data.len().min(20)]) {
            None => {}
            Some(Ok(a)) if a == arch => {}
            Some(Ok(a)) => bail!(
                "the initramfs {} is for {a}, not {arch}: its /{} is an {a} program",
                path.display(),
                String::from_utf8_lossy(name)
            ),
            Some(Err(m)) => bail!(
                "the initramfs {} holds /{}, a program for ELF machine {m}, not {arch}",
                path.display(),
                String::from_utf8_lossy(name)
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc archive of one file.
    fn archive(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = cpio::newc::Builder::new(name)
            .mode(0o100755)
            .write(&mut out, data.len() as u32);
        std::io::Write::write_all(&mut w, data).unwrap();
        cpio::newc::trailer(w.finish().unwrap()).unwrap();
        out
    }

    fn elf(machine: u16) -> Vec<u8> {
        let mut e = b"\x7fELF\x02\x01\x01".to_vec();
        e.resize(18, 0);
        e.extend_from_slice(&machine.to_le_bytes());
        e.resize(64, 0);
        e
    }

    /// Every archive of an initramfs is looked into, compressed or not: a
    /// program for another machine in the one appended after a zstd one
    /// is found, as in the first.
    #[test]
    fn an_initramfs_of_several_archives_is_checked_whole() {
        let path = Path::new("stage.cpio");
        let first = zstd::encode_all(&archive("init", &elf(62))[..], 3).unwrap();
        let mut both = first.clone();
        both.resize(both.len().div_ceil(4) * 4 + 4, 0);
        both.extend(archive("switchback/keyring", b"SWKEYS1\0"));
        check_initramfs(&both, path, Arch::X86_64).unwrap();
        let mut foreign = first;
        foreign.extend(archive("bin/tool", &elf(183)));
        let e = check_initramfs(&foreign, path, Arch::X86_64).unwrap_err();
        assert!(e.to_string().contains("is for arm64"), "{e}");
        let e = check_initramfs(&both[..40], path, Arch::X86_64).unwrap_err();
        assert!(e.to_string().contains("does not decompress"), "{e}");
    }
}
