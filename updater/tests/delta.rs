//! Delta bundles on real ext4 root file systems a release apart.

mod common;

use bootctl::{BootAttrs, Slot};
use common::*;
use predicates::str::contains;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Files like a root file system's: text-ish, of many sizes.
fn populate(dir: &Path, files: std::ops::Range<u32>, salt: u32) {
    for i in files {
        let sub = dir.join(format!("usr/lib/pkg{}", i % 17));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 2_000 + (i as usize * 7919) % 60_000;
        std::fs::write(sub.join(format!("file{i}.so")), pattern(len, i * 31 + salt)).unwrap();
    }
}

fn ext4(dir: &Path, out: &Path) {
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-T", "default", "-d"])
        .arg(dir)
        .arg(out)
        .arg("24M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
}

/// Two root file systems a release apart: v2 changes 40 files, removes 20,
/// adds 60, and ships 3 MiB of new binaries.
fn releases(dir: &Path) -> (PathBuf, PathBuf) {
    let (r1, r2) = (dir.join("root1"), dir.join("root2"));
    populate(&r1, 0..300, 0);
    populate(&r2, 20..300, 0);
    populate(&r2, 100..140, 99);
    populate(&r2, 300..360, 0);
    std::fs::create_dir_all(r2.join("usr/bin")).unwrap();
    std::fs::write(r2.join("usr/bin/newtool"), pattern(3 << 20, 5)).unwrap();
    let (v1, v2) = (dir.join("v1.img"), dir.join("v2.img"));
    ext4(&r1, &v1);
    ext4(&r2, &v2);
    (v1, v2)
}

fn put_in_slot_a(dev: &Device, image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev.disk)
        .unwrap();
    f.write_all_at(&bytes, dev.layout.slots[0].offset).unwrap();
}

fn device_with_v1() -> (Device, PathBuf, PathBuf) {
    let dev = device_in(tempfile::tempdir().unwrap(), 32);
    let (v1, v2) = releases(dev.dir.path());
    put_in_slot_a(&dev, &v1);
    (dev, v1, v2)
}

fn v2_release(v1: &Path, v2: &Path, delta: bool) -> Release<'static> {
    Release {
        image: std::fs::read(v2).unwrap(),
        base: delta.then(|| v1.to_path_buf()),
        ..release("2.0.0")
    }
}

#[test]
fn delta_installs_the_new_release_from_a_fraction_of_the_bytes() {
    let (dev, v1, v2) = device_with_v1();
    let full = dev.bundle(&v2_release(&v1, &v2, false));
    let full_size = std::fs::metadata(&full).unwrap().len();
    let delta = dev.bundle(&Release {
        version: "2.0.0-delta",
        ..v2_release(&v1, &v2, true)
    });
    let delta_size = std::fs::metadata(&delta).unwrap().len();
    // Against what zstd itself makes of the same pair with the whole base
    // as its reference; the bundle adds a manifest and signature.
    let patch = dev.dir.path().join("v2.patch.zst");
    let st = std::process::Command::new("zstd")
        .args(["-q", "-f", "-3", "--patch-from"])
        .arg(&v1)
        .arg(&v2)
        .arg("-o")
        .arg(&patch)
        .status()
        .unwrap();
    assert!(st.success());
    let patch_size = std::fs::metadata(&patch).unwrap().len();
    eprintln!(
        "delta bundle {delta_size} bytes, zstd --patch-from {patch_size}, full bundle {full_size}"
    );
    assert!(
        delta_size as f64 <= patch_size as f64 * 1.1 + 16384.0,
        "delta {delta_size} vs patch-from {patch_size}"
    );
    assert!(
        delta_size * 2 < full_size,
        "delta {delta_size} bytes, full {full_size}"
    );

    let (a_before, data_before) = (dev.slot(Slot::A), dev.data());
    dev.updater("a")
        .args(["--json", "install"])
        .arg(&delta)
        .assert()
        .success()
        .stdout(contains("\"event\":\"base-checked\""));
    let want = std::fs::read(&v2).unwrap();
    assert!(
        dev.slot(Slot::B)[..want.len()] == want[..],
        "slot_b is not v2"
    );
    assert!(dev.slot(Slot::A) == a_before && dev.data() == data_before);
    assert_eq!(dev.attrs()[1].priority, 2);

    let out = Command::cargo_bin("updater")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_delta_for_another_base_is_refused_before_anything_is_written() {
    let (dev, v1, v2) = device_with_v1();
    let delta = dev.bundle(&v2_release(&v1, &v2, true));
    // The device runs something else: one changed byte in the running slot.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev.disk)
        .unwrap();
    f.write_all_at(b"?", dev.layout.slots[0].offset + 5_000_000)
        .unwrap();
    let before = std::fs::read(&dev.disk).unwrap();
    dev.updater("a")
        .arg("install")
        .arg(&delta)
        .assert()
        .code(56)
        .stderr(contains(
            "this delta applies to another release: the running slot_a does not match the base it was made against (it needs a base whose digest is ",
        ));
    assert!(std::fs::read(&dev.disk).unwrap() == before, "disk written");
}

#[test]
fn a_base_altered_after_the_check_fails_the_install_safely() {
    use updater::events::{Event, Observer};
    struct Alter(PathBuf, u64);
    impl Observer for Alter {
        fn event(&mut self, e: &Event) {
            if let Event::BaseChecked { .. } = e {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.0)
                    .unwrap();
                // Scribble over the whole base: whatever chunk refers to it breaks.
                f.write_all_at(&vec![0x5Au8; 24 << 20], self.1).unwrap();
            }
        }
    }
    let (dev, v1, v2) = device_with_v1();
    let delta = dev.bundle(&v2_release(&v1, &v2, true));
    let err = install_with(
        &dev,
        &delta,
        &mut Alter(dev.disk.clone(), dev.layout.slots[0].offset),
    )
    .unwrap_err();
    assert_eq!(updater::exit_code(&err), 60, "{err:#}");
    assert!(
        format!("{err:#}").contains("the running slot_a changed during the install"),
        "{err:#}"
    );
    assert_eq!(dev.attrs()[1], BootAttrs::UNBOOTABLE);
}

use assert_cmd::Command;
