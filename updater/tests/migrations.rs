//! Data migrations: expand before the flip, finalize at commit, and a
//! failure that restores the data and flips nothing.

mod common;

use bootctl::Slot;
use common::*;
use image_tools::bundle::{MigrationSource, Phase};
use predicates::str::contains;

fn migration(
    path: std::path::PathBuf,
    from: u32,
    to: u32,
    phase: Phase,
    snapshot: &[&str],
) -> MigrationSource {
    MigrationSource {
        path,
        from,
        to,
        phase,
        snapshot: snapshot.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn expand_runs_before_the_flip_and_finalize_at_commit() {
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/v1.txt"), "the old release reads this").unwrap();
    let expand = script(
        dev.dir.path(),
        "expand.sh",
        r#"set -e
echo "the new release reads this" > "$SWITCHBACK_DATA_DIR/app/v2.txt"
echo "$SWITCHBACK_PHASE $SWITCHBACK_FROM->$SWITCHBACK_TO into $SWITCHBACK_NEW_SLOT" >> "$SWITCHBACK_DATA_DIR/app/migrations.log""#,
    );
    let finalize = script(
        dev.dir.path(),
        "finalize.sh",
        r#"set -e
rm "$SWITCHBACK_DATA_DIR/app/v1.txt"
echo "$SWITCHBACK_PHASE $SWITCHBACK_FROM->$SWITCHBACK_TO" >> "$SWITCHBACK_DATA_DIR/app/migrations.log""#,
    );
    let v2 = Release {
        data_schema: Some(2),
        migrations: vec![
            migration(expand, 1, 2, Phase::Expand, &["app"]),
            migration(finalize, 1, 2, Phase::Finalize, &["app"]),
        ],
        ..release("2.0.0")
    };
    dev.install_ok("a", &v2);
    // Before the reboot: the expanded schema is there, the old data too.
    assert_eq!(
        std::fs::read_to_string(data.join("app/migrations.log")).unwrap(),
        "expand 1->2 into slot_b\n"
    );
    assert!(data.join("app/v1.txt").exists() && data.join("app/v2.txt").exists());
    assert_eq!(dev.state()["data_schema"], 2);
    assert!(
        !data.join(".switchback-snapshot").exists(),
        "snapshot left behind"
    );

    assert_eq!(dev.boot(), Slot::B);
    dev.health_ok("b");
    assert_eq!(
        std::fs::read_to_string(data.join("app/migrations.log")).unwrap(),
        "expand 1->2 into slot_b\nfinalize 1->2\n"
    );
    assert!(!data.join("app/v1.txt").exists() && data.join("app/v2.txt").exists());
}

#[test]
fn a_failing_expand_restores_the_data_byte_for_byte_and_flips_nothing() {
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app/db")).unwrap();
    std::fs::write(data.join("app/db/table"), pattern(300_000, 9)).unwrap();
    std::fs::write(data.join("app/keep.conf"), "setting=1\n").unwrap();
    std::fs::write(data.join("other.txt"), "not declared, not touched").unwrap();
    let bad = script(
        dev.dir.path(),
        "bad.sh",
        r#"
printf 'garbage' >> "$SWITCHBACK_DATA_DIR/app/db/table"
rm "$SWITCHBACK_DATA_DIR/app/keep.conf"
mkdir "$SWITCHBACK_DATA_DIR/app/new"; echo half > "$SWITCHBACK_DATA_DIR/app/new/file"
echo "converting table"; echo "out of disk space" >&2
exit 4"#,
    );
    let v2 = Release {
        data_schema: Some(2),
        migrations: vec![migration(bad, 1, 2, Phase::Expand, &["app"])],
        ..release("2.0.0")
    };
    let (before, flags) = (tree(&data), dev.attrs());
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(55)
        .stderr(contains("expand migration 1->2 (migration-1) failed: exit status: 4; output: converting table | out of disk space"))
        .stderr(contains("the data is restored from its snapshot and nothing was flipped"));
    assert!(tree(&data) == before, "data not restored exactly");
    assert_eq!(dev.attrs(), flags, "boot flags changed");
    assert!(dev.state().get("data_schema").is_none());
    assert_eq!(dev.state()["last_install"]["outcome"], "failed");
    // The written but unbootable slot_b does not claim 2.0.0: status and
    // the fleet's attributes would otherwise show a release it cannot run.
    let status = dev
        .updater("a")
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["slots"][1]["name"], "slot_b");
    assert!(status["slots"][1]["version"].is_null(), "{status}");
    assert_eq!(status["last_install"]["version"], "2.0.0");
}

#[test]
fn a_gap_in_the_migration_chain_is_refused_before_anything_runs() {
    let dev = device();
    let data = dev.dir.path().join("data");
    let marker = script(
        dev.dir.path(),
        "m.sh",
        r#"touch "$SWITCHBACK_DATA_DIR/ran""#,
    );
    let v3 = Release {
        data_schema: Some(3),
        migrations: vec![migration(marker, 1, 2, Phase::Expand, &[])],
        ..release("3.0.0")
    };
    let b = dev.bundle(&v3);
    let disk_before = std::fs::read(&dev.disk).unwrap();
    dev.updater("a")
        .arg("install")
        .arg(&b)
        .assert()
        .code(54)
        .stderr(contains(
            "no expand migration leads from data schema 1 to 3 (this bundle has: expand 1->2)",
        ));
    assert!(!data.join("ran").exists(), "a migration ran");
    assert!(
        std::fs::read(&dev.disk).unwrap() == disk_before,
        "disk written"
    );
}
