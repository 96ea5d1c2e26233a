//! `image-tools uki`: the boot stage as one EFI program. Booting one is
//! what the whole-machine tests do (every `qemu-tests` machine starts from
//! a UKI on its ESP); these check its layout and the refusals.

use assert_cmd::Command;
use image_tools::uki::{section, DEFAULT_STUB};
use std::path::Path;

fn uki(args: &[&std::ffi::OsStr]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("image-tools")
        .unwrap()
        .arg("uki")
        .args(args)
        .assert()
}

/// A stand-in kernel that is a real 64-bit PE (the stub itself): the layout
/// does not depend on what the kernel section holds.
fn pe_kernel() -> &'static Path {
    Path::new(DEFAULT_STUB)
}

#[test]
fn the_sections_hold_the_kernel_initramfs_and_command_line_after_the_stubs_own() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("boot-stage.cpio");
    let initrd_bytes: Vec<u8> = (0..1_234_567u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let out = dir.path().join("BOOTX64.EFI");
    uki(&[
        "--kernel".as_ref(),
        pe_kernel().as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--cmdline".as_ref(),
        "console=ttyS0 panic=-1".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
    .success();
    assert_eq!(
        section(&out, ".cmdline").unwrap(),
        b"console=ttyS0 panic=-1"
    );
    assert_eq!(section(&out, ".initrd").unwrap(), initrd_bytes);
    assert_eq!(
        section(&out, ".linux").unwrap(),
        std::fs::read(pe_kernel()).unwrap()
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
    let run = |stub: &Path, kernel: &Path, cmdline: &str| {
        uki(&[
            "--stub".as_ref(),
            stub.as_os_str(),
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--initrd".as_ref(),
            initrd.as_os_str(),
            "--cmdline".as_ref(),
            cmdline.as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .failure()
    };
    let stub = Path::new(DEFAULT_STUB);
    run(Path::new("/bin/sh"), pe_kernel(), "quiet").stderr(predicates::str::contains(
        "/bin/sh is not a 64-bit EFI program",
    ));
    let sd_boot = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    run(sd_boot, pe_kernel(), "quiet")
        .stderr(predicates::str::contains("is not systemd's EFI stub"));
    run(stub, &initrd, "quiet").stderr(predicates::str::contains(
        "ir.cpio is not an EFI-bootable kernel",
    ));
    run(stub, pe_kernel(), "a\nb")
        .stderr(predicates::str::contains("command line must be one line"));
    run(stub, Path::new("/nonexistent/vmlinuz"), "quiet").stderr(predicates::str::contains(
        "reading the kernel /nonexistent/vmlinuz",
    ));
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "work files left behind"
    );
}
