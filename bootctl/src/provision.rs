//! Lays out a fresh Switchback disk: protective MBR, GPT with the EFI
//! system partition (`esp`, where the firmware finds the boot stage) first,
//! then `slot_a`, `slot_b` and `data`, each 1 MiB aligned. Provisioning is
//! the one place the `gpt` crate writes: there is no previous state to
//! protect.

use crate::attr::BootAttrs;
use crate::error::{Error, Result};
use crate::slots::{Slot, DATA_NAME, ESP_NAME, ESP_TYPE, ROOT_X86_64_TYPE, VAR_TYPE};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types::Type;
use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;

pub const ALIGN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The EFI system partition; 0 leaves it out (the boot stage then
    /// comes from elsewhere, e.g. the board's flash).
    pub esp_size: u64,
    pub slot_size: u64,
    pub data_size: u64,
    pub sector_size: u64,
}

/// Where a partition landed, in bytes from the start of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

/// The regions of `esp` (when laid out), `slot_a`, `slot_b` and `data`.
#[derive(Debug, Clone, Copy)]
pub struct Provisioned {
    pub esp: Option<Region>,
    pub slots: [Region; 2],
    pub data: Region,
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// The largest disk [`create`] makes: far beyond any appliance, and small
/// enough that no size arithmetic overflows.
pub const MAX_DISK: u64 = 64 << 40;

impl Layout {
    /// The whole disk's size in bytes (1 MiB in front for MBR, GPT and
    /// alignment, 1 MiB behind for the backup GPT), if at most [`MAX_DISK`].
    pub fn total_size(&self) -> Option<u64> {
        let parts = [
            self.esp_size,
            self.slot_size,
            self.slot_size,
            self.data_size,
        ];
        parts
            .iter()
            .try_fold(2 * ALIGN, |sum, &p| {
                (p <= MAX_DISK).then(|| sum + align_up(p))
            })
            .filter(|&total| total <= MAX_DISK)
    }
}

/// Creates (or replaces) the disk image at `path`. `slot_a` is marked as the
/// factory release (priority 1, successful); `slot_b` is unbootable. The
/// slots are typed as x86-64 root partitions ([`create_for`] for another).
pub fn create(path: &Path, layout: Layout) -> Result<Provisioned> {
    create_for(path, layout, ROOT_X86_64_TYPE)
}

/// [`create`], the slots typed `root_type`: the Discoverable Partitions
/// root type of the machine the disk is for. The slots are found by name,
/// never by type; the type is for other tools (`systemd-gpt-auto`,
/// `sfdisk`) that read the disk.
pub fn create_for(path: &Path, layout: Layout, root_type: &str) -> Result<Provisioned> {
    let lb = match layout.sector_size {
        512 => LogicalBlockSize::Lb512,
        4096 => LogicalBlockSize::Lb4096,
        size => {
            return Err(Error::SectorSize {
                path: path.into(),
                size,
            })
        }
    };
    if layout.slot_size == 0 || layout.data_size == 0 {
        return Err(Error::Invalid(
            "slot and data sizes must be above zero".into(),
        ));
    }
    let total = layout.total_size().ok_or_else(|| {
        Error::Invalid(format!(
            "a disk of ESP {} + 2 slots of {} + data {} bytes is larger than {} TiB",
            layout.esp_size,
            layout.slot_size,
            layout.data_size,
            MAX_DISK >> 40
        ))
    })?;
    let esp = align_up(layout.esp_size);
    let slot = align_up(layout.slot_size);
    let data = align_up(layout.data_size);
    // 1 MiB in front for MBR, GPT and alignment; 1 MiB behind for the backup.
    let first = ALIGN + esp;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(Error::io(path, "create"))?;
    file.set_len(total).map_err(Error::io(path, "resize"))?;

    let gpt_err =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: writing GPT: {e}", path.display()));
    let sectors = total / layout.sector_size;
    let mut file = file;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut file)
        .map_err(|e| gpt_err(&e))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(file, None)
        .map_err(|e| gpt_err(&e))?;
    let factory = BootAttrs {
        priority: 1,
        tries: 0,
        successful: true,
    }
    .encode(0);
    let root = Type::from_str(root_type).map_err(|e| gpt_err(&e))?;
    let var = Type::from_str(VAR_TYPE).map_err(|e| gpt_err(&e))?;
    let esp_type = Type::from_str(ESP_TYPE).map_err(|e| gpt_err(&e))?;
    let mut parts = Vec::new();
    if esp > 0 {
        parts.push((ESP_NAME, ALIGN, esp, esp_type, 0));
    }
    parts.extend([
        (Slot::A.name(), first, slot, root.clone(), factory),
        (
            Slot::B.name(),
            first + slot,
            slot,
            root,
            BootAttrs::UNBOOTABLE.encode(0),
        ),
        (DATA_NAME, first + 2 * slot, data, var, 0),
    ]);
    for (id, (name, offset, size, ty, flags)) in parts.iter().enumerate() {
        disk.add_partition_at(
            name,
            id as u32 + 1,
            offset / layout.sector_size,
            size / layout.sector_size,
            ty.clone(),
            *flags,
        )
        .map_err(|e| gpt_err(&e))?;
    }
    let file = disk.write().map_err(|e| gpt_err(&e))?;
    file.sync_all().map_err(Error::io(path, "sync"))?;
    Ok(Provisioned {
        esp: (esp > 0).then_some(Region {
            offset: ALIGN,
            size: esp,
        }),
        slots: [
            Region {
                offset: first,
                size: slot,
            },
            Region {
                offset: first + slot,
                size: slot,
            },
        ],
        data: Region {
            offset: first + 2 * slot,
            size: data,
        },
    })
}
