//! The boot stage as PID 1: it selects a slot, persists the spent try, and
//! kexecs the slot's own kernel; a slot it cannot boot falls back. On
//! x86-64 through OVMF (`kexec_file_load`), on arm64 through U-Boot's UEFI
//! (Debian's arm64 kernel has only `kexec_load`).

use bootctl::{BootAttrs, Disk, Slot};
use qemu_tests::guest::Arch;
use qemu_tests::guest::{boot_stage_initramfs, disk_booting, ext4_image, Initramfs, Kernel};
use qemu_tests::qemu::{Firmware, Machine, Options};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A slot: an ext4 root with the kernel and an initramfs that says which
/// slot it is and what command line it got, then powers off.
fn slot_image(dir: &Path, kernel: &Kernel, name: &str, with_kernel: bool) -> PathBuf {
    let root = dir.join(format!("root-{name}"));
    std::fs::create_dir_all(root.join("boot")).unwrap();
    if with_kernel {
        std::fs::copy(&kernel.vmlinuz, root.join("boot/vmlinuz")).unwrap();
        let ir = Initramfs::new(kernel).unwrap();
        ir.init(
            &[],
            &format!("echo \"SLOT {name} RUNNING: $(cat /proc/cmdline)\""),
        )
        .unwrap();
        ir.pack(&root.join("boot/initrd.img")).unwrap();
    }
    let img = dir.join(format!("{name}.ext4"));
    ext4_image(&root, &img, slot_size(kernel.arch).0, name).unwrap();
    img
}

/// Room for the kernel: arm64's is an uncompressed Image of about 32 MiB.
fn slot_size(arch: Arch) -> (&'static str, u64) {
    match arch {
        Arch::X86_64 => ("24M", 24 << 20),
        Arch::Arm64 => ("48M", 48 << 20),
    }
}

fn boot(firmware: Firmware, disk: &Path) -> Machine {
    let opts = Options {
        firmware,
        ..Options::default()
    };
    Machine::start(&[disk], opts).unwrap()
}

/// The boot stage on the ESP, slot_a and slot_b filled, slot_b on trial.
fn machine_disk(dir: &Path, kernel: &Kernel, b_has_kernel: bool) -> PathBuf {
    let disk = dir.join("disk.img");
    let initrd = dir.join("boot-stage.cpio");
    boot_stage_initramfs(kernel, &initrd).unwrap();
    let p = disk_booting(kernel, &initrd, slot_size(kernel.arch).1, &disk).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for (slot, name, with_kernel) in [(0, "A", true), (1, "B", b_has_kernel)] {
        let img = std::fs::read(slot_image(dir, kernel, name, with_kernel)).unwrap();
        f.write_all_at(&img, p.slots[slot].offset).unwrap();
    }
    Disk::open(&disk, None, true)
        .unwrap()
        .set_active(Slot::B, 3)
        .unwrap();
    disk
}

#[test]
fn boots_the_slot_on_trial_through_kexec() {
    boots_the_slot_on_trial(Firmware::Ovmf, "kexec_file_load");
}

#[test]
fn on_arm64_u_boot_boots_the_slot_on_trial_through_kexec_load() {
    boots_the_slot_on_trial(Firmware::UBoot, "kexec_load");
}

fn boots_the_slot_on_trial(firmware: Firmware, kexec: &str) {
    let kernel = Kernel::debian_for(firmware.arch()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = machine_disk(dir.path(), &kernel, true);
    let start = std::time::Instant::now();
    let mut vm = boot(firmware, &disk);
    // The firmware says on the console when it starts the disk's loader.
    vm.expect(firmware.starts_loader(), Duration::from_secs(120))
        .unwrap();
    let loader = start.elapsed();
    vm.expect(
        "switchback boot stage: selected slot_b",
        Duration::from_secs(120),
    )
    .unwrap();
    let boot_stage = start.elapsed();
    vm.expect(
        "switchback boot stage: watchdog armed",
        Duration::from_secs(30),
    )
    .unwrap();
    let loaded = vm
        .expect(
            "switchback boot stage: loaded the kernel",
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(loaded.ends_with(&format!("with {kexec}")), "{loaded}");
    vm.expect(
        "switchback boot stage: booting slot_b",
        Duration::from_secs(60),
    )
    .unwrap();
    let running = vm
        .expect("SLOT B RUNNING:", Duration::from_secs(120))
        .unwrap();
    let slot = start.elapsed();
    println!(
        "{firmware:?}: power-on to: the firmware starting the ESP's loader {:.1} s, the boot stage's selection {:.1} s, the slot's userspace {:.1} s (firmware share {:.0}%)",
        loader.as_secs_f64(),
        boot_stage.as_secs_f64(),
        slot.as_secs_f64(),
        100.0 * loader.as_secs_f64() / slot.as_secs_f64()
    );
    assert!(
        running.contains("switchback.slot=slot_b") && running.contains("root=PARTUUID="),
        "{running}"
    );
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let attrs = Disk::open(&disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .attrs();
    assert_eq!(
        attrs[1],
        BootAttrs {
            priority: 2,
            tries: 2,
            successful: false
        }
    );
}

#[test]
fn a_slot_without_a_kernel_falls_back_to_the_other() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = machine_disk(dir.path(), &kernel, false);
    let mut vm = boot(Firmware::Ovmf, &disk);
    vm.expect(
        "switchback boot stage: selected slot_b",
        Duration::from_secs(120),
    )
    .unwrap();
    let why = vm
        .expect("cannot boot slot_b", Duration::from_secs(60))
        .unwrap();
    assert!(why.contains("/boot/vmlinuz"), "{why}");
    vm.expect("SLOT A RUNNING:", Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
}
