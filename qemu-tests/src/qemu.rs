//! A QEMU machine (TCG: no KVM here) whose serial console the test reads,
//! with timeouts and the last console lines in every failure.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const KEEP_LINES: usize = 120;

pub struct Machine {
    /// The machine's own copy of the firmware's variable store.
    _firmware: tempfile::TempDir,
    child: Child,
    console_in: Option<std::process::ChildStdin>,
    lines: Receiver<String>,
    recent: VecDeque<String>,
    /// Print the console as it is read (the demo).
    pub echo: bool,
}

/// The firmware a machine boots its disk with, and so its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// x86-64 q35 with EDK2 (Debian's `ovmf`).
    #[default]
    Ovmf,
    /// The same with Secure Boot on: Debian's snakeoil build, whose PK,
    /// KEK and db hold the snakeoil certificate the `ovmf` package ships
    /// with its key (`/usr/share/ovmf/PkKek-1-snakeoil.{key,pem}`); SMM
    /// on, so the variables cannot be changed from the OS.
    OvmfSecureBoot,
    /// arm64 virt with U-Boot (Debian's `u-boot-qemu`): its distro boot
    /// starts `\EFI\BOOT\BOOTAA64.EFI` through U-Boot's UEFI, or an
    /// `extlinux.conf` without it, whichever the ESP holds.
    UBoot,
    /// arm64 virt with EDK2 (Debian's `qemu-efi-aarch64`).
    Aavmf,
}

impl Firmware {
    pub fn arch(self) -> crate::guest::Arch {
        match self {
            Firmware::Ovmf | Firmware::OvmfSecureBoot => crate::guest::Arch::X86_64,
            Firmware::UBoot | Firmware::Aavmf => crate::guest::Arch::Arm64,
        }
    }

    /// What the firmware prints when it starts the disk's loader.
    pub fn starts_loader(self) -> &'static str {
        match self {
            Firmware::Ovmf | Firmware::OvmfSecureBoot | Firmware::Aavmf => "BdsDxe: starting",
            Firmware::UBoot => "Found EFI removable media binary efi/boot/bootaa64.efi",
        }
    }

    /// The firmware's code, read-only, and the template of its variable
    /// store (copied for each machine); U-Boot keeps no variables.
    fn flash(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Firmware::Ovmf => Some((
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                "ovmf",
            )),
            Firmware::OvmfSecureBoot => Some((
                "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
                "ovmf",
            )),
            Firmware::Aavmf => Some((
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
                "qemu-efi-aarch64",
            )),
            Firmware::UBoot => None,
        }
    }
}

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// How the boot disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bus {
    #[default]
    Virtio,
    Nvme,
}

/// How a machine is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A reboot or a watchdog reset restarts the machine (through the
    /// firmware and the boot stage again) instead of ending QEMU.
    pub reboots: bool,
    /// Writes to the boot disk slowed to this many bytes a second: slow
    /// enough that a power cut can be aimed into a multi-sector write.
    pub write_bps: Option<u32>,
    /// The boot disk's bus; other disks are virtio.
    pub bus: Bus,
    /// A virtio network card on QEMU's user network: the guest gets
    /// 10.0.2.15 by DHCP and reaches the host's loopback as 10.0.2.2.
    pub net: bool,
    /// With `net`: this port of the host's loopback forwarded to this
    /// port of the guest (a laptop on the appliance's service port).
    pub forward: Option<(u16, u16)>,
    /// The serial number the firmware reports (SMBIOS type 1): what a
    /// fleet client names the machine by.
    pub serial: Option<String>,
    /// The firmware, and with it the machine.
    pub firmware: Firmware,
    /// RAM in MiB instead of the machine's default (512 on x86-64, 1024
    /// on arm64).
    pub memory_mib: Option<u32>,
}

impl Machine {
    /// Powers on a q35 machine with UEFI firmware (OVMF) that boots from
    /// the first of `disks` by itself: no kernel handed in from outside
    /// ([`Machine::start`] for an arm64 one).
    /// An i6300esb watchdog resets the machine when it fires. QEMU ends
    /// when the guest reboots.
    pub fn boot(disks: &[&Path]) -> Result<Machine> {
        Machine::start(disks, Options::default())
    }

    /// Like `boot`, but a reboot or a watchdog reset restarts the machine.
    pub fn boot_rebooting(disks: &[&Path]) -> Result<Machine> {
        Machine::start(
            disks,
            Options {
                reboots: true,
                ..Options::default()
            },
        )
    }

    pub fn start(disks: &[&Path], opts: Options) -> Result<Machine> {
        let firmware = tempfile::tempdir()?;
        let (qemu, package) = match opts.firmware.arch() {
            crate::guest::Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            crate::guest::Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
        };
        let mut cmd = Command::new(qemu);
        // Name TCG explicitly: "kvm:tcg" picks a broken KVM here and stalls.
        cmd.args(["-accel", "tcg"]);
        let memory = |default: u32| opts.memory_mib.unwrap_or(default).to_string();
        match opts.firmware {
            Firmware::Ovmf => cmd.args(["-machine", "q35", "-m", &memory(512)]),
            Firmware::OvmfSecureBoot => cmd.args([
                "-machine",
                "q35,smm=on",
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
                "-m",
                &memory(512),
            ]),
            // cortex-a72, not max: TCG emulates max's pointer
            // authentication slowly, and nothing here needs it.
            Firmware::UBoot | Firmware::Aavmf => cmd.args([
                "-machine",
                "virt",
                "-cpu",
                "cortex-a72",
                "-m",
                &memory(1024),
            ]),
        };
        cmd.args([
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-nic",
            "none",
        ]);
        if opts.net {
            // No option ROM: the firmware has nothing to boot from the card
            // (the disk has bootindex 1 anyway).
            let mut netdev = "user,id=net0".to_string();
            if let Some((host, guest)) = opts.forward {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            cmd.arg("-netdev")
                .arg(netdev)
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        }
        if let Some(serial) = &opts.serial {
            cmd.arg("-smbios").arg(format!("type=1,serial={serial}"));
        }
        match opts.firmware.flash() {
            Some((code, vars_template, package)) => {
                let vars = firmware.path().join("VARS.fd");
                std::fs::copy(vars_template, &vars).with_context(|| {
                    format!("copying {vars_template} (apt-get install {package})")
                })?;
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={code}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
            None => {
                if !Path::new(UBOOT).exists() {
                    bail!("{UBOOT} not found (apt-get install u-boot-qemu)");
                }
                cmd.args(["-bios", UBOOT]);
            }
        }
        if !opts.reboots {
            cmd.arg("-no-reboot");
        }
        cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"]);
        for (i, d) in disks.iter().enumerate() {
            let throttle = match opts.write_bps {
                Some(n) if i == 0 => {
                    format!(",throttling.bps-write={n},throttling.bps-write-max={n}")
                }
                _ => String::new(),
            };
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=disk{i}{throttle}",
                d.display()
            ));
            // The first disk is the one the firmware boots.
            let boot = if i == 0 { ",bootindex=1" } else { "" };
            let device = match (i, opts.bus) {
                (0, Bus::Nvme) => format!("nvme,drive=disk{i},serial=switchback{i}{boot}"),
                _ => format!("virtio-blk-pci,drive=disk{i}{boot}"),
            };
            cmd.arg("-device").arg(device);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {qemu} (apt-get install {package})"))?;
        let out = child.stdout.take().context("qemu stdout")?;
        let console_in = child.stdin.take();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(|l| l.ok()) {
                if tx
                    .send(String::from_utf8_lossy(&line).trim_end().to_string())
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Machine {
            _firmware: firmware,
            child,
            console_in,
            lines,
            recent: VecDeque::new(),
            echo: false,
        })
    }

    fn tail(&self) -> String {
        self.recent
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a console line containing `needle`; returns it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if self.echo {
                        println!("  guest | {line}");
                    }
                    self.recent.push_back(line.clone());
                    if self.recent.len() > KEEP_LINES {
                        self.recent.pop_front();
                    }
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no console line with {needle:?} within {timeout:?}; the guest printed last:\n{}", self.tail())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the machine stopped before printing {needle:?}; the guest printed last:\n{}", self.tail())
                }
            }
        }
    }

    /// Types `line` (and Enter) on the serial console.
    pub fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let input = self.console_in.as_mut().context("console input closed")?;
        input.write_all(format!("{line}\n").as_bytes())?;
        input.flush()?;
        Ok(())
    }

    /// Pulls the plug: QEMU is killed, the disk keeps what was written.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for QEMU to exit (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the machine did not power off within {timeout:?}; the guest printed last:\n{}",
            self.tail()
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
