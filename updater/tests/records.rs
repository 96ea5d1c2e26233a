//! Records cannot be replayed or bypassed: the slots' signed records win
//! over an older state file, and a rollback past the security floor takes
//! a word of its own and is recorded.

mod common;

use common::*;
use predicates::str::contains;

/// Installs `r` from `booted` into the other slot, boots it, commits it.
fn commit(dev: &Device, booted: &str, r: &Release) {
    dev.install_ok(booted, r);
    let now = letter(dev.boot());
    assert_ne!(now, booted);
    dev.health_ok(now);
}

#[test]
fn an_older_state_file_neither_hides_the_signed_release_nor_lets_a_downgrade_in() {
    let dev = device();
    commit(&dev, "a", &release("2.0.0"));
    let state = dev.dir.path().join("state/state.json");
    let old = std::fs::read(&state).unwrap();
    commit(&dev, "b", &release("3.0.0"));
    commit(&dev, "a", &release("4.0.0"));
    // The state file replaced by its copy from the 2.0.0 days.
    std::fs::write(&state, &old).unwrap();

    let status = dev
        .updater("b")
        .args(["status", "--json"])
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(s["slots"][1]["version"], "4.0.0", "{s}");
    assert_eq!(s["slots"][0]["version"], "3.0.0", "{s}");
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains(
            "the state file says slot_b holds 2.0.0, its signed record on the disk says 4.0.0"
        ),
        "{warnings}"
    );
    dev.updater("b")
        .arg("install")
        .arg(dev.bundle(&release("3.5.0")))
        .assert()
        .code(43)
        .stderr(contains("older than the running 4.0.0"));
}

#[test]
fn a_rollback_below_the_security_floor_takes_its_own_word_and_is_recorded() {
    let dev = device();
    commit(&dev, "a", &release("1.0.0"));
    let fixed = Release {
        security_version: 2,
        ..release("2.0.0")
    };
    commit(&dev, "b", &fixed);
    let flags = dev.attrs();
    dev.updater("a")
        .args(["rollback", "--yes", "--no-reboot"])
        .assert()
        .code(63)
        .stderr(contains(
            "slot_b holds 1.0.0 (security version 1), below this device's security floor 2",
        ))
        .stderr(contains("--below-security-floor"));
    assert_eq!(dev.attrs(), flags, "the flags changed");
    dev.updater("a")
        .args(["rollback", "--yes", "--no-reboot", "--below-security-floor"])
        .assert()
        .success()
        .stdout(contains("slot_b boots next"));
    assert_eq!(letter(dev.boot()), "b");
    let last = dev.state()["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "rollback-below-security-floor", "{last}");
    assert_eq!(last["version"], "1.0.0", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("below the security floor 2"),
        "{last}"
    );
}

#[test]
fn status_spells_outcomes_as_history_and_json_do() {
    let dev = device();
    dev.install_ok("a", &release("2.0.0"));
    dev.updater("a")
        .arg("status")
        .assert()
        .success()
        .stdout(contains("last install: 2.0.0 into slot_b: installed"));
    dev.set_health(serde_json::json!({"checks": [{"name": "app", "command": ["false"]}]}));
    dev.boot();
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52);
    dev.updater("a")
        .arg("status")
        .assert()
        .success()
        .stdout(contains("last install: 2.0.0 into slot_b: health-failed"));
    assert_eq!(dev.state()["last_install"]["outcome"], "health-failed");
}

#[test]
fn a_release_whose_record_does_not_verify_counts_as_below_the_floor() {
    let dev = device();
    commit(&dev, "a", &release("1.0.0"));
    let fixed = Release {
        security_version: 2,
        ..release("2.0.0")
    };
    commit(&dev, "b", &fixed);
    // slot_b's signed record altered, and the state file lost: nothing
    // tells its security version any more.
    let b = dev.layout.slots[1];
    let tail = dev.read(b.offset + b.size - (64 << 10), 64 << 10);
    let at = tail
        .windows(7)
        .position(|w| w == b"\"1.0.0\"")
        .expect("slot_b's record names 1.0.0");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev.disk)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"9", b.offset + b.size - (64 << 10) + at as u64 + 1)
        .unwrap();
    std::fs::remove_file(dev.dir.path().join("state/state.json")).unwrap();
    dev.updater("a")
        .args(["rollback", "--yes", "--no-reboot"])
        .assert()
        .code(63)
        .stderr(contains("security version unknown"));
}

/// One config reused for a second disk image: the state of the first
/// (its versions, its security floor) is not applied to the second.
#[test]
fn a_state_file_of_another_disk_is_refused_not_applied() {
    let dev = device();
    commit(&dev, "a", &release("4.0.0"));
    let state = dev.dir.path().join("state/state.json");
    let before = std::fs::read(&state).unwrap();
    let stamped: serde_json::Value = serde_json::from_slice(&before).unwrap();
    let guid = stamped["disk_guid"].as_str().unwrap().to_string();

    // A fresh disk made the same way, under the same config.
    let other = device();
    let fresh = bootctl::Disk::open(&other.disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .disk_guid()
        .unwrap();
    assert_ne!(fresh, guid);
    let reused = Device {
        dir: tempfile::tempdir().unwrap(),
        disk: other.disk.clone(),
        config: dev.config.clone(),
        layout: other.layout,
    };
    let said = format!(
        "belongs to the disk with GUID {guid}, not to {} (GUID {fresh})",
        other.disk.display()
    );
    reused
        .updater("a")
        .arg("status")
        .assert()
        .code(65)
        .stderr(contains(said.as_str()))
        .stderr(contains("give this disk a state_dir of its own"));
    reused
        .updater("a")
        .arg("install")
        .arg(other.bundle(&release("2.0.0")))
        .assert()
        .code(65);
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the state was changed"
    );
    assert!(
        !other.attrs()[1].is_bootable(),
        "slot_b of the other disk was flipped"
    );

    // The disk the state belongs to still works with it.
    dev.updater("a").arg("status").assert().success();
}

/// A state written by a newer updater (an older release came back by a
/// rollback) is neither applied, nor reset to defaults, nor overwritten:
/// every state-changing command stops with exit 67 and `status` says why.
#[test]
fn a_state_file_of_a_newer_format_is_refused_and_kept() {
    let dev = device();
    commit(&dev, "a", &release("1.0.0"));
    let flags = dev.attrs();
    let state = dev.dir.path().join("state/state.json");
    let mut newer = dev.state();
    newer["format"] = serde_json::json!(2);
    newer["something_new"] = serde_json::json!({"kept": true});
    let written = serde_json::to_vec_pretty(&newer).unwrap();
    std::fs::write(&state, &written).unwrap();
    let said = "is of state format 2, newer than this updater's 1";
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .code(67)
        .stderr(contains(said));
    dev.updater("a")
        .args(["health", "--no-reboot"])
        .assert()
        .code(67);
    dev.updater("a")
        .args(["rollback", "--yes", "--no-reboot"])
        .assert()
        .code(67);
    dev.updater("a")
        .arg("status")
        .assert()
        .success()
        .stderr(contains("state format 2 is newer than this updater's 1"));
    assert_eq!(
        std::fs::read(&state).unwrap(),
        written,
        "the state was changed"
    );
    assert_eq!(dev.attrs(), flags, "the flags were changed");
    assert!(!dev.dir.path().join("state/state.json.damaged").exists());
}
