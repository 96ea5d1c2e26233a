//! The install's memory budget (docs/updater.md, "Memory"): what the
//! process may hold at its peak, and the running slot mapped as a delta's
//! base so that its references cost page cache rather than memory.
//!
//! The budget is the process's anonymous memory: what it allocates, which
//! the kernel cannot drop. Its code and a delta's mapped base are page
//! cache, shared and reclaimable, and are reported apart
//! (`updater/bench/install.sh` prints both). What the updater holds before
//! the pipeline starts (the manifest, the keyring, the input buffer) is
//! measured, a reserve covers what every install holds besides chunk
//! buffers (worker stacks and decoder contexts, the read-back buffer), and
//! the rest bounds the reader's [`switchback_bundle::budget::BufferPool`].

use crate::error::UpdateError;
use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;
use switchback_bundle::delta::{Base, Window};

/// An install's memory when neither `--memory` nor `install_memory` says.
pub const DEFAULT_MEMORY: u64 = switchback_bundle::budget::DEVICE_MEMORY;

/// What an install holds besides its chunk buffers and what it held
/// before: the read-back buffer (1 MiB) and, per worker, a decoder context,
/// a stack and the allocator's arena. Measured with
/// `updater/bench/install.sh` (2 workers at 20M peaked 1.7 MiB above the
/// chunk buffers); see docs/updater.md.
const RESERVE: u64 = 1 << 20;
const PER_WORKER: u64 = 512 << 10;

/// How the install spends its memory: the chunk buffers' limit and the
/// workers that can keep busy within it.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub buffers: u64,
    pub threads: usize,
}

/// The process's resident anonymous memory now, in bytes (`RssAnon` of
/// `/proc/self/status`); `None` where the kernel does not say.
pub fn anonymous() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as u64)
}

/// The bytes the reader's chunk buffers may hold for an install of
/// `memory` bytes in all, and as many of `threads` workers as have a chunk
/// in flight each (more would only wait, each with its own reserve); or
/// the refusal that names what the bundle needs and the ways out. `kept`
/// is what the install will hold beside the buffers (copies of the signed
/// head, migration executables). Checked before anything is written.
pub fn plan(memory: u64, chunk_need: u64, kept: u64, threads: usize) -> Result<Plan> {
    // Large buffers come from mmap and go back to the system when freed:
    // with glibc's default the threshold rises after the first free, and
    // freed chunk buffers would stay resident inside the heap.
    // SAFETY: mallopt only sets an allocator parameter.
    #[cfg(target_env = "gnu")]
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    // Without /proc, assume the most a start-up has been seen to hold.
    let held = anonymous().unwrap_or(4 << 20) + kept + RESERVE;
    let room = memory.saturating_sub(held);
    let fit = (room / (chunk_need + PER_WORKER).max(1)).max(1);
    let threads = (threads.max(1) as u64).min(fit);
    let buffers = room.saturating_sub(threads * PER_WORKER);
    log::debug!("memory: {held} bytes held with the reserve, {buffers} for chunk buffers, {chunk_need} per chunk, {threads} worker(s)");
    if buffers < chunk_need {
        return Err(UpdateError::OverMemory {
            need: held + PER_WORKER + chunk_need,
            memory,
            chunk_need,
        }
        .into());
    }
    Ok(Plan {
        buffers,
        threads: threads as usize,
    })
}

/// The running slot, mapped read-only, as the base of a delta.
pub struct MappedBase {
    map: memmap2::Mmap,
    file: File,
    /// Where the slot starts on the disk.
    offset: u64,
}

impl MappedBase {
    /// Maps `len` bytes of `disk` from `offset`.
    pub fn map(disk: &Path, offset: u64, len: u64) -> Result<MappedBase> {
        let file = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
        // SAFETY: a read-only map; the slot changing under it can only make
        // decoded chunks fail their hash check.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(len as usize)
                .map(&file)
        }
        .with_context(|| format!("mapping {len} bytes at {offset} of {}", disk.display()))?;
        Ok(MappedBase { map, file, offset })
    }
}

impl Base for MappedBase {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn window(&self) -> Box<dyn Window + '_> {
        Box::new(MappedWindow {
            base: self,
            region: None,
            copy: Vec::new(),
        })
    }
}

/// One worker's references: the base's ranges mapped side by side into a
/// stretch of address space reserved for it, so zstd sees them as one
/// buffer without a byte being copied. Ranges that do not start on a page
/// (no writer of ours makes them) are copied instead.
struct MappedWindow<'a> {
    base: &'a MappedBase,
    /// Reserved address space of `MAX_REF_LEN` plus a page.
    region: Option<(std::ptr::NonNull<std::ffi::c_void>, usize)>,
    copy: Vec<u8>,
}

impl MappedWindow<'_> {
    fn reserve(&mut self) -> Result<(std::ptr::NonNull<std::ffi::c_void>, usize), String> {
        if let Some(r) = self.region {
            return Ok(r);
        }
        let len = switchback_bundle::MAX_REF_LEN as usize + page_size() as usize;
        // SAFETY: a fresh private mapping with no access: address space
        // only, nothing resident.
        let at = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                std::num::NonZeroUsize::new(len).ok_or("empty reservation")?,
                nix::sys::mman::ProtFlags::PROT_NONE,
                nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| format!("reserving address space for references: {e}"))?;
        self.region = Some((at, len));
        Ok((at, len))
    }
}

impl Window for MappedWindow<'_> {
    fn reference(&mut self, ranges: &[[u64; 2]]) -> Result<&[u8], String> {
        let page = page_size();
        let total: u64 = ranges.iter().map(|r| r[1]).sum();
        let base_len = self.base.map.len() as u64;
        let in_base = ranges
            .iter()
            .all(|&[start, len]| start.checked_add(len).is_some_and(|end| end <= base_len));
        if !in_base {
            return Err("a reference range lies outside the base".into());
        }
        let (last, whole) = ranges
            .split_last()
            .map_or((None, &[][..]), |(l, w)| (Some(l), w));
        let mappable = (self.base.offset % page == 0)
            && ranges.iter().all(|r| r[0] % page == 0)
            && whole.iter().all(|r| r[1] % page == 0)
            && last.is_none_or(|r| r[1] > 0);
        if !mappable || total == 0 {
            switchback_bundle::delta::assemble(&self.base.map, ranges, &mut self.copy);
            return Ok(&self.copy);
        }
        let (region, region_len) = self.reserve()?;
        if total as usize > region_len {
            return Err(format!("a reference of {total} bytes is over the limit"));
        }
        let mut at = 0usize;
        for &[start, len] in ranges {
            if len == 0 {
                continue;
            }
            // SAFETY: the target lies inside this window's reservation
            // (checked above), which nothing else uses; MAP_FIXED replaces
            // what the previous chunk mapped there.
            unsafe {
                let dest = region.as_ptr().cast::<u8>().add(at) as usize;
                nix::sys::mman::mmap(
                    std::num::NonZeroUsize::new(dest),
                    std::num::NonZeroUsize::new(len as usize).ok_or("empty range")?,
                    nix::sys::mman::ProtFlags::PROT_READ,
                    nix::sys::mman::MapFlags::MAP_SHARED | nix::sys::mman::MapFlags::MAP_FIXED,
                    &self.base.file,
                    (self.base.offset + start) as i64,
                )
                .map_err(|e| format!("mapping base range {start}+{len}: {e}"))?;
            }
            at += len as usize;
        }
        // SAFETY: `total` bytes from the region's start are mapped above,
        // read-only, and stay so until the next call takes `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts(region.as_ptr().cast::<u8>(), total as usize) })
    }
}

impl Drop for MappedWindow<'_> {
    fn drop(&mut self) {
        if let Some((at, len)) = self.region.take() {
            // SAFETY: the reservation made in `reserve`, unmapped once.
            let _ = unsafe { nix::sys::mman::munmap(at, len) };
        }
    }
}
