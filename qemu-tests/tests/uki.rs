//! `image-tools uki`: the boot stage as one EFI program. Booting one is
//! what the whole-machine tests do (every machine here starts from a UKI on
//! its ESP); these check its layout and the refusals, with Debian's own
//! kernel (here because this crate fetches it).

use image_tools::arch::Arch;
use image_tools::uki::{build, section, UkiOptions};
use qemu_tests::guest::{efi_stub, Initramfs};
use std::path::{Path, PathBuf};

const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Debian's kernel, as the boot stage's UKI carries it.
fn kernel() -> PathBuf {
    qemu_tests::guest::Kernel::debian()
        .expect("Debian's kernel (apt-get download linux-image-amd64)")
        .vmlinuz
}

fn uki(stub: &Path, kernel: &Path, initrd: &Path, cmdline: &str, out: &Path) -> anyhow::Result<()> {
    build(&UkiOptions {
        arch: Arch::X86_64,
        stub: Some(stub.into()),
        kernel: kernel.into(),
        initrd: initrd.into(),
        cmdline: cmdline.into(),
        out: out.into(),
    })
}

#[test]
fn the_sections_hold_the_kernel_initramfs_and_command_line_after_the_stubs_own() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("boot-stage.cpio");
    let initrd_bytes: Vec<u8> = (0..1_234_567u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let out = dir.path().join("BOOTX64.EFI");
    let kernel = kernel();
    let stub = Path::new(DEFAULT_STUB);
    uki(stub, &kernel, &initrd, "console=ttyS0 panic=-1", &out).unwrap();
    assert_eq!(
        section(&out, ".cmdline").unwrap(),
        b"console=ttyS0 panic=-1"
    );
    assert_eq!(section(&out, ".initrd").unwrap(), initrd_bytes);
    assert_eq!(
        section(&out, ".linux").unwrap(),
        std::fs::read(&kernel).unwrap()
    );
    let osrel = String::from_utf8(section(&out, ".osrel").unwrap()).unwrap();
    assert!(osrel.contains("ID=switchback"), "{osrel}");
    // Still systemd's stub: its code and magic are kept.
    assert!(section(&out, ".sdmagic").is_ok() && section(&out, ".text").is_ok());
}

#[test]
fn what_cannot_make_a_boot_stage_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("ir.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let out = dir.path().join("BOOTX64.EFI");
    let refused = |stub: &Path, kernel: &Path, cmdline: &str, why: &str| {
        let e = uki(stub, kernel, &initrd, cmdline, &out).expect_err(why);
        let said = format!("{e:#}");
        assert!(said.contains(why), "{said}");
    };
    let stub = Path::new(DEFAULT_STUB);
    let kernel = kernel();
    refused(
        Path::new("/bin/sh"),
        &kernel,
        "quiet",
        "/bin/sh is not a 64-bit EFI program",
    );
    let sd_boot = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    refused(sd_boot, &kernel, "quiet", "is not systemd's EFI stub");
    refused(
        stub,
        &initrd,
        "quiet",
        "ir.cpio is not an EFI-bootable kernel",
    );
    refused(stub, &kernel, "a\nb", "command line must be one line");
    refused(
        stub,
        Path::new("/nonexistent/vmlinuz"),
        "quiet",
        "reading the kernel /nonexistent/vmlinuz",
    );
    // systemd's stub itself, a kernel for another machine, and an EFI
    // program that is no Linux kernel, each as the UKI's kernel.
    refused(
        stub,
        stub,
        "quiet",
        "is a systemd EFI program (it has an .sdmagic section), not a kernel",
    );
    let bytes = std::fs::read(&kernel).unwrap();
    let pe = u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize;
    let mut arm = bytes.clone();
    arm[pe + 4..pe + 6].copy_from_slice(&0xaa64u16.to_le_bytes());
    let arm_path = dir.path().join("vmlinuz-arm64");
    std::fs::write(&arm_path, &arm).unwrap();
    refused(
        stub,
        &arm_path,
        "quiet",
        "vmlinuz-arm64 is a kernel for arm64, not x86-64",
    );
    let mut no_linux = bytes;
    no_linux[0x202..0x206].copy_from_slice(b"XXXX");
    let odd_path = dir.path().join("not-linux.efi");
    std::fs::write(&odd_path, &no_linux).unwrap();
    refused(
        stub,
        &odd_path,
        "quiet",
        "not-linux.efi is an EFI program for x86-64 but not a Linux kernel",
    );
    std::fs::remove_file(arm_path).unwrap();
    std::fs::remove_file(odd_path).unwrap();
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "work files left behind"
    );
}

/// A UKI for one machine is made only of parts for it: an arm64 kernel,
/// stub or initramfs is refused for x86-64 and the other way round, before
/// anything is written; with all three for arm64 the UKI is made.
#[test]
fn each_part_must_be_for_the_uki_machine() {
    let dir = tempfile::tempdir().unwrap();
    let arm = qemu_tests::guest::Kernel::debian_for(Arch::Arm64).unwrap();
    let x86 = qemu_tests::guest::Kernel::debian().unwrap();
    let initramfs = |kernel: &qemu_tests::guest::Kernel, name: &str| {
        let out = dir.path().join(name);
        let ir = Initramfs::new(kernel).unwrap();
        ir.init(&[], "echo hello").unwrap();
        ir.pack(&out).unwrap();
        out
    };
    let (arm_ir, x86_ir) = (initramfs(&arm, "arm.cpio"), initramfs(&x86, "x86.cpio"));
    let out = dir.path().join("BOOTAA64.EFI");
    let make = |arch, stub: Option<PathBuf>, kernel: &Path, initrd: &Path| {
        build(&UkiOptions {
            arch,
            stub,
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: "console=ttyAMA0".into(),
            out: out.clone(),
        })
        .map_err(|e| format!("{e:#}"))
    };
    let arm_stub = efi_stub(Arch::Arm64).unwrap();
    let refusals = [
        (
            make(Arch::X86_64, None, &arm.vmlinuz, &x86_ir),
            "is a kernel for arm64, not x86-64",
        ),
        (
            make(Arch::Arm64, Some(arm_stub.clone()), &x86.vmlinuz, &arm_ir),
            "is a kernel for x86-64, not arm64",
        ),
        (
            make(
                Arch::Arm64,
                Some(DEFAULT_STUB.into()),
                &arm.vmlinuz,
                &arm_ir,
            ),
            "linuxx64.efi.stub is for x86-64, not arm64",
        ),
        (
            make(Arch::Arm64, Some(arm_stub.clone()), &arm.vmlinuz, &x86_ir),
            "x86.cpio is for x86-64, not arm64: its /bin/busybox is an x86-64 program",
        ),
    ];
    for (result, why) in refusals {
        let said = result.expect_err(why);
        assert!(said.contains(why), "{said}");
        assert!(!out.exists());
    }
    make(Arch::Arm64, Some(arm_stub), &arm.vmlinuz, &arm_ir).unwrap();
    assert_eq!(
        section(&out, ".linux").unwrap(),
        std::fs::read(&arm.vmlinuz).unwrap()
    );
    assert_eq!(
        section(&out, ".initrd").unwrap(),
        std::fs::read(&arm_ir).unwrap()
    );
}
