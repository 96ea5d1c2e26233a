//! An HA pair of appliances updated by a real hawkBit DDI server
//! (goosebit, strict device authentication) on the host, polled through
//! QEMU's user network: the standby first, then the active one, the way
//! clustered appliances are updated.

use qemu_tests::appliance::{runs_committed, Appliance, BOOT, HEARTBEAT_CHECK, STEP};
use qemu_tests::goosebit::{version_and_state, Goosebit};
use qemu_tests::guest::{Release, FLEET_HW_REVISION};
use qemu_tests::qemu::Machine;
use std::path::Path;

const FAILING_CHECK: &str =
    r#"[{"name": "app-answers", "command": ["test", "-f", "/data/app/never"], "timeout_s": 5}]"#;

/// A factory machine named `serial` by its firmware, registered with the
/// server, booted, and given its token the way a technician commissions
/// one: from then on its fleet client polls.
fn commission(app: &Appliance, gb: &Goosebit, v1: &Path, serial: &str, token: &str) -> Machine {
    gb.add_device(serial, token);
    let disk = app.factory_disk_named(serial, v1);
    let mut vm = app.boot_networked(&disk, serial);
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("NET 10.0.2.15", STEP).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    vm.send(&format!(
        "mkdir -p /data/fleet && (umask 077; echo {token} > /data/fleet/token)"
    ))
    .unwrap();
    vm
}

#[test]
fn an_ha_pair_is_updated_standby_first_and_a_failed_release_is_reported_with_its_real_version() {
    let gb = Goosebit::start();
    let app = Appliance::new();
    let url = format!("http://10.0.2.2:{}", gb.port);
    let release = |version, health_checks| {
        app.image(&Release {
            version,
            health_checks,
            fleet_url: Some(&url),
            ..Release::default()
        })
    };
    // From the factory on, the device knows and reports its release.
    let v1 = app.bundle(
        "1.0.0",
        "1.0.0",
        "switchback-qemu",
        &release("1.0.0", "[]"),
        vec![],
    );
    let swu2 = app.swu("2.0.0", &release("2.0.0", HEARTBEAT_CHECK));
    let swu3 = app.swu("3.0.0", &release("3.0.0", FAILING_CHECK));

    let mut standby = commission(&app, &gb, &v1, "ha-standby", "tok-standby-5d1e");
    let mut active = commission(&app, &gb, &v1, "ha-active", "tok-active-8c2b");
    for id in ["ha-standby", "ha-active"] {
        // goosebit offers software only to hardware the device reported.
        gb.wait_device(id, BOOT, |d| {
            d["hardware"]["model"] == "switchback-qemu"
                && d["hardware"]["revision"] == FLEET_HW_REVISION
                && d["sw_version"] == "1.0.0"
        });
    }

    // The standby first: installed, rebooted into, committed, and only
    // then reported as success.
    let s2 = gb.upload(&swu2);
    gb.assign("ha-standby", s2);
    standby.expect("2.0.0 installed into slot_b", STEP).unwrap();
    // The release is written and the machine has rebooted: its installer
    // is gone, its health check has not run.
    standby
        .expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    assert_ne!(
        gb.device("ha-standby")["last_state"],
        "Finished",
        "success reported before the health check"
    );
    runs_committed(&mut standby, "2.0.0", "slot_b");
    let d = gb.wait_device("ha-standby", STEP, |d| {
        version_and_state(d).1 == Some("Finished")
    });
    assert_eq!(
        version_and_state(&d),
        (Some("2.0.0"), Some("Finished")),
        "{d}"
    );

    // Only then the active one.
    gb.assign("ha-active", s2);
    runs_committed(&mut active, "2.0.0", "slot_b");
    let d = gb.wait_device("ha-active", STEP, |d| {
        version_and_state(d).1 == Some("Finished")
    });
    assert_eq!(
        version_and_state(&d),
        (Some("2.0.0"), Some("Finished")),
        "{d}"
    );

    // A release whose health check fails, to the standby first: it rolls
    // back by itself and is reported as failure, with the version the
    // device really runs.
    let s3 = gb.upload(&swu3);
    gb.assign("ha-standby", s3);
    standby
        .expect("RELEASE 3.0.0 RUNNING ON slot_a", BOOT)
        .unwrap();
    let updates = gb.attribute_updates("ha-standby");
    standby
        .expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    standby
        .expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT)
        .unwrap();
    let line = standby.expect("was rolled back", STEP).unwrap();
    assert!(line.contains("app-answers"), "{line}");
    let d = gb.wait_device("ha-standby", STEP, |d| {
        version_and_state(d).1 == Some("Error")
    });
    let log = gb.device_log("ha-standby");
    assert!(
        log.contains("3.0.0 was rolled back") && log.contains("app-answers"),
        "{d}\n{log}"
    );
    // goosebit keeps the old version on a failure report: what shows that
    // the device tells the truth is its own report once back on 2.0.0.
    let start = std::time::Instant::now();
    while gb.attribute_updates("ha-standby") == updates {
        assert!(
            start.elapsed() < STEP,
            "2.0.0 sent no attributes after the rollback"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let d = gb.device("ha-standby");
    assert_eq!(version_and_state(&d), (Some("2.0.0"), Some("Error")), "{d}");
}
