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

nix::ioctl_read_bad!(blksszget, 0x1268, nix::libc::c_int);
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

impl FileDevice {
    /// Wraps an open file, measuring its size (BLKGETSIZE64 for a block device).
    pub fn new(file: File) -> io::Result<FileDevice> {
        let meta = file.metadata()?;
        let size = if meta.file_type().is_block_device() {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
            unsafe { blkgetsize64(std::os::fd::AsRawFd::as_raw_fd(&file), &mut size) }
                .map_err(io::Error::from)?;
            size
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
        let mut size: nix::libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer we pass.
        unsafe { blksszget(std::os::fd::AsRawFd::as_raw_fd(&self.file), &mut size) }
            .map_err(io::Error::from)?;
        Ok(Some(size as u64))
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
