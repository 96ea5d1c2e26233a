//! `updater serve` (docs/api.md): the real service on a file disk, spoken to
//! over its Unix socket as a technician's tool would.

mod common;

use common::*;
use serde_json::{json as j, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The service on a device, killed when dropped.
struct Service {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `updater serve` for `dev` booted from `booted`, an upload ended after
/// `idle` seconds of silence.
fn serve(dev: &Device, booted: &str, idle: u64) -> Service {
    let socket = dev.dir.path().join("run/updater.sock");
    let child = dev
        .updater_process(booted)
        .args(["serve", "--upload-idle", &idle.to_string(), "--socket"])
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the service did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Service { child, socket }
}

/// Writes a request's head (with `length` as its Content-Length).
fn head(s: &mut UnixStream, method: &str, path: &str, ctype: &str, length: usize) {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
}

/// The status and JSON body of the reply on `s`.
fn reply(mut s: UnixStream) -> (u16, Value) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn call(api: &Service, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(&api.socket).unwrap();
    let ctype = if path.starts_with("/v1/install") {
        "application/octet-stream"
    } else {
        "application/json"
    };
    head(&mut s, method, path, ctype, body.len());
    // A refusal may come before the whole body was sent (a bad signature
    // is known from the first bytes): the service closes, and the rest
    // of the body has nowhere to go. The reply is what counts.
    let _ = s.write_all(body);
    reply(s)
}

/// `GET /v1/events`, listened to on a thread: every `data:` event until
/// one that ends an install (`flipped`, `ready`, `error`).
fn listen(api: &Service) -> std::thread::JoinHandle<Vec<Value>> {
    let mut s = UnixStream::connect(&api.socket).unwrap();
    head(&mut s, "GET", "/v1/events", "application/json", 0);
    let mut lines = BufReader::new(s);
    // Subscribed once the first comment came.
    let mut line = String::new();
    while !line.starts_with(": subscribed") {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "no events stream");
    }
    std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in lines.lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data).unwrap();
                let last = matches!(event["event"].as_str(), Some("flipped" | "ready" | "error"));
                events.push(event);
                if last {
                    break;
                }
            }
        }
        events
    })
}

/// A device on 1.0.0, committed, in slot_b.
fn device() -> Device {
    let dev = device_in(tempfile::tempdir().unwrap(), 48);
    dev.install_ok("a", &release("1.0.0"));
    assert_eq!(dev.boot(), bootctl::Slot::B);
    dev.health_ok("b");
    dev
}

fn version_of(status: &Value, slot: &str) -> Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == slot)
        .map(|s| s["version"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn an_install_streams_in_with_progress_is_activated_committed_and_rolled_back() {
    let dev = device();
    let api = serve(&dev, "b", 30);
    let (code, status) = call(&api, "GET", "/v1/status", b"");
    assert_eq!(code, 200, "{status}");
    assert_eq!(
        (&status["booted"], version_of(&status, "slot_b")),
        (&j!("slot_b"), j!("1.0.0"))
    );

    // Written and left ready, the progress on the events stream.
    let events = listen(&api);
    let bundle = std::fs::read(dev.bundle(&release("2.0.0"))).unwrap();
    let (code, done) = call(&api, "POST", "/v1/install?no_activate=1", &bundle);
    assert_eq!(code, 200, "{done}");
    assert_eq!(
        done,
        j!({"slot": "slot_a", "compatible": "acme-gw", "version": "2.0.0", "activated": false})
    );
    let events = events.join().unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"verified"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"ready"), "{kinds:?}");
    let last_progress = events
        .iter()
        .rev()
        .find(|e| e["event"] == "progress")
        .unwrap();
    assert_eq!(
        last_progress["done"], last_progress["total"],
        "progress reaches 100 %"
    );
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());

    // Activated: it boots next, on trial.
    let (code, done) = call(&api, "POST", "/v1/activate", b"{}");
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["version"], "2.0.0");
    assert!(dev.attrs()[0].is_bootable());
    drop(api);

    // Booted, its health check through the API commits it.
    assert_eq!(dev.boot(), bootctl::Slot::A);
    let api = serve(&dev, "a", 30);
    let (code, verdict) = call(&api, "POST", "/v1/health", b"");
    assert_eq!(
        (code, &verdict["verdict"]),
        (200, &j!("committed")),
        "{verdict}"
    );
    let (_, history) = call(&api, "GET", "/v1/history", b"");
    let events: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert!(events.contains(&j!("commit")), "{history}");

    // A rollback names the release it goes back to; another name is refused.
    let (code, refused) = call(&api, "POST", "/v1/rollback", br#"{"confirm": "2.0.0"}"#);
    assert_eq!((code, &refused["code"]), (422, &j!(53)), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("must name 1.0.0, the release in slot_b"),
        "{refused}"
    );
    assert_eq!(dev.boot(), bootctl::Slot::A, "nothing changed");
    let (code, done) = call(&api, "POST", "/v1/rollback", br#"{"confirm": "1.0.0"}"#);
    assert_eq!(
        (code, &done),
        (200, &j!({"slot": "slot_b", "version": "1.0.0"}))
    );
    assert_eq!(dev.boot(), bootctl::Slot::B);

    // A disk image is not the disk this machine runs from: no reboot.
    let (code, refused) = call(&api, "POST", "/v1/reboot", b"");
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("is a disk image"),
        "{refused}"
    );
}

#[test]
fn refusals_leave_the_running_slot_untouched_and_the_lock_free() {
    let dev = device();
    let api = serve(&dev, "b", 2);
    let running = || (dev.attrs()[1], dev.slot(bootctl::Slot::B));
    let before = running();
    let good = std::fs::read(dev.bundle(&release("2.0.0"))).unwrap();

    // A tampered bundle: refused by its signature, with the CLI's code.
    let mut tampered = good.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x40;
    let (code, refused) = call(&api, "POST", "/v1/install", &tampered);
    assert_eq!(code, 422, "{refused}");
    assert!(refused["code"].as_i64().unwrap() > 2, "{refused}");

    // Not a bundle, refused from its first bytes while 8 MiB more are on
    // their way: the refusal is read whole, not lost to a reset.
    let (code, refused) = call(&api, "POST", "/v1/install", &vec![0; 8 << 20]);
    assert_eq!(code, 422, "{refused}");
    assert!(refused["error"].is_string(), "{refused}");

    // A downgrade.
    let older = std::fs::read(dev.bundle(&release("0.9.0"))).unwrap();
    let (code, refused) = call(&api, "POST", "/v1/install", &older);
    assert_eq!((code, &refused["code"]), (422, &j!(43)), "{refused}");

    // Larger than the slot: refused before a byte is read.
    let mut s = UnixStream::connect(&api.socket).unwrap();
    head(
        &mut s,
        "POST",
        "/v1/install",
        "application/octet-stream",
        1 << 30,
    );
    let (code, refused) = reply(s);
    assert_eq!((code, &refused["code"]), (413, &j!(44)), "{refused}");

    // Cut mid-way: the connection's write side closed after half.
    let mut s = UnixStream::connect(&api.socket).unwrap();
    head(
        &mut s,
        "POST",
        "/v1/install",
        "application/octet-stream",
        good.len(),
    );
    s.write_all(&good[..good.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (code, refused) = reply(s);
    assert!(code >= 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains(&format!(
            "the upload ended after {} of its {} bytes",
            good.len() / 2,
            good.len()
        )),
        "{refused}"
    );

    // Stalled: the connection open, nothing sent for 2 s. The install ends
    // and the lock is free again while the connection still hangs.
    let mut stalled = UnixStream::connect(&api.socket).unwrap();
    head(
        &mut stalled,
        "POST",
        "/v1/install",
        "application/octet-stream",
        good.len(),
    );
    stalled.write_all(&good[..good.len() / 3]).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    assert_eq!(running(), before, "the running slot as it was");
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());

    // Busy: an install holds the service while another comes.
    let mut first = UnixStream::connect(&api.socket).unwrap();
    head(
        &mut first,
        "POST",
        "/v1/install",
        "application/octet-stream",
        good.len(),
    );
    first.write_all(&good[..4096]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, busy) = call(&api, "POST", "/v1/install", &good);
    assert_eq!((code, &busy["code"]), (409, &j!(47)), "{busy}");
    first.write_all(&good[4096..]).unwrap();
    let (code, done) = reply(first);
    assert_eq!((code, &done["version"]), (200, &j!("2.0.0")), "{done}");
    assert!(dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    drop(stalled);

    // A body declared and never sent is not waited for where it is not
    // used, whatever its size: the reply comes, and the service lives on.
    let mut s = UnixStream::connect(&api.socket).unwrap();
    head(&mut s, "GET", "/v1/status", "application/json", 1 << 50);
    assert_eq!(reply(s).0, 200);
    let mut s = UnixStream::connect(&api.socket).unwrap();
    head(&mut s, "POST", "/v1/activate", "application/json", 1 << 50);
    assert_eq!(reply(s).0, 413);
    assert_eq!(call(&api, "GET", "/v1/status", b"").0, 200);

    // What the API does not know.
    assert_eq!(call(&api, "GET", "/v1/nothing", b"").0, 404);
    assert_eq!(call(&api, "GET", "/v1/install", b"").0, 405);
    assert_eq!(call(&api, "POST", "/v1/rollback", b"not json").0, 400);
}

#[test]
fn the_socket_is_its_owners_and_groups_only_and_a_live_one_is_not_taken_over() {
    use std::os::unix::fs::PermissionsExt;
    let dev = device();
    let api = serve(&dev, "b", 30);
    let mode = std::fs::metadata(&api.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");

    // At most 8 events listeners: a page open in many tabs never takes
    // every place.
    let listeners: Vec<_> = (0..8).map(|_| listen(&api)).collect();
    let mut ninth = UnixStream::connect(&api.socket).unwrap();
    head(&mut ninth, "GET", "/v1/events", "application/json", 0);
    let (code, refused) = reply(ninth);
    assert_eq!(code, 503, "{refused}");
    assert_eq!(call(&api, "GET", "/v1/status", b"").0, 200);
    drop(listeners);

    // A second service on the same socket is refused, the first untouched.
    let second = dev
        .updater("b")
        .arg("serve")
        .arg("--socket")
        .arg(&api.socket)
        .timeout(Duration::from_secs(30))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&second.get_output().stderr).into_owned();
    assert!(err.contains("another service already listens on"), "{err}");
    assert_eq!(call(&api, "GET", "/v1/status", b"").0, 200);

    // Something else at the socket's path is never replaced.
    let file = dev.dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let refused = dev
        .updater("b")
        .arg("serve")
        .arg("--socket")
        .arg(&file)
        .timeout(Duration::from_secs(30))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        err.contains("is not a socket; refusing to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// The fleet server's request to confirm an action, answered through the
/// API (what the technician's page will offer), as `updater fleet --once
/// --confirm` answers it.
/// A device whose fleet server (in hawkBit's shapes) asks it to confirm
/// an action assigning 2.0.0: the server, the device, the action's id.
fn asked_to_confirm() -> (switchback_test_support::hawkbit::Hawkbit, Device, u64) {
    use switchback_test_support::hawkbit::{Auth, Hawkbit};
    let hb = Hawkbit::start(Auth {
        target_tokens: vec!["tok-api".into()],
        ..Auth::default()
    });
    let dev = device();
    let token = dev.dir.path().join("fleet-token");
    std::fs::write(&token, "tok-api\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c: Value = serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["fleet"] = j!({"url": hb.url, "controller_id": "gw-api", "token_file": token,
        "hw_revision": "1.0", "reboot": false});
    std::fs::write(&dev.config, c.to_string()).unwrap();
    let ds = hb.distribution(
        "acme-gw",
        "2.0.0",
        j!([{"part": "os", "version": "2.0.0", "name": "os", "artifacts": []}]),
    );
    let id = hb.assign(ds, j!({"type": "forced", "confirm": true}));
    (hb, dev, id)
}

/// What the fleet server heard of its request to confirm: `confirmed`
/// and `denied`, in order.
fn confirmations(hb: &switchback_test_support::hawkbit::Hawkbit) -> Vec<Value> {
    hb.state()["actions"][0]["confirmations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["confirmation"].clone())
        .collect()
}

#[test]
fn a_fleet_action_is_confirmed_or_denied_through_the_api() {
    let (hb, dev, id) = asked_to_confirm();
    let api = serve(&dev, "b", 30);

    let answer = |action: String, confirmed: bool| {
        let body = j!({"action": action, "confirmed": confirmed}).to_string();
        call(&api, "POST", "/v1/fleet/confirm", body.as_bytes())
    };
    // Another command holds the disk: the answer waits for it (busy),
    // never dropped while the reply says all went well.
    let held = bootctl::lock::lock(&dev.disk, Duration::from_secs(1)).unwrap();
    let (code, busy) = answer(id.to_string(), true);
    assert_eq!((code, &busy["code"]), (409, &j!(47)), "{busy}");
    assert_eq!(confirmations(&hb), Vec::<Value>::new());
    drop(held);
    let (code, wrong) = answer("999".into(), true);
    assert_eq!((code, &wrong["code"]), (422, &j!(73)), "{wrong}");
    let (code, denied) = answer(id.to_string(), false);
    assert_eq!(code, 200, "{denied}");
    assert_eq!(denied["message"], format!("action {id}: denied"));
    let (code, confirmed) = answer(id.to_string(), true);
    assert_eq!(code, 200, "{confirmed}");
    assert_eq!(confirmations(&hb), [j!("denied"), j!("confirmed")]);
    assert_eq!(call(&api, "POST", "/v1/fleet/confirm", b"{}").0, 400);
}

use switchback_test_support::goosebit::free_port;

/// Gives the device's config a `serve` section.
fn listen_on(dev: &Device, serve: Value) {
    let mut c: Value = serde_json::from_slice(&std::fs::read(&dev.config).unwrap()).unwrap();
    c["serve"] = serve;
    std::fs::write(&dev.config, c.to_string()).unwrap();
}

fn set_password(dev: &Device, user: &str, password: &str) -> assert_cmd::assert::Assert {
    dev.updater("b")
        .args(["password", "set", "--user", user])
        .write_stdin(format!("{password}\n"))
        .assert()
}

/// `serve` for `dev` booted from `booted`, up once `port` answers on
/// loopback.
fn serve_network(dev: &Device, booted: &str, port: u16) -> Service {
    let api = serve(dev, booted, 30);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no listener");
        std::thread::sleep(Duration::from_millis(50));
    }
    api
}

/// A reply over any stream: its status, head and JSON body (Null for
/// another kind of body).
fn reply_of(mut s: impl Read) -> (u16, String, Value) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_string(), json)
}

/// One request over TCP with `headers`; the reply as [`reply_of`] gives it.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\nContent-Length: {}\r\n", body.len()).unwrap();
    for (k, v) in headers {
        write!(s, "{k}: {v}\r\n").unwrap();
    }
    write!(s, "\r\n").unwrap();
    let _ = s.write_all(body);
    reply_of(s)
}

#[test]
fn on_the_network_nothing_passes_without_a_login_and_the_page_needs_its_csrf_token() {
    let dev = device();
    let port = free_port();
    listen_on(&dev, j!({"listen": format!("127.0.0.1:{port}")}));

    // No default credentials: no user, no listener.
    let socket = dev.dir.path().join("run/updater.sock");
    dev.updater("b")
        .args(["serve", "--socket"])
        .arg(&socket)
        .assert()
        .code(40)
        .stderr(predicates::str::contains("no API user has a password"));
    set_password(&dev, "tech", "short")
        .code(74)
        .stderr(predicates::str::contains("10 to 1024 characters"));
    set_password(&dev, "tech", "correct horse battery").success();
    let users = dev.dir.path().join("state/api-users.json");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.contains("$argon2id$") && !text.contains("correct horse"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let api = serve_network(&dev, "b", port);
    let (code, head, _) = http(port, "GET", "/", &[], b"");
    assert_eq!(code, 200);
    assert!(
        head.contains("text/html") && head.contains("frame-ancestors 'none'"),
        "{head}"
    );
    let (code, _, body) = http(port, "GET", "/v1/status", &[], b"");
    assert_eq!(code, 401, "{body}");

    // An unknown user and a wrong password are told apart by nothing.
    let login = |user: &str, password: &str| {
        let body = j!({"user": user, "password": password}).to_string();
        http(
            port,
            "POST",
            "/v1/login",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let (code, _, unknown) = login("nobody", "correct horse battery");
    let (code2, _, wrong) = login("tech", "wrong horse battery");
    assert_eq!((code, code2), (401, 401));
    assert_eq!(unknown, wrong);

    // The page's login: its session in an HttpOnly cookie only. Another
    // site's page cannot even try one (nor use up this address's tries).
    let (code, head, session) = login("tech", "correct horse battery");
    assert_eq!(code, 200, "{session}");
    assert!(
        head.contains("HttpOnly") && head.contains("SameSite=Strict"),
        "{head}"
    );
    assert!(session.get("token").is_none(), "{session}");
    let csrf = session["csrf"].as_str().unwrap().to_string();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("switchback_session="), "{cookie}");
    let body = j!({"user": "tech", "password": "correct horse battery"}).to_string();
    let (code, _, refused) = http(
        port,
        "POST",
        "/v1/login",
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
        ],
        body.as_bytes(),
    );
    assert_eq!(code, 403, "{refused}");
    let (code, _, refused) = http(
        port,
        "POST",
        "/v1/login",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!(code, 415, "{refused}");

    // A script's login asks for its token.
    let body = j!({"user": "tech", "password": "correct horse battery", "token": true});
    let (code, _, session) = http(
        port,
        "POST",
        "/v1/login",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_string();
    let (code, _, status) = http(port, "GET", "/v1/status", &[("Cookie", &cookie)], b"");
    assert_eq!((code, &status["booted"]), (200, &j!("slot_b")), "{status}");

    // A change with the page's cookie but not its CSRF token, as another
    // site's form would send it, is refused; with the token it passes the
    // gate (and is refused for naming the wrong release); a script's
    // bearer token needs none.
    let wrong_release = br#"{"confirm": "9.9.9"}"#;
    let (code, _, body) = http(
        port,
        "POST",
        "/v1/rollback",
        &[("Cookie", &cookie)],
        wrong_release,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let (code, _, body) = http(
        port,
        "POST",
        "/v1/rollback",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        wrong_release,
    );
    assert_eq!((code, &body["code"]), (422, &j!(53)), "{body}");
    let bearer = format!("Bearer {token}");
    let (code, _, body) = http(
        port,
        "POST",
        "/v1/rollback",
        &[("Authorization", &bearer)],
        wrong_release,
    );
    assert_eq!((code, &body["code"]), (422, &j!(53)), "{body}");

    // An install over the network, as the page sends it.
    let bundle = std::fs::read(dev.bundle(&release("2.0.0"))).unwrap();
    let (code, _, done) = http(
        port,
        "POST",
        "/v1/install?no_activate=1",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        &bundle,
    );
    assert_eq!(
        (code, &done["version"], &done["activated"]),
        (200, &j!("2.0.0"), &j!(false)),
        "{done}"
    );

    // On the socket, a browser (a forwarded socket) is refused, and the
    // page is not there.
    let mut s = UnixStream::connect(&api.socket).unwrap();
    write!(s, "POST /v1/reboot HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n").unwrap();
    let (code, body) = reply(s);
    assert_eq!(code, 403, "{body}");
    let (code, _) = call(&api, "GET", "/", b"");
    assert_eq!(code, 404);

    // Logged out: the token is worth nothing, and an events stream it
    // opened ends (at its next keep-alive, 15 s at most).
    let mut events = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        events,
        "GET /v1/events HTTP/1.1\r\nHost: appliance\r\nAuthorization: {bearer}\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(events.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with(": subscribed") {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "no events stream");
    }
    let (code, _, _) = http(
        port,
        "POST",
        "/v1/logout",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(code, 200);
    let (code, _, _) = http(
        port,
        "GET",
        "/v1/status",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(code, 401);

    events
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let start = Instant::now();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => assert!(
                start.elapsed() < Duration::from_secs(40),
                "the events stream outlived its session: {line}"
            ),
            Err(e) => panic!("the events stream did not end with its session: {e}"),
        }
    }

    // Five failures from one address, and it must wait, even with the
    // right password.
    for _ in 0..5 {
        assert_eq!(login("tech", "wrong horse battery").0, 401);
    }
    let (code, head, body) = login("tech", "correct horse battery");
    assert_eq!(code, 429, "{body}");
    assert!(head.contains("Retry-After: "), "{head}");
}

#[test]
fn with_a_certificate_the_network_listener_speaks_only_tls() {
    let dev = device();
    let port = free_port();
    let dir = dev.dir.path();
    let (cert, key) = self_signed(dir, "api", "appliance", true);
    listen_on(
        &dev,
        j!({"listen": format!("127.0.0.1:{port}"), "tls_cert": cert, "tls_key": key}),
    );
    set_password(&dev, "tech", "correct horse battery").success();

    // A key others may read is refused, as every secret of the updater's.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    dev.updater("b")
        .args(["serve", "--socket"])
        .arg(dir.join("run/u.sock"))
        .assert()
        .code(40)
        .stderr(predicates::str::contains("open to others"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let _api = serve_network(&dev, "b", port);
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls_call = |request: &str| {
        let session = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut s = rustls::StreamOwned::new(session, tcp);
        s.write_all(request.as_bytes()).unwrap();
        s.flush().unwrap();
        reply_of(s)
    };
    let (code, head, _) = tls_call("GET / HTTP/1.1\r\nHost: appliance\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    let body = j!({"user": "tech", "password": "correct horse battery"}).to_string();
    let (code, head, session) = tls_call(&format!(
        "POST /v1/login HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(code, 200, "{session}");
    assert!(
        head.contains("Set-Cookie: __Host-switchback_session=") && head.contains("; Secure"),
        "the cookie never leaves TLS, nor this host: {head}"
    );

    // A handshake that comes a byte a second is ended with the head's
    // 30 s, as slowly as the bytes come: not held open by each one.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let start = Instant::now();
    let ended = (0..90).any(|i| {
        if slow.write_all(&[hello[i % hello.len()]]).is_err() {
            return true;
        }
        // Nothing to read yet (the timeout) while the server waits; its
        // end of file, an alert or a reset when it gave up.
        let mut b = [0u8; 64];
        match slow.read(&mut b) {
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            Ok(n) => {
                println!("the server ended the handshake ({n} bytes of alert)");
                true
            }
        }
    });
    assert!(ended, "a byte-a-second handshake was held open for 90 s");
    let took = start.elapsed();
    println!("a byte-a-second handshake was ended after {took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v1/status HTTP/1.1\r\nHost: appliance\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(
        !raw.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

/// The page in Debian's chromium, as a technician uses it: log in, upload
/// 2.0.0 and watch it reach 100 %, activate it, see the history; after
/// 2.0.0 booted and was committed, roll back to 1.0.0 through the
/// confirmation that names it.
#[test]
fn the_page_installs_activates_and_rolls_back_in_a_real_browser() {
    let dev = device();
    let port = free_port();
    listen_on(&dev, j!({"listen": format!("127.0.0.1:{port}")}));
    set_password(&dev, "tech", "correct horse battery").success();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-shots");
    let _ = std::fs::remove_dir_all(&shots);
    let technician = switchback_test_support::browser::Technician {
        url: format!("http://127.0.0.1:{port}/"),
        user: "tech".into(),
        password: "correct horse battery".into(),
        shots: shots.clone(),
    };
    let bundle = dev.bundle(&release("2.0.0"));

    let api = serve_network(&dev, "b", port);
    let out = technician
        .step(&[
            "install",
            "--bundle",
            bundle.to_str().unwrap(),
            "--activate",
            "later",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");
    assert!(out.contains("100 %"), "{out}");
    assert!(out.contains("activate: Activated 2.0.0"), "{out}");
    assert_eq!(dev.state()["last_install"]["version"], "2.0.0");
    assert!(
        dev.attrs()[0].is_bootable(),
        "slot_a boots next: {:?}",
        dev.attrs()
    );
    assert!(shots.join("install.png").exists());
    drop(api);

    // 2.0.0 boots and is committed; the page then offers 1.0.0 back.
    assert_eq!(dev.boot(), bootctl::Slot::A);
    dev.health_ok("a");
    let _api = serve_network(&dev, "a", port);
    let out = technician
        .step(&["rollback", "--to", "1.0.0"])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");
    assert!(
        out.contains("confirmation: The machine boots 1.0.0"),
        "{out}"
    );
    assert_eq!(
        dev.boot(),
        bootctl::Slot::B,
        "1.0.0 boots after the rollback"
    );
}

/// The fleet server's request to confirm an action, on the page: the
/// fleet client's poll leaves it waiting (and says so in `status`), the
/// technician denies it, the server asks again, the technician confirms.
#[test]
fn the_page_shows_the_fleet_servers_request_to_confirm_and_answers_it() {
    let (hb, dev, id) = asked_to_confirm();
    let port = free_port();
    listen_on(&dev, j!({"listen": format!("127.0.0.1:{port}")}));
    set_password(&dev, "tech", "correct horse battery").success();
    let technician = switchback_test_support::browser::Technician {
        url: format!("http://127.0.0.1:{port}/"),
        user: "tech".into(),
        password: "correct horse battery".into(),
        shots: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-fleet-shots"),
    };
    let poll = || {
        let out = dev.updater("b").args(["fleet", "--once"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let status = || {
        let out = dev.updater("b").arg("status").assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let waits = format!("action {id} (2.0.0) waits for a confirmation");
    let first = poll();
    assert!(first.contains(&waits), "{first}");
    assert!(
        status().contains(&format!("fleet: {waits}")),
        "{}",
        status()
    );

    let _api = serve_network(&dev, "b", port);
    for (answer, heard) in [
        ("deny", j!(["denied"])),
        ("confirm", j!(["denied", "confirmed"])),
    ] {
        let out = technician
            .step(&["fleet", "--action", &id.to_string(), "--answer", answer])
            .unwrap_or_else(|e| panic!("{e}"));
        println!("{out}");
        assert_eq!(j!(confirmations(&hb)), heard);
        assert!(
            !status().contains("waits for a confirmation"),
            "{}",
            status()
        );
        if answer == "deny" {
            // A denied action stays with the server, which asks again.
            assert!(poll().contains(&waits));
        }
    }
    // Confirmed: the server now offers the deployment itself.
    assert!(!poll().contains("waits for a confirmation"));
}

/// The API on a real block device: the disk as a loop device, the state on
/// its mounted data partition, as on an appliance.
#[test]
fn on_a_loop_device_an_upload_streams_into_the_slot_and_a_tampered_one_changes_nothing() {
    if !switchback_test_support::needs_root("a loop device and a mounted data partition") {
        return;
    }
    let dev = device();
    let mut lo = LoopDisk::attach(&dev);
    let config = lo.mount_data(&dev);
    let socket = dev.dir.path().join("run/loop.sock");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("updater"))
        .arg("--config")
        .arg(&config)
        .args([
            "--disk",
            &lo.path,
            "--booted-slot",
            "b",
            "serve",
            "--socket",
        ])
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let api = Service { child, socket };
    let start = Instant::now();
    while UnixStream::connect(&api.socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no service");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, status) = call(&api, "GET", "/v1/status", b"");
    assert_eq!((code, &status["disk"]), (200, &j!(lo.path)), "{status}");
    let running = dev.slot(bootctl::Slot::B);

    let mut tampered = std::fs::read(dev.bundle(&release("2.0.0"))).unwrap();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x40;
    let (code, refused) = call(&api, "POST", "/v1/install", &tampered);
    assert_eq!(code, 422, "{refused}");
    assert!(!dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());

    let r = release("2.0.0");
    let good = std::fs::read(dev.bundle(&r)).unwrap();
    let (code, done) = call(&api, "POST", "/v1/install?no_activate=1", &good);
    assert_eq!((code, &done["version"]), (200, &j!("2.0.0")), "{done}");
    assert!(
        !dev.attrs()[0].is_bootable(),
        "ready, not flipped: {:?}",
        dev.attrs()
    );
    let (code, done) = call(&api, "POST", "/v1/activate", b"{}");
    assert_eq!(code, 200, "{done}");
    assert!(dev.attrs()[0].is_bootable(), "{:?}", dev.attrs());
    assert_eq!(&dev.slot(bootctl::Slot::A)[..r.image.len()], &r.image[..]);
    assert_eq!(
        dev.slot(bootctl::Slot::B),
        running,
        "the running slot as it was"
    );
    assert!(dev.dir.path().join("mnt/switchback/state.json").exists());
}
