//! What `image-tools stage` adds to the UEFI boot stage's EFI program and
//! the stage reads back from its own image at every boot (docs/boot-flow.md,
//! "The UEFI boot stage"): both sides' one definition. Under Secure Boot the
//! vendor's db signature covers these sections like the code that obeys them.
//!
//! - `.keyring`: the magic `SWKEYS1\0`, then each trusted ed25519 public
//!   key as its 32 raw bytes.
//! - `.policy` (optional; absent means every flag off and one signature):
//!   the magic `SWPOL1\0\0`, a little-endian `u32` of flags, then a
//!   little-endian `u32`: how many of the keyring's keys must have signed a
//!   slot's release (the keyring's threshold; 0 stands for 1). A flag this
//!   stage does not know makes the section an error, never a flag ignored.

use alloc::vec::Vec;

pub const KEYRING_SECTION: &str = ".keyring";
pub const KEYRING_MAGIC: &[u8; 8] = b"SWKEYS1\0";
pub const POLICY_SECTION: &str = ".policy";
pub const POLICY_MAGIC: &[u8; 8] = b"SWPOL1\0\0";

/// A slot whose signed release has no dm-verity tree for its root is not
/// started (docs/boot-flow.md, "Integrity at every boot").
const REQUIRE_VERITY: u32 = 1 << 0;
const KNOWN: u32 = REQUIRE_VERITY;

/// The `.keyring` section's bytes for `keys`.
pub fn keyring_section(keys: &[[u8; 32]]) -> Vec<u8> {
    let mut out = KEYRING_MAGIC.to_vec();
    for k in keys {
        out.extend_from_slice(k);
    }
    out
}

/// The keys of a `.keyring` section; why not when it is not one.
pub fn parse_keyring(section: &[u8]) -> Result<Vec<[u8; 32]>, &'static str> {
    let keys = section
        .strip_prefix(KEYRING_MAGIC)
        .ok_or("the .keyring section has no SWKEYS1 magic")?;
    if keys.is_empty() || keys.len() % 32 != 0 {
        return Err("the .keyring section is not a whole number of keys");
    }
    Ok(keys
        .chunks_exact(32)
        .filter_map(|k| k.try_into().ok())
        .collect())
}

/// What the stage demands beyond a trusted signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub require_verity: bool,
    /// Signatures by distinct keyring keys a release needs (0: one).
    pub threshold: u32,
}

impl Policy {
    /// The `.policy` section's bytes.
    pub fn section(&self) -> Vec<u8> {
        let flags = if self.require_verity {
            REQUIRE_VERITY
        } else {
            0
        };
        let mut out = POLICY_MAGIC.to_vec();
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out
    }

    /// A `.policy` section's policy; why not when it is not one. The loaded
    /// section may be padded with zeros to its alignment.
    pub fn parse(section: &[u8]) -> Result<Policy, &'static str> {
        let rest = section
            .strip_prefix(POLICY_MAGIC)
            .ok_or("the .policy section has no SWPOL1 magic")?;
        let word = |at: usize| {
            rest.get(at..at + 4)
                .and_then(|f| f.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let flags = word(0).ok_or("the .policy section has no flags")?;
        if flags & !KNOWN != 0 {
            return Err("the .policy section has flags this stage does not know");
        }
        let threshold = word(4).ok_or("the .policy section has no threshold")?;
        Ok(Policy {
            require_verity: flags & REQUIRE_VERITY != 0,
            threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_read_back_as_written_and_unknown_flags_are_refused() {
        let keys = [[7u8; 32], [9u8; 32]];
        assert_eq!(parse_keyring(&keyring_section(&keys)).unwrap(), keys);
        assert!(parse_keyring(KEYRING_MAGIC).is_err());
        assert!(parse_keyring(&keyring_section(&keys)[..41]).is_err());
        for (require_verity, threshold) in [(false, 0), (true, 2)] {
            let p = Policy {
                require_verity,
                threshold,
            };
            let mut padded = p.section();
            padded.resize(512, 0);
            assert_eq!(Policy::parse(&padded).unwrap(), p);
        }
        let mut future = Policy::default().section();
        future[8] = 2;
        assert!(Policy::parse(&future).is_err());
        assert!(Policy::parse(b"SWPOL1\0\0\x01").is_err());
        assert!(Policy::parse(b"SWPOL1\0\0\x01\0\0\0").is_err());
    }
}
