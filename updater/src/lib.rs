//! Switchback's updater: the appliance's side. [`install`] streams a signed
//! bundle into the inactive slot and flips the boot flag; [`state`] keeps
//! what the device knows about its slots; [`config`] is the device's
//! configuration.

pub mod activate;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod confine;
pub mod error;
pub mod events;
pub mod evidence;
pub mod fleet;
pub mod health;
pub mod install;
pub mod integrity;
pub mod machine;
pub mod memory;
pub mod migrate;
pub mod recover;
pub mod rollback;
pub mod runner;
pub mod serve;
pub mod slot_writer;
pub mod source;
pub mod state;
pub mod status;

pub use cli::exit::exit_code;
pub use error::UpdateError;

/// A named point between recording an intent and acting on it, where the
/// crash tests stop the updater (`updater/tests/crashes.rs`; the list and
/// what the next command settles each to: [`machine::CRASH_POINTS`]).
/// Compiled in only with the `failpoints` feature, which the tests turn on;
/// a no-op in what ships.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use crash_point;

/// Arms the crash points named in `SWITCHBACK_CRASH_AT` (comma-separated):
/// reaching one aborts the process at once, no destructor or unwinding in
/// between, as a crash would. Says so when the binary has no crash points,
/// so a crash test cannot pass by not crashing.
pub fn arm_crash_points() {
    let Ok(names) = std::env::var("SWITCHBACK_CRASH_AT") else {
        return;
    };
    #[cfg(feature = "failpoints")]
    for name in names.split(',').filter(|n| !n.is_empty()) {
        if let Err(e) = fail::cfg_callback(name, || std::process::abort()) {
            eprintln!("updater: crash point {name}: {e}");
        }
    }
    #[cfg(not(feature = "failpoints"))]
    eprintln!(
        "updater: SWITCHBACK_CRASH_AT={names} is ignored: built without the failpoints feature"
    );
}

/// Syncs and reboots the machine, but only when `disk` is the disk it runs
/// from (a block device whose table holds the running root's
/// `root=PARTUUID=`). With a disk image, or any other disk, a reboot would
/// restart a machine the command did not change (a vendor's workstation
/// following a lab): it says what would have happened and returns, as if
/// `--no-reboot` had been given.
pub fn reboot(disk: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(why) = not_the_running_disk(disk, &bootctl::host::read_cmdline()) {
        eprintln!(
            "updater: not rebooting: {} {why}; on the device itself this would reboot now",
            disk.display()
        );
        return Ok(());
    }
    nix::unistd::sync();
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).context("rebooting")?;
    Ok(())
}

/// Why `disk` is not the disk the machine runs from, if it is not.
pub fn not_the_running_disk(disk: &std::path::Path, cmdline: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(disk) {
        Ok(m) if m.file_type().is_block_device() => {}
        Ok(_) => return Some("is a disk image, not the disk this machine runs from".into()),
        Err(e) => return Some(format!("cannot be checked ({e})")),
    }
    let table = match bootctl::Disk::open(disk, None, false).and_then(|mut d| d.read()) {
        Ok(s) => s.table,
        Err(e) => return Some(format!("cannot be read ({e})")),
    };
    if !bootctl::host::is_booted_disk(cmdline, &table) {
        return Some(
            "is not the disk this machine runs from (its root= is on another disk)".into(),
        );
    }
    // The same slot GUIDs on a copy of the disk (flashed from one image)
    // are not enough: the mounted root must be on this very device.
    let rdev = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| m.rdev())
    };
    match bootctl::host::root_disk(cmdline) {
        Some(root) if rdev(&root).is_some() && rdev(&root) == rdev(disk) => None,
        _ => Some(
            "is not the disk the running root file system is mounted from (a copy of it?)".into(),
        ),
    }
}
