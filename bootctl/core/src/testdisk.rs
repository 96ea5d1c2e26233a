//! A factory disk built byte by byte for the unit tests (bootctl's own
//! tests provision real images with the `gpt` crate, which needs std).

use crate::attr::BootAttrs;
use crate::device::MemDevice;
use crate::flags::ACTIVE_PRIORITY;
use crate::slots::{Slot, DATA_NAME};
use alloc::vec;
use alloc::vec::Vec;

const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const PARTITION_SECTORS: u64 = 8;

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// slot_a good and active, slot_b unbootable, a data partition; both GPT
/// copies valid.
pub fn disk(sector: u64) -> MemDevice {
    let array_sectors = (ENTRIES * ENTRY_SIZE).div_ceil(sector);
    let first_usable = 2 + array_sectors;
    let last_usable = first_usable + 3 * PARTITION_SECTORS - 1;
    let last_lba = last_usable + array_sectors + 1;
    let mut bytes = vec![0u8; ((last_lba + 1) * sector) as usize];

    let good = BootAttrs {
        priority: ACTIVE_PRIORITY,
        tries: 0,
        successful: true,
    };
    let parts = [
        (Slot::A.name(), good.encode(0)),
        (Slot::B.name(), BootAttrs::UNBOOTABLE.encode(0)),
        (DATA_NAME, 0),
    ];
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, (name, attributes)) in parts.into_iter().enumerate() {
        let e = &mut array[i * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        let first = first_usable + i as u64 * PARTITION_SECTORS;
        put(e, 0, &[0x11 * (i as u8 + 1); 16]);
        put(e, 16, &[0x21 + i as u8; 16]);
        put(e, 32, &first.to_le_bytes());
        put(e, 40, &(first + PARTITION_SECTORS - 1).to_le_bytes());
        put(e, 48, &attributes.to_le_bytes());
        let units: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        put(e, 56, &units);
    }
    let array_crc = crc32fast::hash(&array);

    let copies = [(1, last_lba, 2), (last_lba, 1, last_usable + 1)];
    for (my_lba, alternate_lba, entries_lba) in copies {
        let mut h = vec![0u8; 92];
        put(&mut h, 0, b"EFI PART");
        put(&mut h, 8, &0x0001_0000u32.to_le_bytes());
        put(&mut h, 12, &92u32.to_le_bytes());
        put(&mut h, 24, &u64::to_le_bytes(my_lba));
        put(&mut h, 32, &u64::to_le_bytes(alternate_lba));
        put(&mut h, 40, &first_usable.to_le_bytes());
        put(&mut h, 48, &last_usable.to_le_bytes());
        put(&mut h, 56, &[0x5A; 16]);
        put(&mut h, 72, &u64::to_le_bytes(entries_lba));
        put(&mut h, 80, &(ENTRIES as u32).to_le_bytes());
        put(&mut h, 84, &(ENTRY_SIZE as u32).to_le_bytes());
        put(&mut h, 88, &array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        put(&mut h, 16, &crc.to_le_bytes());
        put(&mut bytes, (my_lba * sector) as usize, &h);
        put(&mut bytes, (entries_lba * sector) as usize, &array);
    }
    MemDevice(bytes)
}

pub fn flip_byte(dev: &mut MemDevice, at: usize) {
    dev.0[at] ^= 0xFF;
}
