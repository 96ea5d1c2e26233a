//! Writes an image into a slot's byte range with the writeback overlapped,
//! and reads every range back from the medium once it is there.
//!
//! Left to itself the kernel holds the whole image as dirty page cache and
//! writes it out in the final fdatasync, after all decompression is done:
//! on the 512 MiB benchmark that was a third of the install. Here each
//! chunk's writeback starts as soon as it is written, and the writer waits
//! for chunks a few places behind, so at most `window` bytes are dirty, the
//! disk works while the CPUs decompress, and the final flush is short.
//!
//! A chunk whose writeback has completed is read back right then, with
//! direct I/O (the medium itself, not the page cache), and compared with
//! what was written: its XXH3-128, or zeros. Reading back after the whole
//! image was written doubled the install's I/O time at its end; here it
//! overlaps the decompression of the chunks behind it. It reads a piece
//! at a time ([`READ_BACK_PIECE`]), hashing as it goes, so its buffer is a
//! fraction of a chunk. The read-back runs on a thread of its own: hashed
//! on the thread that takes the chunks in order, it was most of that
//! thread's time (7.7 % of an install's CPU on 512 MiB) and bounded how far
//! an install scales with cores.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a range must read back as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// XXH3-128 of the bytes written.
    Digest(u128),
    Zeros,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Writing (or flushing: no offset) failed.
    #[error("writing the slot: {source}")]
    Io {
        offset: Option<u64>,
        source: io::Error,
    },
    /// Reading a range back failed.
    #[error("reading back at byte {offset}: {source}")]
    Read { offset: u64, source: io::Error },
    /// The range written with this tag (the caller's chunk index) reads
    /// back different.
    #[error("range {tag} at byte {offset} reads back different")]
    Differs { tag: usize, offset: u64 },
}

struct Pending {
    offset: u64,
    len: u64,
    tag: usize,
    expect: Expect,
}

pub struct SlotWriter<'a> {
    file: &'a File,
    /// How this medium takes zeros, learnt from the first zero run.
    zeroing: Zeroing,
    /// Ranges written and not yet known to be on the medium.
    in_flight: VecDeque<Pending>,
    /// Their bytes.
    dirty: u64,
    window: u64,
    checker: Checker,
}

/// The read-back thread: it takes ranges whose writeback completed, in
/// order, and stops at the first that fails.
struct Checker {
    /// Ranges to read back; a couple may wait, so that a slow read-back
    /// holds up the writer rather than falling behind without bound.
    queue: Option<std::sync::mpsc::SyncSender<Pending>>,
    thread: Option<std::thread::JoinHandle<Result<(), SlotError>>>,
}

impl Checker {
    /// Reads back through `file`'s own descriptor, and through the disk at
    /// `path` opened again with `O_DIRECT` where the medium allows it.
    fn start(file: &File, path: &Path) -> Result<Checker, SlotError> {
        let io_err = |source| SlotError::Io {
            offset: None,
            source,
        };
        let file = file.try_clone().map_err(io_err)?;
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
            .ok();
        let (queue, ranges) = std::sync::mpsc::sync_channel::<Pending>(2);
        let thread = std::thread::Builder::new()
            .name("read-back".into())
            .spawn(move || {
                let mut buf = Vec::new();
                for p in ranges {
                    check(direct.as_ref(), &file, &mut buf, &p)?;
                }
                Ok(())
            })
            .map_err(io_err)?;
        Ok(Checker {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `p`; a read-back that failed already is reported here.
    fn send(&mut self, p: Pending) -> Result<(), SlotError> {
        let sent = self.queue.as_ref().map(|q| q.send(p));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: at a range that failed.
            _ => self.wait(),
        }
    }

    /// Waits until every queued range is read back; the first failure.
    fn wait(&mut self) -> Result<(), SlotError> {
        self.queue = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(SlotError::Io {
                offset: None,
                source: io::Error::other("the read-back thread panicked"),
            }),
            None => Err(SlotError::Io {
                offset: None,
                source: io::Error::other("the read-back thread had stopped"),
            }),
        }
    }
}

impl Drop for Checker {
    /// An install that failed elsewhere: the thread ends with its queue.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// Direct I/O wants buffers, offsets and lengths aligned to the logical
/// block size; 4096 covers 512- and 4096-byte devices.
const DIRECT_ALIGN: usize = 4096;

/// Bytes read back at a time: large enough for the medium's full speed,
/// small beside the install's memory budget.
pub const READ_BACK_PIECE: u64 = 1 << 20;

/// The result of a `sync_file_range`: where the file system does not
/// support it, the final fdatasync still makes everything durable (only
/// the overlap is lost); any other error is the write's.
fn started(result: io::Result<()>, offset: u64) -> Result<(), SlotError> {
    match result {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(
                    nix::libc::EINVAL
                        | nix::libc::ENOSYS
                        | nix::libc::EOPNOTSUPP
                        | nix::libc::ESPIPE
                )
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(SlotError::Io {
            offset: Some(offset),
            source,
        }),
        Ok(()) => Ok(()),
    }
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

impl<'a> SlotWriter<'a> {
    /// A writer on `file`, which is the disk at `path` (opened again with
    /// `O_DIRECT` for read-back where the medium allows it), with at most
    /// `window` bytes (and at least one range) written and not yet on the
    /// medium.
    pub fn new(file: &'a File, path: &Path, window: u64) -> Result<SlotWriter<'a>, SlotError> {
        Ok(SlotWriter {
            file,
            zeroing: Zeroing::Unknown,
            in_flight: VecDeque::new(),
            dirty: 0,
            window,
            checker: Checker::start(file, path)?,
        })
    }

    /// Writes `data` at `offset` and starts its writeback; once the oldest
    /// ranges beyond `window` bytes are on the medium, reads them back and
    /// compares it with its XXH3-128 (`digest`, computed by the caller's
    /// workers while decoding).
    pub fn write_at(
        &mut self,
        data: &[u8],
        offset: u64,
        tag: usize,
        digest: u128,
    ) -> Result<(), SlotError> {
        write_range(self.file, data, offset)?;
        self.written(offset, data.len() as u64, tag, digest)
    }

    /// Takes in a range that [`write_range`] wrote (on another thread, in
    /// any order): its writeback is waited for and it is read back like
    /// one written by [`Self::write_at`].
    pub fn written(
        &mut self,
        offset: u64,
        len: u64,
        tag: usize,
        digest: u128,
    ) -> Result<(), SlotError> {
        self.push(offset, len, tag, Expect::Digest(digest))
    }

    fn push(&mut self, offset: u64, len: u64, tag: usize, expect: Expect) -> Result<(), SlotError> {
        self.in_flight.push_back(Pending {
            offset,
            len,
            tag,
            expect,
        });
        self.dirty += len;
        while self.dirty > self.window && self.in_flight.len() > 1 {
            if let Some(p) = self.in_flight.pop_front() {
                self.dirty -= p.len;
                let wait = nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | nix::libc::SYNC_FILE_RANGE_WRITE
                    | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // A writeback error is reported here, and only once: the
                // final fdatasync would not see it again.
                started(sync_range(self.file, p.offset, p.len, wait), p.offset)?;
                self.checker.send(p)?;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` zero, the cheapest way the medium
    /// offers; plain writes of zeros where it offers none.
    pub fn zero_at(&mut self, len: u64, offset: u64, tag: usize) -> Result<(), SlotError> {
        let io_err = |source| SlotError::Io {
            offset: Some(offset),
            source,
        };
        if self.zeroing == Zeroing::Unknown {
            self.zeroing = if self
                .file
                .metadata()
                .map_err(io_err)?
                .file_type()
                .is_block_device()
            {
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
        if !done {
            // Unsupported here (or refused for this range): write them.
            self.zeroing = Zeroing::Write;
            static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(ZEROS.len() as u64) as usize;
                write_range(self.file, &ZEROS[..n], at)?;
                at += n as u64;
            }
        }
        self.push(offset, len, tag, Expect::Zeros)
    }

    /// Makes everything written durable (fdatasync, not sync_file_range, is
    /// the guarantee: it also flushes the device's cache and reports
    /// errors), then reads back the ranges not yet read.
    pub fn finish(mut self) -> Result<(), SlotError> {
        self.file.sync_data().map_err(|source| SlotError::Io {
            offset: None,
            source,
        })?;
        while let Some(p) = self.in_flight.pop_front() {
            self.checker.send(p)?;
        }
        self.checker.wait()
    }
}

/// Reads a range whose writeback completed back from the medium, a piece
/// at a time, and compares it with what was written.
fn check(
    direct: Option<&File>,
    file: &File,
    buf: &mut Vec<u8>,
    p: &Pending,
) -> Result<(), SlotError> {
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut zeros = true;
    let mut at = p.offset;
    while at < p.offset + p.len {
        let len = (p.offset + p.len - at).min(READ_BACK_PIECE);
        let read = read_medium(direct, file, buf, len, at)
            .map_err(|source| SlotError::Read { offset: at, source })?;
        match p.expect {
            Expect::Digest(_) => hash.update(read),
            Expect::Zeros => zeros = switchback_bundle::all_zero(read),
        }
        if !zeros {
            break;
        }
        at += len;
    }
    let same = match p.expect {
        Expect::Digest(d) => hash.digest128() == d,
        Expect::Zeros => zeros,
    };
    if same {
        Ok(())
    } else {
        Err(SlotError::Differs {
            tag: p.tag,
            offset: p.offset,
        })
    }
}

/// Writes `data` at `offset` of `file` and starts its writeback; callable
/// from any thread, for [`SlotWriter::written`] to take in.
pub fn write_range(file: &File, data: &[u8], offset: u64) -> Result<(), SlotError> {
    file.write_all_at(data, offset)
        .map_err(|source| SlotError::Io {
            offset: Some(offset),
            source,
        })?;
    let flags = nix::libc::SYNC_FILE_RANGE_WRITE;
    started(sync_range(file, offset, data.len() as u64, flags), offset)
}

/// Reads `len` bytes at `at` from the medium into `buf` and returns them:
/// through `direct` (an `O_DIRECT` descriptor), reading the whole aligned
/// blocks that cover the range, when it takes the read; else from `file`
/// after dropping the range from the page cache.
fn read_medium<'b>(
    direct: Option<&File>,
    file: &File,
    buf: &'b mut Vec<u8>,
    len: u64,
    at: u64,
) -> io::Result<&'b [u8]> {
    let align = DIRECT_ALIGN as u64;
    let first = at / align * align;
    let end = (at + len).div_ceil(align) * align;
    let whole = (end - first) as usize;
    if buf.len() < whole + DIRECT_ALIGN {
        buf.resize(whole + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    if let Some(direct) = direct {
        if direct
            .read_exact_at(&mut buf[start..start + whole], first)
            .is_ok()
        {
            let skip = start + (at - first) as usize;
            return Ok(&buf[skip..skip + len as usize]);
        }
    }
    let _ = nix::fcntl::posix_fadvise(
        file,
        first as i64,
        (end - first) as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let len = len as usize;
    file.read_exact_at(&mut buf[..len], at)?;
    Ok(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        (t, f)
    }

    #[test]
    fn writes_land_where_asked_whatever_the_window() {
        for window in [1, 3 * 4096, 100 * 4096] {
            let (t, f) = temp();
            let mut w = SlotWriter::new(&f, t.path(), window).unwrap();
            for i in (0..10u8).rev() {
                let data = [i; 4096];
                let digest = xxhash_rust::xxh3::xxh3_128(&data);
                w.write_at(&data, u64::from(i) * 4096, i.into(), digest)
                    .unwrap();
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
        let (t, f) = temp();
        f.write_all_at(&[0xAA; 3 << 16], 0).unwrap();
        let mut w = SlotWriter::new(&f, t.path(), 2 << 16).unwrap();
        w.zero_at(1 << 16, 1 << 16, 0).unwrap();
        // Past the end too: the file grows, as a slot write would not.
        w.zero_at(1000, 3 << 16, 1).unwrap();
        w.finish().unwrap();
        let mut buf = vec![0u8; (3 << 16) + 1000];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..1 << 16].iter().all(|&b| b == 0xAA));
        assert!(buf[1 << 16..2 << 16].iter().all(|&b| b == 0));
        assert!(buf[2 << 16..3 << 16].iter().all(|&b| b == 0xAA));
        assert!(buf[3 << 16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_range_changed_before_it_is_read_back_is_named() {
        let (t, f) = temp();
        let mut w = SlotWriter::new(&f, t.path(), 1 << 20).unwrap();
        let data = [1; 8192];
        w.write_at(&data, 0, 7, xxhash_rust::xxh3::xxh3_128(&data))
            .unwrap();
        w.zero_at(8192, 8192, 8).unwrap();
        // Someone else writes into both ranges before they are read back.
        let other = File::options().write(true).open(t.path()).unwrap();
        other.write_all_at(b"x", 100).unwrap();
        other.write_all_at(b"y", 9000).unwrap();
        match w.finish() {
            Err(SlotError::Differs { tag: 7, offset: 0 }) => {}
            other => panic!("expected range 7 to differ, got {other:?}"),
        }
    }
}
