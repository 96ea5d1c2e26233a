//! The disk as the flip routine sees it: positioned reads and writes,
//! a data sync, a size and a logical sector size.
//!
//! The trait and the in-memory disk are `bootctl_core`'s, shared with the
//! UEFI boot stage; what needs std lives here: files and block devices, and
//! every device's errors seen as the `io::Error` that [`crate::Error::Io`]
//! carries.

pub use bootctl_core::device::{BlockDevice, MemDevice, MemError};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};

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
    type Error = io::Error;

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

/// A device error as an `io::Error`, so that [`crate::Disk`] reports every
/// device's failures the same way.
pub trait IntoIoError {
    fn into_io_error(self) -> io::Error;
}

impl IntoIoError for io::Error {
    fn into_io_error(self) -> io::Error {
        self
    }
}

/// The kinds the in-memory disk reported when it spoke `io::Error` itself.
impl IntoIoError for MemError {
    fn into_io_error(self) -> io::Error {
        match self {
            MemError::ReadPastEnd => io::ErrorKind::UnexpectedEof.into(),
            MemError::WritePastEnd => io::ErrorKind::WriteZero.into(),
        }
    }
}

/// Any device whose errors become `io::Error`s: what [`crate::Disk`] holds.
pub struct IoDevice<D: ?Sized>(pub Box<D>);

impl<D> BlockDevice for IoDevice<D>
where
    D: BlockDevice + ?Sized,
    D::Error: IntoIoError,
{
    type Error = io::Error;

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0
            .read_at(buf, offset)
            .map_err(IntoIoError::into_io_error)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0
            .write_at(buf, offset)
            .map_err(IntoIoError::into_io_error)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync().map_err(IntoIoError::into_io_error)
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
}
