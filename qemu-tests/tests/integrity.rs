//! Every boot runs only what the vendor signed (docs/boot-flow.md,
//! "Integrity at every boot"): OVMF with Secure Boot on (Debian's snakeoil
//! keys) starts the boot stage because `image-tools stage` signed it for
//! db; the stage starts a slot's kernel only when its release's ed25519
//! signature and chunks check and the firmware accepts the kernel's db
//! signature; the release's root is opened through dm-verity with the root
//! hash from its signed manifest; the stage (`--require-verity`) starts no
//! release without a tree. (An unsigned stage refused by the firmware:
//! `boot_stage.rs::under_secure_boot_only_what_is_signed_for_db_starts`.)

use qemu_tests::appliance::{change_byte_in_slot, Appliance, BOOT, STEP};
use qemu_tests::guest::{Kernel, Release};
use qemu_tests::qemu::Firmware;
use std::time::{Duration, Instant};

#[test]
fn under_secure_boot_a_verity_root_boots_and_a_changed_block_an_unsigned_kernel_or_no_tree_falls_back(
) {
    let app = Appliance::on(Firmware::OvmfSecureBoot)
        .with_verity()
        .requiring_verity();
    let v1 = app.image(&Release::default());
    let v2 = app.image(&Release {
        version: "2.0.0",
        ..Release::default()
    });
    let v3 = app.image(&Release {
        version: "3.0.0",
        ..Release::default()
    });
    // Debian's kernel as it comes: signed by Debian, not for this db.
    let debian = Kernel::debian().unwrap().vmlinuz;
    let v4 = app.image(&Release {
        version: "4.0.0",
        vmlinuz: Some(&debian),
        ..Release::default()
    });
    let mut bundles: Vec<_> = [("2.0.0", &v2), ("3.0.0", &v3), ("4.0.0", &v4)]
        .iter()
        .map(|(v, img)| app.bundle(v, v, "switchback-qemu", img, Vec::new()))
        .collect();
    // The same vendor's releases without a tree (same keys), for 5.0.0
    // and for the boot time beside the verity one.
    let plain = Appliance::on(Firmware::OvmfSecureBoot);
    let v5 = plain.image(&Release {
        version: "5.0.0",
        ..Release::default()
    });
    bundles.push(plain.bundle("5.0.0", "5.0.0", "switchback-qemu", &v5, Vec::new()));
    let stick = app.stick(&bundles.iter().map(|b| b.as_path()).collect::<Vec<_>>());
    let disk = app.factory_disk(&v1);

    // Reported, not asserted: this machine's timings are noisy.
    let plain_disk = plain.factory_disk(&plain.image(&Release::default()));
    let started = Instant::now();
    let mut vm = plain.boot(&plain_disk, &stick);
    vm.expect("slot_a's root has no dm-verity hash tree", BOOT)
        .unwrap();
    vm.expect("READY 1.0.0", BOOT).unwrap();
    let without = started.elapsed().as_secs_f64();
    drop(vm);

    // 1.0.0 from the factory: its root is the verity device.
    let started = Instant::now();
    let mut vm = app.boot(&disk, &stick);
    vm.expect(
        "switchback boot stage: slot_a's root is opened through dm-verity",
        BOOT,
    )
    .unwrap();
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    let with = started.elapsed().as_secs_f64();
    println!(
        "power-on to READY 1.0.0 under Secure Boot: {with:.1} s with dm-verity, {without:.1} s without ({:.2}x)",
        with / without
    );
    vm.send("grep ' / ' /proc/mounts; updater status").unwrap();
    let root = vm.expect(" / ext4 ", STEP).unwrap();
    assert!(
        root.contains("/dev/dm-"),
        "the root is not the verity device: {root}"
    );
    let status = vm.expect("running root:", STEP).unwrap();
    assert!(
        status.contains("dm-verity") && status.contains("every block read so far matched"),
        "{status}"
    );

    // 2.0.0 installs, its whole root reads back through dm-verity on
    // trial, and it is committed.
    vm.send("updater install /media/2.0.0.swb --reboot")
        .unwrap();
    vm.expect(
        "switchback boot stage: slot_b's root is opened through dm-verity",
        BOOT,
    )
    .unwrap();
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    let read = vm.expect("read back as signed in", STEP).unwrap();
    println!("trial read of 2.0.0's root: {read}");
    vm.expect(
        "slot_b (2.0.0) passed its health check and is committed",
        STEP,
    )
    .unwrap();
    vm.expect("READY 2.0.0", STEP).unwrap();

    // 3.0.0 installed, then one byte of its root changed from outside
    // while the machine is off: in the last block of its data, which the
    // boot stage does not read (the kernel and initramfs lie far before
    // it), so only dm-verity can see it.
    vm.send("updater install /media/3.0.0.swb; echo INSTALL EXIT $?; sync")
        .unwrap();
    vm.expect("INSTALL EXIT 0", STEP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    vm.kill();
    let manifest = image_tools::ops::inspect(&bundles[1]).unwrap();
    let verity = manifest.images[0].verity.clone().unwrap();
    change_byte_in_slot(
        &disk,
        bootctl::Slot::A,
        verity.hash_offset - 4096 + 100,
        0x5a,
    );

    let mut vm = app.boot(&disk, &stick);
    vm.expect("switchback boot stage: selected slot_a", BOOT)
        .unwrap();
    vm.expect("RELEASE 3.0.0 RUNNING ON slot_a", BOOT).unwrap();
    // The trial fails on the changed block; 2.0.0 is back, told why.
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    let why = vm.expect("was rolled back", STEP).unwrap();
    assert!(
        why.contains("dm-verity") && why.contains("does not match the release's signed hash tree"),
        "{why}"
    );
    vm.expect("READY 2.0.0", STEP).unwrap();

    // 4.0.0, signed by the vendor's ed25519 key, but its kernel not for
    // the firmware's db: the firmware refuses it, and 2.0.0 is back.
    vm.send("updater install /media/4.0.0.swb --reboot")
        .unwrap();
    let refused = vm.expect("cannot boot slot_a", BOOT).unwrap();
    assert!(refused.contains("ACCESS_DENIED"), "{refused}");
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    let why = vm.expect("was rolled back", STEP).unwrap();
    assert!(why.contains("not signed for Secure Boot"), "{why}");
    vm.expect("READY 2.0.0", STEP).unwrap();

    // 5.0.0, signed and its kernel signed for db, but built without a
    // tree: this stage starts no such release.
    vm.send("updater install /media/5.0.0.swb --reboot")
        .unwrap();
    let refused = vm.expect("cannot boot slot_a", BOOT).unwrap();
    assert!(
        refused.contains("switchback-qemu 5.0.0 has no dm-verity hash tree"),
        "{refused}"
    );
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    let why = vm.expect("was rolled back", STEP).unwrap();
    assert!(why.contains("no dm-verity hash tree"), "{why}");
    vm.expect("READY 2.0.0", STEP).unwrap();
}
