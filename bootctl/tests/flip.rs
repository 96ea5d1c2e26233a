//! The flip under power cuts and on damaged disks.

use bootctl::device::MemDevice;
use bootctl::provision::{self, Layout};
use bootctl::{BootAttrs, Disk, Error, Slot};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use switchback_test_support::cut::CutDevice;

fn factory_disk(sector_size: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let layout = Layout {
        esp_size: 0,
        slot_size: 1 << 20,
        data_size: 1 << 20,
        sector_size,
    };
    provision::create(&path, layout).unwrap();
    std::fs::read(&path).unwrap()
}

fn mem_disk(bytes: &Rc<RefCell<Vec<u8>>>, sector: u64, budget: usize) -> Disk {
    let dev = CutDevice::new(bytes.clone(), sector, budget);
    Disk::from_device(Path::new("mem.img"), Box::new(dev), Some(sector)).unwrap()
}

fn attrs_of(bytes: &[u8], sector: u64) -> [BootAttrs; 2] {
    let dev = MemDevice(bytes.to_vec());
    let mut disk = Disk::from_device(Path::new("mem.img"), Box::new(dev), Some(sector)).unwrap();
    disk.read()
        .expect("after a cut the table must still read")
        .attrs()
}

type Change = fn(&mut Disk) -> bootctl::Result<bootctl::State>;

/// Cuts `change` after every sector it writes and checks that each cut
/// leaves exactly the old or exactly the new state, and that the next
/// change repairs both copies.
fn cut_at_every_sector(sector: u64, prepare: Change, change: Change) {
    let bytes = Rc::new(RefCell::new(factory_disk(sector)));
    prepare(&mut mem_disk(&bytes, sector, usize::MAX)).unwrap();
    let before = bytes.borrow().clone();
    let old = attrs_of(&before, sector);

    let dev = CutDevice::new(bytes.clone(), sector, usize::MAX);
    let counter = dev.written.clone();
    let mut full = Disk::from_device(Path::new("mem.img"), Box::new(dev), Some(sector)).unwrap();
    change(&mut full).unwrap();
    let total = counter.get();
    let new = attrs_of(&bytes.borrow(), sector);
    assert_ne!(old, new, "the change under test must change something");
    // Two headers and two arrays of 16 KiB.
    assert_eq!(
        total as u64,
        2 + 2 * (16384 / sector),
        "sectors written by one flip"
    );

    let (mut saw_old, mut saw_new) = (0, 0);
    for budget in 0..total {
        *bytes.borrow_mut() = before.clone();
        let err = change(&mut mem_disk(&bytes, sector, budget)).expect_err("a cut write must fail");
        assert!(matches!(err, Error::Io { .. }), "cut {budget}: {err}");
        let got = attrs_of(&bytes.borrow(), sector);
        if got == old {
            saw_old += 1;
        } else if got == new {
            saw_new += 1;
        } else {
            panic!("cut after {budget} sectors left a mix: {got:?} (old {old:?}, new {new:?})");
        }
        // Retrying where the cut left the old state, or any change where it
        // left the new one, completes and leaves both copies valid and equal.
        let mut retry = mem_disk(&bytes, sector, usize::MAX);
        if got == old {
            change(&mut retry).unwrap();
        } else {
            retry.update(|_| Ok(())).unwrap();
        }
        let mut check = mem_disk(&bytes, sector, 0);
        let state = check.read().unwrap();
        assert!(state.gpt.is_consistent(), "cut {budget}: not repaired");
        assert_eq!(state.attrs(), new);
    }
    // Cuts land on both sides of the commit point.
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old} new {saw_new}");
}

#[test]
fn set_active_survives_a_cut_at_every_sector_512() {
    cut_at_every_sector(512, |d| d.read(), |d| d.set_active(Slot::B, 3));
}

#[test]
fn set_active_survives_a_cut_at_every_sector_4096() {
    cut_at_every_sector(4096, |d| d.read(), |d| d.set_active(Slot::B, 3));
}

#[test]
fn select_and_mark_good_survive_cuts() {
    cut_at_every_sector(
        512,
        |d| d.set_active(Slot::B, 3),
        |d| d.select().and_then(|_| d.read()),
    );
    cut_at_every_sector(512, |d| d.set_active(Slot::B, 3), |d| d.mark_good(Slot::B));
}

fn corrupt(bytes: &mut [u8], at: usize) {
    bytes[at] ^= 0xFF;
}

#[test]
fn damaged_primary_reads_from_backup_and_next_flip_repairs() {
    for (what, offset) in [("primary header", 512 + 40), ("primary array", 1024 + 130)] {
        let shared = Rc::new(RefCell::new(factory_disk(512)));
        mem_disk(&shared, 512, usize::MAX)
            .set_active(Slot::B, 2)
            .unwrap();
        let expected = attrs_of(&shared.borrow(), 512);
        corrupt(&mut shared.borrow_mut(), offset);

        let state = mem_disk(&shared, 512, 0).read().unwrap();
        assert!(
            state.gpt.primary.is_err(),
            "{what}: corruption not detected"
        );
        assert_eq!(state.attrs(), expected, "{what}: backup not used");

        let after = mem_disk(&shared, 512, usize::MAX)
            .mark_good(Slot::B)
            .unwrap();
        assert!(after.gpt.is_consistent(), "{what}: not repaired");
        assert!(after.attrs()[1].successful);
    }
}

#[test]
fn damaged_backup_is_repaired_by_next_flip() {
    let shared = Rc::new(RefCell::new(factory_disk(512)));
    let len = shared.borrow().len();
    corrupt(&mut shared.borrow_mut(), len - 512 + 24);
    let state = mem_disk(&shared, 512, 0).read().unwrap();
    assert!(state.gpt.backup.is_err());
    mem_disk(&shared, 512, usize::MAX)
        .set_active(Slot::B, 3)
        .unwrap();
    assert!(mem_disk(&shared, 512, 0)
        .read()
        .unwrap()
        .gpt
        .is_consistent());
}

#[test]
fn both_copies_damaged_is_a_clear_error() {
    let shared = Rc::new(RefCell::new(factory_disk(512)));
    let len = shared.borrow().len();
    corrupt(&mut shared.borrow_mut(), 512 + 40);
    corrupt(&mut shared.borrow_mut(), len - 512 + 40);
    let before = shared.borrow().clone();
    let err = mem_disk(&shared, 512, usize::MAX)
        .set_active(Slot::B, 3)
        .unwrap_err();
    assert!(matches!(err, Error::NoGpt { .. }), "{err}");
    assert_eq!(err.exit_code(), 11);
    assert!(*shared.borrow() == before, "nothing may be written");
}

#[test]
fn rollback_refuses_an_unproven_slot_and_writes_nothing() {
    let shared = Rc::new(RefCell::new(factory_disk(512)));
    let before = shared.borrow().clone();
    let err = mem_disk(&shared, 512, usize::MAX)
        .rollback(Some(Slot::A))
        .unwrap_err();
    assert!(
        matches!(err, Error::NotSuccessful { slot: "slot_b", .. }),
        "{err}"
    );
    assert!(*shared.borrow() == before);

    // Once B has proven itself, a technician can go back and forth.
    let mut disk = mem_disk(&shared, 512, usize::MAX);
    disk.set_active(Slot::B, 3).unwrap();
    disk.mark_good(Slot::B).unwrap();
    let (target, state) = disk.rollback(Some(Slot::B)).unwrap();
    assert_eq!((target, state.next().slot), (Slot::A, Slot::A));
    let (target, state) = disk.rollback(Some(Slot::A)).unwrap();
    assert_eq!((target, state.next().slot), (Slot::B, Slot::B));
}

#[test]
fn foreign_attribute_bits_survive_flips() {
    let shared = Rc::new(RefCell::new(factory_disk(512)));
    // UEFI "required" (bit 0) and a vendor's bit 60 on slot_b, written with
    // valid CRCs through the table writer.
    let foreign = (1u64 << 60) | 1;
    let mut disk = mem_disk(&shared, 512, usize::MAX);
    let state = disk.read().unwrap();
    let mut copy = state.gpt.current().clone();
    copy.set_attributes(state.table.entry(Slot::B).index, foreign);
    state
        .gpt
        .write_entries(disk.device(), &copy.entries)
        .unwrap();

    for step in [
        |d: &mut Disk| d.set_active(Slot::B, 3),
        |d: &mut Disk| d.mark_good(Slot::B),
        |d: &mut Disk| d.mark_bad(Slot::B),
    ] {
        let after = step(&mut disk).unwrap();
        let word = after.table.entry(Slot::B).attributes;
        assert_eq!(
            word & !bootctl::attr::BOOT_BITS_MASK,
            foreign,
            "foreign bits lost: {word:#x}"
        );
    }
}

#[test]
fn on_a_larger_disk_a_damaged_primary_array_still_finds_the_backup_it_names() {
    // A factory image flashed onto a larger disk: the backup is where the
    // primary's header says, not in the disk's last sector.
    let mut bytes = factory_disk(512);
    bytes.extend(vec![0u8; 1 << 20]);
    corrupt(&mut bytes, 1024 + 130);
    let shared = Rc::new(RefCell::new(bytes));
    let state = mem_disk(&shared, 512, 0)
        .read()
        .expect("the backup is found");
    assert!(state.gpt.primary.is_err());
    let after = mem_disk(&shared, 512, usize::MAX)
        .set_active(Slot::B, 3)
        .unwrap();
    assert!(after.gpt.is_consistent(), "not repaired");
}
