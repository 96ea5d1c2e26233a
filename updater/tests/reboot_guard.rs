//! No command reboots a machine whose disk it is not running from: with a
//! disk image (a vendor's workstation following the docs), `health` after
//! a failed check, `rollback`, `install --reboot` and `fleet` say what would
//! have happened and carry on as with `--no-reboot`.
//!
//! How a reboot would be seen: as root, each command runs as the first
//! process of a PID namespace of its own (`unshare --pid --fork`), where
//! `reboot(2)` does not restart the machine but kills that process with
//! SIGHUP; as another user, `reboot(2)` fails with EPERM. Either way a
//! missing guard fails the test instead of restarting the machine.

mod common;

use common::*;
use predicates::str::contains;
use serde_json::json;
use std::process::Command;

#[test]
fn a_failed_health_check_on_a_disk_image_does_not_reboot_this_machine() {
    let dev = device();
    dev.set_health(json!({"checks": [{"name": "app-answers", "command": ["false"]}]}));
    dev.install_ok("a", &release("2.0.0"));
    dev.boot();
    dev.updater_guarded("b", &["health"])
        .code(52)
        .stderr(contains("app-answers"))
        .stderr(contains("not rebooting: "))
        .stderr(contains(
            "is a disk image, not the disk this machine runs from",
        ));
}

#[test]
fn rollback_and_install_reboot_on_a_disk_image_do_not_reboot_this_machine() {
    let dev = device();
    dev.make_b_good();
    dev.updater_guarded("a", &["rollback", "--yes"])
        .success()
        .stdout(contains("slot_b boots next"))
        .stderr(contains("not rebooting: "));
    let b = dev.bundle(&release("2.0.0"));
    dev.updater_guarded("b", &["install", "--reboot", b.to_str().unwrap()])
        .success()
        .stdout(contains("2.0.0 installed into slot_a"))
        .stderr(contains("not rebooting: "));
}

#[test]
fn a_block_device_is_rebooted_only_when_the_running_root_is_mounted_from_it() {
    if !switchback_test_support::needs_root("a loop device") {
        return;
    }
    let dev = device();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&dev.disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup: {out:?}");
    let loop_dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(loop_dev.clone());
    let table = bootctl::Disk::open(&dev.disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .table;
    let b = table.entry(bootctl::Slot::B).unique_guid;
    let path = std::path::Path::new(&loop_dev);
    // The slots' GUIDs match the command line, but the running root is not
    // on this device: a copy of the disk (flashed from the same image).
    let on_b = format!("console=ttyS0 root=PARTUUID={b} switchback.slot=slot_b");
    let why = updater::not_the_running_disk(path, &on_b).unwrap();
    assert!(
        why.contains("not the disk the running root file system is mounted from"),
        "{why}"
    );
    let elsewhere = "root=PARTUUID=00000000-0000-0000-0000-000000000001";
    let why = updater::not_the_running_disk(path, elsewhere).unwrap();
    assert!(why.contains("not the disk this machine runs from"), "{why}");
    let why = updater::not_the_running_disk(&dev.disk, &on_b).unwrap();
    assert!(why.contains("is a disk image"), "{why}");
}
