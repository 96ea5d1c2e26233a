//! Power cuts on a whole machine while something is half done: the boot
//! stage's flag write while one GPT copy is already damaged, an expand
//! migration, a commit. The machine boots every time, and the next boot
//! finishes or undoes the step.

use image_tools::bundle::{MigrationSource, Phase};
use qemu_tests::appliance::{factory, Appliance, BOOT, STEP};
use qemu_tests::guest::Release;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

fn flags(disk: &Path) -> bootctl::State {
    bootctl::Disk::open(disk, None, false)
        .unwrap()
        .read()
        .expect("after a power cut some GPT copy must be valid")
}

fn damage_primary_header(disk: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&[0xA5; 8], 512 + 32).unwrap();
}

#[test]
fn power_cuts_during_the_boot_stages_flag_write_with_one_copy_damaged_still_boot() {
    let app = Appliance::new();
    let v2 = app.image(&Release {
        version: "2.0.0",
        ..Release::default()
    });
    let b2 = app.bundle("2.0.0", "2.0.0", "switchback-qemu", &v2, Vec::new());
    let stick = app.stick(&[&b2]);
    let v1 = app.image(&Release::default());
    let disk = app.factory_disk(&v1);
    // slot_b holds 2.0.0 on trial, as after an install.
    app.write_slot(&disk, bootctl::Slot::B, &v2, &b2);
    bootctl::Disk::open(&disk, None, true)
        .unwrap()
        .set_active(bootctl::Slot::B, 15)
        .unwrap();

    // 8 KiB a second: each copy's array and header (17 KiB) take two
    // seconds to write, and the cuts land before, inside and between them.
    let (mut untouched, mut mid_write, mut whole) = (0, 0, 0);
    for delay_ms in [300u64, 1200, 2200, 3000, 3800, 5500] {
        // One copy damaged at each power-on: the primary, unless the last
        // cut fell inside the backup's write and left it the damaged one
        // (damaging the primary too would be a second fault of the test's
        // making, which no write order survives).
        if flags(&disk).gpt.backup.is_ok() {
            damage_primary_header(&disk);
        }
        let before = flags(&disk).attrs()[1];
        let mut vm = app.boot_throttled(&disk, &stick, 8192);
        vm.expect("reading the boot flags of", BOOT).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        vm.kill();
        let after = flags(&disk);
        let b = after.attrs()[1];
        assert!(
            b == before || b.tries + 1 == before.tries,
            "cut at {delay_ms} ms: slot_b {b:?}, was {before:?}"
        );
        match (after.gpt.primary.is_ok(), after.gpt.is_consistent()) {
            (false, _) => untouched += 1,
            (true, false) => mid_write += 1,
            (true, true) => whole += 1,
        }
        eprintln!(
            "cut {delay_ms} ms after the boot stage started: primary {}, backup {}, slot_b tries {}",
            if after.gpt.primary.is_ok() { "valid" } else { "damaged" },
            if after.gpt.backup.is_ok() { "valid" } else { "damaged" },
            b.tries
        );
    }
    eprintln!(
        "cuts: {untouched} before or inside the primary's write, {mid_write} after it and before the backup was whole, {whole} after both"
    );
    let mut vm = app.boot(&disk, &stick);
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    vm.expect("READY 2.0.0", STEP).unwrap();
    assert!(flags(&disk).gpt.is_consistent(), "not repaired by the boot");
}

#[test]
fn a_power_cut_during_an_expand_migration_is_restored_at_the_next_boot() {
    let app = Appliance::new();
    let expand = app.dir.path().join("expand.sh");
    std::fs::write(
        &expand,
        "#!/bin/sh\necho clobbered > \"$SWITCHBACK_DATA_DIR/app/v1-notes\"\nsync\nsleep 120\n",
    )
    .unwrap();
    let v2 = app.image(&Release {
        version: "2.0.0",
        ..Release::default()
    });
    let migration = MigrationSource {
        path: expand,
        from: 1,
        to: 2,
        phase: Phase::Expand,
        snapshot: vec!["app".into()],
    };
    let b = app.bundle("2.0.0", "2.0.0", "switchback-qemu", &v2, vec![migration]);
    let stick = app.stick(&[&b]);
    let (mut vm, disk) = factory(&app, &stick);
    vm.send("echo 'written by 1.0.0' > /data/app/v1-notes; sync")
        .unwrap();
    vm.send("updater install /media/2.0.0.swb").unwrap();
    // A confined migration has no console of its own: the updater says
    // when it starts it, and it clobbers and syncs within seconds.
    vm.expect("expand migration 1->2 (migration-1) started", STEP)
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    vm.kill();
    assert!(!flags(&disk).attrs()[1].is_bootable());

    let mut vm = app.boot(&disk, &stick);
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("recovered: restored the data in /data", STEP)
        .unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    vm.send("echo NOTES $(cat /data/app/v1-notes); ls /data/.switchback-snapshot 2>&1 | head -1; updater status | grep 'last install'")
        .unwrap();
    vm.expect("NOTES written by 1.0.0", STEP).unwrap();
    vm.expect("No such file or directory", STEP).unwrap();
    vm.expect("interrupted while writing slot_b", STEP).unwrap();
}

#[test]
fn a_power_cut_in_the_middle_of_a_commit_completes_at_the_next_boot() {
    let app = Appliance::new();
    let noop = app.dir.path().join("expand.sh");
    std::fs::write(&noop, "#!/bin/sh\ntrue\n").unwrap();
    let finalize = app.dir.path().join("finalize.sh");
    std::fs::write(
        &finalize,
        "#!/bin/sh\necho finalized >> \"$SWITCHBACK_DATA_DIR/app/finalize.log\"\n",
    )
    .unwrap();
    let v2 = app.image(&Release {
        version: "2.0.0",
        boot_tries: 5,
        health_checks: r#"[{"name": "mark", "command": ["sh", "-c", "echo HEALTH CHECKED > /dev/console"], "timeout_s": 10}]"#,
        ..Release::default()
    });
    let migrations = vec![
        MigrationSource {
            path: noop,
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
    ];
    let b = app.bundle("2.0.0", "2.0.0", "switchback-qemu", &v2, migrations);
    let stick = app.stick(&[&b]);
    let (mut vm, disk) = factory(&app, &stick);
    vm.send("updater install /media/2.0.0.swb; echo INSTALL EXIT $?")
        .unwrap();
    vm.expect("INSTALL EXIT 0", STEP).unwrap();
    vm.send("sync").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    vm.kill();

    // The trial boot, slowed so that the cut lands inside the commit that
    // follows the passed check (intent, flag, floor, finalize).
    let mut vm = app.boot_throttled(&disk, &stick, 64 << 10);
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    vm.expect("HEALTH CHECKED", STEP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    vm.kill();
    eprintln!("after the cut: slot_b {:?}", flags(&disk).attrs()[1]);

    let mut vm = app.boot(&disk, &stick);
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    vm.expect("READY 2.0.0", STEP).unwrap();
    vm.send("updater status | grep 'last install'; echo FINALIZED $(wc -l < /data/app/finalize.log) TIMES")
        .unwrap();
    vm.expect("into slot_b: committed", STEP).unwrap();
    vm.expect("FINALIZED 1 TIMES", STEP).unwrap();
    assert!(flags(&disk).attrs()[1].successful);
}
