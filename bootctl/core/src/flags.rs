//! The changes the two slots' flags go through (`[slot_a, slot_b]`), with
//! no disk: [`crate::update()`] reads the flags, runs one of these and
//! persists the result, so bootctl's verbs and the UEFI boot stage change
//! the flags by the same rules (docs/boot-control.md).

use crate::attr::BootAttrs;
use crate::select::{select, Selection};
use crate::slots::Slot;
use core::fmt;

/// Priority a freshly activated slot gets; the other bootable slot sits one
/// below it. Two levels are all selection needs, and staying low leaves room
/// for other tools that use the same bits.
pub const ACTIVE_PRIORITY: u8 = 2;
pub const DEFAULT_TRIES: u8 = 3;

/// `slot` boots next, on trial with `tries` attempts; the other slot keeps
/// its state one priority lower (or stays unbootable). `tries` above 15
/// saturates when encoded: bootctl refuses 0 and more than 15 beforehand.
pub fn set_active(attrs: &mut [BootAttrs; 2], slot: Slot, tries: u8) {
    attrs[slot.index()] = BootAttrs {
        priority: ACTIVE_PRIORITY,
        tries,
        successful: false,
    };
    demote(&mut attrs[slot.other().index()]);
}

/// The slot passed its health check.
pub fn mark_good(attrs: &mut [BootAttrs; 2], slot: Slot) {
    let a = &mut attrs[slot.index()];
    a.successful = true;
    a.tries = 0;
    if a.priority == 0 {
        a.priority = 1;
    }
}

/// The slot must never boot again until reinstalled.
pub fn mark_bad(attrs: &mut [BootAttrs; 2], slot: Slot) {
    attrs[slot.index()] = BootAttrs::UNBOOTABLE;
}

/// The slot a rollback would make active has not proven itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSuccessful {
    pub slot: Slot,
    pub priority: u8,
    pub tries: u8,
}

impl fmt::Display for NotSuccessful {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a successful release (priority {}, tries {}): refusing to make it active",
            self.slot, self.priority, self.tries
        )
    }
}

impl core::error::Error for NotSuccessful {}

/// Makes the slot other than `from` boot next, provided it holds a release
/// that has proven itself; otherwise changes nothing.
pub fn rollback(attrs: &mut [BootAttrs; 2], from: Slot) -> Result<(), NotSuccessful> {
    let target = from.other();
    let t = attrs[target.index()];
    if !t.successful {
        return Err(NotSuccessful {
            slot: target,
            priority: t.priority,
            tries: t.tries,
        });
    }
    attrs[target.index()] = BootAttrs {
        priority: ACTIVE_PRIORITY,
        tries: 0,
        successful: true,
    };
    demote(&mut attrs[from.index()]);
    Ok(())
}

/// Runs the selection and records its spent try in `attrs`, which the
/// caller must persist before booting the slot (see [`crate::select`]).
pub fn select_and_spend(attrs: &mut [BootAttrs; 2]) -> Selection {
    let s = select(*attrs);
    attrs[s.slot.index()] = s.attrs;
    s
}

/// One level below the active slot, unless it is unbootable already.
pub fn demote(attrs: &mut BootAttrs) {
    if attrs.priority > 0 {
        attrs.priority = ACTIVE_PRIORITY - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: BootAttrs = BootAttrs {
        priority: ACTIVE_PRIORITY,
        tries: 0,
        successful: true,
    };

    #[test]
    fn set_active_puts_the_slot_on_trial_above_the_other() {
        let mut attrs = [GOOD, BootAttrs::UNBOOTABLE];
        set_active(&mut attrs, Slot::B, DEFAULT_TRIES);
        assert_eq!(
            attrs,
            [
                BootAttrs {
                    priority: 1,
                    ..GOOD
                },
                BootAttrs {
                    priority: ACTIVE_PRIORITY,
                    tries: DEFAULT_TRIES,
                    successful: false
                }
            ]
        );
        assert_eq!(select(attrs).slot, Slot::B);
        // An unbootable other slot stays unbootable.
        let mut attrs = [BootAttrs::UNBOOTABLE, GOOD];
        set_active(&mut attrs, Slot::B, 1);
        assert_eq!(attrs[0], BootAttrs::UNBOOTABLE);
    }

    #[test]
    fn mark_good_and_bad_touch_only_their_slot() {
        let other = BootAttrs {
            priority: 1,
            tries: 2,
            successful: false,
        };
        let mut attrs = [BootAttrs::UNBOOTABLE, other];
        mark_good(&mut attrs, Slot::A);
        assert_eq!(
            attrs,
            [
                BootAttrs {
                    priority: 1,
                    tries: 0,
                    successful: true
                },
                other
            ]
        );
        mark_bad(&mut attrs, Slot::A);
        assert_eq!(attrs, [BootAttrs::UNBOOTABLE, other]);
    }

    #[test]
    fn rollback_needs_a_proven_target_and_changes_nothing_without() {
        let trial = BootAttrs {
            priority: ACTIVE_PRIORITY,
            tries: 3,
            successful: false,
        };
        let mut attrs = [GOOD, trial];
        assert_eq!(
            rollback(&mut attrs, Slot::A),
            Err(NotSuccessful {
                slot: Slot::B,
                priority: 2,
                tries: 3
            })
        );
        assert_eq!(attrs, [GOOD, trial]);
        rollback(&mut attrs, Slot::B).unwrap();
        assert_eq!(
            attrs,
            [
                GOOD,
                BootAttrs {
                    priority: 1,
                    ..trial
                }
            ]
        );
        mark_good(&mut attrs, Slot::B);
        rollback(&mut attrs, Slot::A).unwrap();
        assert_eq!(select(attrs).slot, Slot::B);
        assert_eq!(attrs[0].priority, ACTIVE_PRIORITY - 1);
    }

    #[test]
    fn select_and_spend_records_the_try_it_spent() {
        let mut attrs = [
            GOOD,
            BootAttrs {
                priority: 3,
                tries: 1,
                successful: false,
            },
        ];
        let s = select_and_spend(&mut attrs);
        assert_eq!((s.slot, s.spent_try), (Slot::B, true));
        assert_eq!(attrs[1], s.attrs);
        assert_eq!(attrs[1].tries, 0);
        assert_eq!(select_and_spend(&mut attrs).slot, Slot::A);
    }
}
