//! A disk that loses power: after `budget` sectors have been written, the
//! write in progress stops at that sector boundary and every later write
//! and sync fails, as on a machine whose power is cut. The bytes live in
//! shared storage, so a test reads what survived after the cut.

use bootctl::device::BlockDevice;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;

/// The bytes behind a [`CutDevice`]: a whole disk in memory, or a sparse
/// one (only its ends kept) for disks too large to hold.
pub trait Storage {
    /// `len` bytes at `offset`, or None past the end.
    fn region(&mut self, offset: usize, len: usize) -> Option<&mut [u8]>;
    fn size(&self) -> usize;
}

impl Storage for Vec<u8> {
    fn region(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        self.get_mut(offset..offset.checked_add(len)?)
    }
    fn size(&self) -> usize {
        self.len()
    }
}

pub struct CutDevice<S: Storage> {
    pub storage: Rc<RefCell<S>>,
    pub sector: usize,
    /// Sectors that reach the disk before the power is cut.
    pub budget: usize,
    /// Sectors written so far, shared so the test sees it after the cut.
    pub written: Rc<Cell<usize>>,
}

impl<S: Storage> CutDevice<S> {
    pub fn new(storage: Rc<RefCell<S>>, sector: u64, budget: usize) -> CutDevice<S> {
        CutDevice {
            storage,
            sector: sector as usize,
            budget,
            written: Rc::new(Cell::new(0)),
        }
    }

    fn out_of_range(offset: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("offset {offset} is past the disk's end"),
        )
    }
}

impl<S: Storage> BlockDevice for CutDevice<S> {
    type Error = io::Error;

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut storage = self.storage.borrow_mut();
        let region = storage
            .region(offset as usize, buf.len())
            .ok_or_else(|| Self::out_of_range(offset))?;
        buf.copy_from_slice(region);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert_eq!(
            offset as usize % self.sector,
            0,
            "unaligned write at {offset}"
        );
        for (i, chunk) in buf.chunks(self.sector).enumerate() {
            if self.written.get() == self.budget {
                return Err(io::Error::other("power cut"));
            }
            let at = offset as usize + i * self.sector;
            let mut storage = self.storage.borrow_mut();
            let region = storage
                .region(at, chunk.len())
                .ok_or_else(|| Self::out_of_range(at as u64))?;
            region.copy_from_slice(chunk);
            self.written.set(self.written.get() + 1);
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.written.get() == self.budget {
            return Err(io::Error::other("power cut"));
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.storage.borrow().size() as u64
    }
}
