//! The GPT reader on raw sectors, and the flip on whatever it accepts: any
//! disk that reads must still read after a change, with the change in it.
//! Input: a disk image (padded to whole 512-byte sectors); its first byte
//! picks the change.
#![no_main]
use bootctl::device::MemDevice;
use bootctl::{Disk, Slot};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&verb, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    bytes.resize(bytes.len().div_ceil(512).max(4) * 512, 0);
    let open = |b: Vec<u8>| Disk::from_device(Path::new("fuzz.img"), Box::new(MemDevice(b)), Some(512));
    let Ok(mut disk) = open(bytes.clone()) else {
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
            before.table.slots.map(|e| (e.first_lba, e.last_lba)),
            after.table.slots.map(|e| (e.first_lba, e.last_lba)),
            "a change moved a slot"
        );
        assert!(disk.read().is_ok(), "a change lost the table");
    }
});
