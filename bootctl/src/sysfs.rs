//! Disks and partitions as the kernel names them, from sysfs: whatever the
//! naming scheme (`vda2`, `sda2`, `nvme0n1p2`, `mmcblk0p2`), a partition's
//! device is found by its number on its disk, and the disk holding the
//! slots by the GPT partition names the kernel reports (`PARTNAME=` in each
//! partition's `uevent`). Nothing here builds a name by appending a number.

use crate::slots::Slot;
use std::path::{Path, PathBuf};

/// A view of `/sys/class/block` (or a copy of its shape, for tests).
#[derive(Debug, Clone)]
pub struct SysBlock {
    class_block: PathBuf,
    dev: PathBuf,
}

/// One partition the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, e.g. `nvme0n1p2`.
    pub name: String,
    /// The whole disk's kernel name, e.g. `nvme0n1`.
    pub disk: String,
    /// 1-based partition number.
    pub number: usize,
    /// The GPT partition name, when the kernel reports one.
    pub label: Option<String>,
}

fn uevent_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

impl SysBlock {
    pub fn system() -> SysBlock {
        SysBlock::at(Path::new("/sys/class/block"), Path::new("/dev"))
    }

    pub fn at(class_block: &Path, dev: &Path) -> SysBlock {
        SysBlock {
            class_block: class_block.into(),
            dev: dev.into(),
        }
    }

    /// Every partition, sorted by disk and number.
    pub fn partitions(&self) -> Vec<Partition> {
        let Ok(entries) = std::fs::read_dir(&self.class_block) else {
            return Vec::new();
        };
        let mut out: Vec<Partition> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let uevent = std::fs::read_to_string(path.join("uevent")).ok()?;
                if uevent_value(&uevent, "DEVTYPE").as_deref() != Some("partition") {
                    return None;
                }
                // The class entry links to the partition's directory, which
                // sits inside its disk's directory.
                let real = std::fs::canonicalize(&path).ok()?;
                Some(Partition {
                    name: e.file_name().to_str()?.to_string(),
                    disk: real.parent()?.file_name()?.to_str()?.to_string(),
                    number: uevent_value(&uevent, "PARTN")?.parse().ok()?,
                    label: uevent_value(&uevent, "PARTNAME"),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.disk, a.number).cmp(&(&b.disk, b.number)));
        out
    }

    fn disk_name(disk: &Path) -> Option<String> {
        let real = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
        Some(real.file_name()?.to_str()?.to_string())
    }

    /// The device node of partition `number` of `disk` (a `/dev` path).
    pub fn partition_path(&self, disk: &Path, number: usize) -> Option<PathBuf> {
        let disk = SysBlock::disk_name(disk)?;
        self.partitions()
            .into_iter()
            .find(|p| p.disk == disk && p.number == number)
            .map(|p| self.dev.join(p.name))
    }

    /// The device number (`st_rdev`) of partition `number` of `disk`.
    pub fn partition_devnum(&self, disk: &Path, number: usize) -> Option<u64> {
        let disk = SysBlock::disk_name(disk)?;
        let p = self
            .partitions()
            .into_iter()
            .find(|p| p.disk == disk && p.number == number)?;
        let dev = std::fs::read_to_string(self.class_block.join(&p.name).join("dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        Some(nix::sys::stat::makedev(
            major.parse().ok()?,
            minor.parse().ok()?,
        ))
    }

    /// Every whole disk the kernel shows, as `/dev` paths.
    pub fn disks(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.class_block) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("uevent"))
                    .is_ok_and(|u| uevent_value(&u, "DEVTYPE").as_deref() == Some("disk"))
            })
            .filter_map(|e| Some(self.dev.join(e.file_name().to_str()?)))
            .collect();
        out.sort();
        out
    }

    /// The disks that hold both `slot_a` and `slot_b` (by GPT partition
    /// name, as the kernel parsed them), as `/dev` paths.
    pub fn slot_disks(&self) -> Vec<PathBuf> {
        let parts = self.partitions();
        let mut disks: Vec<String> = parts.iter().map(|p| p.disk.clone()).collect();
        disks.dedup();
        disks
            .into_iter()
            .filter(|d| {
                Slot::ALL.iter().all(|s| {
                    parts
                        .iter()
                        .any(|p| &p.disk == d && p.label.as_deref() == Some(s.name()))
                })
            })
            .map(|d| self.dev.join(d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs of the real shape: partitions inside their disk's directory
    /// under devices/, class/block/ entries linking to both.
    fn fake(root: &Path, disk: &str, parts: &[(&str, usize, &str)]) {
        let disk_dir = root.join("devices/pci0").join(disk);
        std::fs::create_dir_all(&disk_dir).unwrap();
        std::fs::write(
            disk_dir.join("uevent"),
            format!("DEVTYPE=disk\nDEVNAME={disk}\n"),
        )
        .unwrap();
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&disk_dir, class.join(disk)).unwrap();
        for (name, n, label) in parts {
            let d = disk_dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("uevent"),
                format!("MAJOR=259\nMINOR={n}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::fs::write(d.join("dev"), format!("259:{n}\n")).unwrap();
            std::fs::write(d.join("partition"), format!("{n}\n")).unwrap();
            std::os::unix::fs::symlink(&d, class.join(name)).unwrap();
        }
    }

    #[test]
    fn every_naming_scheme_finds_the_slot_disk_and_its_partitions() {
        for (disk, p) in [("vda", ""), ("sda", ""), ("nvme0n1", "p"), ("mmcblk0", "p")] {
            let dir = tempfile::tempdir().unwrap();
            let names: Vec<String> = (1..=4).map(|n| format!("{disk}{p}{n}")).collect();
            // An ESP first: the slots are found by name, not by place.
            fake(
                dir.path(),
                disk,
                &[
                    (&names[0], 1, "esp"),
                    (&names[1], 2, "slot_a"),
                    (&names[2], 3, "slot_b"),
                    (&names[3], 4, "data"),
                ],
            );
            // A stick with other partitions is not a slot disk.
            fake(dir.path(), "sdz", &[("sdz1", 1, "slot_a")]);
            let sys = SysBlock::at(&dir.path().join("class/block"), Path::new("/dev"));
            let disks = sys.slot_disks();
            assert_eq!(disks, vec![PathBuf::from(format!("/dev/{disk}"))], "{disk}");
            let mut all = vec![
                PathBuf::from(format!("/dev/{disk}")),
                PathBuf::from("/dev/sdz"),
            ];
            all.sort();
            assert_eq!(sys.disks(), all);
            assert_eq!(
                sys.partition_path(&disks[0], 3),
                Some(PathBuf::from(format!("/dev/{disk}{p}3"))),
                "{disk}"
            );
            assert_eq!(
                sys.partition_devnum(&disks[0], 4),
                Some(nix::sys::stat::makedev(259, 4))
            );
            assert_eq!(sys.partition_path(&disks[0], 9), None);
        }
    }
}
