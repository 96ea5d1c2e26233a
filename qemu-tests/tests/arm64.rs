//! The same appliance on arm64 (QEMU's virt machine, Debian's arm64 kernel
//! and the aarch64 builds of bootctl and the updater), its factory disk
//! booted by the firmware alone: U-Boot through its UEFI, EDK2 (AAVMF), and
//! U-Boot without UEFI through the extlinux.conf `mkdisk` writes. With UEFI
//! the boot stage is the UEFI program, which starts the slot's kernel
//! itself; without it, the Linux boot stage, which starts it with its own
//! `kexec_load` (Debian's arm64 kernel has no `kexec_file_load`).

use qemu_tests::appliance::{
    back_on_a, change_byte_in_slot, factory, factory_with,
    installs_a_release_larger_than_its_memory, runs_committed, Appliance, BOOT, HEARTBEAT_CHECK,
    STEP,
};
use qemu_tests::guest::Release;
use qemu_tests::qemu::{Firmware, Options};
use std::time::{Duration, Instant};

fn v2(app: &Appliance) -> std::path::PathBuf {
    app.image(&Release {
        version: "2.0.0",
        health_checks: HEARTBEAT_CHECK,
        ..Release::default()
    })
}

/// Factory 1.0.0 boots, 2.0.0 installs from the stick, boots on trial
/// (its signed release checked by the UEFI stage), passes its health check
/// and is committed.
fn installs_boots_on_trial_and_commits(app: Appliance) {
    let start = Instant::now();
    let (mut vm, _disk) = factory(&app, &app.media("2.0.0", &v2(&app)));
    let factory_boot = start.elapsed();
    vm.send("updater install /media/2.0.0.swb --reboot")
        .unwrap();
    vm.expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    vm.expect(
        "switchback boot stage: slot_b holds switchback-qemu 2.0.0, signed by a trusted key",
        STEP,
    )
    .unwrap();
    runs_committed(&mut vm, "2.0.0", "slot_b");
    vm.send("bootctl status --json | tr -d ' \\n'; echo")
        .unwrap();
    let status = vm.expect("\"slots\":", STEP).unwrap();
    assert!(
        status.contains(r#"{"name":"slot_b","priority":2,"tries":0,"successful":true"#),
        "{status}"
    );
    println!(
        "factory boot to READY {:.0} s, whole scenario {:.0} s",
        factory_boot.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn u_boot_uefi_installs_2_0_0_which_boots_on_trial_and_is_committed() {
    installs_boots_on_trial_and_commits(Appliance::on(Firmware::UBoot));
}

/// U-Boot without UEFI starts the Linux boot stage from the static
/// extlinux.conf `mkdisk` writes. The stage, keyed by `image-tools stage
/// --initrd`, runs the UEFI stage's checks: it says what this boot does
/// not check, starts 2.0.0 only once its signed release and every chunk
/// read for its kernel verify, with its root under dm-verity; a 3.0.0
/// whose kernel had a byte changed after its install is not started, and
/// 2.0.0 is back, told why.
#[test]
fn u_boot_without_uefi_boots_the_boot_stage_from_extlinux_and_updates() {
    let app = Appliance::uboot_extlinux().with_verity();
    let v3 = app.image(&Release {
        version: "3.0.0",
        ..Release::default()
    });
    let b2 = app.bundle("2.0.0", "2.0.0", "switchback-qemu", &v2(&app), Vec::new());
    let b3 = app.bundle("3.0.0", "3.0.0", "switchback-qemu", &v3, Vec::new());
    let stick = app.stick(&[&b2, &b3]);
    let (mut vm, disk) = factory(&app, &stick);
    vm.send("updater install /media/2.0.0.swb --reboot")
        .unwrap();
    // U-Boot reads the same static extlinux.conf at every boot; the slot
    // changes only in the GPT flags.
    vm.expect("Retrieving file: /extlinux/extlinux.conf", BOOT)
        .unwrap();
    vm.expect("switchback boot stage: trusting 1 key(s)", BOOT)
        .unwrap();
    vm.expect(
        "switchback boot stage: started without UEFI: nothing checked this stage before it ran",
        STEP,
    )
    .unwrap();
    vm.expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    vm.expect(
        "switchback boot stage: slot_b holds switchback-qemu 2.0.0, signed by a trusted key",
        STEP,
    )
    .unwrap();
    vm.expect(
        "switchback boot stage: slot_b's root is opened through dm-verity",
        STEP,
    )
    .unwrap();
    vm.expect(
        "switchback boot stage: this kernel has no kexec_file_load: the slot kernel's own signature is not checked",
        STEP,
    )
    .unwrap();
    runs_committed(&mut vm, "2.0.0", "slot_b");
    vm.send("grep ' / ' /proc/mounts").unwrap();
    let root = vm.expect(" / ext4 ", STEP).unwrap();
    assert!(
        root.contains("/dev/dm-"),
        "the root is not the verity device: {root}"
    );

    // 3.0.0 into slot_a, then one byte of its kernel changed while the
    // machine is off.
    vm.send("updater install /media/3.0.0.swb; echo INSTALL EXIT $?; sync")
        .unwrap();
    vm.expect("INSTALL EXIT 0", STEP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    vm.kill();
    change_byte_in_slot(&disk, bootctl::Slot::A, kernel_offset(&v3) + 7, 0x01);

    let mut vm = app.boot(&disk, &stick);
    vm.expect("switchback boot stage: selected slot_a", BOOT)
        .unwrap();
    let why = vm.expect("cannot boot slot_a", STEP).unwrap();
    assert!(why.contains("does not match its signed release"), "{why}");
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    let why = vm.expect("was rolled back", STEP).unwrap();
    assert!(
        why.contains("no longer matches its signed release"),
        "{why}"
    );
    vm.expect("READY 2.0.0", STEP).unwrap();
    drop(vm);
    // No EFI program on this disk: U-Boot could only have used extlinux.
    let esp = std::process::Command::new("mdir")
        .args(["-i", &format!("{}@@1M", disk.display()), "-/", "::/"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&esp.stdout);
    assert!(
        listing.contains("extlinux.conf") && !listing.to_uppercase().contains(".EFI"),
        "{listing}"
    );
}

/// Where `/boot/vmlinuz` starts in the ext4 image `image` (debugfs).
fn kernel_offset(image: &std::path::Path) -> u64 {
    let out = std::process::Command::new("debugfs")
        .args(["-R", "bmap /boot/vmlinuz 0"])
        .arg(image)
        .output()
        .unwrap();
    let block: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The tests' images have 4 KiB blocks (guest::ext4_image).
    block * 4096
}

#[test]
fn edk2_a_failing_health_check_falls_back_to_1_0_0() {
    let app = Appliance::on(Firmware::Aavmf);
    let checks = r#"[{"name": "database", "command": ["sh", "-c", "echo database down; exit 3"], "timeout_s": 10}]"#;
    let v3 = app.image(&Release {
        version: "3.0.0",
        health_checks: checks,
        ..Release::default()
    });
    let (mut vm, _disk) = factory(&app, &app.media("3.0.0", &v3));
    vm.send("updater install /media/3.0.0.swb --reboot")
        .unwrap();
    vm.expect("RELEASE 3.0.0 RUNNING ON slot_b", BOOT).unwrap();
    vm.expect(
        "slot_b failed its health check and is marked bad; slot_a boots next",
        STEP,
    )
    .unwrap();
    back_on_a(&mut vm, "health check \"database\" failed");
}

/// The boot stage arms the i6300esb on the virt machine's PCIe (found
/// through the device tree U-Boot hands over); a release
/// that hangs before its health check is reset by it, twice, and then the
/// machine is back on 1.0.0.
#[test]
fn u_boot_a_hanging_release_is_reset_by_the_watchdog_until_its_tries_run_out() {
    let app = Appliance::on(Firmware::UBoot);
    let hang = "echo 'HANGING BEFORE HEALTH'; while true; do sleep 1; done";
    let v4 = app.image(&Release {
        version: "4.0.0",
        before_health: hang,
        ..Release::default()
    });
    let (mut vm, _disk) = factory(&app, &app.media("4.0.0", &v4));
    vm.send("updater install /media/4.0.0.swb --reboot")
        .unwrap();
    for _ in 0..2 {
        vm.expect("switchback boot stage: selected slot_b", BOOT)
            .unwrap();
        vm.expect("switchback boot stage: watchdog armed", STEP)
            .unwrap();
        vm.expect("HANGING BEFORE HEALTH", BOOT).unwrap();
    }
    back_on_a(&mut vm, "tries exhausted");
}

#[test]
fn u_boot_a_power_cut_during_an_install_leaves_1_0_0_booting() {
    let app = Appliance::on(Firmware::UBoot);
    let stick = app.media("2.0.0", &v2(&app));
    // Writes slowed to 4 MiB/s, so that the cut lands inside the write.
    let slow = Options {
        write_bps: Some(4 << 20),
        ..Options::default()
    };
    let (mut vm, disk) = factory_with(&app, &stick, slow.clone());
    vm.send("updater install /media/2.0.0.swb").unwrap();
    vm.expect("installing", STEP).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    vm.kill();
    let attrs = bootctl::Disk::open(&disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .attrs();
    assert!(
        !attrs[1].is_bootable(),
        "slot_b bootable after the cut: {attrs:?}"
    );
    let mut vm = app.boot_with(&disk, &stick, slow);
    vm.expect("switchback boot stage: selected slot_a", BOOT)
        .unwrap();
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
}

/// A 128 MiB arm64 appliance (U-Boot's UEFI) installs, boots and commits a
/// release larger than its memory.
#[test]
fn u_boot_a_128_mib_machine_installs_a_release_larger_than_its_memory() {
    installs_a_release_larger_than_its_memory(&Appliance::on(Firmware::UBoot), 128);
}
