//! The update life cycle on a disk image, with `Disk::select` playing the
//! boot stage: install, trial boot, health check, commit; a release whose
//! health check fails, and one that never gets that far, both roll back.

mod common;

use bootctl::{BootAttrs, Slot};
use common::*;
use image_tools::bundle::{MigrationSource, Phase};
use predicates::str::contains;
use serde_json::json;

#[test]
fn install_commit_health_failure_and_exhausted_tries_roll_back() {
    let dev = device();
    let data = dev.data();
    let data_dir = dev.dir.path().join("data");
    std::fs::create_dir_all(data_dir.join("app")).unwrap();
    std::fs::write(data_dir.join("app/records-v1"), "written by v1").unwrap();
    dev.set_health(json!({"deadline_s": 30, "checks": [{"name": "service", "command": ["true"], "timeout_s": 5}]}));

    // v2 (data schema 2) into slot_b: its expand migration runs before the
    // flip and keeps v1's data; boot it on trial, its health check passes.
    let expand = script(
        dev.dir.path(),
        "expand.sh",
        r#"cp "$SWITCHBACK_DATA_DIR/app/records-v1" "$SWITCHBACK_DATA_DIR/app/records-v2""#,
    );
    let finalize = script(
        dev.dir.path(),
        "finalize.sh",
        r#"rm "$SWITCHBACK_DATA_DIR/app/records-v1""#,
    );
    let v2 = Release {
        security_version: 2,
        data_schema: Some(2),
        migrations: vec![
            MigrationSource {
                path: expand,
                from: 1,
                to: 2,
                phase: Phase::Expand,
                snapshot: vec!["app".into()],
            },
            MigrationSource {
                path: finalize,
                from: 1,
                to: 2,
                phase: Phase::Finalize,
                snapshot: vec!["app".into()],
            },
        ],
        ..release("2.0.0")
    };
    dev.install_ok("a", &v2);
    assert!(data_dir.join("app/records-v1").exists() && data_dir.join("app/records-v2").exists());
    assert_eq!(dev.state()["data_schema"], 2);
    assert_eq!(dev.boot(), Slot::B);
    assert_eq!(
        dev.attrs()[1].tries,
        3,
        "the boot stage spent one of 4 tries"
    );
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .success()
        .stdout(contains("slot_b (2.0.0) passed"));
    assert_eq!(
        dev.attrs()[1],
        BootAttrs {
            priority: 2,
            tries: 0,
            successful: true
        }
    );
    assert_eq!(dev.state()["security_floor"], 2);
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(
        !data_dir.join("app/records-v1").exists(),
        "finalize did not run"
    );
    let app_data = tree(&data_dir);
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .success()
        .stdout(contains("nothing to do"));

    // v3 into slot_a; its health check fails: marked bad, slot_b next.
    dev.set_health(json!({"checks": [{"name": "database", "command": ["sh", "-c", "echo connecting; echo database down >&2; exit 3"]}]}));
    let v3 = Release {
        security_version: 2,
        ..release("3.0.0")
    };
    dev.install_ok("b", &v3);
    assert_eq!(dev.boot(), Slot::A);
    dev.updater("a")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52)
        .stderr(contains(
            "slot_a failed its health check and is marked bad; slot_b boots next",
        ))
        .stderr(contains(
            "\"database\" failed: exit status: 3; output: connecting | database down",
        ));
    assert_eq!(dev.attrs()[0], BootAttrs::UNBOOTABLE);
    assert_eq!(dev.boot(), Slot::B);
    // Back on slot_b, the fallback is reported once, with the reason.
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(51)
        .stderr(contains(
            "slot_a (3.0.0) was rolled back: health check \"database\" failed",
        ));
    dev.health_ok("b");

    // v3.0.1 never reaches its health check: every boot of it hangs.
    let v31 = Release {
        security_version: 2,
        ..release("3.0.1")
    };
    dev.install_ok("b", &v31);
    // Before the reboot, the health check on the old slot reports nothing.
    dev.health_ok("b");
    for _ in 0..4 {
        assert_eq!(
            dev.boot(),
            Slot::A,
            "slot_a is tried while it has tries left"
        );
    }
    assert_eq!(
        dev.boot(),
        Slot::B,
        "tries exhausted: the boot stage falls back"
    );
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(51)
        .stderr(contains("tries exhausted"));

    assert!(dev.data() == data, "the data partition was touched");
    assert!(
        tree(&data_dir) == app_data,
        "failed releases changed the data"
    );
    let events: Vec<String> = dev
        .history()
        .into_iter()
        .map(|(e, s)| format!("{e} {s}"))
        .collect();
    assert_eq!(
        events,
        [
            "install slot_b",
            "commit slot_b",
            "install slot_a",
            "health-failed slot_a",
            "rolled-back slot_a",
            "install slot_a",
            "rolled-back slot_a"
        ]
    );
    dev.updater("b")
        .arg("history")
        .assert()
        .success()
        .stdout(contains("rolled-back   slot_a  3.0.1: tries exhausted"));
}

#[test]
fn technician_rolls_back_and_forth_only_to_proven_releases() {
    let dev = device();
    // Nothing proven in slot_b yet.
    dev.updater("a")
        .args(["rollback", "--yes", "--no-reboot"])
        .assert()
        .code(15);
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .success();
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");

    // Without a terminal to ask on, no --yes means no.
    dev.updater("b")
        .args(["rollback", "--no-reboot"])
        .assert()
        .code(53);
    for (from, to) in [(Slot::B, Slot::A), (Slot::A, Slot::B)] {
        dev.updater(letter(from))
            .args(["rollback", "--yes", "--no-reboot"])
            .assert()
            .success()
            .stdout(contains(format!("{to} boots next")));
        assert_eq!(dev.boot(), to);
    }
    let events: Vec<(String, String)> = dev.history();
    assert_eq!(events.iter().filter(|(e, _)| e == "rollback").count(), 2);
}

#[test]
fn a_hanging_check_is_cut_off_by_its_timeout() {
    let dev = device();
    dev.set_health(json!({"deadline_s": 60, "checks": [{"name": "slow", "command": ["sleep", "30"], "timeout_s": 1}]}));
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .success();
    dev.boot();
    let started = std::time::Instant::now();
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52)
        .stderr(contains("\"slow\" failed: timed out after 1 s"));
    assert!(
        started.elapsed().as_secs() < 20,
        "the timeout did not cut the check off"
    );
    dev.set_health(json!({"deadline_s": 1, "checks": [{"name": "slow", "command": ["sleep", "30"], "timeout_s": 50}]}));
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.1")))
        .assert()
        .success();
    assert_eq!(dev.boot(), Slot::B);
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52)
        .stderr(contains("cut off by the overall deadline"));
}

#[test]
fn a_damaged_state_file_does_not_stop_the_health_check() {
    let dev = device();
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .success();
    assert_eq!(dev.boot(), Slot::B);
    let state = dev.dir.path().join("state/state.json");
    std::fs::write(&state, b"{\"format\": 1, \"slots\": {trunc").unwrap();
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .success()
        .stderr(contains("state.json: damaged"))
        .stderr(contains(
            "it is moved to state.json.damaged when the state is next saved",
        ))
        .stderr(contains("the damaged state file is kept as"))
        .stdout(contains("slot_b (unknown release) passed its health check"));
    assert!(dev.attrs()[1].successful);
    assert!(
        dev.dir.path().join("state/state.json.damaged").exists(),
        "the damaged file is kept"
    );
    dev.updater("b").arg("status").assert().success();
}

#[test]
fn the_only_committed_release_is_never_overwritten() {
    let dev = device();
    let b = dev.bundle(&release("2.0.0"));
    let before = std::fs::read(&dev.disk).unwrap();
    // A factory disk told it runs slot_b (never installed): the install
    // would write over slot_a, the only release there is.
    dev.updater("b")
        .arg("install")
        .arg(&b)
        .assert()
        .code(57)
        .stderr(contains(
            "refusing to overwrite slot_a, the only committed release: the running slot_b is marked unbootable",
        ));
    assert!(std::fs::read(&dev.disk).unwrap() == before, "disk written");

    // slot_b installed and booted on trial, not yet committed: another
    // install would overwrite slot_a, the release to fall back to.
    dev.updater("a").arg("install").arg(&b).assert().success();
    assert_eq!(dev.boot(), Slot::B);
    let v3 = dev.bundle(&release("3.0.0"));
    let before = std::fs::read(&dev.disk).unwrap();
    dev.updater("b")
        .arg("install")
        .arg(&v3)
        .assert()
        .code(57)
        .stderr(contains(
            "slot_b is still on trial: commit it (updater health) or roll back first",
        ));
    assert!(std::fs::read(&dev.disk).unwrap() == before, "disk written");
    // Committed, it may.
    dev.health_ok("b");
    dev.updater("b").arg("install").arg(&v3).assert().success();
}

#[test]
fn health_never_commits_a_slot_marked_bad() {
    let dev = device();
    dev.set_health(json!({"checks": [{"name": "ok", "command": ["true"]}]}));
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&release("2.0.0")))
        .assert()
        .success();
    assert_eq!(dev.boot(), Slot::B);
    assert_cmd::Command::cargo_bin("bootctl")
        .unwrap()
        .arg("--disk")
        .arg(&dev.disk)
        .args(["mark-bad", "b"])
        .assert()
        .success();
    dev.updater("b")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52)
        .stderr(contains(
            "slot_b was marked bad before its health check ran",
        ));
    assert_eq!(dev.attrs()[1], BootAttrs::UNBOOTABLE);
    assert_eq!(dev.boot(), Slot::A);
}
