//! The memory a reader spends on chunks in flight, bounded in bytes.
//!
//! Every buffer of the read pipeline (a chunk's stored frame, its decoded
//! bytes) comes from one [`BufferPool`] whose idle and busy buffers
//! together never exceed its limit. Buffers are reused, not freed: a fresh
//! 4 MiB buffer per chunk costs a thousand page faults, a reused one none.
//!
//! Only the pipeline's producer takes buffers, and it takes everything a
//! chunk needs before handing the chunk on, in the chunks' order. A chunk
//! that has its buffers can always finish, and finishing gives them back,
//! so the producer's wait always ends, provided one chunk alone fits the
//! limit: [`chunk_memory`] is what the reader checks first.
//!
//! The reader asks for two sizes only (the largest frame, the largest
//! chunk), so that an idle buffer of the size asked for is nearly always
//! there and nothing is freed and allocated again.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The memory an appliance's install may use at its peak, whole process,
/// unless it is told otherwise (`updater install --memory`): what a 128 MiB
/// appliance can spare beside its application. `image-tools build` warns
/// when a bundle's chunks would not fit it.
pub const DEVICE_MEMORY: u64 = 16 << 20;

/// A byte-bounded pool of reusable buffers.
pub struct BufferPool {
    limit: u64,
    inner: Mutex<Inner>,
    returned: Condvar,
}

struct Inner {
    /// Capacity of every buffer handed out or idle.
    allocated: u64,
    /// No more buffers are handed out: the reader stopped.
    closed: bool,
    idle: Vec<Vec<u8>>,
    peak: u64,
}

impl BufferPool {
    pub fn new(limit: u64) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            limit,
            inner: Mutex::new(Inner {
                allocated: 0,
                closed: false,
                idle: Vec::new(),
                peak: 0,
            }),
            returned: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves the counts as they were: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer with room for `len` bytes. Waits while the pool is
    /// at its limit with every buffer busy; the caller makes sure that
    /// `len` alone fits the limit. `None` once the pool is closed.
    pub fn get(self: &Arc<Self>, len: usize) -> Option<PoolBuf> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            // An idle buffer of this very size; else a new one while there
            // is room, rather than taking a larger buffer that a later
            // request of its size would then have to allocate again; else
            // the smallest larger one.
            let exact = inner.idle.iter().position(|b| b.capacity() == len);
            let room = inner.allocated + len as u64 <= self.limit;
            let fit = exact.or_else(|| {
                (!room)
                    .then(|| {
                        (0..inner.idle.len())
                            .filter(|&i| inner.idle[i].capacity() >= len)
                            .min_by_key(|&i| inner.idle[i].capacity())
                    })
                    .flatten()
            });
            if let Some(i) = fit {
                let mut buf = inner.idle.swap_remove(i);
                buf.clear();
                return Some(self.hand_out(buf));
            }
            if room {
                inner.allocated += len as u64;
                inner.peak = inner.peak.max(inner.allocated);
                return Some(self.hand_out(Vec::with_capacity(len)));
            }
            // Idle buffers too small for this one make room for it.
            if let Some(small) = inner.idle.pop() {
                inner.allocated -= small.capacity() as u64;
                continue;
            }
            inner = self.returned.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn hand_out(self: &Arc<Self>, buf: Vec<u8>) -> PoolBuf {
        PoolBuf {
            buf,
            pool: Some(Arc::clone(self)),
        }
    }

    fn put(&self, buf: Vec<u8>) {
        let mut inner = self.lock();
        inner.idle.push(buf);
        drop(inner);
        self.returned.notify_all();
    }

    /// Wakes every waiting taker with `None`, and hands out nothing more.
    pub fn close(&self) {
        self.lock().closed = true;
        self.returned.notify_all();
    }

    /// The most the pool ever held at once, in bytes.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }
}

/// A buffer of a [`BufferPool`], back in the pool when dropped.
#[derive(Default)]
pub struct PoolBuf {
    buf: Vec<u8>,
    pool: Option<Arc<BufferPool>>,
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolBuf({} bytes)", self.buf.len())
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.buf));
        }
    }
}

/// The sizes of the reader's buffers for `images`: the largest stored
/// frame and the largest decoded chunk (zero chunks need neither).
pub fn buffer_sizes(images: &[super::ImageSpec]) -> (u64, u64) {
    let stored = images.iter().flat_map(|image| {
        image
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.zero)
            .map(|(i, c)| (c.length, image.chunk_len(i)))
    });
    stored.fold((0, 0), |(f, d), (frame, decoded)| {
        (f.max(frame), d.max(decoded))
    })
}

/// What an updater holds besides its chunk buffers, about: measured at
/// 0.8 MiB before an install starts, plus its reserve for two workers
/// (docs/updater.md, "Memory"). For warnings at build time only; the
/// device measures itself.
pub const DEVICE_OVERHEAD: u64 = 3 << 20;

/// What one chunk in flight holds: a frame buffer and a decoded buffer. A
/// memory limit below this cannot read the bundle at all.
pub fn chunk_memory(images: &[super::ImageSpec]) -> u64 {
    let (frame, decoded) = buffer_sizes(images);
    frame + decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_limit_holds_and_a_waiting_taker_gets_a_returned_buffer() {
        let pool = BufferPool::new(10);
        let a = pool.get(6).unwrap();
        let b = pool.get(4).unwrap();
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.get(5).map(|b| b.capacity()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "a buffer past the limit was handed out"
        );
        drop(a);
        assert!(waiter.join().unwrap() >= Some(5));
        assert_eq!(pool.peak(), 10);
        // Closing wakes a taker that waits with nothing.
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.get(10).is_none())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        pool.close();
        assert!(waiter.join().unwrap());
        drop(b);
        // Two idle buffers too small for 9 bytes are dropped to make room.
        let pool2 = BufferPool::new(10);
        drop((pool2.get(4), pool2.get(4)));
        assert_eq!(pool2.get(9).map(|b| b.capacity()), Some(9));
        assert!(pool2.peak() <= 10);
    }
}
