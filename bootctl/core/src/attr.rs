//! The ChromeOS/Flatcar boot attribute codec.
//!
//! A GPT entry's 64-bit attribute word carries the slot's boot state in the
//! type-specific bits, at the positions vboot's cgptlib and Flatcar's gptprio
//! use, so that their tools and ours read the same disk the same way:
//!
//! | bits  | field      |
//! |-------|------------|
//! | 48–51 | priority   |
//! | 52–55 | tries      |
//! | 56    | successful |
//!
//! Every other bit (UEFI's required/no-block-io/legacy-boot bits and whatever
//! another tool stored) is carried through unchanged.

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_SHIFT: u32 = 56;
const NIBBLE: u64 = 0xF;

/// The bits this codec owns; everything outside is left as found.
pub const BOOT_BITS_MASK: u64 =
    (NIBBLE << PRIORITY_SHIFT) | (NIBBLE << TRIES_SHIFT) | (1 << SUCCESSFUL_SHIFT);

/// Highest value the 4-bit priority and tries fields can hold.
pub const MAX_NIBBLE: u8 = 15;

/// The boot state of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BootAttrs {
    /// 0 = never boot; higher wins.
    pub priority: u8,
    /// Boot attempts left while not yet successful.
    pub tries: u8,
    /// The slot has passed its health check at least once.
    pub successful: bool,
}

impl BootAttrs {
    /// An unbootable slot: what a slot is while it is being written.
    pub const UNBOOTABLE: BootAttrs = BootAttrs {
        priority: 0,
        tries: 0,
        successful: false,
    };

    /// Reads the boot fields out of a GPT attribute word.
    pub fn decode(word: u64) -> BootAttrs {
        BootAttrs {
            priority: ((word >> PRIORITY_SHIFT) & NIBBLE) as u8,
            tries: ((word >> TRIES_SHIFT) & NIBBLE) as u8,
            successful: (word >> SUCCESSFUL_SHIFT) & 1 == 1,
        }
    }

    /// Writes the boot fields into `word`, keeping its other 55 bits.
    /// Values above 15 saturate rather than spill into neighbouring fields.
    pub fn encode(self, word: u64) -> u64 {
        let priority = u64::from(self.priority.min(MAX_NIBBLE));
        let tries = u64::from(self.tries.min(MAX_NIBBLE));
        (word & !BOOT_BITS_MASK)
            | (priority << PRIORITY_SHIFT)
            | (tries << TRIES_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_SHIFT)
    }

    /// Whether selection may pick this slot without falling back.
    pub fn is_bootable(self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_words_match_cgpt_layout() {
        // cgpt add -P 2 -T 3 -S 1 sets exactly these bits.
        let word = 0x0132_0000_0000_0000u64;
        assert_eq!(
            BootAttrs::decode(word),
            BootAttrs {
                priority: 2,
                tries: 3,
                successful: true
            }
        );
        assert_eq!(
            BootAttrs {
                priority: 2,
                tries: 3,
                successful: true
            }
            .encode(0),
            word
        );
    }

    #[test]
    fn encode_saturates_instead_of_corrupting_neighbours() {
        let w = BootAttrs {
            priority: 200,
            tries: 16,
            successful: false,
        }
        .encode(0);
        assert_eq!(
            BootAttrs::decode(w),
            BootAttrs {
                priority: 15,
                tries: 15,
                successful: false
            }
        );
        assert_eq!(w & !BOOT_BITS_MASK, 0);
    }

    proptest! {
        #[test]
        fn round_trip_keeps_foreign_bits(word: u64, p in 0u8..=15, t in 0u8..=15, s: bool) {
            let attrs = BootAttrs { priority: p, tries: t, successful: s };
            let out = attrs.encode(word);
            prop_assert_eq!(BootAttrs::decode(out), attrs);
            prop_assert_eq!(out & !BOOT_BITS_MASK, word & !BOOT_BITS_MASK);
        }

        #[test]
        fn decode_then_encode_is_identity(word: u64) {
            prop_assert_eq!(BootAttrs::decode(word).encode(word), word);
        }
    }
}
