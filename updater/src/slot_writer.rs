//! Writes an image into a slot's byte range with the writeback overlapped.
//!
//! Left to itself the kernel holds the whole image as dirty page cache and
//! writes it out in the final fdatasync, after all decompression is done:
//! on the 512 MiB benchmark that was a third of the install. Here each
//! chunk's writeback starts as soon as it is written, and the writer waits
//! for chunks a few places behind, so at most `window` chunks are dirty, the
//! disk works while the CPUs decompress, and the final flush is short.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

pub struct SlotWriter<'a> {
    file: &'a File,
    /// How this medium takes zeros, learnt from the first zero run.
    zeroing: Zeroing,
    /// Byte ranges written and not yet known to be on the medium.
    in_flight: std::collections::VecDeque<(u64, u64)>,
    window: usize,
}

fn sync_range(file: &File, offset: u64, len: u64, flags: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor; no memory is passed.
    let r =
        unsafe { nix::libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How zero runs reach the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zeroing {
    /// Not tried yet.
    Unknown,
    /// A block device: `BLKZEROOUT` (the device zeroes, by write-zeroes or
    /// unmap where it guarantees zeros, else the kernel writes them).
    BlockZeroOut,
    /// A file: `fallocate(FALLOC_FL_ZERO_RANGE)`.
    ZeroRange,
    /// Neither works here: zeros are written like any data.
    Write,
}

// BLKZEROOUT is _IO(0x12, 127) in <linux/fs.h>, though it reads a range.
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

impl<'a> SlotWriter<'a> {
    pub fn new(file: &'a File, window: usize) -> SlotWriter<'a> {
        SlotWriter {
            file,
            zeroing: Zeroing::Unknown,
            in_flight: Default::default(),
            window: window.max(1),
        }
    }

    /// Writes `data` at `offset` and starts its writeback; waits for the
    /// oldest range when more than `window` are in flight.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        // Where sync_file_range is unsupported (some file systems), the
        // final fdatasync still makes everything durable; only the overlap
        // is lost.
        let _ = sync_range(
            self.file,
            offset,
            data.len() as u64,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        );
        self.in_flight.push_back((offset, data.len() as u64));
        while self.in_flight.len() > self.window {
            if let Some((off, len)) = self.in_flight.pop_front() {
                let wait = nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | nix::libc::SYNC_FILE_RANGE_WRITE
                    | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER;
                let _ = sync_range(self.file, off, len, wait);
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` zero, the cheapest way the medium
    /// offers; plain writes of zeros where it offers none.
    pub fn zero_at(&mut self, len: u64, offset: u64) -> io::Result<()> {
        if self.zeroing == Zeroing::Unknown {
            self.zeroing = if self.file.metadata()?.file_type().is_block_device() {
                Zeroing::BlockZeroOut
            } else {
                Zeroing::ZeroRange
            };
        }
        let done = match self.zeroing {
            Zeroing::BlockZeroOut => {
                let range = [offset, len];
                // SAFETY: BLKZEROOUT reads two u64s (start, length) from
                // the pointer, which points at `range`.
                unsafe { blkzeroout(self.file.as_raw_fd(), &range) }.is_ok()
            }
            Zeroing::ZeroRange => nix::fcntl::fallocate(
                self.file,
                nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE,
                offset as i64,
                len as i64,
            )
            .is_ok(),
            _ => false,
        };
        if done {
            return Ok(());
        }
        // Unsupported here (or refused for this range): write them.
        self.zeroing = Zeroing::Write;
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZEROS.len() as u64) as usize;
            self.write_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes everything written durable. This, not sync_file_range, is the
    /// guarantee: it also flushes the device's cache and reports errors.
    pub fn finish(self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_where_asked_whatever_the_window() {
        for window in [1, 3, 100] {
            let f = tempfile::tempfile().unwrap();
            let mut w = SlotWriter::new(&f, window);
            for i in (0..10u8).rev() {
                w.write_at(&[i; 4096], u64::from(i) * 4096).unwrap();
            }
            w.finish().unwrap();
            let mut buf = vec![0u8; 40960];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert!(buf
                .chunks(4096)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        }
    }

    #[test]
    fn zero_runs_replace_what_was_there() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[0xAA; 3 << 16], 0).unwrap();
        let mut w = SlotWriter::new(&f, 2);
        w.zero_at(1 << 16, 1 << 16).unwrap();
        // Past the end too: the file grows, as a slot write would not.
        w.zero_at(1000, 3 << 16).unwrap();
        w.finish().unwrap();
        let mut buf = vec![0u8; (3 << 16) + 1000];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..1 << 16].iter().all(|&b| b == 0xAA));
        assert!(buf[1 << 16..2 << 16].iter().all(|&b| b == 0));
        assert!(buf[2 << 16..3 << 16].iter().all(|&b| b == 0xAA));
        assert!(buf[3 << 16..].iter().all(|&b| b == 0));
    }
}
