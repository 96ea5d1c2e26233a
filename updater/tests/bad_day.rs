//! A bad day: the updater killed mid-step, the state file lost, a migration
//! that overreaches, a data partition that is full or not mounted (and,
//! mounted, an install onto the block device itself). Each
//! time the next command finishes or undoes the interrupted step, and no
//! committed release, data or security floor is lost.

mod common;

use bootctl::{BootAttrs, Slot};
use common::*;
use image_tools::bundle::{MigrationSource, Phase};
use predicates::str::contains;
use serde_json::json;
use std::path::Path;

fn expand(path: std::path::PathBuf, dirs: &[&str]) -> MigrationSource {
    MigrationSource {
        path,
        from: 1,
        to: 2,
        phase: Phase::Expand,
        snapshot: dirs.iter().map(|s| s.to_string()).collect(),
    }
}

/// 2.0.0 at data schema 2 with one expand migration, the script `body`
/// (named `name`), that declares `app`.
fn with_expand(dev: &Device, name: &str, body: &str) -> Release<'static> {
    Release {
        data_schema: Some(2),
        migrations: vec![expand(script(dev.dir.path(), name, body), &["app"])],
        ..release("2.0.0")
    }
}

/// `r` at data schema 2, with a no-op expand and a finalize that appends a
/// line to `app/finalize.log` (so a test can count how often it ran).
fn with_finalize<'a>(dev: &Device, r: Release<'a>) -> Release<'a> {
    std::fs::create_dir_all(dev.dir.path().join("data/app")).unwrap();
    let finalize = script(
        dev.dir.path(),
        "finalize.sh",
        r#"echo finalized >> "$SWITCHBACK_DATA_DIR/app/finalize.log""#,
    );
    Release {
        data_schema: Some(2),
        migrations: vec![
            expand(script(dev.dir.path(), "noop.sh", "true"), &["app"]),
            MigrationSource {
                phase: Phase::Finalize,
                ..expand(finalize, &["app"])
            },
        ],
        ..r
    }
}

fn edit_state(dev: &Device, change: impl FnOnce(&mut serde_json::Value)) {
    let mut s = dev.state();
    change(&mut s);
    std::fs::write(dev.dir.path().join("state/state.json"), s.to_string()).unwrap();
}

fn needs_root() -> bool {
    switchback_test_support::needs_root("mount namespaces, tmpfs and loop devices")
}

#[test]
fn an_updater_killed_during_an_expand_migration_gets_the_data_restored_next_time() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/table"), pattern(100_000, 3)).unwrap();
    let before = tree(&data);
    // Half-way through, the updater dies (as by a power cut or the OOM
    // killer); the migration, in a PID namespace of its own, cannot see it,
    // so the test kills it once the migration says it is half-way.
    let v2 = with_expand(
        &dev,
        "expand.sh",
        r#"echo half > "$SWITCHBACK_DATA_DIR/app/table"; touch "$SWITCHBACK_DATA_DIR/app/half-way"
sleep 3; echo late > "$SWITCHBACK_DATA_DIR/app/table""#,
    );
    dev.install_killed_at("a", &v2, &data.join("app/half-way"));
    assert!(data.join(".switchback-snapshot").exists());
    assert_eq!(dev.state()["last_install"]["outcome"], "installing");
    // The migration died with the updater: it never writes "late".
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        std::fs::read_to_string(data.join("app/table")).unwrap(),
        "half\n"
    );

    // The next command restores the data before anything else, and settles
    // the install as failed; the flags were never flipped.
    dev.health_ok("a");
    assert!(tree(&data) == before, "data not restored");
    assert!(!data.join(".switchback-snapshot").exists());
    assert_eq!(dev.state()["last_install"]["outcome"], "failed");
    assert!(dev.state()["last_install"]["reason"]
        .as_str()
        .unwrap()
        .contains("interrupted while writing"));
    assert_eq!(dev.attrs()[1], BootAttrs::UNBOOTABLE);
}

#[test]
fn a_crash_between_the_flip_and_the_record_is_settled_from_the_flags() {
    let dev = device();
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .success();
    // As if killed after the flip, before `installed` was saved.
    edit_state(&dev, |s| s["last_install"]["outcome"] = json!("flipping"));
    assert_eq!(dev.boot(), Slot::B);
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .success()
        .stdout(contains("slot_b (2.0.0) passed its health check"));
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(dev.history().contains(&("install".into(), "slot_b".into())));

    // Killed before the flip: the slot stays unbootable, the install failed.
    dev.updater("b")
        .arg("install")
        .arg(dev.bundle(&release("3.0.0")))
        .assert()
        .success();
    bootctl::Disk::open(&dev.disk, None, true)
        .unwrap()
        .mark_bad(Slot::A)
        .unwrap();
    edit_state(&dev, |s| s["last_install"]["outcome"] = json!("flipping"));
    dev.health_ok("b");
    assert_eq!(dev.state()["last_install"]["outcome"], "failed");
    assert!(dev.state()["slots"].get("slot_a").is_none());
}

#[test]
fn a_commit_cut_after_the_flag_is_finished_once_at_the_next_boot() {
    let dev = device();
    let data = dev.dir.path().join("data");
    let v2 = with_finalize(
        &dev,
        Release {
            security_version: 5,
            ..release("2.0.0")
        },
    );
    dev.install_ok("a", &v2);
    assert_eq!(dev.boot(), Slot::B);
    // The health check passed and marked slot_b good, then the power went:
    // the intent is recorded, the floor not raised, finalize not run.
    edit_state(&dev, |s| s["committing"] = json!("slot_b"));
    bootctl::Disk::open(&dev.disk, None, true)
        .unwrap()
        .mark_good(Slot::B)
        .unwrap();
    assert_eq!(dev.state()["security_floor"], 0);
    dev.health_ok("b");
    assert_eq!(dev.state()["security_floor"], 5);
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(dev.state().get("committing").is_none());
    assert!(dev.state().get("finalize_pending").is_none());
    // Once, also after more health checks.
    dev.health_ok("b");
    assert_eq!(
        std::fs::read_to_string(data.join("app/finalize.log")).unwrap(),
        "finalized\n"
    );
}

#[test]
fn a_lost_state_file_keeps_the_floor_and_the_releases_from_the_disk() {
    let dev = device();
    let v2 = Release {
        security_version: 7,
        ..release("2.0.0")
    };
    dev.install_ok("a", &v2);
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    let old = dev.bundle(&Release {
        security_version: 3,
        ..release("1.5.0")
    });
    for loss in ["deleted", "truncated", "replaced"] {
        let path = dev.dir.path().join("state/state.json");
        match loss {
            "deleted" => std::fs::remove_file(&path).unwrap(),
            "truncated" => std::fs::write(&path, b"").unwrap(),
            _ => std::fs::write(&path, json!({"format": 1, "security_floor": 0}).to_string())
                .unwrap(),
        }
        let out = dev
            .updater("b")
            .args(["status", "--json"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["slots"][1]["version"], "2.0.0", "{loss}");
        assert_eq!(status["security_floor"], 7, "{loss}");
        dev.updater("b")
            .args(["install", "--allow-downgrade"])
            .arg(&old)
            .assert()
            .code(42)
            .stderr(contains("below this device's floor 7"));
        // Without --allow-downgrade the running 2.0.0 (from its trailer) counts.
        dev.updater("b")
            .arg("install")
            .arg(dev.bundle(&Release {
                security_version: 7,
                ..release("1.9.0")
            }))
            .assert()
            .code(43)
            .stderr(contains("older than the running 2.0.0"));
    }
}

#[test]
fn a_migration_that_writes_outside_its_directories_fails_and_changes_nothing() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::create_dir_all(data.join("other")).unwrap();
    std::fs::write(data.join("other/keep"), "not declared").unwrap();
    let before = tree(&data);
    let v2 = with_expand(
        &dev,
        "rogue.sh",
        r#"set -e; echo new > "$SWITCHBACK_DATA_DIR/app/ok"; echo gone > "$SWITCHBACK_DATA_DIR/other/keep""#,
    );
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(55)
        .stderr(contains("Read-only file system"))
        .stderr(contains(
            "the data is restored from its snapshot and nothing was flipped",
        ));
    assert!(tree(&data) == before, "data changed");
}

/// A small tmpfs mounted over `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        Tmpfs(dir.to_path_buf())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_snapshot_that_does_not_fit_leaves_no_partial_copy_and_changes_nothing() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let data = dev.dir.path().join("data");
    let _mnt = Tmpfs::mount(&data, "1m");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/big"), pattern(600_000, 1)).unwrap();
    let before = tree(&data);
    let v2 = with_expand(&dev, "m.sh", "true");
    let flags = dev.attrs();
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(58)
        .stderr(contains("data snapshot of"))
        .stderr(contains("No space left on device"))
        .stderr(contains("the partial copy is removed and nothing changed"));
    assert!(tree(&data) == before, "data changed");
    assert!(!data.join(".switchback-snapshot").exists());
    assert_eq!(dev.attrs()[0], flags[0]);
}

#[test]
fn on_a_real_disk_the_state_must_be_on_its_mounted_data_partition() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let mut lo = LoopDisk::attach(&dev);
    let disk = lo.path.clone();
    let updater = |config: &Path| {
        let mut c = assert_cmd::Command::cargo_bin("updater").unwrap();
        c.arg("--config")
            .arg(config)
            .args(["--disk", &disk, "--booted-slot", "a", "status"]);
        c
    };
    // The configured data directory is on the test's file system, not the disk's.
    updater(&dev.config)
        .assert()
        .code(40)
        .stderr(contains("is the data partition mounted?"));
    let config = lo.mount_data(&dev);
    let mnt = dev.dir.path().join("mnt");
    updater(&config).assert().success();
    // And so an install onto the block device goes through.
    let r = release("2.0.0");
    let b = dev.bundle(&r);
    assert_cmd::Command::cargo_bin("updater")
        .unwrap()
        .arg("--config")
        .arg(&config)
        .args(["--disk", &disk, "--booted-slot", "a", "install"])
        .arg(&b)
        .assert()
        .success();
    assert_eq!(&dev.slot(Slot::B)[..r.image.len()], &r.image[..]);
    assert_eq!(dev.attrs()[1].priority, 2);
    assert!(mnt.join("switchback/state.json").exists());
}

#[test]
fn a_migration_that_hangs_is_timed_out_with_its_children_and_the_data_restored() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["migration_timeout_s"] = json!(1);
    std::fs::write(&dev.config, c.to_string()).unwrap();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    let before = tree(&data);
    let v2 = with_expand(
        &dev,
        "hang.sh",
        r#"(sleep 3; echo late > "$SWITCHBACK_DATA_DIR/app/late") & echo started; sleep 60"#,
    );
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(55)
        .stderr(contains("timed out after 1 s; output: started"))
        .stderr(contains("the data is restored"));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(tree(&data) == before, "a child outlived its migration");
}

#[test]
fn a_finalize_interrupted_twice_is_given_up_not_run_each_boot() {
    let dev = device();
    let data = dev.dir.path().join("data");
    let v2 = with_finalize(&dev, release("2.0.0"));
    dev.install_ok("a", &v2);
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    assert_eq!(
        std::fs::read_to_string(data.join("app/finalize.log")).unwrap(),
        "finalized\n"
    );
    // As if a finalize had crashed the machine twice since.
    edit_state(&dev, |s| {
        s["finalize_pending"] = json!("2.0.0");
        s["finalize_attempts"] = json!(2);
        s["finalized"] = serde_json::Value::Null;
    });
    dev.health_ok("b");
    assert!(dev
        .history()
        .contains(&("finalize-failed".into(), "slot_b".into())));
    assert!(dev.state().get("finalize_pending").is_none());
    assert_eq!(
        std::fs::read_to_string(data.join("app/finalize.log")).unwrap(),
        "finalized\n"
    );
}

#[test]
fn a_declared_directory_behind_a_symlink_is_refused() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let data = dev.dir.path().join("data");
    let outside = dev.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("app")).unwrap();
    let v2 = with_expand(&dev, "m.sh", r#"echo x > "$SWITCHBACK_DATA_DIR/app/x""#);
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(55)
        .stderr(contains("is reached through a symbolic link"));
    assert!(!outside.join("x").exists());
}

#[test]
fn a_kept_finalize_executable_that_was_altered_is_not_run() {
    let dev = device();
    let data = dev.dir.path().join("data");
    let v2 = with_finalize(&dev, release("2.0.0"));
    dev.install_ok("a", &v2);
    // Between the install and the commit, someone swaps the kept program.
    let kept = dev.dir.path().join("state/migrations/2.0.0/migration-2");
    assert!(kept.exists(), "{}", kept.display());
    std::fs::write(
        &kept,
        "#!/bin/sh\necho evil >> \"$SWITCHBACK_DATA_DIR/app/finalize.log\"\n",
    )
    .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    assert!(
        !data.join("app/finalize.log").exists(),
        "an altered program ran"
    );
    let failed = dev.state()["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["event"] == "finalize-failed")
        .cloned()
        .unwrap();
    assert!(failed["reason"]
        .as_str()
        .unwrap()
        .contains("differs from the signed release"));
}

#[test]
fn a_record_that_cannot_be_saved_after_the_flip_says_the_flip_took_effect() {
    use updater::events::{Event, Observer};
    /// Takes the state directory away right after the flip (as a full or
    /// failed data partition would), before the last save.
    struct Vanish(std::path::PathBuf);
    impl Observer for Vanish {
        fn event(&mut self, e: &Event) {
            if let Event::Flipped { .. } = e {
                std::fs::rename(&self.0, self.0.with_extension("away")).unwrap();
                std::fs::write(&self.0, "not a directory").unwrap();
            }
        }
    }
    let dev = device();
    let state_dir = dev.dir.path().join("state");
    let b = dev.bundle(&release("2.0.0"));
    let err = install_with(&dev, &b, &mut Vanish(state_dir.clone())).unwrap_err();
    assert_eq!(updater::exit_code(&err), 59, "{err:#}");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(
            "2.0.0 is installed in slot_b and boots next on trial; but recording that failed"
        ),
        "{msg}"
    );
    assert_eq!(dev.attrs()[1].priority, 2, "the flip took effect");
    // The partition comes back: the next command completes the record.
    std::fs::remove_file(&state_dir).unwrap();
    std::fs::rename(state_dir.with_extension("away"), &state_dir).unwrap();
    assert_eq!(dev.state()["last_install"]["outcome"], "flipping");
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
}
