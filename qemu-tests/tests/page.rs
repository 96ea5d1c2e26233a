//! A technician with a laptop on the appliance's service port: the page of
//! `updater serve`, reached through QEMU's user network (a host port
//! forwarded to the guest's), in headless chromium on the host. It
//! installs 2.0.0, activates it and reboots; the machine boots 2.0.0 and
//! commits it.

use qemu_tests::appliance::{runs_committed, Appliance, BOOT, HEARTBEAT_CHECK, STEP};
use qemu_tests::guest::Release;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchback_test_support::browser::Technician;
use switchback_test_support::goosebit::free_port;

const PORT: u16 = 8080;
const PASSWORD: &str = "correct horse battery";

/// Waits for the page on the host's `port`. QEMU takes every connection
/// to a forwarded port at once, answered or not: the page is up when a
/// reply comes.
fn page_answers(port: u16, timeout: Duration) {
    let start = Instant::now();
    loop {
        let answered = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(
                    s,
                    "GET / HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n"
                )?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply)?;
                Ok(reply.starts_with(b"HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if answered {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "the page never answered on port {port}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_technician_installs_2_0_0_through_the_page_on_the_service_port_and_it_is_committed() {
    let app = Appliance::new();
    let listen = format!("0.0.0.0:{PORT}");
    let release = |version, health_checks| {
        app.image(&Release {
            version,
            health_checks,
            api_listen: Some(&listen),
            ..Release::default()
        })
    };
    let v1 = app.bundle(
        "1.0.0",
        "1.0.0",
        "switchback-qemu",
        &release("1.0.0", "[]"),
        vec![],
    );
    let swu2 = app.swu("2.0.0", &release("2.0.0", HEARTBEAT_CHECK));
    let disk = app.factory_disk(&v1);
    let port = free_port();
    let mut vm = app.boot_forwarding(&disk, port, PORT);
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();

    // Commissioning: the technician's account; the service starts with it.
    vm.send(&format!(
        "printf '%s\\n' '{PASSWORD}' | updater password set --user tech"
    ))
    .unwrap();
    vm.expect("tech may log in to the API", STEP).unwrap();
    page_answers(port, STEP);

    let technician = Technician {
        url: format!("http://127.0.0.1:{port}/"),
        user: "tech".into(),
        password: PASSWORD.into(),
        shots: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-page-shots"),
    };
    let swu2 = swu2.to_str().unwrap();
    let out = technician
        .step(&[
            "--timeout",
            "600",
            "install",
            "--bundle",
            swu2,
            "--activate",
            "later",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");
    assert!(out.contains("activate: Activated 2.0.0: slot_b"), "{out}");
    let out = technician
        .step(&["--timeout", "120", "reboot"])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");

    vm.expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    runs_committed(&mut vm, "2.0.0", "slot_b");
}
