//! The Switchback demo on a whole machine: build a small appliance, boot it
//! in QEMU, install an update from a USB stick, see it committed, then see
//! a release whose health check fails rolled back. Narrated step by step,
//! with the guest's console shown as it runs.

use anyhow::{bail, Result};
use qemu_tests::appliance::{Appliance, BOOT, HEARTBEAT_CHECK, STEP};
use qemu_tests::guest::Release;
use qemu_tests::qemu::Machine;

fn say(msg: &str) {
    println!("\n\x1b[1m== {msg}\x1b[0m");
}

fn step(vm: &mut Machine, needle: &str, timeout: std::time::Duration) -> Result<()> {
    vm.expect(needle, timeout).map(|_| ())
}

/// The partition list as `sgdisk -p` shows it.
fn print_partitions(disk: &std::path::Path) -> Result<()> {
    let out = std::process::Command::new("sgdisk")
        .arg("-p")
        .arg(disk)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().skip_while(|l| !l.starts_with("Number")) {
        println!("{line}");
    }
    Ok(())
}

fn main() -> Result<()> {
    say("Building the appliance: Debian's kernel, busybox, static Switchback binaries, three releases");
    let app = Appliance::new();
    let v1 = app.image(&Release::default());
    let v2 = app.image(&Release {
        version: "2.0.0",
        health_checks: HEARTBEAT_CHECK,
        ..Release::default()
    });
    let failing = r#"[{"name": "database", "command": ["sh", "-c", "echo database down; exit 3"], "timeout_s": 10}]"#;
    let v3 = app.image(&Release {
        version: "3.0.0",
        health_checks: failing,
        ..Release::default()
    });
    let b2 = app.bundle("2.0.0", "2.0.0", "switchback-qemu", &v2, Vec::new());
    let b3 = app.bundle("3.0.0", "3.0.0", "switchback-qemu", &v3, Vec::new());
    let stick = app.stick(&[&b2, &b3]);
    let disk = app.factory_disk(&v1);

    say("The factory disk: the boot stage as one EFI program on its ESP, release 1.0.0 in slot_a");
    print_partitions(&disk)?;

    say("Powering on the appliance in QEMU: UEFI firmware (OVMF) boots the ESP's boot stage, which selects slot_a, checks its signed release and starts its kernel");
    let mut vm = app.boot(&disk, &stick);
    vm.echo = true;
    step(&mut vm, "READY 1.0.0", BOOT)?;

    say("Installing release 2.0.0 from the USB stick into slot_b, then rebooting into it on trial");
    vm.send("updater install /media/2.0.0.swb --reboot")?;
    step(&mut vm, "passed its health check and is committed", BOOT)?;
    step(&mut vm, "READY 2.0.0", STEP)?;
    vm.send("bootctl --disk /dev/vda status")?;
    step(&mut vm, "(booted, next)", STEP)?;

    say("Installing release 3.0.0, whose health check fails: the appliance goes back to 2.0.0 by itself");
    vm.send("updater install /media/3.0.0.swb --reboot")?;
    step(&mut vm, "failed its health check", BOOT)?;
    step(&mut vm, "RELEASE 2.0.0 RUNNING ON slot_b", BOOT)?;
    step(&mut vm, "READY 2.0.0", STEP)?;
    vm.send("updater history")?;
    if vm.expect("rolled-back", STEP).is_err() {
        bail!("the rollback was not recorded");
    }
    say("Done: 2.0.0 committed, 3.0.0 rolled back, and the history says why");
    Ok(())
}
