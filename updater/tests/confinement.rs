//! What a signed but hostile (or buggy) migration can reach: its declared
//! directories and nothing else. No disk behind a device node, no mount, no
//! device node of its own making, no process that outlives it, no
//! descriptor of the updater's, no daemon's socket; and a snapshot record
//! planted in the data directory is never acted on.

mod common;

use common::*;
use image_tools::bundle::{MigrationSource, Phase};
use predicates::str::contains;
use std::path::Path;
use std::process::Command;

fn needs_root() -> bool {
    switchback_test_support::needs_root("namespaces and loop devices")
}

/// 2.0.0 at data schema 2 with one expand migration `body` declaring `app`.
fn with_expand(dev: &Device, body: &str) -> Release<'static> {
    let path = script(dev.dir.path(), "hostile.sh", body);
    Release {
        data_schema: Some(2),
        migrations: vec![MigrationSource {
            path,
            from: 1,
            to: 2,
            phase: Phase::Expand,
            snapshot: vec!["app".into()],
        }],
        ..release("2.0.0")
    }
}

/// A loop device over a scratch file, detached when dropped: a disk the
/// migration could write if it had the device nodes.
struct Loop {
    dev: String,
    file: std::path::PathBuf,
}
impl Loop {
    fn new(dir: &Path) -> Loop {
        let file = dir.join("victim.img");
        std::fs::write(&file, pattern(1 << 20, 5)).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Loop { dev, file }
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn a_migration_cannot_write_a_disk_remount_make_nodes_or_leave_processes_behind() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    let victim = Loop::new(dev.dir.path());
    let victim_before = std::fs::read(&victim.file).unwrap();
    let disk_before = std::fs::read(&dev.disk).unwrap();
    let (major, minor) = {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&victim.dev).unwrap().rdev();
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    };
    let body = format!(
        r#"r="$SWITCHBACK_DATA_DIR/app/report"
: > "$r"
try() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name: allowed" >> "$r"; else echo "$name: refused" >> "$r"; fi; }}
try dd-device dd if=/dev/zero of={loopdev} bs=512 count=1 conv=notrunc
try dd-disk-image dd if=/dev/zero of={disk} bs=512 count=1 seek=2048 conv=notrunc
try mknod mknod "$SWITCHBACK_DATA_DIR/app/blk" b {major} {minor}
try remount-root mount -o remount,bind,rw /
try mount-tmpfs mount -t tmpfs none /tmp
try mount-proc mount -t proc proc /mnt
try sysrq sh -c 'echo h > /proc/sysrq-trigger'
try sysctl sh -c 'echo 1 > /proc/sys/kernel/sysrq'
try write-tmp-must-work sh -c 'echo scratch > "$TMPDIR/x" && test "$(cat "$TMPDIR/x")" = scratch'
ls /dev | tr '\n' ' ' > "$SWITCHBACK_DATA_DIR/app/dev"
for n in 3 4 5 6 7 8 9; do if {{ true >&$n; }} 2>/dev/null; then echo "fd $n: open" >> "$r"; fi; done
if command -v python3 >/dev/null; then
  try unix-socket python3 -c 'import socket; socket.socket(socket.AF_UNIX)'
  try packet-socket python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'
  try loopback-must-work python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); c = socket.create_connection(s.getsockname()); c.close()'
else
  echo "unix-socket: not tried (no python3)" >> "$r"
fi
setsid sh -c 'sleep 2; echo late > "$SWITCHBACK_DATA_DIR/app/from-setsid"' </dev/null >/dev/null 2>&1 &
(sh -c 'sleep 2; echo late > "$SWITCHBACK_DATA_DIR/app/from-double-fork"' </dev/null >/dev/null 2>&1 &)
exit 0"#,
        loopdev = victim.dev,
        disk = dev.disk.display(),
    );
    dev.install_ok("a", &with_expand(&dev, &body));
    let report = std::fs::read_to_string(data.join("app/report")).unwrap();
    for attempt in [
        "dd-device",
        "dd-disk-image",
        "mknod",
        "remount-root",
        "mount-tmpfs",
        "mount-proc",
        "sysrq",
        "sysctl",
        "unix-socket",
        "packet-socket",
    ] {
        assert!(
            report.contains(&format!("{attempt}: refused")),
            "{attempt} was not refused:\n{report}"
        );
    }
    for works in ["write-tmp-must-work", "loopback-must-work"] {
        assert!(
            report.contains(&format!("{works}: allowed")),
            "{works} failed:\n{report}"
        );
    }
    assert_eq!(report.matches("allowed").count(), 2, "{report}");
    assert!(!report.contains("fd "), "descriptors inherited:\n{report}");
    assert_eq!(
        std::fs::read_to_string(data.join("app/dev")).unwrap(),
        "fd full null random shm stderr stdin stdout urandom zero "
    );
    assert!(
        std::fs::read(&victim.file).unwrap() == victim_before,
        "the loop device was written"
    );
    // The install itself wrote slot_b; slot_a and the table are as before.
    let now = std::fs::read(&dev.disk).unwrap();
    let a = dev.layout.slots[0];
    let a = a.offset as usize..(a.offset + a.size) as usize;
    assert!(now[a.clone()] == disk_before[a], "slot_a was written");
    // Nothing the migration started outlives it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !data.join("app/from-setsid").exists(),
        "a setsid child survived"
    );
    assert!(
        !data.join("app/from-double-fork").exists(),
        "a double-forked child survived"
    );
}

#[test]
fn a_health_check_sees_the_systems_processes() {
    let dev = device();
    // A check that the application's process is alive, by its PID.
    dev.set_health(serde_json::json!({"checks": [{
        "name": "app-alive",
        "command": ["kill", "-0", std::process::id().to_string()],
    }]}));
    dev.install_ok("a", &release("2.0.0"));
    dev.boot();
    dev.health_ok("b");
    assert_eq!(dev.state()["last_install"]["outcome"], "committed");
}

#[test]
fn a_migration_that_leaves_its_process_group_is_still_killed_at_its_timeout() {
    if !needs_root() {
        return;
    }
    let dev = device();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["migration_timeout_s"] = serde_json::json!(1);
    std::fs::write(&dev.config, c.to_string()).unwrap();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/db"), "before").unwrap();
    let before = tree(&data);
    // The migration itself calls setsid (no fork: it is not a group
    // leader), leaving the group a timeout kills.
    let v2 = with_expand(
        &dev,
        r#"exec setsid sh -c 'sleep 3; echo late > "$SWITCHBACK_DATA_DIR/app/db"'"#,
    );
    dev.updater("a")
        .arg("install")
        .arg(dev.bundle(&v2))
        .assert()
        .code(55)
        .stderr(contains("timed out after 1 s"));
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(tree(&data) == before, "the migration outlived its timeout");
}

#[test]
fn a_planted_snapshot_record_is_refused_and_deletes_nothing() {
    let dev = device();
    let data = dev.dir.path().join("data");
    let outside = dev.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("precious")).unwrap();
    std::fs::write(outside.join("precious/file"), "keep").unwrap();
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/db"), "live data").unwrap();
    let plant = |entries: serde_json::Value| {
        let snap = data.join(".switchback-snapshot");
        std::fs::create_dir_all(&snap).unwrap();
        let record = serde_json::json!({
            "entries": entries, "phase": "expand", "to": 99, "release": "2.0.0",
        });
        std::fs::write(snap.join("snapshot.json"), record.to_string()).unwrap();
    };
    for entries in [
        serde_json::json!([["../outside/precious", true]]),
        serde_json::json!([[outside.join("precious"), false]]),
        // Plain, but no signed release declares it (none is kept here).
        serde_json::json!([["app", false]]),
    ] {
        plant(entries.clone());
        dev.updater("a")
            .args(["health", "--no-reboot"])
            .assert()
            .success()
            .stderr(contains("REFUSED the snapshot of an interrupted migration"));
        assert_eq!(
            std::fs::read_to_string(outside.join("precious/file")).unwrap(),
            "keep",
            "{entries}"
        );
        assert_eq!(
            std::fs::read_to_string(data.join("app/db")).unwrap(),
            "live data"
        );
        assert!(!data.join(".switchback-snapshot").exists());
        assert!(data
            .join(".switchback-snapshot.refused/snapshot.json")
            .exists());
    }
}

#[test]
fn a_snapshot_record_of_the_signed_release_restores_only_through_real_directories() {
    if !needs_root() {
        return;
    }
    // A real interrupted migration of 2.0.0, declaring "app" and
    // "app2/sub"; then "app2" is swapped for a link out of the data
    // directory, so that restoring "app2/sub" would remove outside/sub.
    let dev = device();
    let data = dev.dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).unwrap();
    std::fs::write(data.join("app/db"), "before").unwrap();
    let v2 = Release {
        data_schema: Some(2),
        migrations: vec![MigrationSource {
            path: script(
                dev.dir.path(),
                "m.sh",
                r#"echo after > "$SWITCHBACK_DATA_DIR/app/db"; touch "$SWITCHBACK_DATA_DIR/app/half-way"; sleep 30"#,
            ),
            from: 1,
            to: 2,
            phase: Phase::Expand,
            snapshot: vec!["app".into(), "app2/sub".into()],
        }],
        ..release("2.0.0")
    };
    dev.install_killed_at("a", &v2, &data.join("app/half-way"));
    // "app2" becomes a link to a directory outside the data directory.
    let outside = dev.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/file"), "keep").unwrap();
    let _ = std::fs::remove_dir_all(data.join("app2"));
    std::os::unix::fs::symlink(&outside, data.join("app2")).unwrap();
    dev.updater("a")
        .args(["health", "--no-reboot"])
        .assert()
        .success()
        .stderr(contains("REFUSED the snapshot"))
        .stderr(contains("is not a directory"));
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/file")).unwrap(),
        "keep"
    );
}
