//! The flip under a second fault: a cut while an earlier cut (or a bad
//! sector) is being repaired. At every instant some GPT copy must be valid
//! and hold a state that was committed: the old one or the new one.

use bootctl::provision::{self, Layout};
use bootctl::{BootAttrs, Disk, Slot};
use proptest::prelude::*;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use switchback_test_support::cut::{CutDevice, Storage};

/// Only the two ends of a disk hold a GPT; keeping just those makes the
/// hundreds of thousands of cuts below cheap to set up.
const END: usize = 64 << 10;

#[derive(Clone, PartialEq, Eq)]
struct Ends {
    head: Vec<u8>,
    tail: Vec<u8>,
    size: usize,
}

impl Ends {
    fn factory(sector: u64) -> Ends {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let layout = Layout {
            esp_size: 0,
            slot_size: 1 << 20,
            data_size: 1 << 20,
            sector_size: sector,
        };
        provision::create(&path, layout).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        Ends {
            head: bytes[..END].to_vec(),
            tail: bytes[bytes.len() - END..].to_vec(),
            size: bytes.len(),
        }
    }
}

impl Storage for Ends {
    fn region(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        if offset + len <= END {
            self.head.get_mut(offset..offset + len)
        } else {
            let at = offset.checked_sub(self.size - END)?;
            self.tail.get_mut(at..at + len)
        }
    }
    fn size(&self) -> usize {
        self.size
    }
}

type Change = fn(&mut Disk) -> bootctl::Result<bootctl::State>;

const VERBS: [(&str, Change); 5] = [
    ("set-active b", |d| d.set_active(Slot::B, 3)),
    ("set-active a", |d| d.set_active(Slot::A, 2)),
    ("select", |d| d.select().and_then(|_| d.read())),
    ("mark-good b", |d| d.mark_good(Slot::B)),
    ("mark-bad b", |d| d.mark_bad(Slot::B)),
];

/// Runs `change` on `ends` with a cut after `budget` sectors; returns the
/// sectors written and whether it completed.
fn run(ends: &mut Ends, sector: u64, budget: usize, change: Change) -> (usize, bool) {
    let shared = Rc::new(RefCell::new(ends.clone()));
    let dev = CutDevice::new(shared.clone(), sector, budget);
    let written = dev.written.clone();
    let ok = Disk::from_device(Path::new("mem.img"), Box::new(dev), Some(sector))
        .and_then(|mut d| change(&mut d))
        .is_ok();
    *ends = shared.borrow().clone();
    let n = written.get();
    (n, ok)
}

/// What a reader (the boot stage) sees; panics when no copy is valid.
fn seen(ends: &Ends, sector: u64, what: &str) -> ([BootAttrs; 2], bool) {
    let dev = CutDevice::new(Rc::new(RefCell::new(ends.clone())), sector, 0);
    let state = Disk::from_device(Path::new("mem.img"), Box::new(dev), Some(sector))
        .and_then(|mut d| d.read())
        .unwrap_or_else(|e| panic!("{what}: no valid GPT copy left: {e}"));
    (state.attrs(), state.gpt.is_consistent())
}

/// Damages one copy's header (the next change must repair it).
fn damage(ends: &mut Ends, sector: u64, primary: bool) {
    let at = if primary {
        sector as usize + 40
    } else {
        ends.size - sector as usize + 40
    };
    ends.region(at, 1).expect("a sector the GPT holds")[0] ^= 0xFF;
}

/// For each start and each verb V cut at every sector, then each verb W cut
/// at every sector: the reader always finds a valid copy holding a state
/// that was committed. Returns the number of cut pairs run.
fn every_pair_of_cuts(sector: u64) -> usize {
    let mut base = Ends::factory(sector);
    // slot_b on trial with one try spent: every verb changes something.
    run(&mut base, sector, usize::MAX, VERBS[0].1);
    run(&mut base, sector, usize::MAX, VERBS[2].1);
    let mut starts = vec![("both copies valid", base.clone())];
    for (what, primary) in [("primary damaged", true), ("backup damaged", false)] {
        let mut e = base.clone();
        damage(&mut e, sector, primary);
        starts.push((what, e));
    }
    let mut pairs = 0;
    for (start_name, start) in &starts {
        let (s0, _) = seen(start, sector, start_name);
        for (v_name, v) in VERBS {
            let mut full = start.clone();
            let (n1, ok) = run(&mut full, sector, usize::MAX, v);
            assert!(ok, "{start_name}, {v_name}: did not complete");
            assert!(n1 > 0, "{start_name}, {v_name}: wrote nothing");
            let (s1, consistent) = seen(&full, sector, v_name);
            assert!(consistent, "{start_name}, {v_name}: not repaired");
            for cut1 in 0..=n1 {
                let mut x = start.clone();
                run(&mut x, sector, cut1, v);
                let what = format!("{start_name}, {v_name} cut at {cut1}");
                let (sx, _) = seen(&x, sector, &what);
                assert!(sx == s0 || sx == s1, "{what}: a state never committed");
                for (w_name, w) in VERBS {
                    let mut wx = x.clone();
                    let (n2, _) = run(&mut wx, sector, usize::MAX, w);
                    let (swx, _) = seen(&wx, sector, &what);
                    for cut2 in 0..n2 {
                        let mut y = x.clone();
                        run(&mut y, sector, cut2, w);
                        let what = format!("{what}, then {w_name} cut at {cut2}");
                        let (sy, _) = seen(&y, sector, &what);
                        assert!(sy == sx || sy == swx, "{what}: a state never committed");
                        pairs += 1;
                    }
                }
            }
        }
    }
    pairs
}

#[test]
fn every_pair_of_cuts_leaves_a_valid_committed_copy_512() {
    let pairs = every_pair_of_cuts(512);
    eprintln!("512-byte sectors: {pairs} cut pairs");
    assert!(pairs > 10_000, "{pairs}");
}

#[test]
fn every_pair_of_cuts_leaves_a_valid_committed_copy_4096() {
    let pairs = every_pair_of_cuts(4096);
    eprintln!("4096-byte sectors: {pairs} cut pairs");
    assert!(pairs > 500, "{pairs}");
}

#[derive(Debug, Clone)]
enum Op {
    Change { verb: usize, cut: Option<usize> },
    Damage { primary: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..VERBS.len(), proptest::option::of(0usize..80))
            .prop_map(|(verb, cut)| Op::Change { verb, cut }),
        1 => any::<bool>().prop_map(|primary| Op::Damage { primary }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random changes, random cuts and bad sectors in one copy at a time:
    /// after every step some copy is valid and holds the state before the
    /// step or the state the step committed.
    #[test]
    fn random_changes_and_cuts_never_lose_the_table(
        sector in prop_oneof![Just(512u64), Just(4096u64)],
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let mut disk = Ends::factory(sector);
        for (i, op) in ops.iter().enumerate() {
            let (before, consistent) = seen(&disk, sector, "before");
            match *op {
                Op::Damage { primary } => {
                    // A bad sector in one copy while the other is whole.
                    if consistent {
                        damage(&mut disk, sector, primary);
                        let (after, _) = seen(&disk, sector, "after damage");
                        prop_assert_eq!(after, before);
                    }
                }
                Op::Change { verb, cut } => {
                    let mut whole = disk.clone();
                    run(&mut whole, sector, usize::MAX, VERBS[verb].1);
                    let (committed, _) = seen(&whole, sector, "uncut");
                    run(&mut disk, sector, cut.unwrap_or(usize::MAX), VERBS[verb].1);
                    let (after, _) = seen(&disk, sector, &format!("step {i}: {op:?}"));
                    prop_assert!(after == before || after == committed,
                        "step {}: {:?} left a state never committed", i, op);
                }
            }
        }
    }
}
