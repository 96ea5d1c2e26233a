//! Both boot stages on their own: each selects a slot, persists the spent
//! try and starts the slot's own kernel; a slot it cannot boot falls back.
//! The Linux stage (PID 1 of its own kernel) kexecs it: on x86-64 through
//! OVMF (`kexec_file_load`), on arm64 through U-Boot's UEFI (Debian's
//! arm64 kernel has only `kexec_load`). The UEFI stage starts it through
//! its EFI stub, checks its signed release, arms the watchdog, and under
//! Secure Boot is itself checked by the firmware.

use bootctl::{BootAttrs, Disk, Slot};
use qemu_tests::guest::Arch;
use qemu_tests::guest::{
    boot_stage_initramfs, disk_booting, disk_with_efi, efi_program, ext4_image, uefi_boot_stage,
    Initramfs, Kernel,
};
use qemu_tests::qemu::{Firmware, Machine, Options};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A slot: an ext4 root with the kernel and an initramfs that says which
/// slot it is and what command line it got, runs `then` and powers off
/// (`None`: no kernel at all).
fn slot_image(dir: &Path, kernel: &Kernel, name: &str, then: Option<&str>) -> PathBuf {
    let root = dir.join(format!("root-{name}"));
    std::fs::create_dir_all(root.join("boot")).unwrap();
    if let Some(then) = then {
        std::fs::copy(&kernel.vmlinuz, root.join("boot/vmlinuz")).unwrap();
        let ir = Initramfs::new(kernel).unwrap();
        ir.init(
            &[],
            &format!("echo \"SLOT {name} RUNNING: $(cat /proc/cmdline)\"\n{then}"),
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

/// The slots' flags on `disk`, as a reader sees them.
fn flags(disk: &Path) -> [BootAttrs; 2] {
    Disk::open(disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .attrs()
}

/// slot_b, on trial with 3 tries, after the one boot that spent a try.
const B_AFTER_ONE_TRY: BootAttrs = BootAttrs {
    priority: 2,
    tries: 2,
    successful: false,
};

fn boot(firmware: Firmware, disk: &Path) -> Machine {
    let opts = Options {
        firmware,
        ..Options::default()
    };
    Machine::start(&[disk], opts).unwrap()
}

/// Which boot stage the ESP holds.
#[derive(Clone, Copy)]
enum Stage {
    /// A kernel of its own with `bootctl` as PID 1, which kexecs the slot's.
    Kexec,
    /// The UEFI program (`bootctl/uefi`), which starts the slot's kernel.
    Uefi,
}

/// The boot stage on the ESP, slot_a and slot_b filled, slot_b on trial.
fn machine_disk(dir: &Path, kernel: &Kernel, b_has_kernel: bool) -> PathBuf {
    machine_disk_with(dir, kernel, b_has_kernel, Stage::Kexec)
}

fn machine_disk_with(dir: &Path, kernel: &Kernel, b_has_kernel: bool, stage: Stage) -> PathBuf {
    machine_disk_then(dir, kernel, b_has_kernel.then_some(""), stage, 3)
}

/// slot_b's initramfs runs `b_then` (`None`: slot_b has no kernel); it is
/// on trial with `b_tries`.
fn machine_disk_then(
    dir: &Path,
    kernel: &Kernel,
    b_then: Option<&str>,
    stage: Stage,
    b_tries: u8,
) -> PathBuf {
    let disk = dir.join("disk.img");
    let slots = slot_size(kernel.arch).1;
    let p = match stage {
        Stage::Kexec => {
            let initrd = dir.join("boot-stage.cpio");
            boot_stage_initramfs(kernel, &initrd).unwrap();
            disk_booting(kernel, &initrd, slots, &disk).unwrap()
        }
        Stage::Uefi => {
            let efi = uefi_boot_stage(kernel.arch).unwrap();
            disk_with_efi(kernel.arch, &efi, slots, &disk).unwrap()
        }
    };
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for (slot, name, then) in [(0, "A", Some("")), (1, "B", b_then)] {
        let img = std::fs::read(slot_image(dir, kernel, name, then)).unwrap();
        f.write_all_at(&img, p.slots[slot].offset).unwrap();
    }
    Disk::open(&disk, None, true)
        .unwrap()
        .set_active(Slot::B, b_tries)
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
    let attrs = flags(&disk);
    assert_eq!(attrs[1], B_AFTER_ONE_TRY);
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

/// One kernel per boot: the UEFI stage selects slot_b, spends its try and
/// starts slot_b's own kernel through its EFI stub, with the initramfs and
/// the command line the kexec stage gives it. Prints the boot's timings, to
/// set beside `boots_the_slot_on_trial_through_kexec`'s.
#[test]
fn the_uefi_stage_boots_the_slot_on_trial_with_one_kernel() {
    uefi_stage_boots_the_slot_on_trial(Firmware::Ovmf, "60 s");
}

/// The same program for arm64, started by EDK2 (AAVMF), which drives the
/// watchdog as OVMF does.
#[test]
fn on_arm64_edk2_the_uefi_stage_boots_the_slot_on_trial() {
    uefi_stage_boots_the_slot_on_trial(Firmware::Aavmf, "60 s");
}

/// And by U-Boot's UEFI, which has no PCI root bridge protocol: the stage
/// finds the watchdog through the device tree's PCI host instead.
#[test]
fn on_arm64_u_boot_the_uefi_stage_boots_the_slot_on_trial() {
    uefi_stage_boots_the_slot_on_trial(Firmware::UBoot, "60 s");
}

fn uefi_stage_boots_the_slot_on_trial(firmware: Firmware, watchdog: &str) {
    let kernel = Kernel::debian_for(firmware.arch()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = machine_disk_with(dir.path(), &kernel, true, Stage::Uefi);
    let start = std::time::Instant::now();
    let mut vm = boot(firmware, &disk);
    vm.expect(firmware.starts_loader(), Duration::from_secs(120))
        .unwrap();
    let loader = start.elapsed();
    vm.expect(
        "switchback boot stage: selected slot_b",
        Duration::from_secs(60),
    )
    .unwrap();
    let selected = start.elapsed();
    let memory = vm
        .expect("switchback boot stage: memory:", Duration::from_secs(60))
        .unwrap();
    println!("{firmware:?}, unverified: {memory}");
    // Armed just before the kernel starts, so the release gets all of it.
    let armed = vm.expect("watchdog", Duration::from_secs(60)).unwrap();
    assert!(armed.contains(watchdog), "{armed}");
    vm.expect(
        "switchback boot stage: booting slot_b",
        Duration::from_secs(60),
    )
    .unwrap();
    let handed_over = start.elapsed();
    let running = vm
        .expect("SLOT B RUNNING:", Duration::from_secs(120))
        .unwrap();
    let slot = start.elapsed();
    println!(
        "{firmware:?}, UEFI stage: power-on to: the firmware starting the ESP's loader {:.1} s, the selection {:.1} s, the kernel started {:.1} s, the slot's userspace {:.1} s (the stage's share {:.0}%)",
        loader.as_secs_f64(),
        selected.as_secs_f64(),
        handed_over.as_secs_f64(),
        slot.as_secs_f64(),
        100.0 * (handed_over - loader).as_secs_f64() / slot.as_secs_f64()
    );
    let console = match firmware.arch() {
        Arch::X86_64 => "console=ttyS0",
        Arch::Arm64 => "console=ttyAMA0",
    };
    for want in ["switchback.slot=slot_b", "root=PARTUUID=", console] {
        assert!(running.contains(want), "{want} in {running}");
    }
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let attrs = flags(&disk);
    assert_eq!(attrs[1], B_AFTER_ONE_TRY);
}

/// A slot on trial whose root has no kernel: the UEFI stage marks it bad,
/// boots the other slot, and tells that kernel why.
#[test]
fn the_uefi_stage_falls_back_from_a_slot_without_a_kernel() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = machine_disk_with(dir.path(), &kernel, false, Stage::Uefi);
    let mut vm = boot(Firmware::Ovmf, &disk);
    let why = vm
        .expect("cannot boot slot_b", Duration::from_secs(120))
        .unwrap();
    assert!(why.contains("/boot/vmlinuz"), "{why}");
    let running = vm
        .expect("SLOT A RUNNING:", Duration::from_secs(120))
        .unwrap();
    assert!(
        running.contains("switchback.start_failed=slot_b:no-kernel:2"),
        "{running}"
    );
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let attrs = flags(&disk);
    assert_eq!(attrs[1], BootAttrs::UNBOOTABLE);
}

/// A release that hangs before it takes the watchdog over: the watchdog the
/// UEFI stage armed resets the machine, and with its one try spent, slot_b
/// gives way to slot_a.
#[test]
fn after_the_uefi_stage_a_hang_is_reset_by_the_watchdog() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = machine_disk_then(
        dir.path(),
        &kernel,
        Some("echo SLOT B HANGS; while :; do sleep 3600; done"),
        Stage::Uefi,
        1,
    );
    let opts = Options {
        reboots: true,
        ..Options::default()
    };
    let mut vm = Machine::start(&[&disk], opts).unwrap();
    vm.expect(
        "switchback boot stage: selected slot_b",
        Duration::from_secs(120),
    )
    .unwrap();
    vm.expect("SLOT B HANGS", Duration::from_secs(120)).unwrap();
    let hung = std::time::Instant::now();
    vm.expect(
        "switchback boot stage: selected slot_a",
        Duration::from_secs(180),
    )
    .unwrap();
    let reset = hung.elapsed();
    println!(
        "UEFI stage: the hang was reset {:.0} s after slot_b's init hung",
        reset.as_secs_f64()
    );
    assert!(
        reset > Duration::from_secs(30),
        "reset after {reset:?}: too soon for a 60 s watchdog"
    );
    vm.expect("SLOT A RUNNING:", Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let attrs = flags(&disk);
    assert_eq!((attrs[1].tries, attrs[1].successful), (0, false));
}

/// The vendor's key for the signed slots below.
fn vendor_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x17; 32])
}

/// slot_a and slot_b as signed releases (their ext4 images, each with the
/// signed head of its bundle as the slot trailer, as `updater install`
/// leaves a slot), slot_b on trial and first changed by `change_b` (its
/// image, and whether to write its trailer), the UEFI stage on the ESP
/// trusting the vendor's key.
fn signed_machine_disk(
    dir: &Path,
    kernel: &Kernel,
    change_b: impl FnOnce(&mut Vec<u8>) -> bool,
) -> PathBuf {
    signed_machine_disk_staged(dir, kernel, Stage::Uefi, change_b)
}

/// `signed_machine_disk` with either stage: the Linux one is its kernel
/// with its initramfs keyed by `image-tools stage --initrd`, as one EFI
/// program.
fn signed_machine_disk_staged(
    dir: &Path,
    kernel: &Kernel,
    stage: Stage,
    change_b: impl FnOnce(&mut Vec<u8>) -> bool,
) -> PathBuf {
    let efi = dir.join("BOOTX64.EFI");
    match stage {
        Stage::Uefi => keyed_stage(kernel.arch, &efi),
        Stage::Kexec => {
            let plain = dir.join("boot-stage.cpio");
            boot_stage_initramfs(kernel, &plain).unwrap();
            let keyed = dir.join("boot-stage-keyed.cpio");
            image_tools::stage::initrd_with_keyring(
                kernel.arch,
                &plain,
                &[vendor_key().verifying_key().to_bytes()],
                Default::default(),
                &keyed,
            )
            .unwrap();
            efi_program(kernel, &keyed, &efi).unwrap();
        }
    }
    signed_machine_disk_with(dir, [kernel, kernel], &efi, change_b)
}

/// The UEFI stage trusting the vendor's key, at `efi`.
fn keyed_stage(arch: Arch, efi: &Path) {
    image_tools::stage::with_keyring(
        arch,
        &uefi_boot_stage(arch).unwrap(),
        &[vendor_key().verifying_key().to_bytes()],
        Default::default(),
        efi,
    )
    .unwrap();
}

/// The keyed stage is the stage as built plus its keyring: every section
/// the linker made stays where it was, `.data` too, which on arm64 has no
/// bytes in the file (only zero-initialised statics). Dropped, as binutils'
/// objcopy did, no firmware zeroes those statics, and U-Boot started the
/// stage with the last boot's bytes in them: it crashed after every warm
/// reset.
#[test]
fn the_keyed_stage_keeps_every_section_of_the_stage_as_built() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::X86_64, Arch::Arm64] {
        let built = uefi_boot_stage(arch).unwrap();
        let keyed = dir.path().join(format!("{arch}.efi"));
        keyed_stage(arch, &keyed);
        let before = image_tools::pe::sections(&std::fs::read(&built).unwrap(), &built).unwrap();
        let after = image_tools::pe::sections(&std::fs::read(&keyed).unwrap(), &keyed).unwrap();
        assert!(
            before.iter().any(|s| s.name.starts_with(".data")),
            "{arch}: the stage as built has no .data: {before:?}"
        );
        assert_eq!(after[..before.len()], before[..], "{arch}");
        assert_eq!(after.len(), before.len() + 1, "{arch}: {after:?}");
        assert!(
            after[before.len()].name.starts_with(".keyring"),
            "{arch}: {after:?}"
        );
    }
}

/// `signed_machine_disk` with `efi` as the stage and each slot's kernel
/// its own.
fn signed_machine_disk_with(
    dir: &Path,
    kernels: [&Kernel; 2],
    efi: &Path,
    change_b: impl FnOnce(&mut Vec<u8>) -> bool,
) -> PathBuf {
    use image_tools::bundle::{self, BuildOptions, ImageSource, Keyring};
    let key = vendor_key();
    let arch = kernels[0].arch;
    let disk = dir.join("disk.img");
    let p = disk_with_efi(arch, efi, slot_size(arch).1, &disk).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let keyring = Keyring::from_verifying_keys([key.verifying_key()]);
    let mut change_b = Some(change_b);
    for (slot, name, version) in [(0, "A", "1.0.0"), (1, "B", "2.0.0")] {
        let img = slot_image(dir, kernels[slot], name, Some(""));
        let out = dir.join(format!("{name}.swb"));
        let opts = BuildOptions {
            compatible: "switchback-qemu".into(),
            version: version.into(),
            security_version: 1,
            data_schema: None,
            build_time: 1,
            level: 3,
            chunk_size: 4 << 20,
            threads: 2,
            migrations: Vec::new(),
            base: None,
            verity: false,
        };
        let src = [ImageSource {
            target: "rootfs".into(),
            path: img.clone(),
        }];
        bundle::build(&opts, &src, &[&key], &out, &mut |_| {}).unwrap();
        let head = image_tools::ops::open(&out)
            .unwrap()
            .verify(&keyring)
            .unwrap()
            .head;
        let mut bytes = std::fs::read(&img).unwrap();
        let trailer = match change_b.take_if(|_| slot == 1) {
            Some(change) => change(&mut bytes),
            None => true,
        };
        let at = p.slots[slot];
        f.write_all_at(&bytes, at.offset).unwrap();
        if trailer {
            bundle::trailer::write(&f, at.offset, at.size, &head).unwrap();
        }
    }
    Disk::open(&disk, None, true)
        .unwrap()
        .set_active(Slot::B, 3)
        .unwrap();
    disk
}

/// With a keyring, the stage starts a slot only once its signed trailer
/// verifies, and every byte it reads from the slot matched its chunk's
/// signed hash.
#[test]
fn the_uefi_stage_starts_a_slot_whose_signed_release_verifies() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = signed_machine_disk(dir.path(), &kernel, |_| true);
    let mut vm = boot(Firmware::Ovmf, &disk);
    vm.expect(
        "switchback boot stage: trusting 1 key(s)",
        Duration::from_secs(120),
    )
    .unwrap();
    vm.expect(
        "switchback boot stage: slot_b holds switchback-qemu 2.0.0, signed by a trusted key",
        Duration::from_secs(60),
    )
    .unwrap();
    let memory = vm
        .expect("switchback boot stage: memory:", Duration::from_secs(60))
        .unwrap();
    println!("Ovmf, verified: {memory}");
    vm.expect("SLOT B RUNNING:", Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
}

/// A byte of slot_b's kernel changed after its install (as a bit flip of
/// the medium or someone with the disk would): its chunk no longer matches
/// the signed release, so slot_b is marked bad and slot_a told why. A
/// slot with no signed release at all is refused the same way.
#[test]
fn the_uefi_stage_refuses_a_changed_or_unsigned_slot() {
    refuses_a_changed_or_unsigned_slot(Stage::Uefi);
}

/// The Linux stage (U-Boot without UEFI, or a UKI) runs the same checks
/// when its initramfs has a keyring, and kexecs only what matched.
#[test]
fn the_linux_stage_refuses_a_changed_or_unsigned_slot() {
    refuses_a_changed_or_unsigned_slot(Stage::Kexec);
}

fn refuses_a_changed_or_unsigned_slot(stage: Stage) {
    let kernel = Kernel::debian().unwrap();
    let vmlinuz = std::fs::read(&kernel.vmlinuz).unwrap();
    let probe = vmlinuz[0x4000..0x4040].to_vec();
    type Change = Box<dyn FnOnce(&mut Vec<u8>) -> bool>;
    let cases: [(&str, Change); 2] = [
        (
            "tampered",
            Box::new(move |img: &mut Vec<u8>| {
                let at = img
                    .windows(probe.len())
                    .position(|w| w == probe.as_slice())
                    .expect("the kernel's bytes in slot_b's image");
                img[at + 7] ^= 0x01;
                true
            }),
        ),
        ("unsigned", Box::new(|_: &mut Vec<u8>| false)),
    ];
    for (what, change) in cases {
        let dir = tempfile::tempdir().unwrap();
        let disk = signed_machine_disk_staged(dir.path(), &kernel, stage, change);
        let mut vm = boot(Firmware::Ovmf, &disk);
        vm.expect(
            "switchback boot stage: trusting 1 key(s)",
            Duration::from_secs(120),
        )
        .unwrap();
        let why = vm
            .expect("cannot boot slot_b", Duration::from_secs(120))
            .unwrap();
        println!("{what}: {why}");
        // Slot A is started after the same checks.
        vm.expect(
            "switchback boot stage: slot_a holds switchback-qemu 1.0.0, signed by a trusted key",
            Duration::from_secs(120),
        )
        .unwrap();
        let running = vm
            .expect("SLOT A RUNNING:", Duration::from_secs(120))
            .unwrap();
        assert!(
            running.contains(&format!("switchback.start_failed=slot_b:{what}:0")),
            "{running}"
        );
        vm.wait_exit(Duration::from_secs(60)).unwrap();
        let attrs = flags(&disk);
        assert_eq!(attrs[1], BootAttrs::UNBOOTABLE, "{what}");
    }
}

/// A stage whose keyring requires two signers (a keyring `threshold`,
/// carried in its signed `.policy` section) starts no slot signed by one of
/// them alone, as the updater installs none.
#[test]
fn a_stage_that_requires_two_signers_starts_no_slot_signed_by_one() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let efi = dir.path().join("BOOTX64.EFI");
    let manager = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    image_tools::stage::with_keyring(
        kernel.arch,
        &uefi_boot_stage(kernel.arch).unwrap(),
        &[
            vendor_key().verifying_key().to_bytes(),
            manager.verifying_key().to_bytes(),
        ],
        image_tools::bundle::stage_sections::Policy {
            require_verity: false,
            threshold: 2,
        },
        &efi,
    )
    .unwrap();
    let disk = signed_machine_disk_with(dir.path(), [&kernel, &kernel], &efi, |_| true);
    let mut vm = boot(Firmware::Ovmf, &disk);
    vm.expect(
        "switchback boot stage: trusting 2 key(s), 2 signature(s) required",
        Duration::from_secs(120),
    )
    .unwrap();
    for slot in ["slot_b", "slot_a"] {
        let why = vm
            .expect(&format!("cannot boot {slot}"), Duration::from_secs(60))
            .unwrap();
        assert!(why.contains("signed by 1 of the 2 trusted keys"), "{why}");
    }
    vm.expect("no slot could be booted", Duration::from_secs(60))
        .unwrap();
}

/// Under Secure Boot (OVMF's snakeoil build: the snakeoil certificate is
/// its db) the firmware starts the stage only when `image-tools stage`
/// signed it for db, and the stage's LoadImage starts a slot's kernel only
/// when that is signed for db too: slot_b's kernel, signed by Debian
/// alone, is refused by the firmware and slot_a's, signed for db as a
/// vendor would (docs/boot-flow.md, "Secure Boot"), boots, told why.
#[test]
fn under_secure_boot_only_what_is_signed_for_db_starts() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, cert) = qemu_tests::guest::snakeoil_db(d).unwrap();
    let cert = cert.as_path();
    let signed_vmlinuz = d.join("vmlinuz.signed");
    std::fs::copy(&kernel.vmlinuz, &signed_vmlinuz).unwrap();
    image_tools::secureboot::sign(&signed_vmlinuz, &key, cert).unwrap();
    let signed_kernel = Kernel {
        arch: kernel.arch,
        vmlinuz: signed_vmlinuz,
        modules: kernel.modules.clone(),
    };

    // Not signed: the firmware refuses the stage itself.
    let unsigned = d.join("unsigned");
    std::fs::create_dir(&unsigned).unwrap();
    let efi = unsigned.join("BOOTX64.EFI");
    keyed_stage(kernel.arch, &efi);
    let disk = signed_machine_disk_with(&unsigned, [&signed_kernel, &kernel], &efi, |_| true);
    let mut vm = boot(Firmware::OvmfSecureBoot, &disk);
    let refused = vm
        .expect("BdsDxe: failed to load", Duration::from_secs(180))
        .unwrap();
    println!("unsigned stage: {refused}");
    assert!(refused.contains("Access Denied"), "{refused}");
    drop(vm);

    // Signed by image-tools stage: it starts, refuses slot_b's kernel
    // through the firmware, and starts slot_a's.
    let signed = d.join("signed");
    std::fs::create_dir(&signed).unwrap();
    let efi = signed.join("BOOTX64.EFI");
    let pem = d.join("vendor.pem");
    std::fs::write(
        &pem,
        ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &vendor_key().verifying_key(),
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        )
        .unwrap(),
    )
    .unwrap();
    let stage = image_tools::stage::StageOptions {
        arch: kernel.arch,
        efi: Some(uefi_boot_stage(kernel.arch).unwrap()),
        initrd: None,
        trust: image_tools::cli::Trust {
            public: Some(pem),
            keyring: None,
        },
        require_verity: false,
        db: image_tools::secureboot::DbKey {
            db_key: Some(key.clone()),
            db_cert: Some(cert.to_path_buf()),
        },
        out: efi.clone(),
    };
    image_tools::stage::build(&stage).unwrap();
    let disk = signed_machine_disk_with(&signed, [&signed_kernel, &kernel], &efi, |_| true);
    let mut vm = boot(Firmware::OvmfSecureBoot, &disk);
    vm.expect(
        "switchback boot stage: slot_b holds switchback-qemu 2.0.0, signed by a trusted key",
        Duration::from_secs(180),
    )
    .unwrap();
    let why = vm
        .expect("cannot boot slot_b", Duration::from_secs(60))
        .unwrap();
    assert!(
        why.contains("the firmware refused the kernel (LoadImage): ACCESS_DENIED"),
        "{why}"
    );
    let running = vm
        .expect("SLOT A RUNNING:", Duration::from_secs(120))
        .unwrap();
    assert!(
        running.contains(&format!(
            "switchback.start_failed=slot_b:load-image:{}",
            0x8000_0000_0000_000f_u64
        )),
        "{running}"
    );
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let attrs = flags(&disk);
    assert!(!attrs[1].is_bootable(), "slot_b still bootable: {attrs:?}");
}

/// The Linux stage as a UKI signed for db, under Secure Boot: its kernel
/// (Debian's 6.1) locks itself down, the stage says so, and
/// `kexec_file_load` then starts only a slot kernel signed by a key of
/// that kernel's own keyrings, after the stage's checks passed: slot_b's
/// kernel, its signature stripped, is refused (ENODATA), and so is slot_a's,
/// Debian's kernel as Debian signed it, whose key Debian's kernel does not
/// hold (ENOKEY; as it does not hold the firmware's db key either). Nothing
/// unverified is started; a vendor's stage kernel must carry the key its
/// slot kernels are signed with (docs/boot-flow.md, "Secure Boot").
#[test]
fn under_secure_boot_the_locked_down_linux_stage_kexecs_no_kernel_its_keyrings_do_not_vouch_for() {
    let kernel = Kernel::debian().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, cert) = qemu_tests::guest::snakeoil_db(d).unwrap();
    let unsigned = d.join("vmlinuz.unsigned");
    std::fs::copy(&kernel.vmlinuz, &unsigned).unwrap();
    let stripped = std::process::Command::new("sbattach")
        .arg("--remove")
        .arg(&unsigned)
        .status()
        .expect("sbattach (apt-get install sbsigntool)");
    assert!(stripped.success());
    let unsigned = Kernel {
        arch: kernel.arch,
        vmlinuz: unsigned,
        modules: kernel.modules.clone(),
    };

    let plain = d.join("boot-stage.cpio");
    boot_stage_initramfs(&kernel, &plain).unwrap();
    let keyed = d.join("boot-stage-keyed.cpio");
    image_tools::stage::initrd_with_keyring(
        kernel.arch,
        &plain,
        &[vendor_key().verifying_key().to_bytes()],
        Default::default(),
        &keyed,
    )
    .unwrap();
    let efi = d.join("BOOTX64.EFI");
    efi_program(&kernel, &keyed, &efi).unwrap();
    image_tools::secureboot::sign(&efi, &key, &cert).unwrap();
    let disk = signed_machine_disk_with(d, [&kernel, &unsigned], &efi, |_| true);
    let mut vm = boot(Firmware::OvmfSecureBoot, &disk);
    let checked = vm
        .expect(
            "switchback boot stage: started by UEFI firmware",
            Duration::from_secs(240),
        )
        .unwrap();
    assert!(checked.ends_with("kernel lockdown: integrity"), "{checked}");
    vm.expect(
        "switchback boot stage: slot_b holds switchback-qemu 2.0.0, signed by a trusted key",
        Duration::from_secs(120),
    )
    .unwrap();
    let why = vm
        .expect("cannot boot slot_b", Duration::from_secs(60))
        .unwrap();
    assert!(why.contains("kexec_file_load: No data available"), "{why}");
    let why = vm
        .expect("cannot boot slot_a", Duration::from_secs(120))
        .unwrap();
    assert!(
        why.contains("kexec_file_load: Required key not available"),
        "{why}"
    );
    vm.expect(
        "switchback boot stage: FAILED: no slot could be booted",
        Duration::from_secs(30),
    )
    .unwrap();
    drop(vm);
    assert!(!flags(&disk)[1].is_bootable(), "{:?}", flags(&disk));
}
