//! The disk as the flip routine sees it: positioned reads and writes,
//! a data sync, a size and a logical sector size.
//!
//! It is a trait so that the crash tests can put a disk underneath that
//! stops accepting writes after N sectors; the real one is a file or a
//! block device.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};

pub trait BlockDevice {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
}

/// A disk image file or a block device.
pub struct FileDevice {
    pub file: File,
    size: u64,
}

impl FileDevice {
    /// Wraps an open file, measuring its size (a block device's by seeking
    /// to its end, which is what BLKGETSIZE64 says, without an ioctl).
    pub fn new(file: File) -> io::Result<FileDevice> {
        let meta = file.metadata()?;
        let size = if meta.file_type().is_block_device() {
            // Reads and writes are positioned (pread/pwrite): the offset
            // this moves is never used.
            io::Seek::seek(&mut &file, io::SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(FileDevice { file, size })
    }

    /// The logical sector size the kernel reports for a block device; `None`
    /// for a regular file, whose sector size must be found from its content.
    pub fn kernel_sector_size(&self) -> io::Result<Option<u64>> {
        if !self.file.metadata()?.file_type().is_block_device() {
            return Ok(None);
        }
        let size = rustix::fs::ioctl_blksszget(&self.file)?;
        Ok(Some(u64::from(size)))
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// A disk held in memory; the crash tests wrap it to cut writes short.
#[derive(Clone, Debug, Default)]
pub struct MemDevice(pub Vec<u8>);

impl BlockDevice for MemDevice {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .0
            .get(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::WriteZero)?;
        let dst = self
            .0
            .get_mut(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::WriteZero)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}
