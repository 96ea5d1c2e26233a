//! Switchback's own GPT reader and writer, used for every change of boot
//! state.
//!
//! The `gpt` crate provisions disks, but it writes entries at unaligned
//! offsets, syncs once, and refuses a disk whose primary array CRC is bad,
//! which is exactly the disk a power cut leaves behind. This module reads
//! both copies and validates each on its own (header CRC, array CRC, LBA
//! fields, entry size), and writes a new entry array in the one order that
//! makes a cut at any sector safe, even a cut while an earlier cut is being
//! repaired: the copy written first is never the only valid one.
//!
//! - both copies valid, or the backup damaged: 1. backup array, backup
//!   header, fdatasync; 2. primary array, primary header, fdatasync;
//! - the primary damaged (the backup is then the only valid copy): the
//!   primary first, then the backup.
//!
//! A reader prefers a valid primary and falls back to a valid backup. Cut
//! while the first copy is written, the other copy still holds the old state
//! (and a half-written primary is invalid, so the reader skips it); cut while
//! the second is written, the first holds the new state. A header is one
//! sector, written after its array, and a sector write is atomic on the
//! devices we target, so no cut yields a mix. `bootctl/tests/flip.rs` cuts
//! every pair of sector writes of two successive changes.

use crate::device::BlockDevice;
use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::fmt;
use uuid::Uuid;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: u32 = 92;
/// Far above the 128 × 128 bytes every tool writes, low enough that a
/// corrupt header cannot make us allocate much.
const MAX_ARRAY_BYTES: u64 = 1 << 20;
pub const ENTRY_NAME_UNITS: usize = 36;
/// Far above the 4096 bytes of any disk we target.
const MAX_SECTOR_SIZE: u64 = 1 << 16;

/// One GPT header, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's own bytes (`header_size` of them), kept so that fields
    /// we do not know survive a rewrite.
    raw: Vec<u8>,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Uuid,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// Why a header was refused when there is no GPT header there at all.
pub(crate) const NO_SIGNATURE: &str = "no \"EFI PART\" signature";

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Header {
    /// Parses and checks a header sector. `my_lba` is where it was read from.
    fn parse(sector: &[u8], my_lba: u64, last_lba: u64) -> Result<Header, String> {
        if &sector[..8] != SIGNATURE {
            return Err(NO_SIGNATURE.into());
        }
        let size = le_u32(sector, 12);
        if size < MIN_HEADER_SIZE || size as usize > sector.len() {
            return Err(format!("header size {size} out of range"));
        }
        let mut raw = sector[..size as usize].to_vec();
        let stored_crc = le_u32(&raw, 16);
        raw[16..20].fill(0);
        if crc32fast::hash(&raw) != stored_crc {
            return Err("header CRC mismatch".into());
        }
        raw[16..20].copy_from_slice(&stored_crc.to_le_bytes());
        let h = Header {
            my_lba: le_u64(&raw, 24),
            alternate_lba: le_u64(&raw, 32),
            first_usable_lba: le_u64(&raw, 40),
            last_usable_lba: le_u64(&raw, 48),
            disk_guid: Uuid::from_bytes_le(raw[56..72].try_into().map_err(|_| "short header")?),
            entries_lba: le_u64(&raw, 72),
            num_entries: le_u32(&raw, 80),
            entry_size: le_u32(&raw, 84),
            entries_crc: le_u32(&raw, 88),
            raw,
        };
        if h.my_lba != my_lba {
            return Err(format!(
                "header says it is at LBA {} but was read at {my_lba}",
                h.my_lba
            ));
        }
        if h.entry_size < 128 || !h.entry_size.is_power_of_two() {
            return Err(format!("entry size {} is not 128 × 2^n", h.entry_size));
        }
        if h.num_entries == 0 || h.array_bytes() > MAX_ARRAY_BYTES {
            return Err(format!(
                "{} entries of {} bytes is out of range",
                h.num_entries, h.entry_size
            ));
        }
        if h.first_usable_lba > h.last_usable_lba || h.last_usable_lba >= last_lba {
            return Err(format!(
                "usable LBAs {}..={} do not fit the disk (last LBA {last_lba})",
                h.first_usable_lba, h.last_usable_lba
            ));
        }
        Ok(h)
    }

    pub fn array_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// This header moved to `my_lba` with its array at `entries_lba`,
    /// describing an array whose CRC is `entries_crc`, padded to a sector.
    fn rewritten(
        &self,
        my_lba: u64,
        alternate_lba: u64,
        entries_lba: u64,
        entries_crc: u32,
        sector: usize,
    ) -> Vec<u8> {
        let mut out = vec![0u8; sector];
        out[..self.raw.len()].copy_from_slice(&self.raw);
        out[24..32].copy_from_slice(&my_lba.to_le_bytes());
        out[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        out[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        out[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        out[16..20].fill(0);
        let crc = crc32fast::hash(&out[..self.raw.len()]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// One valid copy of the table: its header and its entry array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub header: Header,
    pub entries: Vec<u8>,
}

/// A parsed partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 0-based position in the array.
    pub index: usize,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Byte offset of the attribute word inside an entry.
pub const ATTR_OFFSET: usize = 48;

impl Copy {
    /// The used entries (type GUID not zero).
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .chunks_exact(self.header.entry_size as usize)
            .enumerate()
            .filter_map(|(index, e)| {
                let type_guid = Uuid::from_bytes_le(e[0..16].try_into().ok()?);
                if type_guid.is_nil() {
                    return None;
                }
                let units: Vec<u16> = e[56..56 + 2 * ENTRY_NAME_UNITS]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                Some(Entry {
                    index,
                    type_guid,
                    unique_guid: Uuid::from_bytes_le(e[16..32].try_into().ok()?),
                    first_lba: le_u64(e, 32),
                    last_lba: le_u64(e, 40),
                    attributes: le_u64(e, ATTR_OFFSET),
                    name: String::from_utf16_lossy(&units),
                })
            })
            .collect()
    }

    /// Refuses a table whose partitions could send a write somewhere else:
    /// a partition that ends before it starts, lies outside the usable LBAs
    /// (over a GPT copy, the MBR, or past the disk's end: the header check
    /// keeps the usable LBAs inside the disk), or overlaps another one.
    pub fn check_layout(&self) -> Result<(), String> {
        let h = &self.header;
        let mut spans = Vec::new();
        for e in self.entries() {
            let who = format!("partition {} ({:?})", e.index + 1, e.name);
            if e.first_lba > e.last_lba {
                return Err(format!(
                    "{who} ends at LBA {} before it starts at LBA {}",
                    e.last_lba, e.first_lba
                ));
            }
            if e.first_lba < h.first_usable_lba || e.last_lba > h.last_usable_lba {
                return Err(format!(
                    "{who} (LBAs {}..={}) lies outside the usable LBAs {}..={}",
                    e.first_lba, e.last_lba, h.first_usable_lba, h.last_usable_lba
                ));
            }
            spans.push((e.first_lba, e.last_lba, who));
        }
        spans.sort();
        for pair in spans.windows(2) {
            let [(_, a_last, a), (b_first, _, b)] = pair else {
                continue;
            };
            if b_first <= a_last {
                return Err(format!("{a} and {b} overlap (at LBA {b_first})"));
            }
        }
        Ok(())
    }

    /// Replaces entry `index`'s attribute word in this (in-memory) copy.
    pub fn set_attributes(&mut self, index: usize, word: u64) {
        let at = index * self.header.entry_size as usize + ATTR_OFFSET;
        self.entries[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }
}

/// Both copies of a disk's GPT, each either valid or with the reason it is not.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub sector_size: u64,
    pub last_lba: u64,
    /// Where the backup header is (or belongs, when it is damaged).
    pub backup_lba: u64,
    pub primary: Result<Copy, String>,
    pub backup: Result<Copy, String>,
}

/// Reads a copy's header at `lba` and its array.
fn read_copy<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector: u64,
    lba: u64,
    last_lba: u64,
) -> Result<Copy, String> {
    let mut buf = vec![0u8; sector as usize];
    dev.read_at(&mut buf, lba * sector)
        .map_err(|e| format!("reading LBA {lba}: {e}"))?;
    let header = Header::parse(&buf, lba, last_lba)?;
    let array_sectors = header.array_bytes().div_ceil(sector);
    let array_end = header
        .entries_lba
        .checked_add(array_sectors)
        .ok_or("entry array LBA overflows")?;
    let inside_header_area = if lba == 1 {
        header.entries_lba >= 2 && array_end <= header.first_usable_lba
    } else {
        header.entries_lba > header.last_usable_lba && array_end <= lba
    };
    if !inside_header_area {
        return Err(format!(
            "entry array at LBA {} overlaps partitions or header",
            header.entries_lba
        ));
    }
    let mut entries = vec![0u8; header.array_bytes() as usize];
    dev.read_at(&mut entries, header.entries_lba * sector)
        .map_err(|e| format!("reading entry array: {e}"))?;
    if crc32fast::hash(&entries) != header.entries_crc {
        return Err("entry array CRC mismatch".into());
    }
    Ok(Copy { header, entries })
}

/// The primary header alone, valid or not its array.
fn primary_header<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector: u64,
    last_lba: u64,
) -> Option<Header> {
    let mut buf = vec![0u8; sector as usize];
    dev.read_at(&mut buf, sector).ok()?;
    Header::parse(&buf, 1, last_lba).ok()
}

/// Finds the logical sector size of an image file from where its GPT
/// signature sits: after a 512- or a 4096-byte protective MBR, or, when the
/// primary is gone, in the disk's last sector.
pub fn detect_sector_size<D: BlockDevice + ?Sized>(dev: &mut D) -> Option<u64> {
    let size = dev.size();
    let mut sig = [0u8; 8];
    for sector in [512u64, 4096] {
        let at_primary = sector;
        let at_backup = size.checked_sub(sector);
        for at in [Some(at_primary), at_backup].into_iter().flatten() {
            if at + 8 <= size && dev.read_at(&mut sig, at).is_ok() && &sig == SIGNATURE {
                return Some(sector);
            }
        }
    }
    None
}

impl Gpt {
    /// Reads and validates both copies. Fails only when neither is valid.
    pub fn read<D: BlockDevice + ?Sized>(
        dev: &mut D,
        sector_size: u64,
    ) -> Result<Gpt, (String, String)> {
        // A firmware reports its own block size: refuse the ones no GPT
        // uses rather than divide by zero or allocate without bound.
        if !(512..=MAX_SECTOR_SIZE).contains(&sector_size) || !sector_size.is_power_of_two() {
            let why = format!("sector size {sector_size} is not supported");
            return Err((why.clone(), why));
        }
        let sectors = dev.size() / sector_size;
        if sectors < 4 {
            return Err((
                "disk too small for a GPT".into(),
                "disk too small for a GPT".into(),
            ));
        }
        let last_lba = sectors - 1;
        let primary = read_copy(dev, sector_size, 1, last_lba);
        // The backup sits where the primary's header says (also when only
        // the primary's array is damaged, as a cut leaves it: an image
        // flashed onto a larger disk has its backup before the disk's end),
        // else in the last sector as the specification places it.
        let said = primary_header(dev, sector_size, last_lba)
            .filter(|h| h.alternate_lba > h.last_usable_lba && h.alternate_lba <= last_lba)
            .map(|h| h.alternate_lba);
        let mut backup_lba = said.unwrap_or(last_lba);
        let mut backup = read_copy(dev, sector_size, backup_lba, last_lba);
        if backup.is_err() && backup_lba != last_lba {
            if let Ok(b) = read_copy(dev, sector_size, last_lba, last_lba) {
                backup_lba = last_lba;
                backup = Ok(b);
            }
        }
        match (&primary, &backup) {
            (Err(p), Err(b)) => Err((p.clone(), b.clone())),
            _ => Ok(Gpt {
                sector_size,
                last_lba,
                backup_lba,
                primary,
                backup,
            }),
        }
    }

    /// The copy a reader trusts: the primary when valid, else the backup.
    pub fn current(&self) -> &Copy {
        match (&self.primary, &self.backup) {
            (Ok(p), _) => p,
            (Err(_), Ok(b)) => b,
            (Err(_), Err(_)) => {
                unreachable!("Gpt::read returns an error when both copies are invalid")
            }
        }
    }

    /// Both copies valid and identical in content.
    pub fn is_consistent(&self) -> bool {
        matches!((&self.primary, &self.backup), (Ok(p), Ok(b)) if p.entries == b.entries)
    }

    /// Writes `entries` as the new array of both copies in the power-loss-safe
    /// order (module docs). Repairs a damaged copy on the way.
    pub fn write_entries<D: BlockDevice + ?Sized>(
        &self,
        dev: &mut D,
        entries: &[u8],
    ) -> Result<(), WriteError<D::Error>> {
        let src = self.current();
        let sector = self.sector_size as usize;
        if entries.len() as u64 != src.header.array_bytes() {
            return Err(WriteError::SizeChanged);
        }
        let crc = crc32fast::hash(entries);
        let array_sectors = src.header.array_bytes().div_ceil(self.sector_size);
        let backup_lba = self.backup_lba;
        let backup_entries_lba = match &self.backup {
            Ok(b) => b.header.entries_lba,
            Err(_) => backup_lba.saturating_sub(array_sectors),
        };
        if backup_entries_lba <= src.header.last_usable_lba {
            return Err(WriteError::NoRoomForBackup);
        }
        let primary_entries_lba = match &self.primary {
            Ok(p) => p.header.entries_lba,
            Err(_) => 2,
        };
        // A primary rebuilt from the backup goes where the specification
        // puts it, LBA 2 on: refused when the backup's usable LBAs say
        // partitions start before that array would end.
        if primary_entries_lba.saturating_add(array_sectors) > src.header.first_usable_lba {
            return Err(WriteError::NoRoomForPrimary);
        }
        let mut array = entries.to_vec();
        array.resize(array_sectors as usize * sector, 0);
        let backup_header = src
            .header
            .rewritten(backup_lba, 1, backup_entries_lba, crc, sector);
        let primary_header = src
            .header
            .rewritten(1, backup_lba, primary_entries_lba, crc, sector);

        let backup = (backup_entries_lba, backup_header, backup_lba);
        let primary = (primary_entries_lba, primary_header, 1);
        // Never write the only valid copy first (module docs).
        let order = if self.primary.is_err() {
            [primary, backup]
        } else {
            [backup, primary]
        };
        for (array_lba, header, header_lba) in order {
            dev.write_at(&array, array_lba * self.sector_size)
                .map_err(WriteError::Device)?;
            dev.write_at(&header, header_lba * self.sector_size)
                .map_err(WriteError::Device)?;
            dev.sync().map_err(WriteError::Device)?;
        }
        Ok(())
    }
}

/// Why [`Gpt::write_entries`] wrote nothing, or stopped part way (a cut
/// the module docs' order makes safe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError<E> {
    /// The new array is not the size of the one on disk.
    SizeChanged,
    /// The backup's array would reach into the partitions.
    NoRoomForBackup,
    /// The primary's array would reach into the partitions.
    NoRoomForPrimary,
    /// The device failed a write or a sync.
    Device(E),
}

impl<E: fmt::Display> fmt::Display for WriteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::SizeChanged => f.write_str("entry array size changed"),
            WriteError::NoRoomForBackup => f.write_str("no room for the backup entry array"),
            WriteError::NoRoomForPrimary => f.write_str("no room for the primary entry array"),
            WriteError::Device(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for WriteError<E> {}
