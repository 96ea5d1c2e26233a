//! The boot stage: `bootctl boot-stage` as PID 1 of a small initramfs in
//! front of the slots (the LinuxBoot/petitboot pattern, docs/boot-flow.md).
//!
//! It loads the modules the disk and watchdog need (`finit_module`, in the
//! order listed in `/lib/modules/order`, with their parameters; the watchdog
//! core must get `stop_on_reboot=0`, or the kexec, a reboot to the kernel,
//! stops the watchdog), runs the selection and persists the
//! spent try, arms the hardware watchdog, mounts the chosen slot read-only
//! and boots the slot's own `/boot/vmlinuz` (and `/boot/initrd.img` when
//! present) with kexec ([`crate::kexec`]: `kexec_file_load`, or on arm64
//! kernels without it `kexec_load`) + `reboot(RB_KEXEC)`. A release that
//! hangs is reset by the watchdog and one that panics reboots (`panic=5`);
//! either way the next selection sees one try fewer. If booting the chosen
//! slot fails here, the other slot is tried before giving up.

use crate::attr::BootAttrs;
use crate::control::Disk;
use crate::slots::Slot;
use crate::sysfs::SysBlock;
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BootStage {
    /// The disk holding the slots; found from sysfs by the slots' GPT
    /// partition names when not given.
    pub disk: Option<PathBuf>,
    /// Seconds the watchdog gives the booted release before it resets.
    pub watchdog_timeout_s: u32,
}

fn say(msg: &str) {
    eprintln!("switchback boot stage: {msg}");
}

fn mount_basics() {
    use nix::mount::{mount, MsFlags};
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sys", "/sys", "sysfs"),
        ("dev", "/dev", "devtmpfs"),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(
            Some(src),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        ) {
            say(&format!("mounting {target}: {e}"));
        }
    }
}

/// Loads every module named in `<dir>/order`: a file name a line, then
/// optional parameters (`watchdog.ko stop_on_reboot=0`).
fn load_modules(dir: &Path) {
    let Ok(order) = std::fs::read_to_string(dir.join("order")) else {
        return;
    };
    for line in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, params) = line.split_once(' ').unwrap_or((line, ""));
        let Ok(params) = CString::new(params.trim()) else {
            say(&format!("loading {name}: parameters contain a NUL"));
            continue;
        };
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                say(&format!("loading {name}: {e}"));
                continue;
            }
        };
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => say(&format!("loading {name}: {e}")),
        }
    }
}

/// The disk holding `slot_a` and `slot_b`, once its driver has shown it:
/// by the partition names the kernel parsed, or, when it parsed none (it
/// ignores a GPT whose primary copy is damaged unless booted with `gpt`),
/// by reading each disk's table ourselves, backup copy included.
fn find_slot_disk(timeout: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let sys = SysBlock::system();
        let mut disks = sys.slot_disks();
        if disks.is_empty() {
            disks = sys
                .disks()
                .into_iter()
                .filter(|d| {
                    Disk::open(d, None, false)
                        .and_then(|mut d| d.read_unchecked())
                        .is_ok()
                })
                .collect();
        }
        if let Some(first) = disks.first() {
            if disks.len() > 1 {
                say(&format!(
                    "WARNING: several disks hold slot_a and slot_b ({}); using {}",
                    disks
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    first.display()
                ));
            }
            return Ok(first.clone());
        }
        if Instant::now() > deadline {
            bail!("no disk with partitions named slot_a and slot_b appeared within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

/// The device node of the slot's partition. When the kernel found no
/// partitions at boot (a damaged primary GPT, repaired by the selection's
/// write since), it is asked to read the table again first.
fn slot_partition(disk: &Path, number: usize) -> Option<PathBuf> {
    let sys = SysBlock::system();
    if let Some(p) = sys.partition_path(disk, number) {
        return Some(p);
    }
    if let Ok(f) = std::fs::File::open(disk) {
        // SAFETY: BLKRRPART takes no argument.
        if let Err(e) = unsafe { blkrrpart(std::os::fd::AsRawFd::as_raw_fd(&f)) } {
            say(&format!(
                "re-reading the partition table of {}: {e}",
                disk.display()
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = sys.partition_path(disk, number).filter(|p| p.exists()) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

/// Starts the hardware watchdog and leaves it running: the booted release
/// must take it over (or the machine resets and the next boot counts).
fn arm_watchdog(timeout_s: u32) -> Result<()> {
    let wd = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/watchdog")
        .context("opening /dev/watchdog")?;
    let mut t = timeout_s as nix::libc::c_int;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int.
    unsafe { wdioc_settimeout(wd.as_raw_fd(), &mut t) }.context("setting the watchdog timeout")?;
    // Never closed: a close without the magic 'V' keeps it running anyway,
    // and kexec takes the open descriptor's device state along.
    std::mem::forget(wd);
    say(&format!("watchdog armed: {t} s"));
    Ok(())
}

/// The kernel command line for `slot`.
/// `gpt`: without it Linux ignores a GPT whose primary copy is damaged (and
/// with it every partition, the slot's root included); with it, it reads
/// the backup, as the boot stage does.
pub fn slot_cmdline(partuuid: &str, partition: &Path, slot: Slot, append: &str) -> String {
    format!(
        "root=PARTUUID={partuuid} switchback.root={} switchback.slot={} panic=5 gpt {append}",
        partition.display(),
        slot.name()
    )
    .trim()
    .to_string()
}

/// Mounts `dev` and kexec-loads its kernel with `cmdline`. The failure's
/// slot is filled in by the caller.
fn load_slot_kernel(dev: &str, cmdline: &str) -> Result<(), StartFailure> {
    use nix::mount::{mount, umount, MsFlags};
    let fail = |what, errno: i32, detail: String| StartFailure::new(Slot::A, what, errno, detail);
    let mnt = "/mnt";
    let _ = std::fs::create_dir_all(mnt);
    mount(
        Some(dev),
        mnt,
        Some("ext4"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| fail("mount", e as i32, format!("mounting {dev}: {e}")))?;
    let result = (|| -> Result<(), StartFailure> {
        let kernel = File::open(format!("{mnt}/boot/vmlinuz")).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(0);
            fail(
                "no-kernel",
                errno,
                format!("opening /boot/vmlinuz of {dev}: {e}"),
            )
        })?;
        let initrd = File::open(format!("{mnt}/boot/initrd.img")).ok();
        let method = crate::kexec::load(&kernel, initrd.as_ref(), cmdline)
            .map_err(|e| fail("kexec-load", e.errno, e.detail))?;
        say(&format!("loaded the kernel of {dev} with {method}"));
        Ok(())
    })();
    let _ = umount(mnt);
    result
}

impl BootStage {
    /// Seconds the booted release has to take the watchdog over.
    pub const DEFAULT_WATCHDOG_S: u32 = 60;
}

/// What runs as PID 1 with no arguments: the slots found by name, the
/// default watchdog timeout.
impl Default for BootStage {
    fn default() -> BootStage {
        BootStage {
            disk: None,
            watchdog_timeout_s: BootStage::DEFAULT_WATCHDOG_S,
        }
    }
}

impl BootStage {
    /// Runs as PID 1, where there is nobody to return to: on failure it
    /// says why, waits, and reboots (the next boot sees one try fewer and
    /// falls back in the end).
    pub fn run_as_init(&self) -> ! {
        if let Err(e) = self.run() {
            say(&format!("FAILED: {e:#}; rebooting in 10 s"));
        }
        std::thread::sleep(Duration::from_secs(10));
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Runs the boot stage; returns only if no slot could be booted.
    pub fn run(&self) -> Result<()> {
        mount_basics();
        // Only now is /proc there to read the command line from.
        let cmdline = crate::host::read_cmdline();
        // switchback.watchdog=N overrides the timeout; the slot kernel gets
        // the boot stage's console settings.
        let watchdog_timeout_s = crate::host::cmdline_value(&cmdline, "switchback.watchdog")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.watchdog_timeout_s);
        let append = cmdline
            .split_whitespace()
            .filter(|a| a.starts_with("console="))
            .collect::<Vec<_>>()
            .join(" ");
        load_modules(Path::new("/lib/modules"));
        let path = match &self.disk {
            Some(d) => {
                wait_for(d, Duration::from_secs(30))?;
                d.clone()
            }
            None => find_slot_disk(Duration::from_secs(30))?,
        };
        say(&format!("reading the boot flags of {}", path.display()));
        let mut disk = Disk::open(&path, None, true)?;
        let chosen = match disk.select() {
            Ok(c) => c,
            // Never a brick: boot what the flags say, without the spent try.
            Err(e) => {
                say(&format!(
                    "cannot record this boot's try ({e:#}); booting without recording it"
                ));
                disk.read_unchecked()?.next()
            }
        };
        let show = |a: BootAttrs| {
            format!(
                "priority {}, tries {}, successful {}",
                a.priority, a.tries, a.successful
            )
        };
        if chosen.fallback {
            say(&format!(
                "WARNING: no slot is bootable; trying {} anyway",
                chosen.slot
            ));
        }
        say(&format!(
            "selected {} ({} after this try)",
            chosen.slot,
            show(chosen.attrs)
        ));
        if let Err(e) = arm_watchdog(watchdog_timeout_s) {
            say(&format!("no watchdog ({e:#}); a hang will not be reset"));
        }
        let state = disk.read_unchecked()?;
        drop(disk);
        let mut failed: Option<StartFailure> = None;
        for slot in [chosen.slot, chosen.slot.other()] {
            let entry = state.table.entry(slot);
            // The other slot's kernel hears why the first could not start.
            let told = failed
                .as_ref()
                .map(|f| format!("{START_FAILED}={}", f.token()));
            let append = [append.as_str(), told.as_deref().unwrap_or("")].join(" ");
            let failure = match slot_partition(&path, entry.index + 1) {
                None => StartFailure::new(
                    slot,
                    "no-partition",
                    0,
                    format!(
                        "the kernel shows no partition {} on {}",
                        entry.index + 1,
                        path.display()
                    ),
                ),
                Some(dev) => {
                    let cmdline =
                        slot_cmdline(&entry.unique_guid.to_string(), &dev, slot, append.trim());
                    match load_slot_kernel(&dev.display().to_string(), &cmdline) {
                        Ok(()) => {
                            say(&format!("booting {slot}: {cmdline}"));
                            nix::unistd::sync();
                            let e =
                                nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC);
                            let errno = e.err().map_or(0, |e| e as i32);
                            StartFailure::new(slot, "kexec-reboot", errno, format!("{e:?}"))
                        }
                        Err(f) => StartFailure { slot, ..f },
                    }
                }
            };
            say(&format!("cannot boot {slot}: {}", failure.detail));
            if slot == chosen.slot {
                mark_unstartable(&path, &failure, state.attrs()[slot.index()]);
            }
            failed.get_or_insert(failure);
        }
        bail!("no slot could be booted")
    }
}

/// The kernel command-line option that tells the next kernel (and the
/// updater on it) which slot the boot stage could not start, and why:
/// `switchback.start_failed=SLOT:WHAT:ERRNO`.
pub const START_FAILED: &str = "switchback.start_failed";

/// Why a slot could not be started.
#[derive(Debug, Clone)]
struct StartFailure {
    slot: Slot,
    /// One of `no-partition`, `mount`, `no-kernel`, `kexec-load`,
    /// `kexec-reboot` (and, from the UEFI boot stage, `load-image`,
    /// `unsigned`, `bad-signature`, `tampered`): what docs/boot-flow.md
    /// lists.
    what: &'static str,
    errno: i32,
    detail: String,
}

impl StartFailure {
    fn new(slot: Slot, what: &'static str, errno: i32, detail: String) -> StartFailure {
        StartFailure {
            slot,
            what,
            errno,
            detail,
        }
    }

    fn token(&self) -> String {
        format!("{}:{}:{}", self.slot.name(), self.what, self.errno)
    }
}

/// Marks a slot on trial that could not be started as bad, so that the
/// fall-back is seen at once (by the updater on the other slot, and by the
/// fleet through it) instead of after its tries run out over several
/// boots. A committed slot keeps its flags: it may be the only good one.
fn mark_unstartable(disk: &Path, failure: &StartFailure, attrs: BootAttrs) {
    if attrs.successful {
        return;
    }
    let marked = Disk::open(disk, None, true).and_then(|mut d| d.mark_bad(failure.slot));
    match marked {
        Ok(_) => say(&format!(
            "marked {} bad: it cannot be started",
            failure.slot
        )),
        Err(e) => say(&format!("cannot mark {} bad: {e:#}", failure.slot)),
    }
}

/// A `switchback.start_failed` value in words, for the updater's record:
/// the slot it names and why it could not be started.
pub fn describe_start_failure(value: &str) -> Option<(Slot, String)> {
    let mut parts = value.splitn(3, ':');
    let slot: Slot = parts.next()?.parse().ok()?;
    let what = parts.next()?;
    let errno: u64 = parts.next()?.parse().ok()?;
    let because = if let Ok(errno @ 1..) = i32::try_from(errno) {
        format!(": {}", std::io::Error::from_raw_os_error(errno))
    } else {
        String::new()
    };
    let why = match what {
        "no-partition" => "the kernel showed no partition for it".to_string(),
        "mount" => format!("its file system could not be mounted{because}"),
        "no-kernel" => format!("it has no /boot/vmlinuz{because}"),
        "kexec-load" => format!("kexec refused its kernel{because}"),
        "kexec-reboot" => format!("the reboot into its kernel failed{because}"),
        // The UEFI boot stage: the code is the firmware's EFI_STATUS.
        // ACCESS_DENIED and SECURITY_VIOLATION: Secure Boot's verdict.
        "load-image" if matches!(errno, 0x8000_0000_0000_000f | 0x8000_0000_0000_001a) => format!(
            "its kernel is not signed for Secure Boot: the firmware refused it (EFI status {errno:#x})"
        ),
        "load-image" => format!("the firmware would not start its kernel (EFI status {errno:#x})"),
        "unsigned" => "it holds no release signed for this device".to_string(),
        "bad-signature" => "its release is not signed by a key the boot stage trusts".to_string(),
        "tampered" => "its image no longer matches its signed release".to_string(),
        "no-verity" => {
            "its release has no dm-verity hash tree for its root, and the boot stage requires one"
                .to_string()
        }
        "cmdline" => format!(
            "its kernel command line ({errno} bytes) is longer than the kernel keeps"
        ),
        _ => return None,
    };
    Some((slot, format!("the boot stage could not start it: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_failure_reads_in_words_from_either_stage() {
        let (slot, why) = describe_start_failure("slot_b:no-kernel:2").unwrap();
        assert_eq!(slot, Slot::B);
        assert!(
            why.ends_with("it has no /boot/vmlinuz: No such file or directory (os error 2)"),
            "{why}"
        );
        // The UEFI stage's code is an EFI_STATUS: SECURITY_VIOLATION here,
        // as LoadImage answers for a kernel Secure Boot refuses.
        let (slot, why) = describe_start_failure("slot_a:load-image:9223372036854775834").unwrap();
        assert_eq!(slot, Slot::A);
        assert!(why.ends_with("(EFI status 0x800000000000001a)"), "{why}");
        assert!(why.contains("not signed for Secure Boot"), "{why}");
        // NOT_FOUND is no signature verdict.
        let (_, why) = describe_start_failure("slot_a:load-image:9223372036854775822").unwrap();
        assert!(
            why.contains("the firmware would not start its kernel"),
            "{why}"
        );
        let (_, why) = describe_start_failure("slot_b:tampered:0").unwrap();
        assert!(
            why.ends_with("no longer matches its signed release"),
            "{why}"
        );
        let (_, why) = describe_start_failure("slot_b:no-verity:0").unwrap();
        assert!(why.contains("no dm-verity hash tree"), "{why}");
        assert!(describe_start_failure("slot_b:something-else:1").is_none());
        assert!(describe_start_failure("slot_c:no-kernel:2").is_none());
    }
}
