//! Switchback's boot stage as a UEFI program: the firmware starts it, it
//! selects a slot by the slots' GPT flags, spends a try, and starts the
//! slot's own kernel through the kernel's EFI stub. One kernel boots per
//! power-on (docs/boot-flow.md, "The UEFI boot stage").
//!
//! The selection, the try and the flip's write order are the same code
//! `bootctl` runs on Linux (`bootctl-core`), here over the firmware's
//! block I/O ([`disk`]). The kernel and initramfs are read from the slot's
//! own root file system (`/boot/vmlinuz`, `/boot/initrd.img`), as the Linux
//! boot stage reads them, so a release image is the same for both stages.

#![no_std]
#![no_main]

extern crate alloc;

mod disk;
mod heap;
mod keyring;
mod linux;
mod watchdog;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use bootctl_core::verify::{self, Trust, MAX_CMDLINE};
use bootctl_core::{Slot, State};
use disk::Disk;
use uefi::boot;
use uefi::prelude::*;
use uefi::proto::device_path::DevicePath;
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::block::BlockIO;

/// What the slot's kernel is told besides its root and slot: the console
/// of the machine. Built in (`SWITCHBACK_CMDLINE` at build time), never read
/// from the unsigned ESP: under Secure Boot the stage is what is signed.
const APPEND: &str = match option_env!("SWITCHBACK_CMDLINE") {
    Some(c) => c,
    None => {
        if cfg!(target_arch = "aarch64") {
            "console=ttyAMA0"
        } else {
            "console=ttyS0"
        }
    }
};

/// Seconds the started release has to take the watchdog over, as the
/// Linux boot stage's default (`SWITCHBACK_WATCHDOG` at build time).
const WATCHDOG_S: u32 = match option_env!("SWITCHBACK_WATCHDOG") {
    Some(s) => match u32::from_str_radix(s, 10) {
        Ok(s) => s,
        Err(_) => panic!("SWITCHBACK_WATCHDOG must be a number of seconds"),
    },
    None => 60,
};

/// A console line. Never fails: the firmware's console takes UCS-2 only, so
/// anything else (a partition name or a version from the disk) is shown
/// as `?`, and a console that refuses a line is ignored rather than
/// stopping the boot.
fn say(msg: &str) {
    use core::fmt::Write;
    let line: String = msg
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    uefi::system::with_stdout(|out| {
        let _ = writeln!(out, "switchback boot stage: {line}");
    });
}

#[entry]
fn main() -> Status {
    if let Err(e) = run() {
        say(&format!("FAILED: {e}; resetting in 10 s"));
    }
    reset()
}

/// Waits 10 s (the console can be read), then resets the machine: the next
/// boot counts another try, and in the end falls back. Never a power-off,
/// which an appliance nobody is near would not come back from.
fn reset() -> ! {
    boot::stall(core::time::Duration::from_secs(10));
    uefi::runtime::reset(uefi::runtime::ResetType::COLD, Status::ABORTED, None)
}

/// A panic (a bug, or something hostile the checks missed) resets as a
/// failure does; the `uefi` crate's own handler powers the machine off.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say(&format!("PANIC: {info}; resetting in 10 s"));
    reset()
}

/// The device path of the partition this stage was loaded from (the ESP).
fn loaded_from() -> Option<Vec<u8>> {
    let image = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle()).ok()?;
    let path = disk::shared::<DevicePath>(image.device()?)?;
    Some(path.as_bytes().to_vec())
}

/// Whether the device at `handle` is the disk holding the partition at
/// `esp`: its device path, without its end node, starts the ESP's.
fn holds(handle: Handle, esp: &[u8]) -> bool {
    disk::shared::<DevicePath>(handle).is_some_and(|p| {
        let b = p.as_bytes();
        b.len() > 4 && esp.starts_with(&b[..b.len() - 4])
    })
}

/// The disk whose table holds `slot_a` and `slot_b`: the one this stage
/// was loaded from first, so that another Switchback disk plugged in (a
/// USB stick flashed with a factory image) is not the one booted; then the
/// others, for boards whose stage comes from elsewhere. The others only
/// when the stage's own disk is not a Switchback disk at all (no GPT, or
/// one without the slots): when its table is damaged or unreadable, the
/// stick's slots are not a way out, and the stage fails (and resets).
fn find_disk() -> Result<(Disk, State), String> {
    let handles = boot::find_handles::<BlockIO>()
        .map_err(|e| format!("the firmware lists no block devices: {:?}", e.status()))?;
    let esp = loaded_from();
    let (own, others): (Vec<Handle>, Vec<Handle>) = handles
        .iter()
        .partition(|&&h| esp.as_deref().is_some_and(|esp| holds(h, esp)));
    if esp.is_none() {
        say("the disk this stage was loaded from is not known: looking at every disk");
    }
    for (n, handle) in own.iter().chain(&others).copied().enumerate() {
        let Some(mut disk) = Disk::whole(handle) else {
            continue;
        };
        let sector = disk.block_size();
        match bootctl_core::read_unchecked(&mut disk, sector) {
            Ok(state) => {
                if n >= own.len() && esp.is_some() {
                    say("the slots are not on the disk this stage was loaded from: using another disk's");
                }
                return Ok((disk, state));
            }
            Err(e) if n < own.len() && !e.not_a_slot_disk() => {
                return Err(format!(
                    "the disk this stage was loaded from: {e}; not booting another disk's slots"
                ));
            }
            Err(_) => {}
        }
    }
    Err("no disk has partitions named slot_a and slot_b".into())
}

/// What to boot when this boot's try cannot be recorded (a table the flip
/// refuses to write, a medium turned read-only): never nothing, which is a
/// brick, but not a slot on trial either, whose hang would then repeat
/// for ever with no try ever spent. The committed slot when there is one.
fn unrecorded(state: &State, why: &str) -> bootctl_core::Selection {
    let next = state.next();
    let other = next.slot.other();
    let theirs = state.attrs()[other.index()];
    if next.spent_try && theirs.successful && theirs.priority > 0 {
        say(&format!(
            "cannot record this boot's try ({why}); booting the committed {other}, not {} on trial",
            next.slot
        ));
        return bootctl_core::Selection {
            slot: other,
            attrs: theirs,
            spent_try: false,
            fallback: false,
        };
    }
    say(&format!(
        "cannot record this boot's try ({why}); booting without recording it"
    ));
    next
}

/// Why a slot could not be started, as `switchback.start_failed` tells the
/// other slot's kernel (`SLOT:WHAT:CODE`; docs/boot-flow.md).
struct StartFailure {
    slot: Slot,
    what: &'static str,
    code: u64,
    detail: String,
}

fn trusted() -> Result<Trust, String> {
    let trust = keyring::trust()?;
    say(&trust.describe());
    Ok(trust)
}

fn run() -> Result<(), String> {
    let trust = trusted()?;
    let (mut disk, state) = find_disk()?;
    let sector = disk.block_size();
    say(&format!(
        "reading the boot flags of the disk {}",
        state.disk_guid().unwrap_or_default()
    ));
    let chosen = match bootctl_core::spend_try(&mut disk, sector) {
        Ok((chosen, _)) => chosen,
        Err(e) => unrecorded(&state, &e.to_string()),
    };
    if chosen.fallback {
        say(&format!(
            "WARNING: no slot is bootable; trying {} anyway",
            chosen.slot
        ));
    }
    let a = chosen.attrs;
    say(&format!(
        "selected {} (priority {}, tries {}, successful {} after this try)",
        chosen.slot, a.priority, a.tries, a.successful
    ));
    let state = bootctl_core::read_unchecked(&mut disk, sector)
        .map_err(|e| format!("reading the boot flags again: {e}"))?;
    let handle = disk.handle();
    drop(disk);
    let mut failed: Option<StartFailure> = None;
    for slot in [chosen.slot, chosen.slot.other()] {
        let entry = state.table.entry(slot);
        let root = format!("root=PARTUUID={}", entry.unique_guid);
        let mut cmdline = format!("switchback.slot={} panic=5 gpt {APPEND}", slot.name());
        if let Some(f) = &failed {
            cmdline += &format!(
                " switchback.start_failed={}:{}:{}",
                f.slot.name(),
                f.what,
                f.code
            );
        }
        if slot != chosen.slot {
            spend_fallback_try(handle, sector, slot, state.attrs()[slot.index()]);
        }
        let failure = boot_slot(
            handle,
            slot,
            (entry.first_lba, entry.last_lba),
            &trust,
            (&root, &cmdline),
        );
        say(&format!("cannot boot {slot}: {}", failure.detail));
        if slot == chosen.slot && !state.attrs()[slot.index()].successful {
            // Seen at once by the updater on the other slot, not after its
            // tries run out; a committed slot keeps its flags (it may be the
            // only good one).
            let marked = Disk::whole(handle)
                .ok_or_else(|| "the disk went away".to_string())
                .and_then(|mut d| {
                    bootctl_core::mark_bad(&mut d, sector, slot).map_err(|e| e.to_string())
                });
            match marked {
                Ok(_) => say(&format!("marked {slot} bad: it cannot be started")),
                Err(e) => say(&format!("cannot mark {slot} bad: {e}")),
            }
        }
        failed.get_or_insert(failure);
    }
    Err("no slot could be booted".into())
}

/// Spends a try of the slot started because the chosen one could not be,
/// when it is on trial: else a hang of an unproven fall-back would repeat
/// at every power-on without ever counting.
fn spend_fallback_try(handle: Handle, sector: u64, slot: Slot, attrs: bootctl_core::BootAttrs) {
    if attrs.successful || attrs.tries == 0 {
        return;
    }
    let spent = Disk::whole(handle)
        .ok_or_else(|| "the disk went away".to_string())
        .and_then(|mut d| {
            bootctl_core::update(&mut d, sector, |a| {
                let t = &mut a[slot.index()];
                t.tries = t.tries.saturating_sub(1);
                Ok::<(), core::convert::Infallible>(())
            })
            .map_err(|e| e.to_string())
        });
    if let Err(e) = spent {
        say(&format!("cannot record the try of {slot} ({e})"));
    }
}

/// Arms the watchdog just before a kernel starts, so the release gets its
/// whole time whatever the stage spent reading and checking.
fn arm_watchdog() {
    match watchdog::arm(WATCHDOG_S) {
        Ok(()) => say(&format!("watchdog armed: {WATCHDOG_S} s")),
        Err(e) => say(&format!("no watchdog ({e}); a hang will not be reset")),
    }
}

/// Reads the slot's kernel and initramfs, checked against its signed
/// release when there is a keyring, and starts the kernel with `root`,
/// the verity parameters when its release has them, then `rest`; returns
/// only when it could not.
fn boot_slot(
    handle: Handle,
    slot: Slot,
    (first, last): (u64, u64),
    trust: &Trust,
    (root, rest): (&str, &str),
) -> StartFailure {
    let fail = |what, code, detail| StartFailure {
        slot,
        what,
        code,
        detail,
    };
    let Some(part) = Disk::part(handle, first, last) else {
        return fail(
            "no-partition",
            0,
            format!("LBAs {first}..={last} are not on the disk"),
        );
    };
    let files = match verify::boot_files(slot, part, trust, &mut |m| say(m)) {
        Ok(files) => files,
        Err(r) => return fail(r.what, r.code, r.detail),
    };
    say(&format!(
        "read the kernel of {slot} ({} bytes) and its initramfs ({} bytes)",
        files.kernel.len(),
        files.initrd.as_ref().map_or(0, Vec::len)
    ));
    let (peak, now) = heap::usage();
    say(&format!(
        "memory: at most {} KiB held so far, {} KiB now",
        peak.div_ceil(1024),
        now.div_ceil(1024)
    ));
    let mut cmdline = String::from(root);
    if let Some(v) = &files.verity {
        cmdline.push(' ');
        cmdline += v;
    }
    cmdline.push(' ');
    cmdline += rest;
    if cmdline.len() > MAX_CMDLINE {
        return fail(
            "cmdline",
            cmdline.len() as u64,
            format!(
                "its command line is {} bytes; the kernel keeps {MAX_CMDLINE}",
                cmdline.len()
            ),
        );
    }
    arm_watchdog();
    say(&format!("booting {slot}: {cmdline}"));
    let e = linux::start(files.kernel, files.initrd, &cmdline);
    fail(
        "load-image",
        e.status.0 as u64,
        format!("{}: {:?}", e.what, e.status),
    )
}
