//! The boot stage: `bootctl boot-stage` as PID 1 of a small initramfs in
//! front of the slots (the LinuxBoot/petitboot pattern, docs/boot-flow.md).
//!
//! It loads the modules the disk and watchdog need (`finit_module`, in the
//! order listed in `/lib/modules/order`, with their parameters; the watchdog
//! core must get `stop_on_reboot=0`, or the kexec, a reboot to the kernel,
//! stops the watchdog), runs the selection and persists the
//! spent try, arms the hardware watchdog, reads the chosen slot's own
//! `/boot/vmlinuz` (and `/boot/initrd.img` when present) from its ext4,
//! checked against the slot's signed release when the stage has a keyring
//! as the UEFI stage checks it (`bootctl_core::verify`), and boots them
//! with kexec ([`crate::kexec`]: `kexec_file_load`, or on arm64
//! kernels without it `kexec_load`) + `reboot(RB_KEXEC)`. A release that
//! hangs is reset by the watchdog and one that panics reboots (`panic=5`);
//! either way the next selection sees one try fewer. If booting the chosen
//! slot fails here, the other slot is tried before giving up.

use crate::attr::BootAttrs;
use crate::control::Disk;
use crate::device::FileDevice;
use crate::slots::Slot;
use crate::sysfs::SysBlock;
use anyhow::{bail, Context, Result};
use bootctl_core::verify::{self, Trust};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
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

/// The kernel command line for `slot`: its root, then the verity
/// parameters its signed release carries (first, as the kernel and the
/// initramfs take a parameter's first occurrence), then `append`.
/// `gpt`: without it Linux ignores a GPT whose primary copy is damaged (and
/// with it every partition, the slot's root included); with it, it reads
/// the backup, as the boot stage does.
pub fn slot_cmdline(
    partuuid: &str,
    partition: &Path,
    verity: Option<&str>,
    slot: Slot,
    append: &str,
) -> String {
    let verity = verity.map(|v| format!(" {v}")).unwrap_or_default();
    format!(
        "root=PARTUUID={partuuid}{verity} switchback.root={} switchback.slot={} panic=5 gpt {append}",
        partition.display(),
        slot.name()
    )
    .trim()
    .to_string()
}

/// Where `image-tools stage --initrd` puts the stage's keyring and policy
/// in its initramfs (`switchback_bundle::stage_sections`' formats).
pub const KEYRING_FILE: &str = "/switchback/keyring";
pub const POLICY_FILE: &str = "/switchback/policy";

/// The stage's trust, from its own initramfs: no keyring file, no keyring
/// (slots start unverified, and the stage says so); a keyring or policy
/// that cannot be read is an error, never a stage that trusts everything.
fn trust() -> Result<Trust> {
    let read = |path: &str| match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {path}: {e}")),
    };
    let keyring = read(KEYRING_FILE)?;
    let policy = read(POLICY_FILE)?;
    Trust::from_sections(keyring.as_deref(), policy.as_deref())
        .map_err(|e| anyhow::anyhow!("the stage's {e} ({KEYRING_FILE}, {POLICY_FILE})"))
}

/// What this boot checks beyond the slot's release: who started this stage
/// (nothing checks it without UEFI, unless the board's U-Boot verifies a
/// signed FIT image) and whether the kernel is locked down (then
/// `kexec_file_load` starts only a kernel whose signature it trusts).
fn checked_here() -> String {
    let firmware = if Path::new("/sys/firmware/efi").exists() {
        "started by UEFI firmware (under Secure Boot it checked this stage's signature)"
    } else {
        "started without UEFI: nothing checked this stage before it ran, unless the board's U-Boot verified it"
    };
    format!(
        "{firmware}; kernel lockdown: {}",
        lockdown().unwrap_or("unknown")
    )
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`),
/// from securityfs.
fn lockdown() -> Option<&'static str> {
    use nix::mount::{mount, MsFlags};
    let path = "/sys/kernel/security/lockdown";
    if !Path::new(path).exists() {
        let _ = mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
    let modes = std::fs::read_to_string(path).ok()?;
    // The active mode is the bracketed one: "none [integrity] confidentiality".
    ["none", "integrity", "confidentiality"]
        .into_iter()
        .find(|m| modes.contains(&format!("[{m}]")))
}

/// Reads the slot's kernel and initramfs from `dev` (checked against its
/// signed release when the stage has a keyring) and kexec-loads them with
/// the command line `cmdline` makes of the verity parameters.
fn load_slot_kernel(
    slot: Slot,
    dev: &Path,
    trust: &Trust,
    cmdline: impl FnOnce(Option<&str>) -> String,
) -> Result<String, StartFailure> {
    let fail = |what, errno: i32, detail: String| StartFailure::new(slot, what, errno, detail);
    let device = File::open(dev).and_then(FileDevice::new).map_err(|e| {
        fail(
            "mount",
            e.raw_os_error().unwrap_or(0),
            format!("opening {}: {e}", dev.display()),
        )
    })?;
    let files = verify::boot_files(slot, device, trust, &mut |m| say(m))
        .map_err(|r| fail(r.what, i32::try_from(r.code).unwrap_or(0), r.detail))?;
    let cmdline = cmdline(files.verity.as_deref());
    if cmdline.len() > verify::MAX_CMDLINE {
        return Err(fail(
            "cmdline",
            i32::try_from(cmdline.len()).unwrap_or(i32::MAX),
            format!(
                "its command line is {} bytes; the kernel keeps {}",
                cmdline.len(),
                verify::MAX_CMDLINE
            ),
        ));
    }
    // kexec takes files: the checked bytes go to memory-backed ones, never
    // back to a disk someone could change in between.
    let in_memory = |name: &str, bytes: Vec<u8>| -> Result<File, StartFailure> {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| {
            fail(
                "kexec-load",
                e.raw_os_error(),
                format!("holding {name}: {e}"),
            )
        })?;
        let file = File::from(fd);
        // Positioned: kexec_load's reader starts where the offset is, 0.
        file.write_all_at(&bytes, 0).map_err(|e| {
            fail(
                "kexec-load",
                e.raw_os_error().unwrap_or(0),
                format!("holding {name}: {e}"),
            )
        })?;
        Ok(file)
    };
    say(&format!(
        "read the kernel of {slot} ({} bytes) and its initramfs ({} bytes)",
        files.kernel.len(),
        files.initrd.as_ref().map_or(0, Vec::len)
    ));
    let kernel = in_memory("vmlinuz", files.kernel)?;
    let initrd = files
        .initrd
        .map(|b| in_memory("initrd.img", b))
        .transpose()?;
    let method = crate::kexec::load(&kernel, initrd.as_ref(), &cmdline)
        .map_err(|e| fail("kexec-load", e.errno, e.detail))?;
    say(&format!(
        "loaded the kernel of {} with {method}",
        dev.display()
    ));
    if method == crate::kexec::Method::Load {
        say("this kernel has no kexec_file_load: the slot kernel's own signature is not checked");
    }
    Ok(cmdline)
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
        let trust = trust()?;
        say(&trust.describe());
        say(&checked_here());
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
                    let partuuid = entry.unique_guid.to_string();
                    let cmdline = |verity: Option<&str>| {
                        slot_cmdline(&partuuid, &dev, verity, slot, append.trim())
                    };
                    match load_slot_kernel(slot, &dev, &trust, cmdline) {
                        Ok(cmdline) => {
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
