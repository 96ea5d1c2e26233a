//! `updater fleet` against a real hawkBit DDI server (goosebit, strict
//! device authentication), and against a scripted one for what goosebit
//! lacks (cancelAction, 429, 410, hostile replies).

mod common;

use common::*;
use image_tools::bundle::{swu, Envelope};
use serde_json::json as j;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchback_test_support::goosebit::{version_and_state, Goosebit};
use switchback_test_support::hawkbit::{Auth, Hawkbit};
use switchback_test_support::http::Request;
use switchback_test_support::http::{file, json, Faults, Fixture, Proxy, Reply};

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
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
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
    swu::wrap_file(&bundle, &manifest, &["1.0".into()], &out).unwrap();
    out
}

fn fleet_once(dev: &Device, booted: &str) -> assert_cmd::assert::Assert {
    dev.updater(booted)
        .args(["fleet", "--once", "--no-reboot", "--idle-timeout", "5"])
        .timeout(Duration::from_secs(120))
        .assert()
}

/// `updater fleet` polling until killed, on slot_b, its log piped.
fn daemon(dev: &Device) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("updater"))
        .arg("--config")
        .arg(&dev.config)
        .arg("--disk")
        .arg(&dev.disk)
        .args(["--booted-slot", "b", "fleet", "--no-reboot"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
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
        (
            d["hardware"]["model"].as_str(),
            d["hardware"]["revision"].as_str()
        ),
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
        version_and_state(&d),
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
        version_and_state(&d),
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
    assert_eq!(version_and_state(&d), (Some("1.0.0"), Some("Error")), "{d}");
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
    assert!(
        !stderr.contains("ignores Range"),
        "goosebit serves ranges: {stderr}"
    );
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
    assert_eq!(version_and_state(&d), (Some("1.0.0"), Some("Error")), "{d}");
    assert!(
        gb.device_log(DEVICE).contains("signed by no trusted key"),
        "{}",
        gb.device_log(DEVICE)
    );
}

/// The scripted DDI server's base for the test device.
fn base(req: &Request) -> String {
    format!(
        "http://{}/DEFAULT/controller/v1/{DEVICE}",
        req.header("host").unwrap_or_default()
    )
}

fn poll_reply(links: serde_json::Value) -> Reply {
    json(
        200,
        j!({"config": {"polling": {"sleep": "00:00:01"}}, "_links": links}),
    )
}

/// A deployment of the artifact at `href` as action 6.
fn deployment_reply(href: &str, name: &str) -> Reply {
    json(
        200,
        j!({"id": "6", "deployment": {"download": "forced", "update": "forced", "chunks": [
            {"part": "os", "version": "2.0.0", "name": "os", "artifacts": [
                {"filename": name, "size": 1, "hashes": {}, "_links": {"download": {"href": href}}}
            ]}
        ]}}),
    )
}

fn feedbacks(f: &Fixture) -> Vec<serde_json::Value> {
    f.requests()
        .iter()
        .filter(|r| r.path.ends_with("/feedback"))
        .map(Request::json)
        .collect()
}

#[test]
fn a_cancel_before_the_install_is_accepted_and_nothing_is_written() {
    let f = Fixture::serve(
        |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => {
                poll_reply(j!({"cancelAction": {"href": format!("{}/cancelAction/7", base(req))}}))
            }
            "7" => json(200, j!({"id": "7", "cancelAction": {"stopId": "6"}})),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let before = (dev.attrs(), dev.slot(bootctl::Slot::A));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("action 6: canceled by the server"),
        "{}",
        stdout(&out)
    );
    assert_eq!((dev.attrs(), dev.slot(bootctl::Slot::A)), before);
    let reqs = f.requests();
    assert!(reqs
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("TargetToken {TOKEN}"))));
    let config = reqs
        .iter()
        .find(|r| r.path.ends_with("/configData"))
        .expect("attributes sent");
    assert_eq!(
        config.json()["data"],
        j!({"hw_boardname": "acme-gw", "hw_revision": "1.0", "sw_version": "1.0.0"})
    );
    let fb = feedbacks(&f);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0]["status"]["execution"], "closed");
    assert!(reqs
        .iter()
        .any(|r| r.path.ends_with("/cancelAction/7/feedback")));
}

#[test]
fn a_cancel_after_the_install_is_rejected() {
    let polls = std::sync::atomic::AtomicUsize::new(0);
    let bundle_bytes = std::sync::OnceLock::<Vec<u8>>::new();
    let dev_dir = tempfile::tempdir().unwrap();
    let swb = bundle_in(dev_dir.path(), &release("2.0.0"));
    bundle_bytes.set(std::fs::read(swb).unwrap()).unwrap();
    let f = Fixture::serve(move |req| {
        let last = req.path.rsplit('/').next().unwrap_or_default();
        match last {
            DEVICE if polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 1 => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            DEVICE => {
                poll_reply(j!({"cancelAction": {"href": format!("{}/cancelAction/7", base(req))}}))
            }
            "6" => deployment_reply(&format!("{}/files/2.0.0.swb", base(req)), "2.0.0.swb"),
            "7" => json(200, j!({"id": "7", "cancelAction": {"stopId": "6"}})),
            "2.0.0.swb" => file(bundle_bytes.get().unwrap().clone()),
            _ => json(200, j!({})),
        }
    });
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
    let out = fleet_once(&dev, "b").success();
    assert!(stdout(&out).contains("cancel refused"), "{}", stdout(&out));
    let cancel = f
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/cancelAction/7/feedback"))
        .expect("cancel answered");
    assert_eq!(cancel.json()["status"]["execution"], "rejected");
    assert_eq!(
        dev.state()["fleet"]["phase"],
        "installed",
        "the install stands"
    );
}

/// A chunk labelled 9.9.9 whose link serves a signed 2.0.0 (a swapped
/// object on a CDN, say): refused before anything is written (exit 71),
/// and the server hears the action failed, and why.
#[test]
fn a_bundle_of_another_version_than_the_server_assigned_is_refused_and_reported() {
    let dev_dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dev_dir.path(), &release("2.0.0"))).unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => {
                let href = format!("{}/files/9.9.9.swb", base(req));
                json(
                    200,
                    j!({"id": "6", "deployment": {"download": "forced", "update": "forced", "chunks": [
                        {"part": "os", "version": "9.9.9", "name": "os", "artifacts": [
                            {"filename": "9.9.9.swb", "size": 1, "hashes": {}, "_links": {"download": {"href": href}}}
                        ]}
                    ]}}),
                )
            }
            "9.9.9.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let before = (dev.attrs(), dev.slot(bootctl::Slot::A));
    let refused = fleet_once(&dev, "b").code(71);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        err.contains("assigned 9.9.9, but the bundle it linked is signed as 2.0.0"),
        "{err}"
    );
    assert_eq!(
        (dev.attrs(), dev.slot(bootctl::Slot::A)),
        before,
        "nothing written"
    );
    let last = feedbacks(&f).pop().expect("feedback sent");
    assert_eq!(last["status"]["execution"], "closed", "{last}");
    assert_eq!(last["status"]["result"]["finished"], "failure", "{last}");
    assert!(last.to_string().contains("signed as 2.0.0"), "{last}");
}

/// The daemon reads a 429's Retry-After: asked for 12 s, it does not poll
/// again at its own first back-off (5 s). What it waits in every case
/// (storms, the clamp, the doubling) is `fleet::schedule`'s table test;
/// this checks only a lower bound, which a busy machine cannot break.
#[test]
fn a_429_is_waited_out_as_long_as_the_server_asks() {
    let polls = std::sync::atomic::AtomicUsize::new(0);
    let f = Fixture::serve(move |req| {
        if req.path.ends_with(DEVICE)
            && polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
        {
            let mut r = json(429, j!({}));
            r.headers.push(("Retry-After".into(), "12".into()));
            return r;
        }
        poll_reply(j!({}))
    });
    let dev = fleet_device(&f.url);
    let mut daemon = daemon(&dev);
    let polls = |f: &Fixture| -> Vec<std::time::Instant> {
        f.requests()
            .iter()
            .filter(|r| r.path.ends_with(DEVICE))
            .map(|r| r.at)
            .collect()
    };
    let start = std::time::Instant::now();
    while polls(&f).is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the default back-off and its jitter (5.5 s), well short of 12 s.
    std::thread::sleep(Duration::from_secs(8));
    daemon.kill().unwrap();
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let at = polls(&f);
    assert_eq!(at.len(), 1, "polled again before Retry-After: {err}");
    assert!(
        err.contains("slow down (429)") && err.contains("next poll in 1"),
        "{err}"
    );

    // One poll, one answer: --once says so and exits 61.
    let f = Fixture::serve(|_| json(429, j!({})));
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").code(61);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("slow down (429)"));
}

#[test]
fn a_410_for_the_report_ends_the_action_and_a_wrong_bundle_keeps_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = release("2.0.0");
    r.compatible = "other-product";
    let bytes = std::fs::read(bundle_in(dir.path(), &r)).unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_reply(&format!("{}/files/x.swb", base(req)), "x.swb"),
            "x.swb" => file(bytes.clone()),
            "feedback" if req.json()["status"]["execution"] == "closed" => json(410, j!({})),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let before = dev.attrs();
    let out = fleet_once(&dev, "b").code(41);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("other-product"), "{err}");
    assert_eq!(dev.attrs(), before);
    let closed: Vec<_> = feedbacks(&f)
        .into_iter()
        .filter(|b| b["status"]["execution"] == "closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["status"]["result"]["finished"], "failure");
    assert!(dev.state().get("fleet").is_none(), "{}", dev.state());
}

#[test]
fn the_token_goes_only_to_the_configured_server() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    let cdn = Fixture::serve_file(bytes, Faults::default());
    let cdn_url = cdn.url.clone();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_reply(&format!("{cdn_url}/cdn/2.0.0.swb"), "2.0.0.swb"),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    fleet_once(&dev, "b").success();
    let download = &cdn.requests()[0];
    assert_eq!(download.path, "/cdn/2.0.0.swb");
    assert_eq!(
        download.header("authorization"),
        None,
        "the token leaked to {}",
        cdn.url
    );

    // A DDI link that leaves the server is refused before it is called.
    let evil = Fixture::serve(|_| json(200, j!({})));
    let evil_url = evil.url.clone();
    let f = Fixture::serve(move |_| {
        poll_reply(j!({"deploymentBase": {"href": format!("{evil_url}/x/deploymentBase/6")}}))
    });
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").code(61);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("leads away"));
    assert!(evil.requests().is_empty());

    // A token the server does not know: its own exit code, and what to check.
    let f = Fixture::serve(|_| {
        json(
            401,
            j!({"detail": "Device authentication token does not match."}),
        )
    });
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").code(62);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("check fleet.token_file"));
}

#[test]
fn install_takes_the_wrapped_form_and_refuses_a_wrapper_that_is_not_ours() {
    let dev = device();
    let r = release("2.0.0");
    let swu = swu_of(&dev, &r);
    dev.updater("a")
        .arg("install")
        .arg("-")
        .pipe_stdin(&swu)
        .unwrap()
        .assert()
        .success();
    assert_eq!(dev.slot(bootctl::Slot::B)[..r.image.len()], r.image[..]);

    // A wrapper with something else after sw-description: exit 37, and
    // the slot the next install targets is left as it was.
    let mut bytes = std::fs::read(&swu).unwrap();
    let at = bytes
        .windows(17)
        .rposition(|w| w == b"acme-gw-2.0.0.swb")
        .unwrap();
    bytes[at + 14..at + 17].copy_from_slice(b"exe");
    let evil = dev.dir.path().join("evil.swu");
    std::fs::write(&evil, bytes).unwrap();
    let before = dev.attrs();
    dev.updater("a")
        .arg("install")
        .arg(&evil)
        .assert()
        .code(37)
        .stderr(predicates::str::contains("not a Switchback bundle"));
    assert_eq!(dev.attrs(), before);
}

/// Plants a finished action 5 whose final report is still to be sent, as
/// after a reboot.
fn plant_finished_action(dev: &Device) {
    let path = dev.dir.path().join("state/state.json");
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    s["fleet"] = j!({"id": "5", "artifact": "1.5.0.swb", "phase": "done", "started_at": 1,
        "attempts": 1, "report": {"success": true, "details": ["1.5.0 committed"]}});
    std::fs::write(&path, s.to_string()).unwrap();
}

/// A server that offers 2.0.0 as action 6 at every poll and answers the
/// final report of action 5 with `report_status`.
fn offering_server(report_status: u16) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    Fixture::serve(move |req| {
        if req.path.ends_with("/deploymentBase/5/feedback") {
            return json(report_status, j!({}));
        }
        match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_reply(&format!("{}/files/2.0.0.swb", base(req)), "2.0.0.swb"),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        }
    })
}

#[test]
fn a_report_the_server_no_longer_knows_is_dropped_and_the_next_deployment_proceeds() {
    let f = offering_server(404);
    let dev = fleet_device(&f.url);
    plant_finished_action(&dev);
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("action 6: 2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("action 5: the server no longer knows it"),
        "{err}"
    );
}

#[test]
fn a_report_refused_again_and_again_is_given_up_after_five_tries() {
    let f = offering_server(400);
    let dev = fleet_device(&f.url);
    plant_finished_action(&dev);
    for n in 1..=4 {
        let out = fleet_once(&dev, "b").success();
        let said = stdout(&out);
        assert!(
            said.contains(&format!(
                "action 5 waits for the server to take its final report (refused {n} of at most 5 times); deployment 6 waits"
            )),
            "{said}"
        );
    }
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("refused its report (success) 5 times"),
        "{err}"
    );
}

#[test]
fn links_that_cannot_be_fetched_are_passed_over_and_reboot_spares_a_disk_image() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => json(
                200,
                j!({"id": "6", "deployment": {"download": "forced", "update": "forced", "chunks": [
                    {"part": "os", "version": "2.0.0", "name": "os", "artifacts": [
                        {"filename": "notes.txt", "size": 1, "_links": {"download": {"href": "s3://bucket/notes.txt"}}},
                        {"filename": "2.0.0.swb", "size": 1, "_links": {
                            "download": {"href": "s3://bucket/2.0.0.swb"},
                            "download-http": {"href": format!("{}/files/2.0.0.swb", base(req))}}}
                    ]}
                ]}}),
            ),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["fleet"]["reboot"] = j!(true);
    std::fs::write(&dev.config, c.to_string()).unwrap();
    let out = dev
        .updater_guarded("b", &["fleet", "--once", "--idle-timeout", "5"])
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains(r#"artifact "notes.txt" has no http(s) link"#),
        "{err}"
    );
    assert!(err.contains("not rebooting: "), "{err}");
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_deployment_with_no_fetchable_bundle_is_reported_failed_not_retried_forever() {
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_reply("s3://bucket/2.0.0.swb", "2.0.0.swb"),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    fleet_once(&dev, "b").success();
    let closed: Vec<_> = feedbacks(&f)
        .into_iter()
        .filter(|b| b["status"]["execution"] == "closed")
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["status"]["result"]["finished"], "failure");
    let details = closed[0]["status"]["details"].to_string();
    assert!(
        details.contains("passed over for want of an http(s) link")
            && details.contains("2.0.0.swb"),
        "{details}"
    );
}

#[test]
fn a_cancel_waits_while_another_process_holds_the_disk() {
    let f = Fixture::serve(
        |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => {
                poll_reply(j!({"cancelAction": {"href": format!("{}/cancelAction/7", base(req))}}))
            }
            "7" => json(200, j!({"id": "7", "cancelAction": {"stopId": "6"}})),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    // Another process is installing action 6: it holds the disk's lock.
    let path = dev.dir.path().join("state/state.json");
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    s["fleet"] = j!({"id": "6", "artifact": "2.0.0.swb", "phase": "installing", "started_at": 1, "attempts": 1});
    std::fs::write(&path, s.to_string()).unwrap();
    let held = bootctl::lock::lock(&dev.disk, Duration::from_secs(1)).unwrap();
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out)
            .contains("the server asks to cancel action 6; answered once the command holding"),
        "{}",
        stdout(&out)
    );
    assert!(
        !f.requests()
            .iter()
            .any(|r| r.path.ends_with("/cancelAction/7/feedback")),
        "the cancel was answered while the install held the disk"
    );
    drop(held);
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("action 6: canceled by the server"),
        "{}",
        stdout(&out)
    );
}

/// A server that answers 200 with a large Content-Length, then drips one
/// byte every 300 ms.
fn dripping_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/2.0.0.swb", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let magic = b"SWBUNDLE";
                for i in 0.. {
                    std::thread::sleep(Duration::from_millis(300));
                    if stream.write_all(&[magic[i % magic.len()]]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_download_that_drips_is_ended_by_the_minimum_rate() {
    let url = dripping_server();
    let dev = device();
    let t0 = std::time::Instant::now();
    dev.updater("a")
        .args(["install", &url, "--idle-timeout", "2", "--min-rate", "4096"])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(48)
        .stderr(predicates::str::contains("too slow: "))
        .stderr(predicates::str::contains(
            "below the minimum of 4096 bytes/s after the first 2 s (--min-rate)",
        ));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[test]
fn a_token_file_open_to_others_or_too_large_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::serve(|_| json(200, j!({})));
    let dev = fleet_device(&f.url);
    let token = dev.dir.path().join("fleet-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fleet_once(&dev, "b").code(40);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("is open to others (mode 0644): chmod 600 it"),
        "{err}"
    );
    // Named as what it is, not as the config file.
    assert!(err.contains("error: the fleet token "), "{err}");
    std::fs::write(&token, "x".repeat(300_000)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = fleet_once(&dev, "b").code(40);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("is larger than 4096 bytes"), "{err}");
    assert!(f.requests().is_empty(), "a request was sent");
}

#[test]
fn a_bundle_path_that_may_never_end_is_refused_at_once() {
    let dev = device();
    let fifo = dev.dir.path().join("bundle.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Opening a FIFO blocks until a writer comes: one that writes nothing.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let _w = std::fs::OpenOptions::new().write(true).open(&fifo);
            std::thread::sleep(Duration::from_secs(5));
        })
    };
    dev.updater("a")
        .arg("install")
        .arg(&fifo)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(64)
        .stderr(predicates::str::contains("is a FIFO, which may never end"));
    writer.join().unwrap();
    dev.updater("a")
        .arg("install")
        .arg(dev.dir.path())
        .assert()
        .code(64)
        .stderr(predicates::str::contains(format!(
            "bundle {} is a directory",
            dev.dir.path().display()
        )));
}

/// The fleet client keeps the install's memory bound: an idle poll, and an
/// action that downloads and installs a 40 MiB release, each run inside a
/// 24 MiB memory cgroup (which charges the page cache it writes through
/// too), and the release is reported installed (docs/fleet.md).
#[test]
fn the_fleet_client_idle_and_installing_fits_a_24_mib_memory_cgroup() {
    let Some(idle_group) = MemoryCgroup::for_test(24 << 20) else {
        return;
    };
    let idle = Fixture::serve(|_| poll_reply(j!({})));
    let dev = fleet_device(&idle.url);
    let mut poll = dev.updater_process("b");
    poll.args(["fleet", "--once", "--no-reboot", "--idle-timeout", "5"]);
    let out = idle_group.run(&poll);
    assert!(out.status.success(), "{out:?}");
    let idle_peak = std::fs::read_to_string(&idle_group.peak).unwrap_or_default();
    drop(idle_group);

    let Some(group) = MemoryCgroup::for_test(24 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = Release {
        image: pattern(40 << 20, 3),
        ..release("2.0.0")
    };
    let bytes = std::fs::read(bundle_in(dir.path(), &r)).unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_reply(&format!("{}/files/2.0.0.swb", base(req)), "2.0.0.swb"),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let mut cycle = dev.updater_process("b");
    cycle.args(["fleet", "--once", "--no-reboot", "--idle-timeout", "5"]);
    let out = group.run(&cycle);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("action 6: 2.0.0 installed into slot_a"),
        "{out:?}"
    );
    assert!(dev.slot(bootctl::Slot::A)[..r.image.len()] == r.image[..]);
    let peak = std::fs::read_to_string(&group.peak).unwrap_or_default();
    eprintln!(
        "fleet client in a 24 MiB cgroup: idle poll peak {} bytes, installing peak {} bytes",
        idle_peak.trim(),
        peak.trim()
    );
}

/// A deployment of `name` with `artifact`'s JSON (its hashes and links).
fn deployment_of(artifact: serde_json::Value) -> Reply {
    json(
        200,
        j!({"id": "6", "deployment": {"download": "forced", "update": "forced", "chunks": [
            {"part": "os", "version": "2.0.0", "name": "os", "artifacts": [artifact]}
        ]}}),
    )
}

/// The server announces the artifact's SHA-256 (hawkBit's `hashes`): a
/// download whose bytes have another one (a swapped object behind a CDN,
/// signed but not the one assigned) is refused before anything is flipped
/// (exit 72) and reported failed with both hashes; the right one installs.
#[test]
fn an_artifact_unlike_its_announced_sha256_is_refused_before_the_flip_and_reported() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    let right = hex::encode(sha2::Sha256::digest(&bytes));
    let announced = std::sync::Arc::new(std::sync::Mutex::new(hex::encode([7u8; 32])));
    let told = announced.clone();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_of(j!({"filename": "2.0.0.swb", "size": bytes.len(),
                "hashes": {"sha1": "00", "md5": "00", "sha256": told.lock().unwrap().clone()},
                "_links": {"download": {"href": format!("{}/files/2.0.0.swb", base(req))}}})),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let running = |dev: &Device| {
        (
            dev.attrs()[1],
            hex::encode(sha2::Sha256::digest(dev.slot(bootctl::Slot::B))),
        )
    };
    let before = running(&dev);
    let refused = fleet_once(&dev, "b").code(72);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        err.contains("the artifact 2.0.0.swb is not the one the fleet server announced")
            && err.contains(&format!("the server announced {}", hex::encode([7u8; 32]))),
        "{err}"
    );
    assert_eq!(running(&dev), before, "the running slot as it was");
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    let last = feedbacks(&f).pop().expect("feedback sent");
    assert_eq!(last["status"]["result"]["finished"], "failure", "{last}");
    assert!(last.to_string().contains("SHA-256"), "{last}");

    *announced.lock().unwrap() = right;
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
}

/// hawkBit gives `download` and `download-http`: when the first is gone
/// (404 from a CDN), the second is fetched instead of failing the cycle.
#[test]
fn a_gone_download_link_falls_back_to_download_http() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => deployment_of(
                j!({"filename": "2.0.0.swb", "size": bytes.len(), "_links": {
                "download": {"href": format!("{}/cdn/gone.swb", base(req))},
                "download-http": {"href": format!("{}/files/2.0.0.swb", base(req))}}}),
            ),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(404, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("trying its next link"), "{err}");
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
    assert!(f
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/cdn/gone.swb")));
}

/// A download-only action (`download: forced, update: skip`, what hawkBit
/// sends for one, and before a maintenance window opens): the release is
/// written into slot_a and left unbootable, and `downloaded`, which closes
/// such an action, is reported once. A later action of the same release
/// that may update activates it, checked again, without downloading it
/// again; its health check's verdict goes to that action.
#[test]
fn a_download_only_action_is_written_reported_downloaded_and_activated_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    // The action offered, and whether it may update.
    let offered = std::sync::Arc::new(std::sync::Mutex::new(("6", "skip")));
    let now = offered.clone();
    let f = Fixture::serve(move |req| {
        let (id, update) = *now.lock().unwrap();
        match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/{id}", base(req))}}),
            ),
            "6" | "7" | "8" => json(
                200,
                j!({"id": id, "deployment": {"download": "forced", "update": update, "chunks": [
                    {"part": "os", "version": "2.0.0", "name": "os", "artifacts": [
                        {"filename": "2.0.0.swb", "size": bytes.len(), "_links": {
                            "download-http": {"href": format!("{}/files/2.0.0.swb", base(req))}}}
                    ]}
                ]}}),
            ),
            "2.0.0.swb" => file(bytes.clone()),
            _ => json(200, j!({})),
        }
    });
    let dev = fleet_device(&f.url);
    let running = dev.attrs()[1];
    let downloads = |f: &Fixture| {
        f.requests()
            .iter()
            .filter(|r| r.path.ends_with("/2.0.0.swb"))
            .count()
    };
    let downloaded = |f: &Fixture| {
        feedbacks(f)
            .into_iter()
            .filter(|b| b["status"]["execution"] == "downloaded")
            .count()
    };
    for _ in 0..2 {
        let out = fleet_once(&dev, "b").success();
        assert!(
            stdout(&out).contains("action 6: 2.0.0 downloaded into slot_a and left unbootable"),
            "{}",
            stdout(&out)
        );
        assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
        assert_eq!(dev.attrs()[1], running);
    }
    assert_eq!(
        (downloads(&f), downloaded(&f)),
        (1, 1),
        "written and told once"
    );
    let told = feedbacks(&f)
        .into_iter()
        .find(|b| b["status"]["execution"] == "downloaded");
    assert_eq!(told.unwrap()["status"]["result"]["finished"], "none");

    // Another download-only action of the same release (a maintenance
    // window's, offered until it opens): told once, not written again.
    *offered.lock().unwrap() = ("8", "skip");
    for _ in 0..2 {
        let out = fleet_once(&dev, "b").success();
        assert!(
            stdout(&out).contains("action 8: 2.0.0 downloaded into slot_a"),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(
        (downloads(&f), downloaded(&f)),
        (1, 2),
        "told once per action"
    );

    *offered.lock().unwrap() = ("7", "forced");
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("action 7: 2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
    assert_eq!(downloads(&f), 1, "activated, not downloaded again");
    assert!(dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    assert_eq!(dev.boot(), bootctl::Slot::A);
    dev.health_ok("a");
    let last = f
        .requests()
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/feedback"))
        .map(|r| (r.path.clone(), r.json()))
        .expect("the verdict was sent");
    assert!(last.0.ends_with("deploymentBase/7/feedback"), "{}", last.0);
    assert_eq!(
        last.1["status"]["result"]["finished"], "success",
        "{}",
        last.1
    );
}

/// Rewrites the device's `fleet` section with `change`.
fn fleet_config(dev: &Device, change: impl FnOnce(&mut serde_json::Value)) {
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    change(&mut c["fleet"]);
    std::fs::write(&dev.config, c.to_string()).unwrap();
}

/// `token_kind: gateway` sends the tenant's gateway token as hawkBit
/// expects it (`GatewayToken`), the default the device's `TargetToken`.
#[test]
fn a_gateway_token_goes_out_as_one() {
    let f = Fixture::serve(|_| poll_reply(j!({})));
    let dev = fleet_device(&f.url);
    fleet_once(&dev, "b").success();
    fleet_config(&dev, |c| c["token_kind"] = j!("gateway"));
    fleet_once(&dev, "b").success();
    let sent: Vec<Option<String>> = f
        .requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        sent.first().cloned().flatten(),
        Some(format!("TargetToken {TOKEN}"))
    );
    assert_eq!(
        sent.last().cloned().flatten(),
        Some(format!("GatewayToken {TOKEN}"))
    );
    fleet_config(&dev, |c| c["token_kind"] = j!("device"));
    fleet_once(&dev, "b").code(40);
}

/// A server behind a proxy that authenticates devices by their client
/// certificate (mutual TLS; here the hawkBit-shaped server, which requires
/// one in the handshake): the device presents `client_cert` and
/// `client_key` and needs no token; without them it is
/// turned away in the handshake; a key others may read is refused before
/// anything is sent.
#[test]
fn a_client_certificate_is_presented_to_a_server_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=fleet-test-CA"
    ));
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(d.join("device.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "device"] {
        openssl(&format!(
            "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out {name}.pem -extfile {name}.ext"
        ));
    }
    // hawkBit behind a reverse proxy that checks client certificates.
    let hb = Hawkbit::start(Auth {
        tls: Some((d.join("server.pem"), d.join("server.key"))),
        client_ca: Some(d.join("ca.pem")),
        ..Auth::default()
    });
    hb.distribution("acme-gw", "1.0.0", j!([]));
    let dev = fleet_device(&hb.url);
    fleet_config(&dev, |c| c["ca_file"] = j!(d.join("ca.pem")));
    let refused = fleet_once(&dev, "b").code(61);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    use std::os::unix::fs::PermissionsExt;
    let key = d.join("device.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    fleet_config(&dev, |c| {
        c["token_file"] = j!(null);
        c["client_cert"] = j!(d.join("device.pem"));
        c["client_key"] = j!(key);
    });
    let out = fleet_once(&dev, "b").success();
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert_eq!(hb.answered("/controller/v1/"), [200, 200, 200]);
    all_taken(&hb);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = fleet_once(&dev, "b").code(40);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("is open to others"), "{err}");
}

/// The daemon keeps the last poll reply's ETag and asks with
/// `If-None-Match`; a 304 reads the kept reply again (its deployment link
/// included) and is no error: the polls go on at the server's pace, not
/// the back-off's.
#[test]
fn polls_ask_if_none_match_and_a_304_is_the_reply_kept() {
    let f = Fixture::serve(move |req| {
        if !req.path.ends_with(DEVICE) {
            return json(200, j!({}));
        }
        if req.header("if-none-match") == Some("\"v1\"") {
            return Reply {
                status: 304,
                body: Vec::new(),
                ..json(200, j!({}))
            };
        }
        let mut r = poll_reply(j!({}));
        r.headers.push(("ETag".into(), "\"v1\"".into()));
        r
    });
    let dev = fleet_device(&f.url);
    let mut daemon = daemon(&dev);
    let polls = |f: &Fixture| -> Vec<(Option<String>, u16)> {
        f.requests()
            .iter()
            .filter(|r| r.path.ends_with(DEVICE))
            .map(|r| (r.header("if-none-match").map(str::to_string), r.status))
            .collect()
    };
    let start = std::time::Instant::now();
    while polls(&f).len() < 4 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.kill().unwrap();
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let seen = polls(&f);
    assert!(
        seen.len() >= 4,
        "the polls stopped or slowed: {seen:?} {err}"
    );
    assert_eq!(seen[0], (None, 200));
    for p in &seen[1..] {
        assert_eq!(p, &(Some("\"v1\"".to_string()), 304), "{seen:?}");
    }
}

/// A distribution set of several modules, one per kind of device: the
/// artifact installed is the one signed for this device's `compatible`,
/// wherever it stands, and the other is passed over, named.
#[test]
fn of_several_artifacts_the_one_signed_for_this_device_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let ours = std::fs::read(bundle_in(dir.path(), &release("2.0.0"))).unwrap();
    let theirs = std::fs::read(bundle_in(
        dir.path(),
        &Release {
            compatible: "acme-camera",
            ..release("2.0.0")
        },
    ))
    .unwrap();
    let f = Fixture::serve(
        move |req| match req.path.rsplit('/').next().unwrap_or_default() {
            DEVICE => poll_reply(
                j!({"deploymentBase": {"href": format!("{}/deploymentBase/6", base(req))}}),
            ),
            "6" => {
                let artifact = |name: &str| j!({"filename": name, "_links": {"download": {"href": format!("{}/files/{name}", base(req))}}});
                json(
                    200,
                    j!({"id": "6", "deployment": {"download": "forced", "update": "forced", "chunks": [
                        {"part": "os", "version": "2.0.0", "name": "camera", "artifacts": [artifact("camera.swb")]},
                        {"part": "os", "version": "2.0.0", "name": "gateway", "artifacts": [artifact("gateway.swb")]}
                    ]}}),
                )
            }
            "camera.swb" => file(theirs.clone()),
            "gateway.swb" => file(ours.clone()),
            _ => json(404, j!({})),
        },
    );
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("gateway.swb is for acme-gw; passed over: camera.swb (for acme-camera)"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("2.0.0 installed into slot_a"),
        "{}",
        stdout(&out)
    );
}

/// hawkBit's confirmation flow (user consent turned on in the tenant): an
/// action waits for the device's confirmation. By default someone at the
/// device answers (`--confirm ID` or `--deny ID`, the id the waiting cycle
/// names); `confirm: auto` confirms at once. An answer for an action the
/// server does not ask about is refused (exit 73), nothing sent.
#[test]
fn an_action_to_confirm_waits_for_the_operator_or_is_confirmed_automatically() {
    let f = Fixture::serve(
        // hawkBit's link carries a query, which names no resource.
        move |req| match req
            .path
            .split('?')
            .next()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
        {
            DEVICE => poll_reply(
                j!({"confirmationBase": {"href": format!("{}/confirmationBase/6?c=-2122565939", base(req))}}),
            ),
            "6" => json(
                200,
                j!({"id": "6", "confirmation": {"download": "forced", "update": "forced", "chunks": [
                    {"part": "os", "version": "2.0.0", "name": "os", "artifacts": []}
                ]}}),
            ),
            _ => json(200, j!({})),
        },
    );
    let answers = |f: &Fixture| -> Vec<serde_json::Value> {
        f.requests()
            .iter()
            .filter(|r| r.path.ends_with("/confirmationBase/6/feedback"))
            .map(Request::json)
            .collect()
    };
    let dev = fleet_device(&f.url);
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(
            "action 6 (2.0.0) waits for a confirmation at the device: updater fleet --once --confirm 6"
        ),
        "{}",
        stdout(&out)
    );
    assert!(answers(&f).is_empty());

    let answer = |flag: &str, id: &str| {
        dev.updater("b")
            .args(["fleet", "--once", "--no-reboot", flag, id])
            .timeout(Duration::from_secs(60))
            .assert()
    };
    let wrong = answer("--confirm", "7").code(73);
    assert!(
        String::from_utf8_lossy(&wrong.get_output().stderr)
            .contains("nothing to confirm as action 7: the server asks to confirm action 6"),
        "{:?}",
        wrong.get_output()
    );
    assert!(answers(&f).is_empty());
    let out = answer("--deny", "6").success();
    assert!(
        stdout(&out).contains("action 6: denied"),
        "{}",
        stdout(&out)
    );
    let out = answer("--confirm", "6").success();
    assert!(
        stdout(&out).contains("action 6: confirmed by an operator"),
        "{}",
        stdout(&out)
    );

    fleet_config(&dev, |c| c["confirm"] = j!("auto"));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("confirmed automatically"),
        "{}",
        stdout(&out)
    );
    let sent: Vec<_> = answers(&f)
        .iter()
        .map(|a| a["confirmation"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(sent, ["denied", "confirmed", "confirmed"]);
}

// Against a server in Eclipse hawkBit's own shapes and status codes
// (qemu-tests/support/hawkbit): every body the device sends is checked
// against hawkBit's published OpenAPI description and its attribute rules.

fn hawkbit() -> Hawkbit {
    Hawkbit::start(Auth {
        target_tokens: vec![TOKEN.into()],
        ..Auth::default()
    })
}

/// Nothing the device sent was refused by hawkBit's schema or rules (a
/// 404, for a distribution set the server does not have, is no refusal of
/// what was sent).
fn all_taken(hb: &Hawkbit) {
    let refused: Vec<_> = hb
        .refused()
        .into_iter()
        .filter(|r| r["status"] != 404)
        .collect();
    assert_eq!(refused, Vec::<serde_json::Value>::new());
}

/// The action `id` as the server has it.
fn action_of(hb: &Hawkbit, id: u64) -> serde_json::Value {
    hb.state()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap()
}

#[test]
fn on_hawkbit_a_download_only_action_an_update_and_releases_from_elsewhere_are_all_told() {
    let hb = hawkbit();
    let dev = fleet_device(&hb.url);
    hb.distribution("acme-gw", "1.0.0", j!([]));
    let swu = swu_of(&dev, &release("2.0.0"));
    let ds2 = hb.distribution(
        "acme-gw",
        "2.0.0",
        j!([{"name": "acme-gw-os", "version": "2.0.0", "artifacts": [{"path": swu}]}]),
    );

    // An operator's answer when nothing waits for one sends nothing else.
    dev.updater("b")
        .args(["fleet", "--once", "--no-reboot", "--confirm", "5"])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(73);
    assert_eq!(hb.answered("/installedBase"), Vec::<u64>::new());

    // First contact: the attributes, and the factory release, which the
    // server did not put there, told once.
    for _ in 0..2 {
        let out = fleet_once(&dev, "b").success();
        assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    }
    let s = hb.state();
    assert_eq!(
        (
            &s["attributes"]["hw_boardname"],
            &s["attributes"]["hw_revision"],
            &s["attributes"]["sw_version"]
        ),
        (&j!("acme-gw"), &j!("1.0"), &j!("1.0.0")),
        "{s}"
    );
    assert_eq!(s["installed"], j!({"name": "acme-gw", "version": "1.0.0"}));
    assert_eq!(hb.answered("/installedBase"), [200]);

    // Download only (download: forced, update: skip), the download cut
    // once after 1 MiB and resumed with Range.
    let only = hb.assign(ds2, j!({"type": "downloadonly"}));
    hb.configure(j!({"cut_after": 1 << 20}));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(&format!(
            "action {only}: 2.0.0 downloaded into slot_a and left unbootable"
        )),
        "{}",
        stdout(&out)
    );
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    let a = action_of(&hb, only);
    assert_eq!(a["status"], "finished", "downloaded closes it: {a}");
    assert_eq!(hb.answered("/artifacts/"), [200, 206]);

    // The update of the same release activates what is there.
    let update = hb.assign(ds2, j!({"type": "forced"}));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(&format!("action {update}: 2.0.0 installed into slot_a")),
        "{}",
        stdout(&out)
    );
    assert_eq!(hb.answered("/artifacts/").len(), 2, "not downloaded again");
    assert_eq!(dev.boot(), bootctl::Slot::A);
    dev.health_ok("a");
    let a = action_of(&hb, update);
    assert_eq!(a["status"], "finished", "{a}");
    assert_eq!(
        a["feedback"].as_array().unwrap().last().unwrap()["status"]["result"]["finished"],
        "success"
    );
    fleet_once(&dev, "a").success();
    assert_eq!(
        hb.answered("/installedBase"),
        [200],
        "the server's own action says it"
    );
    assert_eq!(hb.state()["attributes"]["sw_version"], "2.0.0");

    // A technician's USB stick: 3.0.0, committed, told once committed.
    hb.distribution("acme-gw", "3.0.0", j!([]));
    dev.install_ok("a", &release("3.0.0"));
    fleet_once(&dev, "a").success();
    assert_eq!(
        hb.answered("/installedBase"),
        [200],
        "not before it is committed"
    );
    assert_eq!(dev.boot(), bootctl::Slot::B);
    dev.health_ok("b");
    fleet_once(&dev, "b").success();
    let s = hb.state();
    assert_eq!(s["installed"], j!({"name": "acme-gw", "version": "3.0.0"}));
    assert_eq!(s["attributes"]["sw_version"], "3.0.0");
    assert_eq!(hb.answered("/installedBase"), [200, 200]);
    all_taken(&hb);
}

#[test]
fn on_hawkbit_confirmation_a_cancel_a_wrong_hash_or_version_and_a_wrong_token_are_answered_as_it_expects(
) {
    let hb = hawkbit();
    let dev = fleet_device(&hb.url);
    let swu = swu_of(&dev, &release("2.0.0"));
    let module = |sha256: Option<String>| {
        let mut artifact = j!({"path": swu});
        if let Some(s) = sha256 {
            artifact["sha256"] = j!(s);
        }
        j!([{"name": "acme-gw-os", "version": "2.0.0", "artifacts": [artifact]}])
    };
    let swapped = hb.distribution("acme-gw", "2.0.0", module(Some(hex::encode([7u8; 32]))));
    let id = hb.assign(swapped, j!({"type": "forced", "confirm": true}));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(&format!(
            "action {id} (2.0.0) waits for a confirmation at the device: updater fleet --once --confirm {id}"
        )),
        "{}",
        stdout(&out)
    );
    let answer = |flag: &str| {
        dev.updater("b")
            .args(["fleet", "--once", "--no-reboot", flag, &id.to_string()])
            .timeout(Duration::from_secs(60))
            .assert()
            .success()
    };
    answer("--deny");
    assert_eq!(action_of(&hb, id)["confirmed"], false);
    answer("--confirm");
    let a = action_of(&hb, id);
    let said: Vec<_> = a["confirmations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["confirmation"].clone())
        .collect();
    assert_eq!(said, [j!("denied"), j!("confirmed")], "{a}");

    // Confirmed, offered, and the artifact is not what hawkBit announced.
    let refused = fleet_once(&dev, "b").code(72);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        err.contains("is not the one the fleet server announced"),
        "{err}"
    );
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    let a = action_of(&hb, id);
    assert_eq!(a["status"], "error", "{a}");
    assert!(a["feedback"].to_string().contains("SHA-256"), "{a}");

    // A chunk that names another version than the bundle is signed as:
    // refused before a byte is written, and reported.
    let relabeled = hb.distribution(
        "acme-gw",
        "9.9.9",
        j!([{"name": "acme-gw-os", "version": "9.9.9", "artifacts": [{"path": swu}]}]),
    );
    let id9 = hb.assign(relabeled, j!({"type": "forced"}));
    fleet_once(&dev, "b").code(71);
    let a = action_of(&hb, id9);
    assert_eq!(a["status"], "error", "{a}");
    assert!(a["feedback"].to_string().contains("9.9.9"), "{a}");
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());

    // Canceled before the device started it: accepted, nothing written.
    let right = hb.distribution("acme-gw", "2.0.0", module(None));
    let canceled = hb.assign(right, j!({"type": "forced"}));
    hb.action(canceled, j!({"cancel": true}));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(&format!("action {canceled}: canceled by the server")),
        "{}",
        stdout(&out)
    );
    assert_eq!(action_of(&hb, canceled)["status"], "canceled");
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());

    // Confirmed by the config, then installed.
    let id = hb.assign(right, j!({"type": "forced", "confirm": true}));
    fleet_config(&dev, |c| c["confirm"] = j!("auto"));
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains("confirmed automatically"),
        "{}",
        stdout(&out)
    );
    let out = fleet_once(&dev, "b").success();
    assert!(
        stdout(&out).contains(&format!("action {id}: 2.0.0 installed into slot_a")),
        "{}",
        stdout(&out)
    );
    all_taken(&hb);

    // A token the server does not know: 401, and the device says so.
    std::fs::write(dev.dir.path().join("fleet-token"), "not-the-token\n").unwrap();
    let out = fleet_once(&dev, "b").code(62);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("the server refused the device (401)"), "{err}");

    // The checks can fail: a body off hawkBit's schema is a 400, another
    // content type a 415, as hawkBit answers them.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let feedback = format!(
        "{}/DEFAULT/controller/v1/{DEVICE}/deploymentBase/{id}/feedback",
        hb.url
    );
    let send = |ctype: &str, body: &str| {
        agent
            .post(&feedback)
            .header("Authorization", format!("TargetToken {TOKEN}"))
            .header("Content-Type", ctype)
            .send(body.as_bytes())
            .unwrap()
            .status()
            .as_u16()
    };
    let off = r#"{"status": {"execution": "done", "result": {"finished": "success"}}}"#;
    assert_eq!(send("application/json", off), 400);
    assert_eq!(send("text/plain", r#"{"status": {}}"#), 415);
    let refused = hb.refused();
    let statuses: Vec<_> = refused
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [401, 400, 415], "{refused:?}");
    assert!(
        refused[1]["why"]
            .as_str()
            .unwrap()
            .contains("'done' is not one of"),
        "{refused:?}"
    );
}

/// A polling sleep of a day or more, as an ISO-8601 duration, is read as
/// such, not as the 60 s default; `fleet.max_poll_s` (a day at most)
/// still caps it.
#[test]
fn on_hawkbit_a_polling_sleep_of_36_hours_is_kept() {
    let hb = hawkbit();
    hb.configure(j!({"sleep": "PT36H"}));
    let dev = fleet_device(&hb.url);
    fleet_config(&dev, |c| c["max_poll_s"] = j!(86_400));
    let mut child = daemon(&dev);
    // Its first cycle ends with installedBase.
    let start = std::time::Instant::now();
    while hb.answered("/installedBase").is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("asks for a poll every"))
        .unwrap_or_default();
    assert!(
        line.ends_with(
            "the server asks for a poll every 129600 s (fleet.max_poll_s makes it 86400 s)"
        ),
        "{line}"
    );
    all_taken(&hb);
}
