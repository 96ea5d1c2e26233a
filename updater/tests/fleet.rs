//! `updater fleet` against a real hawkBit DDI server (goosebit, strict
//! device authentication), and against a scripted one for what goosebit
//! lacks (cancelAction, 429, 410, hostile replies).

mod common;

use common::goosebit::Goosebit;
#[allow(unused_imports)]
use common::net::Request;
use common::net::{json, Fixture, Proxy, Reply};
use common::*;
use image_tools::bundle::{swu, Envelope};
use serde_json::json as j;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEVICE: &str = "gw-0001";
const TOKEN: &str = "tok-3f9a2c";

/// A device running 1.0.0, committed, in slot_b, set up to poll `url`.
fn fleet_device(url: &str) -> Device {
    let dev = device_in(tempfile::tempdir().unwrap(), 48);
    dev.install_ok("a", &release("1.0.0"));
    assert_eq!(dev.boot(), bootctl::Slot::B);
    dev.health_ok("b");
    let token = dev.dir.path().join("fleet-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["fleet"] = j!({
        "url": url,
        "controller_id": DEVICE,
        "token_file": token,
        "hw_revision": "1.0",
        "reboot": false,
    });
    std::fs::write(&dev.config, c.to_string()).unwrap();
    dev
}

/// `r`'s bundle wrapped as a .swu for hardware revision 1.0.
fn swu_of(dev: &Device, r: &Release) -> PathBuf {
    let bundle = dev.bundle(r);
    let manifest = Envelope::read(std::fs::File::open(&bundle).unwrap())
        .unwrap()
        .unverified_manifest()
        .unwrap();
    let out = dev.dir.path().join(format!("{}.swu", r.version));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    swu::wrap(&bundle, &manifest, &["1.0".into()], &mut f).unwrap();
    drop(f);
    out
}

fn fleet_once(dev: &Device, booted: &str) -> assert_cmd::assert::Assert {
    dev.updater(booted)
        .args(["fleet", "--once", "--no-reboot", "--idle-timeout", "5"])
        .timeout(Duration::from_secs(120))
        .assert()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// Registers the device, uploads `file` and assigns it; the device's first
/// poll registers its attributes, and the release is offered from then on.
fn offer(gb: &Goosebit, dev: &Device, file: &Path) {
    gb.add_device(DEVICE, TOKEN);
    let id = gb.upload(file);
    let first = fleet_once(dev, "b").success();
    assert!(
        stdout(&first).contains("nothing to do"),
        "{}",
        stdout(&first)
    );
    let d = gb.device(DEVICE);
    assert_eq!(d["sw_version"], "1.0.0", "{d}");
    assert_eq!(
        (d["hardware"]["model"].as_str(), d["hardware"]["revision"].as_str()),
        (Some("acme-gw"), Some("1.0")),
        "{d}"
    );
    // goosebit assigns only what fits the hardware the device reported.
    gb.assign(DEVICE, id);
}

#[test]
fn a_deployment_is_reported_success_only_once_health_commits_it() {
    let gb = Goosebit::start();
    let dev = fleet_device(&gb.url);
    let release2 = release("2.0.0");
    offer(&gb, &dev, &swu_of(&dev, &release2));

    let installed = fleet_once(&dev, "b").success();
    assert!(
        stdout(&installed).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&installed)
    );
    assert_eq!(
        dev.slot(bootctl::Slot::A)[..release2.image.len()],
        release2.image[..]
    );
    // Written and flipped, but not proven: the server still shows 1.0.0.
    let d = gb.device(DEVICE);
    assert_eq!(
        (d["sw_version"].as_str(), d["last_state"].as_str()),
        (Some("1.0.0"), Some("Running")),
        "{d}"
    );
    assert_eq!(dev.state()["fleet"]["phase"], "installed");
    assert!(
        gb.device_log(DEVICE).contains("Downloaded 100%"),
        "{}",
        gb.device_log(DEVICE)
    );

    // Offered again before the reboot: it waits, nothing is written twice.
    let waiting = fleet_once(&dev, "b").success();
    assert!(stdout(&waiting).contains("waits"), "{}", stdout(&waiting));

    assert_eq!(dev.boot(), bootctl::Slot::A);
    dev.health_ok("a");
    let d = gb.device(DEVICE);
    assert_eq!(
        (d["sw_version"].as_str(), d["last_state"].as_str()),
        (Some("2.0.0"), Some("Finished")),
        "{d}"
    );
    assert!(
        gb.device_log(DEVICE).contains("2.0.0 committed in slot_a"),
        "{}",
        gb.device_log(DEVICE)
    );
    assert!(dev.state().get("fleet").is_none(), "{}", dev.state());
    let idle = fleet_once(&dev, "a").success();
    assert!(stdout(&idle).contains("nothing to do"), "{}", stdout(&idle));
}

#[test]
fn a_failed_health_check_is_reported_as_failure_with_the_old_version() {
    let gb = Goosebit::start();
    let dev = fleet_device(&gb.url);
    offer(&gb, &dev, &swu_of(&dev, &release("2.0.0")));
    fleet_once(&dev, "b").success();
    dev.set_health(j!({"checks": [{"name": "app-answers", "command": ["false"]}]}));
    assert_eq!(dev.boot(), bootctl::Slot::A);
    dev.updater("a")
        .args(["health", "--no-reboot"])
        .assert()
        .code(52);
    let d = gb.device(DEVICE);
    assert_eq!(
        (d["sw_version"].as_str(), d["last_state"].as_str()),
        (Some("1.0.0"), Some("Error")),
        "{d}"
    );
    let log = gb.device_log(DEVICE);
    assert!(
        log.contains("2.0.0 was rolled back") && log.contains("app-answers"),
        "{log}"
    );
    assert_eq!(
        dev.boot(),
        bootctl::Slot::B,
        "the device falls back to 1.0.0"
    );
}

#[test]
fn a_download_cut_by_a_server_restart_resumes() {
    let mut gb = Goosebit::start();
    // 2 MiB/s through the proxy: the 24 MiB download takes about 12 s.
    let proxy = Proxy::start(gb.port, 2 << 20);
    let dev = fleet_device(&format!("http://127.0.0.1:{}", proxy.port));
    let mut r = release("2.0.0");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    r.image = (0..24 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    offer(&gb, &dev, &swu_of(&dev, &r));
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("updater"));
    cmd.arg("--config")
        .arg(&dev.config)
        .arg("--disk")
        .arg(&dev.disk);
    cmd.args([
        "--booted-slot",
        "b",
        "fleet",
        "--once",
        "--no-reboot",
        "--idle-timeout",
        "5",
    ]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !gb.device_log(DEVICE).contains("Downloading") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no download started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    gb.restart();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("2.0.0 installed into slot_a"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("resuming at byte"), "{stderr}");
    assert!(!stderr.contains("ignores Range"), "goosebit serves ranges: {stderr}");
    assert_eq!(dev.slot(bootctl::Slot::A)[..r.image.len()], r.image[..]);
}

#[test]
fn a_wrapped_bundle_with_a_bad_signature_is_refused_and_reported() {
    let gb = Goosebit::start();
    let dev = fleet_device(&gb.url);
    let mut r = release("2.0.0");
    r.signer = key(9);
    offer(&gb, &dev, &swu_of(&dev, &r));
    let before = (dev.attrs(), dev.slot(bootctl::Slot::A));
    let refused = fleet_once(&dev, "b").code(25);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("signed by no trusted key"), "{err}");
    assert_eq!(
        (dev.attrs(), dev.slot(bootctl::Slot::A)),
        before,
        "nothing written"
    );
    let d = gb.device(DEVICE);
    assert_eq!(
        (d["sw_version"].as_str(), d["last_state"].as_str()),
        (Some("1.0.0"), Some("Error")),
        "{d}"
    );
    assert!(
        gb.device_log(DEVICE).contains("signed by no trusted key"),
        "{}",
        gb.device_log(DEVICE)
    );
}
