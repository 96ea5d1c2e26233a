//! The guest boots Debian's kernel from its own disk's ESP through the
//! firmware and runs Switchback's static binaries on a real virtio disk.

use bootctl::{BootAttrs, Disk, Slot};
use qemu_tests::guest::{disk_booting, static_binary, Initramfs, Kernel};
use qemu_tests::qemu::Machine;
use std::time::Duration;

#[test]
fn the_guest_selects_the_slot_on_trial_and_persists_the_spent_try() {
    let kernel = Kernel::debian().expect("the Debian kernel package");
    let modules = kernel
        .modules_for(&["virtio_pci", "virtio_blk", "i6300esb"])
        .unwrap();
    let bootctl_bin = static_binary(kernel.arch, "bootctl").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let initrd = dir.path().join("initrd.cpio");
    let ir = Initramfs::new(&kernel).unwrap();
    ir.add(&bootctl_bin, "bin/bootctl").unwrap();
    ir.init(
        &modules,
        r#"i=0; while ! test -b /dev/vda && test $i -lt 200; do sleep 0.1; i=$((i+1)); done
echo "GUEST: disk ready"
bootctl --disk /dev/vda select && echo "GUEST: selected"
bootctl --disk /dev/vda status"#,
    )
    .unwrap();
    ir.pack(&initrd).unwrap();
    disk_booting(&kernel, &initrd, 8 << 20, &disk).unwrap();
    Disk::open(&disk, None, true)
        .unwrap()
        .set_active(Slot::B, 3)
        .unwrap();

    let mut vm = Machine::boot(&[&disk]).unwrap();
    vm.expect("GUEST: disk ready", Duration::from_secs(120))
        .unwrap();
    let chosen = vm.expect("slot_", Duration::from_secs(60)).unwrap();
    assert_eq!(chosen.trim(), "slot_b");
    vm.expect("GUEST: selected", Duration::from_secs(30))
        .unwrap();
    vm.expect("(next)", Duration::from_secs(30)).unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();

    // The try spent in the guest, through the kernel's block layer, is on
    // the disk: one of three, and slot_b is still the next boot.
    let state = Disk::open(&disk, None, false).unwrap().read().unwrap();
    assert!(state.gpt.is_consistent());
    assert_eq!(
        state.attrs()[1],
        BootAttrs {
            priority: 2,
            tries: 2,
            successful: false
        }
    );
}
