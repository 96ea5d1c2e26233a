//! The firmware's block I/O as the byte-addressed device the flag code and
//! the slot checks (`bootctl_core::verify`) expect.
//!
//! Block I/O reads and writes whole blocks into buffers aligned to the
//! media's `IoAlign`; the flag code and ext4 ask for byte ranges. Every
//! request goes through an aligned bounce buffer covering its blocks, and
//! a write that does not cover whole blocks reads them first.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use uefi::boot::{self, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol};
use uefi::proto::media::block::BlockIO;
use uefi::proto::ProtocolPointer;
use uefi::{Handle, Status};

/// A protocol of `handle`, opened without taking it from its driver: an
/// exclusive open would disconnect the firmware's drivers (the partitions
/// and file systems on a disk, the PCI bus under a root bridge).
pub fn shared<P: ProtocolPointer + ?Sized>(handle: Handle) -> Option<ScopedProtocol<P>> {
    // SAFETY: GetProtocol takes no ownership of the protocol, and the
    // driver that provides it stays connected for as long as the stage runs.
    unsafe {
        boot::open_protocol::<P>(
            OpenProtocolParams {
                handle,
                agent: boot::image_handle(),
                controller: None,
            },
            OpenProtocolAttributes::GetProtocol,
        )
    }
    .ok()
}

/// What failed on the firmware's side, and doing what.
#[derive(Debug, Clone, Copy)]
pub struct DiskError {
    pub what: &'static str,
    pub status: Status,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.what, self.status)
    }
}

impl core::error::Error for DiskError {}

/// A byte range of a disk: the whole disk for the flags, one slot for its
/// file system.
pub struct Disk {
    io: ScopedProtocol<BlockIO>,
    handle: Handle,
    media_id: u32,
    block: u64,
    align: usize,
    /// Where the range starts on the disk, and its length, in bytes.
    base: u64,
    len: u64,
}

impl Disk {
    /// The whole disk behind `handle`, if it is a present, whole disk (not
    /// one of the partitions the firmware also offers as block devices).
    pub fn whole(handle: Handle) -> Option<Disk> {
        let io = shared::<BlockIO>(handle)?;
        let media = io.media();
        if media.is_logical_partition() || !media.is_media_present() || media.block_size() == 0 {
            return None;
        }
        let block = u64::from(media.block_size());
        let len = media.last_block().checked_add(1)?.checked_mul(block)?;
        Some(Disk {
            media_id: media.media_id(),
            // IoAlign is 0, 1 or a power of two (UEFI 2.10 §13.9); anything
            // else is taken up to one.
            align: (media.io_align() as usize).max(1).next_power_of_two(),
            block,
            base: 0,
            len,
            io,
            handle,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// The bytes `first_lba..=last_lba` of this disk as a device of their own.
    pub fn part(handle: Handle, first_lba: u64, last_lba: u64) -> Option<Disk> {
        let mut d = Disk::whole(handle)?;
        let start = first_lba.checked_mul(d.block)?;
        let end = last_lba.checked_add(1)?.checked_mul(d.block)?;
        if end > d.len || start >= end {
            return None;
        }
        d.base = start;
        d.len = end - start;
        Some(d)
    }

    /// The blocks that cover `len` bytes at `offset`: (first LBA, the byte
    /// offset into the first block, the bytes of whole blocks).
    fn span(&self, offset: u64, len: usize) -> Result<(u64, usize, usize), DiskError> {
        let out = DiskError {
            what: "a range past the end of the device",
            status: Status::INVALID_PARAMETER,
        };
        let end = offset.checked_add(len as u64).ok_or(out)?;
        if end > self.len {
            return Err(out);
        }
        let (start, end) = (self.base + offset, self.base + end);
        let first = start / self.block;
        let last = end.div_ceil(self.block);
        let bytes = usize::try_from((last - first) * self.block).map_err(|_| out)?;
        Ok((first, (start - first * self.block) as usize, bytes))
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.io
            .read_blocks(self.media_id, lba, buf)
            .map_err(|e| DiskError {
                what: "reading the disk",
                status: e.status(),
            })
    }
}

/// A buffer of `len` bytes at an address aligned to `align` (a power of
/// two, as IoAlign is), without unsafe: a larger vector and the aligned
/// window inside it.
struct Bounce {
    vec: Vec<u8>,
    at: usize,
    len: usize,
}

impl Bounce {
    fn new(len: usize, align: usize) -> Bounce {
        let vec = vec![0u8; len + align];
        let at = vec.as_ptr().align_offset(align).min(align);
        Bounce { vec, at, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.vec[self.at..self.at + self.len]
    }
}

impl bootctl_core::device::BlockDevice for Disk {
    type Error = DiskError;

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let (lba, skip, bytes) = self.span(offset, buf.len())?;
        let mut bounce = Bounce::new(bytes, self.align);
        self.read_blocks(lba, bounce.get())?;
        buf.copy_from_slice(&bounce.get()[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let (lba, skip, bytes) = self.span(offset, buf.len())?;
        let mut bounce = Bounce::new(bytes, self.align);
        if skip != 0 || bytes != buf.len() {
            self.read_blocks(lba, bounce.get())?;
        }
        bounce.get()[skip..skip + buf.len()].copy_from_slice(buf);
        let media_id = self.media_id;
        self.io
            .write_blocks(media_id, lba, bounce.get())
            .map_err(|e| DiskError {
                what: "writing the disk",
                status: e.status(),
            })
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.io.flush_blocks().map_err(|e| DiskError {
            what: "flushing the disk",
            status: e.status(),
        })
    }

    fn size(&self) -> u64 {
        self.len
    }
}
