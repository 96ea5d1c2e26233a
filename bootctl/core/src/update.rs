//! Every change of the flags on a disk: read and validate both GPT copies,
//! change only the boot bits of the two slot entries, write with the
//! power-loss-safe routine of [`crate::table`], and read back to verify.
//!
//! Each verb of [`crate::flags`] has its function here. bootctl's `Disk`
//! wraps them with the disk's lock and path; the UEFI boot stage calls
//! [`spend_try`] before it starts a slot, so that a hang or a crash of the
//! slot counts against its tries.

use crate::attr::BootAttrs;
use crate::device::BlockDevice;
use crate::flags::{self, NotSuccessful};
use crate::select::Selection;
use crate::slots::Slot;
use crate::state::{read, ReadError, State};
use crate::table::WriteError;
use core::convert::Infallible;
use core::fmt;

/// A change that went through (or had nothing to do).
#[derive(Debug, Clone)]
pub struct Updated {
    /// The state as read back after the write; as read before, when
    /// nothing was written.
    pub state: State,
    /// The table was written: the flags changed, or the copies differed.
    pub written: bool,
}

/// Why an update changed nothing, or could not confirm its change.
#[derive(Debug)]
pub enum UpdateError<E, C = Infallible> {
    /// Reading the disk, before the write or after it.
    Read(ReadError),
    /// The change refused; nothing was written.
    Change(C),
    /// Writing the table failed: the disk holds the old state or the new
    /// one ([`crate::table`]), and the next change completes it.
    Write(WriteError<E>),
    /// The copies read back do not both hold what was written.
    VerifyFailed,
}

impl<E: fmt::Display, C: fmt::Display> fmt::Display for UpdateError<E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Read(e) => e.fmt(f),
            UpdateError::Change(e) => e.fmt(f),
            UpdateError::Write(e) => write!(f, "write GPT: {e}"),
            UpdateError::VerifyFailed => {
                f.write_str("read-back after writing the GPT does not match what was written")
            }
        }
    }
}

impl<E, C> core::error::Error for UpdateError<E, C>
where
    E: fmt::Debug + fmt::Display,
    C: fmt::Debug + fmt::Display,
{
}

/// Applies `change` to the two slots' boot attributes and persists the
/// result power-loss safely; returns what `change` returned. The table is
/// read with its layout checked ([`read`]): a table that could send a write
/// elsewhere is never written. Nothing is written when the flags stay as
/// they are and both copies already agree.
pub fn update<D, C, T>(
    dev: &mut D,
    sector_size: u64,
    change: impl FnOnce(&mut [BootAttrs; 2]) -> Result<T, C>,
) -> Result<(T, Updated), UpdateError<D::Error, C>>
where
    D: BlockDevice + ?Sized,
{
    let state = read(dev, sector_size).map_err(UpdateError::Read)?;
    let mut attrs = state.attrs();
    let outcome = change(&mut attrs).map_err(UpdateError::Change)?;
    let current = state.gpt.current();
    let mut next = current.clone();
    for slot in Slot::ALL {
        let entry = state.table.entry(slot);
        next.set_attributes(entry.index, attrs[slot.index()].encode(entry.attributes));
    }
    let entries = next.entries;
    if entries == current.entries && state.gpt.is_consistent() {
        let unchanged = Updated {
            state,
            written: false,
        };
        return Ok((outcome, unchanged));
    }
    state
        .gpt
        .write_entries(dev, &entries)
        .map_err(UpdateError::Write)?;
    let after = read(dev, sector_size).map_err(UpdateError::Read)?;
    let verified = match (&after.gpt.primary, &after.gpt.backup) {
        (Ok(p), Ok(b)) => p.entries == entries && b.entries == entries,
        _ => false,
    };
    if !verified {
        return Err(UpdateError::VerifyFailed);
    }
    let changed = Updated {
        state: after,
        written: true,
    };
    Ok((outcome, changed))
}

/// Runs the selection and persists the spent try before returning, as a
/// boot stage must before it boots the slot. On an error the try may not
/// be recorded; a boot stage then boots what
/// [`read_unchecked`](crate::state::read_unchecked) and [`State::next`]
/// say rather than nothing.
pub fn spend_try<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
) -> Result<(Selection, Updated), UpdateError<D::Error>> {
    update(dev, sector_size, |attrs| Ok(flags::select_and_spend(attrs)))
}

/// [`flags::set_active`] on the disk.
pub fn set_active<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
    slot: Slot,
    tries: u8,
) -> Result<Updated, UpdateError<D::Error>> {
    let ((), done) = update(dev, sector_size, |attrs| {
        flags::set_active(attrs, slot, tries);
        Ok(())
    })?;
    Ok(done)
}

/// [`flags::mark_good`] on the disk.
pub fn mark_good<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
    slot: Slot,
) -> Result<Updated, UpdateError<D::Error>> {
    let ((), done) = update(dev, sector_size, |attrs| {
        flags::mark_good(attrs, slot);
        Ok(())
    })?;
    Ok(done)
}

/// [`flags::mark_bad`] on the disk.
pub fn mark_bad<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
    slot: Slot,
) -> Result<Updated, UpdateError<D::Error>> {
    let ((), done) = update(dev, sector_size, |attrs| {
        flags::mark_bad(attrs, slot);
        Ok(())
    })?;
    Ok(done)
}

/// [`flags::rollback`] on the disk; nothing is written when it refuses.
pub fn rollback<D: BlockDevice + ?Sized>(
    dev: &mut D,
    sector_size: u64,
    from: Slot,
) -> Result<Updated, UpdateError<D::Error, NotSuccessful>> {
    let ((), done) = update(dev, sector_size, |attrs| flags::rollback(attrs, from))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::flags::ACTIVE_PRIORITY;
    use crate::state::read_unchecked;
    use crate::testdisk::{disk, flip_byte};
    use alloc::string::ToString;

    fn attrs(dev: &mut MemDevice) -> [BootAttrs; 2] {
        read(dev, 512).unwrap().attrs()
    }

    #[test]
    fn spend_try_persists_the_try_on_both_copies() {
        let mut dev = disk(512);
        set_active(&mut dev, 512, Slot::B, 2).unwrap();
        for tries_left in [1, 0] {
            let (chosen, done) = spend_try(&mut dev, 512).unwrap();
            assert!(done.written);
            assert_eq!((chosen.slot, chosen.attrs.tries), (Slot::B, tries_left));
            assert!(done.state.gpt.is_consistent());
            assert_eq!(done.state.attrs()[1], chosen.attrs);
            assert_eq!(attrs(&mut dev)[1].tries, tries_left);
        }
        // Out of tries: the old slot boots, and there is nothing to record.
        let (chosen, done) = spend_try(&mut dev, 512).unwrap();
        assert_eq!((chosen.slot, done.written), (Slot::A, false));
    }

    #[test]
    fn the_verbs_persist_their_flags() {
        let mut dev = disk(4096);
        set_active(&mut dev, 4096, Slot::B, 3).unwrap();
        let done = mark_good(&mut dev, 4096, Slot::B).unwrap();
        assert!(done.state.attrs()[1].successful);
        let done = rollback(&mut dev, 4096, Slot::B).unwrap();
        assert_eq!(done.state.next().slot, Slot::A);
        let done = mark_bad(&mut dev, 4096, Slot::B).unwrap();
        assert_eq!(done.state.attrs()[1], BootAttrs::UNBOOTABLE);
        assert_eq!(attrs_at(&mut dev, 4096)[0].priority, ACTIVE_PRIORITY);
    }

    fn attrs_at(dev: &mut MemDevice, sector: u64) -> [BootAttrs; 2] {
        read(dev, sector).unwrap().attrs()
    }

    #[test]
    fn a_refused_change_writes_nothing() {
        let mut dev = disk(512);
        let before = dev.0.clone();
        let err = rollback(&mut dev, 512, Slot::A).unwrap_err();
        assert!(matches!(
            err,
            UpdateError::Change(NotSuccessful { slot: Slot::B, .. })
        ));
        assert!(dev.0 == before);
        let err = update(&mut dev, 512, |_| Err::<(), _>("no")).unwrap_err();
        assert!(matches!(err, UpdateError::Change("no")));
        assert!(dev.0 == before);
    }

    #[test]
    fn a_damaged_copy_is_repaired_even_when_the_flags_stay() {
        for sector in [512u64, 4096] {
            let mut dev = disk(sector);
            let last = dev.0.len() - sector as usize;
            flip_byte(&mut dev, last + 40);
            let state = read(&mut dev, sector).unwrap();
            assert!(state.gpt.backup.is_err());
            let before = state.attrs();
            // slot_a is good already: only the copies differ.
            let done = mark_good(&mut dev, sector, Slot::A).unwrap();
            assert!(done.written && done.state.gpt.is_consistent());
            assert_eq!(done.state.attrs(), before);
        }
    }

    #[test]
    fn reads_name_what_is_wrong() {
        let mut dev = disk(512);
        flip_byte(&mut dev, 512 + 40);
        let last = dev.0.len() - 512;
        flip_byte(&mut dev, last + 40);
        let before = dev.0.clone();
        let err = spend_try(&mut dev, 512).unwrap_err();
        assert!(
            matches!(err, UpdateError::Read(ReadError::NoGpt { .. })),
            "{err}"
        );
        assert!(dev.0 == before, "nothing may be written");
        let mut tiny = MemDevice(alloc::vec![0; 1024]);
        assert!(read_unchecked(&mut tiny, 512).is_err());
        assert!(read_unchecked(&mut disk(512), 0).is_err());
    }

    /// A device whose writes all fail.
    struct ReadOnly(MemDevice);

    impl BlockDevice for ReadOnly {
        type Error = &'static str;
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), &'static str> {
            self.0.read_at(buf, offset).map_err(|_| "read")
        }
        fn write_at(&mut self, _: &[u8], _: u64) -> Result<(), &'static str> {
            Err("write protected")
        }
        fn sync(&mut self) -> Result<(), &'static str> {
            Ok(())
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
    }

    #[test]
    fn a_device_error_comes_through_as_the_device_said_it() {
        let mut dev = ReadOnly(disk(512));
        let err = set_active(&mut dev, 512, Slot::B, 3).unwrap_err();
        assert!(matches!(
            err,
            UpdateError::Write(WriteError::Device("write protected"))
        ));
        assert_eq!(err.to_string(), "write GPT: write protected");
    }

    /// A backup whose usable LBAs start before the primary's array would end
    /// (LBA 2 on) cannot rebuild the primary there: that write would land
    /// in a partition. Refused, and nothing is written.
    #[test]
    fn a_primary_rebuilt_from_the_backup_never_reaches_into_a_partition() {
        let mut dev = disk(512);
        let last = dev.0.len() / 512 - 1;
        let h = &mut dev.0[last * 512..][..512];
        let size = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        h[40..48].copy_from_slice(&20u64.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        dev.0[512..1024].fill(0);
        let before = dev.0.clone();
        let e = set_active(&mut dev, 512, Slot::B, 3).unwrap_err();
        assert!(
            matches!(e, UpdateError::Write(WriteError::NoRoomForPrimary)),
            "{e:?}"
        );
        assert!(dev.0 == before, "nothing may be written");
    }
}
