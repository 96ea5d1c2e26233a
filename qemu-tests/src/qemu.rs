//! A QEMU machine (TCG: no KVM here) whose serial console the test reads,
//! with timeouts and the last console lines in every failure.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const KEEP_LINES: usize = 30;

pub struct Machine {
    child: Child,
    console_in: Option<std::process::ChildStdin>,
    lines: Receiver<String>,
    recent: VecDeque<String>,
    /// Print the console as it is read (the demo).
    pub echo: bool,
}

impl Machine {
    /// Boots `kernel` with `initrd` and the disks as virtio drives, with an
    /// i6300esb watchdog that resets the machine when it fires. QEMU ends
    /// when the guest reboots.
    pub fn boot(kernel: &Path, initrd: &Path, disks: &[&Path], cmdline: &str) -> Result<Machine> {
        Machine::start(kernel, initrd, disks, cmdline, false, None)
    }

    /// Like `boot`, but a reboot or a watchdog reset restarts the machine
    /// (through the boot stage again) instead of ending QEMU.
    pub fn boot_rebooting(
        kernel: &Path,
        initrd: &Path,
        disks: &[&Path],
        cmdline: &str,
    ) -> Result<Machine> {
        Machine::start(kernel, initrd, disks, cmdline, true, None)
    }

    /// Like `boot_rebooting`, with writes to the first disk slowed to
    /// `write_bps` bytes a second: slow enough that a power cut can be
    /// aimed into the middle of a multi-sector write.
    pub fn boot_throttled(
        kernel: &Path,
        initrd: &Path,
        disks: &[&Path],
        cmdline: &str,
        write_bps: u32,
    ) -> Result<Machine> {
        Machine::start(kernel, initrd, disks, cmdline, true, Some(write_bps))
    }

    fn start(
        kernel: &Path,
        initrd: &Path,
        disks: &[&Path],
        cmdline: &str,
        reboots: bool,
        write_bps: Option<u32>,
    ) -> Result<Machine> {
        let mut cmd = Command::new("qemu-system-x86_64");
        // Name TCG explicitly: "kvm:tcg" picks a broken KVM here and stalls.
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ]);
        if !reboots {
            cmd.arg("-no-reboot");
        }
        cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", cmdline]);
        for (i, d) in disks.iter().enumerate() {
            let throttle = match write_bps {
                Some(n) if i == 0 => {
                    format!(",throttling.bps-write={n},throttling.bps-write-max={n}")
                }
                _ => String::new(),
            };
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio{throttle}",
                d.display()
            ));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
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
