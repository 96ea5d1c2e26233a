//! The disk as the flip routine sees it: positioned reads and writes,
//! a data sync and a size.
//!
//! It is a trait so that the crash tests can put a disk underneath that
//! stops accepting writes after N sectors; the real one is a file or a
//! block device (bootctl's `FileDevice`), or the firmware's block I/O under
//! UEFI. Without std there is no `io::Error`: each device names its own
//! error type, which the GPT routines pass through untouched.

use alloc::vec::Vec;
use core::fmt;

pub trait BlockDevice {
    /// Why a read, write or sync failed.
    type Error: fmt::Debug + fmt::Display;

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Self::Error>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Self::Error>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> Result<(), Self::Error>;
    /// Size in bytes.
    fn size(&self) -> u64;
}

/// A disk held in memory; the crash tests wrap it to cut writes short.
#[derive(Clone, Debug, Default)]
pub struct MemDevice(pub Vec<u8>);

/// A [`MemDevice`] access that does not fit inside its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    ReadPastEnd,
    WritePastEnd,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemError::ReadPastEnd => "read past the end of the disk",
            MemError::WritePastEnd => "write past the end of the disk",
        })
    }
}

impl core::error::Error for MemError {}

impl BlockDevice for MemDevice {
    type Error = MemError;

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), MemError> {
        let start = usize::try_from(offset).map_err(|_| MemError::ReadPastEnd)?;
        let src = self
            .0
            .get(start..start.saturating_add(buf.len()))
            .ok_or(MemError::ReadPastEnd)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), MemError> {
        let start = usize::try_from(offset).map_err(|_| MemError::WritePastEnd)?;
        let dst = self
            .0
            .get_mut(start..start.saturating_add(buf.len()))
            .ok_or(MemError::WritePastEnd)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> Result<(), MemError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn accesses_past_the_end_fail_without_touching_the_bytes() {
        let mut dev = MemDevice(vec![7u8; 16]);
        let mut buf = [0u8; 8];
        assert_eq!(dev.read_at(&mut buf, 9), Err(MemError::ReadPastEnd));
        assert_eq!(dev.read_at(&mut buf, u64::MAX), Err(MemError::ReadPastEnd));
        assert_eq!(dev.write_at(&buf, 9), Err(MemError::WritePastEnd));
        assert_eq!(dev.0, vec![7u8; 16]);
        dev.write_at(&buf, 8).unwrap();
        dev.read_at(&mut buf, 4).unwrap();
        assert_eq!(buf, [7, 7, 7, 7, 0, 0, 0, 0]);
    }
}
