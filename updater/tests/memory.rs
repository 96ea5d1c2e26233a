//! The install's memory budget (docs/updater.md, "Memory"): an install fits
//! a small appliance's memory cgroup, and a bundle whose chunks cannot fit
//! the budget is refused before anything is written, saying how to go on.

mod common;

use bootctl::Slot;
use common::*;

const MIB: usize = 1 << 20;

/// A 96 MiB release in the default 4 MiB chunks installs inside a 24 MiB
/// memory cgroup, which charges the page cache the install writes through
/// too, and the slot reads back as the image. Before the budget the same
/// install was killed by the OOM killer at 48 MiB.
#[test]
fn an_install_fits_a_24_mib_memory_cgroup() {
    let Some(group) = MemoryCgroup::for_test(24 << 20) else {
        return;
    };
    let dev = device_in(tempfile::tempdir().unwrap(), 100);
    let r = Release {
        image: pattern(96 * MIB, 11),
        chunk_size: 4 << 20,
        ..release("2.0.0")
    };
    let b = dev.bundle(&r);
    let mut install = dev.updater_process("a");
    install.arg("install").arg(&b);
    let out = group.run(&install);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("within 16 MiB of memory"), "{err}");
    assert!(dev.slot(Slot::B)[..r.image.len()] == r.image[..]);
    let peak = std::fs::read_to_string(&group.peak).unwrap_or_default();
    eprintln!("cgroup peak: {} bytes", peak.trim());
}

/// 16 MiB chunks need more than the default 16 MiB: refused with the
/// figure and the ways out (exit 66) before the slot is touched; the
/// config's `install_memory` or `--memory` lets the same bundle install.
#[test]
fn chunks_too_large_for_the_memory_are_refused_before_anything_is_written() {
    let dev = device_in(tempfile::tempdir().unwrap(), 40);
    let r = Release {
        image: pattern(20 * MIB, 5),
        chunk_size: 16 << 20,
        ..release("2.0.0")
    };
    let b = dev.bundle(&r);
    let before = dev.slot(Slot::B);
    let out = dev.updater("a").arg("install").arg(&b).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    for said in [
        "needs",
        "MiB of memory, over the 16.0 MiB it may use",
        "largest chunk alone needs",
        "--memory",
        "install_memory",
        "--chunk-size",
    ] {
        assert!(err.contains(said), "{said:?} not in: {err}");
    }
    assert!(dev.slot(Slot::B) == before, "the slot was written");
    let state = dev.dir.path().join("state/state.json");
    assert!(
        !state.exists() || dev.state().get("last_install").is_none_or(|v| v.is_null()),
        "the refusal was recorded as an install"
    );

    // The config raises it for every install...
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    config["install_memory"] = "64M".into();
    std::fs::write(&dev.config, config.to_string()).unwrap();
    let out = dev.updater("a").arg("install").arg(&b).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("within 64 MiB of memory"), "{err}");
    assert!(dev.slot(Slot::B)[..r.image.len()] == r.image[..]);

    // ...and --memory for one, over the config.
    let out = dev
        .updater("a")
        .args(["install", "--memory", "8M"])
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(err.contains("over the 8.0 MiB it may use"), "{err}");
}

/// A config whose `install_memory` is not a size is refused, naming it.
#[test]
fn an_install_memory_that_is_not_a_size_is_named() {
    let dev = device();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    config["install_memory"] = "lots".into();
    std::fs::write(&dev.config, config.to_string()).unwrap();
    let out = dev.updater("a").arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(40), "{err}");
    assert!(
        err.contains("install_memory: \"lots\" is not a size"),
        "{err}"
    );
}
