//! What the running system tells about itself: which disk holds the root
//! filesystem and which slot was booted, from the kernel command line the
//! boot stage wrote (`root=PARTUUID=… switchback.slot=slot_x`).

use crate::slots::{Slot, SlotTable};
use std::path::{Path, PathBuf};

/// The command-line options every Switchback tool takes to find its disk
/// and the booted slot.
#[derive(Debug, Clone, clap::Args)]
pub struct DiskArgs {
    /// Disk or disk image holding the slots (default: the disk of the running root).
    #[arg(long, global = true)]
    pub disk: Option<PathBuf>,
    /// Logical sector size of a disk image (default: detected).
    #[arg(long, global = true)]
    pub sector_size: Option<SectorSize>,
    /// The slot the system booted from, for disk images (on a device it
    /// comes from /proc/cmdline, and a different one is refused).
    #[arg(long, global = true)]
    pub booted_slot: Option<Slot>,
    /// Seconds to wait for the disk's lock when another command holds it.
    #[arg(long, global = true, default_value_t = crate::lock::DEFAULT_WAIT.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub lock_wait: u64,
}

/// The logical sector sizes a GPT disk comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SectorSize {
    #[value(name = "512")]
    B512,
    #[value(name = "4096")]
    B4096,
}

impl SectorSize {
    pub fn bytes(self) -> u64 {
        match self {
            SectorSize::B512 => 512,
            SectorSize::B4096 => 4096,
        }
    }
}

impl DiskArgs {
    pub fn sector_size(&self) -> Option<u64> {
        self.sector_size.map(SectorSize::bytes)
    }

    /// Takes the disk's lock ([`crate::lock`]) for a state-changing command.
    pub fn lock(&self, disk: &Path) -> crate::Result<crate::lock::DiskLock> {
        crate::lock::lock(disk, std::time::Duration::from_secs(self.lock_wait))
    }

    /// The booted slot: the kernel command line's when it names one of
    /// this disk's slots (a `--booted-slot` that disagrees is refused),
    /// else `--booted-slot`. Another disk or an image file is not the one
    /// booted from: there only `--booted-slot` counts.
    pub fn booted(&self, cmdline: &str, table: &SlotTable) -> crate::Result<Option<Slot>> {
        let running = booted_slot(cmdline, table).filter(|_| is_booted_disk(cmdline, table));
        match (running, self.booted_slot) {
            (Some(running), Some(given)) if running != given => Err(crate::Error::BootedMismatch {
                booted: running.name(),
                given: given.name(),
            }),
            (running, given) => Ok(running.or(given)),
        }
    }
}

/// The kernel command line's `key=value` for `key`.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

pub fn read_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// Whether `table` is the disk the running system booted from: its
/// `root=PARTUUID=` is one of the slots.
pub fn is_booted_disk(cmdline: &str, table: &SlotTable) -> bool {
    let Some(root) = cmdline_value(cmdline, "root") else {
        return false;
    };
    let Some(partuuid) = root.strip_prefix("PARTUUID=") else {
        return false;
    };
    Slot::ALL
        .into_iter()
        .any(|s| table.entry(s).unique_guid.to_string() == partuuid.to_ascii_lowercase())
}

/// The slot the running system booted from, if the command line says.
pub fn booted_slot(cmdline: &str, table: &SlotTable) -> Option<Slot> {
    if let Some(name) = cmdline_value(cmdline, "switchback.slot") {
        if let Ok(slot) = name.parse() {
            return Some(slot);
        }
    }
    let root = cmdline_value(cmdline, "root")?;
    let partuuid = root.strip_prefix("PARTUUID=")?.to_ascii_lowercase();
    Slot::ALL
        .into_iter()
        .find(|&s| table.entry(s).unique_guid.to_string() == partuuid)
}

/// The whole disk that holds the running root partition: the partition
/// the root file system is mounted from (its device number, looked up in
/// sysfs: no udev needed, and no device name that another kernel may have
/// given differently), else `root=PARTUUID=` through
/// `/dev/disk/by-partuuid`; then the partition's parent in sysfs. Callers
/// still check that the disk's table holds the `root=PARTUUID`
/// ([`is_booted_disk`]) before they trust the booted slot.
pub fn root_disk(cmdline: &str) -> Option<PathBuf> {
    let mounted = nix::sys::stat::stat("/").ok().and_then(|st| {
        let dev = st.st_dev;
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
    });
    let sys = match mounted
        .map(below_device_mapper)
        .filter(|p| p.join("partition").exists())
    {
        Some(p) => p,
        None => {
            let root = cmdline_value(cmdline, "root")?;
            let part = match root.strip_prefix("PARTUUID=") {
                Some(uuid) => std::fs::canonicalize(
                    Path::new("/dev/disk/by-partuuid").join(uuid.to_ascii_lowercase()),
                )
                .ok()?,
                None => std::fs::canonicalize(&root).ok()?,
            };
            let name = part.file_name()?.to_str()?.to_string();
            std::fs::canonicalize(Path::new("/sys/class/block").join(&name)).ok()?
        }
    };
    if !sys.join("partition").exists() {
        return None;
    }
    let parent = sys.parent()?.file_name()?.to_str()?.to_string();
    Some(Path::new("/dev").join(parent))
}

/// The partition under a device-mapper device (sysfs dir `sys`), when it
/// has exactly one: a root opened through dm-verity (`bootctl open-root`)
/// is `dm-N` over the slot's partition, data and hash tree on it. Anything
/// else is returned as it is.
fn below_device_mapper(sys: PathBuf) -> PathBuf {
    if !sys.join("dm").is_dir() {
        return sys;
    }
    let below: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    match below.as_slice() {
        [one] => std::fs::canonicalize(one).unwrap_or(sys),
        _ => sys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_mapper_root_is_followed_to_its_one_partition() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let part = sys.join("block/vda/vda2");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("partition"), "2").unwrap();
        let dm = sys.join("virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("dm")).unwrap();
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(&part, dm.join("slaves/vda2")).unwrap();
        assert_eq!(
            below_device_mapper(dm.clone()),
            part.canonicalize().unwrap()
        );
        // Two devices under it (a striped or mirrored root): not followed.
        let other = sys.join("block/vdb/vdb1");
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, dm.join("slaves/vdb1")).unwrap();
        assert_eq!(below_device_mapper(dm.clone()), dm);
        // Not device-mapper at all.
        assert_eq!(below_device_mapper(part.clone()), part);
    }

    #[test]
    fn cmdline_values() {
        let c = "console=ttyS0 root=PARTUUID=ABC-1 switchback.slot=slot_b rootwait";
        assert_eq!(cmdline_value(c, "root").as_deref(), Some("PARTUUID=ABC-1"));
        assert_eq!(
            cmdline_value(c, "switchback.slot").as_deref(),
            Some("slot_b")
        );
        assert_eq!(cmdline_value(c, "rootwait"), None);
        assert_eq!(cmdline_value(c, "roo"), None);
    }

    #[test]
    fn the_command_line_decides_the_booted_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let layout = crate::provision::Layout {
            esp_size: 0,
            slot_size: 1 << 20,
            data_size: 1 << 20,
            sector_size: 512,
        };
        crate::provision::create(&path, layout).unwrap();
        let table = crate::Disk::open(&path, None, false)
            .unwrap()
            .read()
            .unwrap()
            .table;
        let args = |booted: Option<Slot>| DiskArgs {
            disk: None,
            sector_size: None,
            booted_slot: booted,
            lock_wait: 1,
        };
        let b_uuid = table.entry(Slot::B).unique_guid;
        let on_b = format!("root=PARTUUID={b_uuid} switchback.slot=slot_b");
        assert_eq!(args(None).booted(&on_b, &table).unwrap(), Some(Slot::B));
        assert_eq!(
            args(Some(Slot::B)).booted(&on_b, &table).unwrap(),
            Some(Slot::B)
        );
        let err = args(Some(Slot::A)).booted(&on_b, &table).unwrap_err();
        assert_eq!(err.exit_code(), 39, "{err}");
        // Booted from another disk: this one's slots are named by hand.
        let elsewhere = "root=PARTUUID=00000000-0000-0000-0000-000000000001 switchback.slot=slot_b";
        assert_eq!(
            args(Some(Slot::A)).booted(elsewhere, &table).unwrap(),
            Some(Slot::A)
        );
        assert_eq!(args(None).booted(elsewhere, &table).unwrap(), None);
        assert_eq!(
            args(Some(Slot::A)).booted("quiet", &table).unwrap(),
            Some(Slot::A)
        );
    }
}
