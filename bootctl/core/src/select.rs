//! Slot selection, as the boot stage runs it on every boot (docs/boot-control.md).
//!
//! Among slots with priority > 0 that are successful or have tries left,
//! the highest priority wins, ties going to `slot_a`. A slot on trial
//! spends one try, which the caller must persist *before* booting it, so
//! that a hang or panic counts. When nothing qualifies the highest-priority
//! slot is booted anyway: an appliance that refuses to boot is a brick.

use crate::attr::BootAttrs;
use crate::slots::Slot;

/// What selection decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Selection {
    pub slot: Slot,
    /// The chosen slot's attributes after this boot's try is spent; write
    /// these back before booting.
    pub attrs: BootAttrs,
    /// A try was spent (the slot is on trial).
    pub spent_try: bool,
    /// Nothing was bootable; this is the last-resort pick.
    pub fallback: bool,
}

/// Chooses the slot to boot from the two slots' attributes (`[a, b]`).
pub fn select(slots: [BootAttrs; 2]) -> Selection {
    let pick = |candidates: &dyn Fn(BootAttrs) -> bool| -> Option<Slot> {
        Slot::ALL
            .into_iter()
            .filter(|s| candidates(slots[s.index()]))
            // max_by_key keeps the last maximum; iterate b before a so ties go to a.
            .rev()
            .max_by_key(|s| slots[s.index()].priority)
    };
    let (slot, fallback) = match pick(&|a| a.is_bootable()) {
        Some(slot) => (slot, false),
        None => (pick(&|_| true).unwrap_or(Slot::A), true),
    };
    let mut attrs = slots[slot.index()];
    let spent_try = !attrs.successful && attrs.tries > 0;
    if spent_try {
        attrs.tries -= 1;
    }
    Selection {
        slot,
        attrs,
        spent_try,
        fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule written out the plainest way, to check `select` against.
    fn reference(a: BootAttrs, b: BootAttrs) -> (Slot, bool) {
        let ok = |x: BootAttrs| x.priority > 0 && (x.successful || x.tries > 0);
        match (ok(a), ok(b)) {
            (true, true) => (
                if b.priority > a.priority {
                    Slot::B
                } else {
                    Slot::A
                },
                false,
            ),
            (true, false) => (Slot::A, false),
            (false, true) => (Slot::B, false),
            (false, false) => (
                if b.priority > a.priority {
                    Slot::B
                } else {
                    Slot::A
                },
                true,
            ),
        }
    }

    fn all_attrs() -> impl Iterator<Item = BootAttrs> {
        (0..=15u8).flat_map(|priority| {
            (0..=15u8).flat_map(move |tries| {
                [false, true].into_iter().map(move |successful| BootAttrs {
                    priority,
                    tries,
                    successful,
                })
            })
        })
    }

    #[test]
    fn agrees_with_reference_model_on_every_combination() {
        let mut checked = 0u32;
        for a in all_attrs() {
            for b in all_attrs() {
                let got = select([a, b]);
                let (slot, fallback) = reference(a, b);
                assert_eq!(
                    (got.slot, got.fallback),
                    (slot, fallback),
                    "a={a:?} b={b:?}"
                );
                let before = [a, b][slot.index()];
                let expect_spend = !before.successful && before.tries > 0;
                assert_eq!(got.spent_try, expect_spend);
                assert_eq!(got.attrs.tries, before.tries - u8::from(expect_spend));
                assert_eq!(
                    (got.attrs.priority, got.attrs.successful),
                    (before.priority, before.successful)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 512 * 512);
    }

    #[test]
    fn trial_slot_runs_out_of_tries_then_old_slot_boots() {
        let good = BootAttrs {
            priority: 1,
            tries: 0,
            successful: true,
        };
        let mut trial = BootAttrs {
            priority: 2,
            tries: 3,
            successful: false,
        };
        for _ in 0..3 {
            let s = select([good, trial]);
            assert_eq!(s.slot, Slot::B);
            trial = s.attrs;
        }
        assert_eq!(select([good, trial]).slot, Slot::A);
    }
}
