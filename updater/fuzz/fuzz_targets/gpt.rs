//! The GPT reader on raw sectors, and the flip on whatever it accepts: any
//! disk that reads must still read after a change, with both copies equal
//! and the slots where they were. Input: a verb byte, a byte whose low bits
//! ask for the primary's and the backup's CRCs to be made right (so that
//! the fuzzer gets past them to the fields and the layout), then a disk
//! image padded to whole 512-byte sectors.
#![no_main]
use bootctl::device::MemDevice;
use bootctl::{Disk, Slot};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the entry-array and header CRCs of the header at `lba`.
fn fix_crcs(disk: &mut [u8], lba: usize) {
    let h = lba * 512;
    if h + 512 > disk.len() {
        return;
    }
    let size = (le32(disk, h + 12) as usize).clamp(92, 512);
    let (entries, count, each) = (le64(disk, h + 72), le32(disk, h + 80), le32(disk, h + 84));
    let len = u64::from(count) * u64::from(each);
    let start = entries.saturating_mul(512);
    if len <= 1 << 20 && start.saturating_add(len) <= disk.len() as u64 {
        let crc = crc32(&disk[start as usize..(start + len) as usize]);
        disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    disk[h + 16..h + 20].fill(0);
    let crc = crc32(&disk[h..h + size]);
    disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fuzz_target!(|data: &[u8]| {
    let [verb, fix, rest @ ..] = data else {
        return;
    };
    let mut bytes = rest.to_vec();
    bytes.resize(bytes.len().div_ceil(512).max(4) * 512, 0);
    if fix & 1 != 0 {
        fix_crcs(&mut bytes, 1);
    }
    if fix & 2 != 0 {
        let last = bytes.len() / 512 - 1;
        fix_crcs(&mut bytes, last);
    }
    let open = |b: Vec<u8>| {
        Disk::from_device(Path::new("fuzz.img"), Box::new(MemDevice(b)), Some(512))
    };
    let Ok(mut disk) = open(bytes) else {
        return;
    };
    let Ok(before) = disk.read() else {
        return;
    };
    let changed = match verb % 5 {
        0 => disk.set_active(Slot::B, 3),
        1 => disk.mark_good(Slot::A),
        2 => disk.mark_bad(Slot::B),
        3 => disk.select().and_then(|_| disk.read()),
        _ => disk.rollback(None).map(|(_, s)| s),
    };
    if let Ok(after) = changed {
        assert!(after.gpt.is_consistent(), "a change left the copies apart");
        assert_eq!(
            before.table.slots.clone().map(|e| (e.first_lba, e.last_lba)),
            after.table.slots.clone().map(|e| (e.first_lba, e.last_lba)),
            "a change moved a slot"
        );
        assert!(disk.read().is_ok(), "a change lost the table");
    }
});
