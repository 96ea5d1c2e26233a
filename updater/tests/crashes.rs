//! Crashes injected into the real code: the updater is stopped (aborted,
//! no destructor runs) at each of its crash points
//! (`updater::machine::CRASH_POINTS`), and the next command settles the
//! device to what the recovery table in `updater/src/recover.rs` names.

mod common;

use bootctl::Slot;
use common::*;
use std::os::unix::process::ExitStatusExt;

/// `updater ARGS` from `booted`, which must crash at `point`.
fn crash_at(dev: &Device, booted: &str, point: &str, args: &[&str]) {
    let out = dev
        .updater_process(booted)
        .env("SWITCHBACK_CRASH_AT", point)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGABRT),
        "no crash at {point}: {:?}, {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn install_crashing_at(dev: &Device, booted: &str, point: &str, r: &Release) {
    let bundle = dev.bundle(r);
    crash_at(dev, booted, point, &["install", bundle.to_str().unwrap()]);
}

fn health_crashing_at(dev: &Device, booted: &str, point: &str) {
    crash_at(dev, booted, point, &["health", "--no-reboot"]);
}

#[test]
fn every_crash_point_has_a_test_here() {
    let here = include_str!("crashes.rs");
    for (point, _) in updater::machine::CRASH_POINTS {
        assert!(
            here.matches(&format!("\"{point}\"")).count() >= 1,
            "no crash test for {point}"
        );
    }
}

#[test]
fn an_install_cut_before_its_flip_fails_and_its_slot_stays_unbootable() {
    for point in [
        "install-begun",
        "install-target-unbootable",
        "install-migrated",
        "install-flipping",
    ] {
        let dev = device();
        install_crashing_at(&dev, "a", point, &release("2.0.0"));
        assert!(!dev.attrs()[1].is_bootable(), "{point}: slot_b bootable");
        dev.health_ok("a");
        let state = dev.state();
        assert_eq!(state["last_install"]["outcome"], "failed", "{point}");
        assert!(state["slots"].get("slot_b").is_none(), "{point}");
        assert!(
            dev.history()
                .contains(&("install-failed".into(), "slot_b".into())),
            "{point}"
        );
        assert_eq!(dev.boot(), Slot::A, "{point}");
        // And the next install goes through.
        dev.install_ok("a", &release("2.0.1"));
        assert_eq!(dev.boot(), Slot::B, "{point}");
    }
}

#[test]
fn an_install_cut_after_its_flip_is_recorded_and_boots_on_trial() {
    let dev = device();
    install_crashing_at(&dev, "a", "install-flipped", &release("2.0.0"));
    assert_eq!(dev.state()["last_install"]["outcome"], "flipping");
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(dev.history().contains(&("install".into(), "slot_b".into())));
}

#[test]
fn a_commit_cut_before_its_flag_is_decided_by_the_next_health_check() {
    let dev = device();
    dev.install_ok("a", &release("2.0.0"));
    assert_eq!(dev.boot(), Slot::B);
    health_crashing_at(&dev, "b", "commit-begun");
    assert!(!dev.attrs()[1].successful);
    dev.health_ok("b");
    assert!(dev.attrs()[1].successful);
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(dev.state().get("committing").is_none());
}

#[test]
fn a_commit_cut_after_its_flag_is_finished_with_the_floor_raised() {
    let dev = device();
    let v2 = Release {
        security_version: 5,
        ..release("2.0.0")
    };
    dev.install_ok("a", &v2);
    assert_eq!(dev.boot(), Slot::B);
    health_crashing_at(&dev, "b", "commit-marked-good");
    assert!(dev.attrs()[1].successful);
    assert_eq!(dev.state()["security_floor"], 0);
    assert_eq!(dev.state()["committing"], "slot_b");
    dev.health_ok("b");
    assert_eq!(dev.state()["security_floor"], 5);
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
    assert!(dev.state().get("committing").is_none());
    let commits = dev.history().iter().filter(|e| e.0 == "commit").count();
    assert_eq!(commits, 1, "the commit is recorded once");
}

#[test]
fn finalize_cut_before_or_while_it_runs_runs_at_the_next_health_check() {
    for point in ["commit-recorded", "finalize-started"] {
        let dev = device();
        dev.install_ok("a", &release("2.0.0"));
        assert_eq!(dev.boot(), Slot::B);
        health_crashing_at(&dev, "b", point);
        assert_eq!(dev.state()["finalize_pending"], "2.0.0", "{point}");
        dev.health_ok("b");
        let state = dev.state();
        assert!(state.get("finalize_pending").is_none(), "{point}");
        assert_eq!(state["finalized"], "2.0.0", "{point}");
        assert!(state.get("finalize_attempts").is_none(), "{point}");
    }
}

#[test]
fn a_health_failure_cut_before_its_record_is_recorded_from_the_other_slot() {
    let dev = device();
    dev.install_ok("a", &release("2.0.0"));
    assert_eq!(dev.boot(), Slot::B);
    dev.set_health(serde_json::json!({"checks": [{"name": "app", "command": ["false"]}]}));
    health_crashing_at(&dev, "b", "health-failed-marked");
    assert!(!dev.attrs()[1].is_bootable());
    assert_eq!(dev.state()["last_install"]["outcome"], "installed");
    assert_eq!(dev.boot(), Slot::A);
    dev.set_health(serde_json::json!({"checks": []}));
    dev.updater("a")
        .args(["health", "--no-reboot"])
        .assert()
        .code(51);
    assert_eq!(dev.state()["last_install"]["outcome"], "rolled-back");
    assert!(dev
        .history()
        .contains(&("rolled-back".into(), "slot_b".into())));
}

#[test]
fn a_rollback_cut_before_its_record_still_boots_the_other_slot() {
    let dev = device();
    dev.install_ok("a", &release("2.0.0"));
    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    crash_at(
        &dev,
        "b",
        "rollback-flipped",
        &["rollback", "--yes", "--no-reboot"],
    );
    assert_eq!(dev.boot(), Slot::A);
    assert!(!dev.history().iter().any(|e| e.0 == "rollback"));
    dev.health_ok("a");
}

/// `activate` flips through the install's own steps, so its crashes settle
/// as an install's: cut before the flip, the ready slot stays unbootable
/// and must be installed again; cut after it, the release is on trial.
#[test]
fn an_activation_cut_settles_as_an_install_cut_at_the_same_point() {
    for (point, outcome, bootable) in [
        ("install-flipping", "failed", false),
        ("install-flipped", "installed", true),
    ] {
        let dev = device();
        let bundle = dev.bundle(&release("2.0.0"));
        dev.updater("a")
            .args(["install", "--no-activate"])
            .arg(&bundle)
            .assert()
            .success();
        crash_at(&dev, "a", point, &["activate"]);
        assert_eq!(dev.attrs()[1].is_bootable(), bootable, "{point}");
        // The next command settles it.
        dev.updater("a").arg("status").assert().success();
        dev.health_ok("a");
        assert_eq!(dev.state()["last_install"]["outcome"], outcome, "{point}");
        assert_eq!(
            dev.boot(),
            if bootable { Slot::B } else { Slot::A },
            "{point}"
        );
    }
}
