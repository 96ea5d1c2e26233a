//! The `bootctl` command on image files, and interop with sgdisk and sfdisk.

use assert_cmd::Command;
use bootctl::provision::{self, Layout};
use std::path::{Path, PathBuf};

fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    provision::create(
        &path,
        Layout {
            esp_size: 0,
            slot_size: 2 << 20,
            data_size: 1 << 20,
            sector_size: 512,
        },
    )
    .unwrap();
    path
}

fn bootctl(disk: &Path) -> Command {
    let mut cmd = Command::cargo_bin("bootctl").unwrap();
    cmd.arg("--disk").arg(disk);
    cmd
}

fn tool(name: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{name} is needed for interop tests (apt-get install gdisk fdisk): {e}")
        });
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(disk: &Path) -> serde_json::Value {
    let out = bootctl(disk).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let v = status_json(&d);
    assert_eq!(v["slots"][0]["name"], "slot_a");
    assert_eq!(v["slots"][0]["priority"], 1);
    assert_eq!(v["slots"][0]["successful"], true);
    assert_eq!(v["slots"][1]["name"], "slot_b");
    assert_eq!(v["slots"][1]["priority"], 0);
    assert_eq!(v["next"], "slot_a");
    assert!(v.get("booted").is_none());
    let v = serde_json::from_slice::<serde_json::Value>(
        &bootctl(&d)
            .args(["--booted-slot", "a", "status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["booted"], "slot_a");
}

#[test]
fn set_active_is_valid_for_sgdisk_and_sfdisk_reads_the_bits() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    bootctl(&d)
        .args(["set-active", "b", "--tries", "5"])
        .assert()
        .success();
    let d_str = d.to_str().unwrap();
    assert!(tool("sgdisk", &["-v", d_str]).contains("No problems found"));
    let table: serde_json::Value =
        serde_json::from_str(&tool("sfdisk", &["--json", d_str])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let b = parts.iter().find(|p| p["name"] == "slot_b").unwrap();
    // priority 2 = bit 49; tries 5 = bits 52 and 54; not successful.
    assert_eq!(b["attrs"], "GUID:49,52,54");
    let a = parts.iter().find(|p| p["name"] == "slot_a").unwrap();
    // the factory slot keeps priority 1 (bit 48) and successful (56).
    assert_eq!(a["attrs"], "GUID:48,56");
}

#[test]
fn reads_bits_that_sgdisk_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let d_str = d.to_str().unwrap();
    // slot_b: priority 5 (48, 50), tries 2 (53), not successful.
    tool(
        "sgdisk",
        &["-A", "2:set:48", "-A", "2:set:50", "-A", "2:set:53", d_str],
    );
    let v = status_json(&d);
    assert_eq!(v["slots"][1]["priority"], 5);
    assert_eq!(v["slots"][1]["tries"], 2);
    assert_eq!(v["slots"][1]["successful"], false);
    assert_eq!(v["next"], "slot_b");
    // select spends one of those tries, persistently.
    bootctl(&d)
        .arg("select")
        .assert()
        .success()
        .stdout("slot_b\n");
    assert_eq!(status_json(&d)["slots"][1]["tries"], 1);
}

#[test]
fn bad_disks_get_distinct_errors_and_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], i32, &str); 3] = [
        (
            "missing",
            &["-c", "2:other"],
            12,
            "no partition named \"slot_b\"",
        ),
        ("duplicate", &["-c", "3:slot_a"], 13, "appears 2 times"),
        ("nogpt", &["-Z"], 11, "no valid GPT"),
    ];
    for (name, sgdisk_args, code, message) in cases {
        let d = dir.path().join(format!("{name}.img"));
        std::fs::copy(disk(dir.path()), &d).unwrap();
        let mut args = sgdisk_args.to_vec();
        args.push(d.to_str().unwrap());
        tool("sgdisk", &args);
        let before = std::fs::read(&d).unwrap();
        let out = bootctl(&d).args(["set-active", "b"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert!(
            err.contains(message) && err.lines().count() == 1,
            "{name}: {err}"
        );
        assert!(
            std::fs::read(&d).unwrap() == before,
            "{name}: disk was written"
        );
    }
}

#[test]
fn refusals_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    bootctl(&d).arg("mark-good").assert().code(16);
    bootctl(&d)
        .args(["--booted-slot", "a", "rollback"])
        .assert()
        .code(15)
        .stderr(predicates::str::contains(
            "slot_b is not a successful release",
        ));
    bootctl(&d).args(["set-active", "c"]).assert().code(2);
    bootctl(&d)
        .args(["set-active", "b", "--tries", "0"])
        .assert()
        .code(2);
    bootctl(Path::new("/nonexistent/disk.img"))
        .arg("status")
        .assert()
        .code(10)
        .stderr(predicates::str::contains("/nonexistent/disk.img"));
}

#[test]
fn technician_rollback_after_a_good_update() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    bootctl(&d).args(["set-active", "b"]).assert().success();
    bootctl(&d)
        .args(["select"])
        .assert()
        .success()
        .stdout("slot_b\n");
    bootctl(&d)
        .args(["--booted-slot", "b", "mark-good"])
        .assert()
        .success();
    bootctl(&d)
        .args(["--booted-slot", "b", "rollback"])
        .assert()
        .success()
        .stdout("slot_a boots next\n");
    assert_eq!(status_json(&d)["next"], "slot_a");
    bootctl(&d)
        .args(["--booted-slot", "a", "mark-bad", "b"])
        .assert()
        .success();
    assert_eq!(status_json(&d)["slots"][1]["priority"], 0);
}

/// A loop device over a disk image, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path, sector_size: u64) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector_size.to_string()])
            .arg(image)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn flips_on_block_devices_with_512_and_4096_byte_sectors() {
    if !switchback_test_support::needs_root("loop devices") {
        return;
    }
    for sector in [512u64, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        provision::create(
            &image,
            Layout {
                esp_size: 0,
                slot_size: 2 << 20,
                data_size: 1 << 20,
                sector_size: sector,
            },
        )
        .unwrap();
        let dev = Loop::attach(&image, sector);
        // An image's --sector-size that contradicts the device is refused.
        let other = if sector == 512 { "4096" } else { "512" };
        bootctl(Path::new(&dev.0))
            .args(["--sector-size", other, "status"])
            .assert()
            .code(2)
            .stderr(predicates::str::contains(
                "disagrees with the block device's own",
            ));
        let v = status_json(Path::new(&dev.0));
        // The kernel's sector size (BLKSSZGET), not a guess from the content.
        assert_eq!(v["sector_size"], sector, "{}", dev.0);
        bootctl(Path::new(&dev.0))
            .args(["set-active", "b"])
            .assert()
            .success();
        bootctl(Path::new(&dev.0))
            .arg("select")
            .assert()
            .success()
            .stdout("slot_b\n");
        drop(dev);
        // What was written through the device is on the image, both copies valid.
        let mut disk = bootctl::Disk::open(&image, Some(sector), false).unwrap();
        let state = disk.read().unwrap();
        assert!(state.gpt.is_consistent());
        assert_eq!(
            state.attrs()[1],
            bootctl::BootAttrs {
                priority: 2,
                tries: 2,
                successful: false
            }
        );
    }
}

/// Rewrites partition `index` (0-based) of a disk image to span
/// `first..=last`, with valid CRCs in both copies: a hostile table.
fn respan(path: &Path, index: usize, first: u64, last: u64) {
    let mut disk = bootctl::Disk::open(path, Some(512), true).unwrap();
    let gpt = bootctl::table::Gpt::read(disk.device(), 512).unwrap();
    let mut copy = gpt.current().clone();
    let at = index * copy.header.entry_size as usize;
    copy.entries[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
    copy.entries[at + 40..at + 48].copy_from_slice(&last.to_le_bytes());
    gpt.write_entries(disk.device(), &copy.entries).unwrap();
}

#[test]
fn hostile_tables_are_refused_by_every_verb_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = disk(dir.path());
    let gpt = {
        let mut d = bootctl::Disk::open(&fresh, Some(512), false).unwrap();
        bootctl::table::Gpt::read(d.device(), 512).unwrap()
    };
    let h = gpt.current().header.clone();
    let entries = gpt.current().entries();
    let (a, b, data) = (&entries[0], &entries[1], &entries[2]);
    let cases: [(&str, usize, u64, u64, &str); 5] = [
        (
            "slot_b over slot_a",
            1,
            a.last_lba - 10,
            b.last_lba,
            "overlap",
        ),
        (
            "slot_b over data",
            1,
            b.first_lba,
            data.first_lba + 1,
            "overlap",
        ),
        (
            "slot_a over the GPT",
            0,
            1,
            a.last_lba,
            "outside the usable LBAs",
        ),
        (
            "data past the end",
            2,
            data.first_lba,
            h.last_usable_lba + 8,
            "outside the usable LBAs",
        ),
        (
            "slot_b backwards",
            1,
            b.last_lba,
            b.first_lba,
            "before it starts",
        ),
    ];
    for (name, index, first, last, message) in cases {
        let d = dir.path().join("hostile.img");
        std::fs::copy(&fresh, &d).unwrap();
        respan(&d, index, first, last);
        let before = std::fs::read(&d).unwrap();
        for verb in [
            &["set-active", "b"][..],
            &["mark-good", "a"],
            &["mark-bad", "b"],
            &["select"],
            &["status"],
        ] {
            let out = bootctl(&d)
                .args(["--booted-slot", "a"])
                .args(verb)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(18), "{name}, {verb:?}: {err}");
            assert!(
                err.contains("partition table is unsafe") && err.contains(message),
                "{name}, {verb:?}: {err}"
            );
            assert!(std::fs::read(&d).unwrap() == before, "{name}: written");
        }
    }
}

#[test]
fn a_directory_as_the_disk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    bootctl(dir.path())
        .arg("status")
        .assert()
        .code(10)
        .stderr(predicates::str::contains("not a disk or disk image"));
}
