//! Loading the chosen slot's kernel for the boot stage's kexec: the part of
//! the boot stage that depends on the machine and its kernel.
//!
//! `kexec_file_load` first: the kernel reads the files itself, places them
//! and, with `KEXEC_SIG`, checks the new kernel's signature, which is the
//! only kexec a kernel locked down under Secure Boot allows. Debian's arm64
//! kernel has no `KEXEC_FILE`, only `kexec_load`, which takes the memory
//! image ready-made. On arm64 this module makes it, as kexec-tools does
//! (docs/boot-flow.md, "Starting the slot's kernel"):
//!
//! - the kernel Image at a 2 MiB-aligned base plus its `text_offset`,
//!   sized by its header's `image_size` (BSS included);
//! - the slot's initramfs;
//! - the running kernel's device tree (`/sys/firmware/fdt`, as firmware
//!   gave it, EFI tables included) with `/chosen` given the slot's command
//!   line, the initramfs's place and fresh KASLR and RNG seeds;
//! - a 40-byte purgatory: the kernel's relocation code jumps to the entry
//!   point with `x0` = 0 (it knows no device tree for `kexec_load`), so
//!   the entry is six instructions and two literals that load the device tree's address
//!   into `x0`, clear `x1`–`x3` and branch to the Image (the arm64 boot
//!   protocol, Documentation/arm64/booting.rst).
//!
//! Each goes into RAM that `/proc/iomem` shows as "System RAM" and not
//! reserved inside it. A locked-down kernel refuses `kexec_load` (EPERM):
//! the console line and the record say so.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;

/// How the kernel was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    File,
    Load,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::File => "kexec_file_load",
            Method::Load => "kexec_load",
        })
    }
}

/// Why the kernel could not be loaded: the errno, when the kernel gave
/// one, and what failed.
#[derive(Debug, Clone)]
pub struct KexecError {
    pub errno: i32,
    pub detail: String,
}

fn error(errno: i32, detail: impl Into<String>) -> KexecError {
    KexecError {
        errno,
        detail: detail.into(),
    }
}

/// Loads `kernel` (with `initrd`) to be started by `reboot(RB_KEXEC)`.
pub fn load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<Method, KexecError> {
    let c = CString::new(cmdline).map_err(|_| error(0, "a NUL in the command line"))?;
    let flags: nix::libc::c_ulong = if initrd.is_some() {
        0
    } else {
        4 /* KEXEC_FILE_NO_INITRAMFS */
    };
    // SAFETY: kexec_file_load reads the two descriptors and the
    // NUL-terminated command line of the given length.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.map_or(-1, |f| f.as_raw_fd()),
            c.as_bytes_with_nul().len(),
            c.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        return Ok(Method::File);
    }
    let e = std::io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(0);
    if errno != nix::libc::ENOSYS || !cfg!(target_arch = "aarch64") {
        return Err(error(errno, format!("kexec_file_load: {e}")));
    }
    load_arm64(kernel, initrd, cmdline)
}

fn read_all(mut f: &File, what: &str) -> Result<Vec<u8>, KexecError> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| {
        error(
            e.raw_os_error().unwrap_or(0),
            format!("reading {what}: {e}"),
        )
    })?;
    Ok(buf)
}

fn load_arm64(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<Method, KexecError> {
    let image = read_all(kernel, "the kernel")?;
    let initrd = initrd.map(|f| read_all(f, "the initramfs")).transpose()?;
    let fdt = std::fs::read("/sys/firmware/fdt").map_err(|e| {
        error(
            e.raw_os_error().unwrap_or(0),
            format!("reading the device tree /sys/firmware/fdt: {e}"),
        )
    })?;
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| {
        error(
            e.raw_os_error().unwrap_or(0),
            format!("reading /proc/iomem: {e}"),
        )
    })?;
    let mut seeds = [0u8; 8 + 64];
    let got = rustix::rand::getrandom(&mut seeds[..], rustix::rand::GetRandomFlags::empty());
    if got != Ok(seeds.len()) {
        return Err(error(0, "getrandom gave no seed for the next kernel"));
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let segments = arm64_segments(
        &image,
        initrd.as_deref(),
        &fdt,
        cmdline,
        &free_ram(&iomem),
        page,
        &seeds,
    )
    .map_err(|d| error(0, d))?;
    let raw: Vec<nix::libc::c_ulong> = segments
        .segments
        .iter()
        .flat_map(|s| {
            [
                s.data.as_ptr() as nix::libc::c_ulong,
                s.data.len() as nix::libc::c_ulong,
                s.mem as nix::libc::c_ulong,
                s.memsz as nix::libc::c_ulong,
            ]
        })
        .collect();
    const KEXEC_ARCH_AARCH64: nix::libc::c_ulong = 183 << 16;
    // SAFETY: `raw` is an array of struct kexec_segment (four words each:
    // buf, bufsz, mem, memsz) whose buffers live in `segments` until the
    // call returns; the kernel copies them.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kexec_load,
            segments.entry as nix::libc::c_ulong,
            segments.segments.len() as nix::libc::c_ulong,
            raw.as_ptr(),
            KEXEC_ARCH_AARCH64,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let errno = e.raw_os_error().unwrap_or(0);
        let why = if errno == nix::libc::EPERM {
            " (a kernel locked down under Secure Boot refuses kexec_load: the boot stage's kernel needs KEXEC_FILE and KEXEC_SIG)"
        } else {
            ""
        };
        return Err(error(
            errno,
            format!("kexec_load (this kernel has no kexec_file_load): {e}{why}"),
        ));
    }
    Ok(Method::Load)
}

/// One piece of the next kernel's memory image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub data: Vec<u8>,
    /// Physical address, page-aligned.
    pub mem: u64,
    /// Bytes reserved at `mem`, page-aligned, at least `data.len()`.
    pub memsz: u64,
}

#[derive(Debug, Clone)]
pub struct Segments {
    pub segments: Vec<Segment>,
    /// Where the CPU starts: the purgatory.
    pub entry: u64,
}

/// The RAM the next kernel's pieces may go to, from `/proc/iomem`: each
/// top-level "System RAM" range without what is marked inside it (the
/// firmware's and the kernel's reservations, the device tree, EFI tables),
/// except the running kernel's own image, which the kexec replaces.
/// Half-open ranges, ascending.
pub fn free_ram(iomem: &str) -> Vec<(u64, u64)> {
    let parse = |line: &str| -> Option<(u64, u64, String)> {
        let (range, name) = line.trim().split_once(" : ")?;
        let (a, b) = range.split_once('-')?;
        let a = u64::from_str_radix(a, 16).ok()?;
        let b = u64::from_str_radix(b, 16).ok()?.checked_add(1)?;
        (a < b).then(|| (a, b, name.trim().to_string()))
    };
    let mut ram = Vec::new();
    let mut taken = Vec::new();
    for line in iomem.lines() {
        let Some((a, b, name)) = parse(line) else {
            continue;
        };
        let nested = line.starts_with(' ');
        if !nested && name == "System RAM" {
            ram.push((a, b));
        } else if nested && !name.starts_with("Kernel ") {
            taken.push((a, b));
        }
    }
    for (ta, tb) in taken {
        ram = ram
            .into_iter()
            .flat_map(|(a, b)| {
                if tb <= a || ta >= b {
                    vec![(a, b)]
                } else {
                    [(a, ta), (tb, b)]
                        .into_iter()
                        .filter(|(x, y)| x < y)
                        .collect()
                }
            })
            .collect();
    }
    ram.sort();
    ram
}

/// Takes `size` bytes at `align` (plus `offset`) from the first free range
/// that holds them, and returns the address of the piece's start.
fn take(free: &mut Vec<(u64, u64)>, size: u64, align: u64, offset: u64) -> Option<u64> {
    for i in 0..free.len() {
        let (a, b) = free[i];
        let base = a.checked_next_multiple_of(align)?;
        let start = base.checked_add(offset)?;
        let end = start.checked_add(size)?;
        if start >= a && end <= b {
            free.remove(i);
            for piece in [(a, start), (end, b)] {
                if piece.0 < piece.1 {
                    free.push(piece);
                }
            }
            free.sort();
            return Some(start);
        }
    }
    None
}

const MIB_2: u64 = 2 << 20;

/// The arm64 purgatory: `x0` = the device tree, `x1`–`x3` = 0, jump to the
/// kernel. Two literals after four instructions and the branch.
pub fn arm64_purgatory(dtb: u64, kernel: u64) -> [u8; 40] {
    let words: [u32; 6] = [
        0x5800_00c0, // ldr x0, .+0x18 (dtb)
        0x5800_00e4, // ldr x4, .+0x1c (kernel)
        0xaa1f_03e1, // mov x1, xzr
        0xaa1f_03e2, // mov x2, xzr
        0xaa1f_03e3, // mov x3, xzr
        0xd61f_0080, // br x4
    ];
    let mut out = [0u8; 40];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out[24..32].copy_from_slice(&dtb.to_le_bytes());
    out[32..40].copy_from_slice(&kernel.to_le_bytes());
    out
}

/// The next kernel's memory image on arm64: Image, initramfs, device tree
/// and purgatory placed in `free` RAM. `seeds` holds 8 bytes of KASLR seed
/// and 64 of RNG seed for the next kernel.
pub fn arm64_segments(
    image: &[u8],
    initrd: Option<&[u8]>,
    fdt: &[u8],
    cmdline: &str,
    free: &[(u64, u64)],
    page: u64,
    seeds: &[u8; 72],
) -> Result<Segments, String> {
    if image.get(0x38..0x3c) != Some(b"ARM\x64") {
        return Err("the slot's kernel is not an arm64 Image (no ARM\\x64 magic)".into());
    }
    let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap_or([0; 8]));
    let (text_offset, image_size) = (word(8), word(16));
    if image_size == 0 || image_size < image.len() as u64 {
        return Err(format!(
            "the slot's kernel Image gives no usable image_size ({image_size} for a {}-byte file)",
            image.len()
        ));
    }
    let round = |n: u64| n.div_ceil(page) * page;
    let mut free = free.to_vec();
    let no_room = |what: &str, size: u64| {
        format!("no free RAM in /proc/iomem holds the next kernel's {what} ({size} bytes)")
    };
    let kernel_at = take(&mut free, round(image_size), MIB_2, text_offset)
        .ok_or_else(|| no_room("Image", image_size))?;
    let mut segments = vec![Segment {
        data: image.to_vec(),
        mem: kernel_at,
        memsz: round(image_size),
    }];
    let mut chosen: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("bootargs", Some([cmdline.as_bytes(), b"\0"].concat())),
        ("kaslr-seed", Some(seeds[..8].to_vec())),
        ("rng-seed", Some(seeds[8..].to_vec())),
        // A crash kernel's; never for a slot's kernel.
        ("linux,elfcorehdr", None),
        ("linux,usable-memory-range", None),
    ];
    match initrd {
        Some(initrd) => {
            let len = initrd.len() as u64;
            let at =
                take(&mut free, round(len), page, 0).ok_or_else(|| no_room("initramfs", len))?;
            segments.push(Segment {
                data: initrd.to_vec(),
                mem: at,
                memsz: round(len),
            });
            chosen.push(("linux,initrd-start", Some(at.to_be_bytes().to_vec())));
            chosen.push(("linux,initrd-end", Some((at + len).to_be_bytes().to_vec())));
        }
        None => {
            chosen.push(("linux,initrd-start", None));
            chosen.push(("linux,initrd-end", None));
        }
    }
    let dtb = set_chosen(fdt, &chosen)?;
    let dtb_len = dtb.len() as u64;
    if dtb_len > MIB_2 {
        return Err(format!(
            "the device tree is {dtb_len} bytes; arm64 takes at most 2 MiB"
        ));
    }
    // Within one 2 MiB block: the kernel maps it with one block mapping.
    let dtb_at =
        take(&mut free, round(dtb_len), MIB_2, 0).ok_or_else(|| no_room("device tree", dtb_len))?;
    segments.push(Segment {
        data: dtb,
        mem: dtb_at,
        memsz: round(dtb_len),
    });
    let purgatory_at = take(&mut free, page, page, 0).ok_or_else(|| no_room("entry", page))?;
    segments.push(Segment {
        data: arm64_purgatory(dtb_at, kernel_at).to_vec(),
        mem: purgatory_at,
        memsz: page,
    });
    Ok(Segments {
        segments,
        entry: purgatory_at,
    })
}

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

fn be32(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at.wrapping_add(4))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| format!("the device tree ends inside the word at {at}"))
}

/// The offset of `name` in the strings block, added when not there.
fn intern(strings: &mut Vec<u8>, name: &str) -> u32 {
    let needle = [name.as_bytes(), b"\0"].concat();
    let mut at = 0;
    while at < strings.len() {
        let end = strings[at..]
            .iter()
            .position(|&b| b == 0)
            .map_or(strings.len(), |e| at + e + 1);
        if strings[at..end] == needle[..] {
            return at as u32;
        }
        at = end;
    }
    let off = strings.len() as u32;
    strings.extend_from_slice(&needle);
    off
}

/// The `Some` properties of `props`, as structure block tokens.
fn emit_props(out: &mut Vec<u8>, strings: &mut Vec<u8>, props: &[(&str, Option<Vec<u8>>)]) {
    for (name, value) in props {
        if let Some(v) = value {
            out.extend_from_slice(&FDT_PROP.to_be_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&intern(strings, name).to_be_bytes());
            out.extend_from_slice(v);
            pad4(out);
        }
    }
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

/// A copy of the flattened device tree `fdt` whose `/chosen` node has each
/// of `props` set (`Some`) or removed (`None`); `/chosen` is made when the
/// tree has none. Everything else is copied token by token. (The `fdt`
/// crate reads trees but does not write them; rebuilding the whole tree
/// with a writer crate to change one node would rewrite every node.)
pub fn set_chosen(fdt: &[u8], props: &[(&str, Option<Vec<u8>>)]) -> Result<Vec<u8>, String> {
    if be32(fdt, 0)? != FDT_MAGIC {
        return Err("/sys/firmware/fdt is not a flattened device tree".into());
    }
    let total = be32(fdt, 4)? as usize;
    let (off_struct, off_strings, off_rsv) = (
        be32(fdt, 8)? as usize,
        be32(fdt, 12)? as usize,
        be32(fdt, 16)? as usize,
    );
    let boot_cpu = be32(fdt, 28)?;
    let (size_strings, size_struct) = (be32(fdt, 32)? as usize, be32(fdt, 36)? as usize);
    let block = |at: usize, len: usize| {
        at.checked_add(len)
            .filter(|&end| end <= total.min(fdt.len()))
            .map(|end| &fdt[at..end])
            .ok_or_else(|| "the device tree's blocks lie outside it".to_string())
    };
    let structure = block(off_struct, size_struct)?;
    let mut strings = block(off_strings, size_strings)?.to_vec();
    let mut rsv = Vec::new();
    for i in 0.. {
        let entry = block(off_rsv + 16 * i, 16)?;
        rsv.extend_from_slice(entry);
        if entry.iter().all(|&b| b == 0) {
            break;
        }
    }
    let name_at = |strings: &[u8], off: usize| -> Result<String, String> {
        let s = strings
            .get(off..)
            .ok_or("a property name outside the strings")?;
        let end = s
            .iter()
            .position(|&b| b == 0)
            .ok_or("an unterminated name")?;
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut out = Vec::with_capacity(structure.len() + 256);
    let mut depth = 0usize;
    let mut chosen_depth: Option<usize> = None;
    let mut chosen_seen = false;
    let mut at = 0usize;
    loop {
        let token = be32(structure, at)?;
        let start = at;
        at += 4;
        match token {
            FDT_BEGIN_NODE => {
                let rest = structure.get(at..).unwrap_or_default();
                let len = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or("an unterminated node name")?;
                let name = &rest[..len];
                at = (at + len + 1).div_ceil(4) * 4;
                depth += 1;
                if depth == 2 && name == b"chosen" {
                    chosen_depth = Some(depth);
                    chosen_seen = true;
                }
                out.extend_from_slice(structure.get(start..at).ok_or("a cut node name")?);
            }
            FDT_END_NODE => {
                if chosen_depth == Some(depth) {
                    emit_props(&mut out, &mut strings, props);
                    chosen_depth = None;
                } else if depth == 1 && !chosen_seen {
                    out.extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
                    out.extend_from_slice(b"chosen\0\0");
                    emit_props(&mut out, &mut strings, props);
                    out.extend_from_slice(&FDT_END_NODE.to_be_bytes());
                }
                depth = depth.checked_sub(1).ok_or("an unbalanced node end")?;
                out.extend_from_slice(&FDT_END_NODE.to_be_bytes());
            }
            FDT_PROP => {
                let len = be32(structure, at)? as usize;
                let nameoff = be32(structure, at + 4)? as usize;
                at = (at + 8 + len).div_ceil(4) * 4;
                let whole = structure.get(start..at).ok_or("a cut property")?;
                let name = name_at(&strings, nameoff)?;
                let replaced =
                    chosen_depth == Some(depth) && props.iter().any(|(n, _)| *n == name.as_str());
                if !replaced {
                    out.extend_from_slice(whole);
                }
            }
            FDT_NOP => {}
            FDT_END => {
                out.extend_from_slice(&FDT_END.to_be_bytes());
                break;
            }
            t => return Err(format!("an unknown device tree token {t:#x} at {start}")),
        }
    }
    if depth != 0 {
        return Err("the device tree ends inside a node".into());
    }
    let header = 40usize;
    let rsv_at = header.next_multiple_of(8);
    let struct_at = rsv_at + rsv.len();
    let strings_at = struct_at + out.len();
    let total = strings_at + strings.len();
    let mut tree = Vec::with_capacity(total);
    for word in [
        FDT_MAGIC,
        total as u32,
        struct_at as u32,
        strings_at as u32,
        rsv_at as u32,
        17,
        16,
        boot_cpu,
        strings.len() as u32,
        out.len() as u32,
    ] {
        tree.extend_from_slice(&word.to_be_bytes());
    }
    tree.resize(rsv_at, 0);
    tree.extend_from_slice(&rsv);
    tree.extend_from_slice(&out);
    tree.extend_from_slice(&strings);
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree as dtc would write it: `/` with a property, `/chosen` with
    /// bootargs and an old initrd, `/memory@40000000`, one reservation.
    fn tree(with_chosen: bool) -> Vec<u8> {
        let mut strings = Vec::new();
        let mut name = |n: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            off
        };
        let (compat, bootargs, initrd, reg) = (
            name("compatible"),
            name("bootargs"),
            name("linux,initrd-start"),
            name("reg"),
        );
        let mut s = Vec::new();
        let node = |s: &mut Vec<u8>, n: &str| {
            s.extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
            s.extend_from_slice(n.as_bytes());
            s.push(0);
            pad4(s);
        };
        let prop = |s: &mut Vec<u8>, off: u32, v: &[u8]| {
            s.extend_from_slice(&FDT_PROP.to_be_bytes());
            s.extend_from_slice(&(v.len() as u32).to_be_bytes());
            s.extend_from_slice(&off.to_be_bytes());
            s.extend_from_slice(v);
            pad4(s);
        };
        node(&mut s, "");
        prop(&mut s, compat, b"linux,dummy-virt\0");
        if with_chosen {
            node(&mut s, "chosen");
            prop(&mut s, bootargs, b"console=ttyAMA0 old\0");
            s.extend_from_slice(&FDT_NOP.to_be_bytes());
            prop(&mut s, initrd, &0x4800_0000u64.to_be_bytes());
            s.extend_from_slice(&FDT_END_NODE.to_be_bytes());
        }
        node(&mut s, "memory@40000000");
        prop(
            &mut s,
            reg,
            &[0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0],
        );
        s.extend_from_slice(&FDT_END_NODE.to_be_bytes());
        s.extend_from_slice(&FDT_END_NODE.to_be_bytes());
        s.extend_from_slice(&FDT_END.to_be_bytes());
        let rsv: Vec<u8> = [0x4000_0000u64, 0x1000, 0, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let (rsv_at, struct_at) = (40, 40 + rsv.len());
        let strings_at = struct_at + s.len();
        let total = strings_at + strings.len();
        let mut t = Vec::new();
        for w in [
            FDT_MAGIC,
            total as u32,
            struct_at as u32,
            strings_at as u32,
            rsv_at as u32,
            17,
            16,
            0,
            strings.len() as u32,
            s.len() as u32,
        ] {
            t.extend_from_slice(&w.to_be_bytes());
        }
        t.extend_from_slice(&rsv);
        t.extend_from_slice(&s);
        t.extend_from_slice(&strings);
        t
    }

    /// A device tree read back: `/chosen`'s properties (name, value),
    /// every node path, and the memory reservation block.
    type ReadBack = (Vec<(String, Vec<u8>)>, Vec<String>, Vec<u8>);

    fn read(fdt: &[u8]) -> ReadBack {
        let off_struct = be32(fdt, 8).unwrap() as usize;
        let off_strings = be32(fdt, 12).unwrap() as usize;
        let off_rsv = be32(fdt, 16).unwrap() as usize;
        assert_eq!(be32(fdt, 4).unwrap() as usize, fdt.len());
        let mut at = off_struct;
        let mut path: Vec<String> = Vec::new();
        let (mut chosen, mut nodes) = (Vec::new(), Vec::new());
        loop {
            let t = be32(fdt, at).unwrap();
            at += 4;
            match t {
                FDT_BEGIN_NODE => {
                    let len = fdt[at..].iter().position(|&b| b == 0).unwrap();
                    path.push(String::from_utf8(fdt[at..at + len].to_vec()).unwrap());
                    nodes.push(path.join("/"));
                    at = (at + len + 1).div_ceil(4) * 4;
                }
                FDT_END_NODE => {
                    path.pop();
                }
                FDT_PROP => {
                    let len = be32(fdt, at).unwrap() as usize;
                    let off = be32(fdt, at + 4).unwrap() as usize;
                    let name_end = fdt[off_strings + off..]
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap();
                    let name = String::from_utf8(
                        fdt[off_strings + off..off_strings + off + name_end].to_vec(),
                    )
                    .unwrap();
                    if path.join("/") == "/chosen" {
                        chosen.push((name, fdt[at + 8..at + 8 + len].to_vec()));
                    }
                    at = (at + 8 + len).div_ceil(4) * 4;
                }
                FDT_NOP => {}
                FDT_END => break,
                t => panic!("token {t}"),
            }
        }
        (chosen, nodes, fdt[off_rsv..off_rsv + 32].to_vec())
    }

    #[test]
    fn chosen_gets_the_new_command_line_and_initramfs_and_the_rest_is_kept() {
        let before = tree(true);
        let after = set_chosen(
            &before,
            &[
                (
                    "bootargs",
                    Some(b"root=PARTUUID=x switchback.slot=slot_b\0".to_vec()),
                ),
                (
                    "linux,initrd-start",
                    Some(0x5000_0000u64.to_be_bytes().to_vec()),
                ),
                (
                    "linux,initrd-end",
                    Some(0x5010_0000u64.to_be_bytes().to_vec()),
                ),
                ("linux,elfcorehdr", None),
            ],
        )
        .unwrap();
        let (chosen, nodes, rsv) = read(&after);
        assert_eq!(nodes, ["", "/chosen", "/memory@40000000"]);
        assert_eq!(
            chosen,
            [
                (
                    "bootargs".to_string(),
                    b"root=PARTUUID=x switchback.slot=slot_b\0".to_vec()
                ),
                (
                    "linux,initrd-start".to_string(),
                    0x5000_0000u64.to_be_bytes().to_vec()
                ),
                (
                    "linux,initrd-end".to_string(),
                    0x5010_0000u64.to_be_bytes().to_vec()
                ),
            ]
        );
        assert_eq!(rsv, read(&before).2, "the memory reservations are kept");
    }

    #[test]
    fn a_tree_without_chosen_gets_one_and_a_removed_property_goes() {
        let after = set_chosen(&tree(false), &[("bootargs", Some(b"quiet\0".to_vec()))]).unwrap();
        let (chosen, nodes, _) = read(&after);
        assert_eq!(nodes, ["", "/memory@40000000", "/chosen"]);
        assert_eq!(chosen, [("bootargs".to_string(), b"quiet\0".to_vec())]);
        let gone = set_chosen(&tree(true), &[("linux,initrd-start", None)]).unwrap();
        let (chosen, _, _) = read(&gone);
        assert_eq!(
            chosen,
            [("bootargs".to_string(), b"console=ttyAMA0 old\0".to_vec())]
        );
    }

    #[test]
    fn a_cut_or_foreign_tree_is_an_error_not_a_panic() {
        let t = tree(true);
        for cut in 0..t.len() {
            let mut bad = t[..cut].to_vec();
            bad.resize(t.len(), 0xff);
            let _ = set_chosen(&bad, &[("bootargs", None)]);
            let _ = set_chosen(&t[..cut], &[("bootargs", None)]);
        }
        assert!(set_chosen(b"not a tree at all, not at all......................", &[]).is_err());
    }

    const IOMEM: &str = "\
09000000-09000fff : pl011@9000000
40000000-7dd9bfff : System RAM
  47dfd000-48002fff : reserved
  79c40000-7b28ffff : Kernel code
  7b290000-7b8dffff : reserved
  7b8e0000-7bc3ffff : Kernel data
7dd9c000-7dd9cfff : reserved
7dd9d000-7dd9ffff : System RAM
4010000000-401fffffff : PCI ECAM
";

    #[test]
    fn free_ram_is_system_ram_without_its_reservations_but_with_the_running_kernel() {
        assert_eq!(
            free_ram(IOMEM),
            [
                (0x4000_0000, 0x47df_d000),
                (0x4800_3000, 0x7b29_0000),
                (0x7b8e_0000, 0x7dd9_c000),
                (0x7dd9_d000, 0x7dda_0000),
            ]
        );
    }

    fn image(image_size: u64, len: usize) -> Vec<u8> {
        let mut i = vec![0u8; len];
        i[8..16].copy_from_slice(&0u64.to_le_bytes());
        i[16..24].copy_from_slice(&image_size.to_le_bytes());
        i[0x38..0x3c].copy_from_slice(b"ARM\x64");
        i
    }

    #[test]
    fn the_pieces_go_to_free_ram_aligned_without_overlap_and_the_entry_finds_them() {
        let free = free_ram(IOMEM);
        let initrd = vec![7u8; 3 << 20];
        let s = arm64_segments(
            &image(40 << 20, 30 << 20),
            Some(&initrd),
            &tree(true),
            "root=x",
            &free,
            4096,
            &[1; 72],
        )
        .unwrap();
        let kernel = &s.segments[0];
        assert_eq!(
            kernel.mem % (2 << 20),
            0,
            "the Image at a 2 MiB-aligned base"
        );
        assert_eq!(kernel.memsz, 40 << 20, "room for its BSS");
        let mut spans: Vec<(u64, u64)> = s
            .segments
            .iter()
            .map(|seg| {
                assert_eq!(seg.mem % 4096, 0);
                assert_eq!(seg.memsz % 4096, 0);
                assert!(seg.memsz >= seg.data.len() as u64);
                assert!(free
                    .iter()
                    .any(|&(a, b)| seg.mem >= a && seg.mem + seg.memsz <= b));
                (seg.mem, seg.mem + seg.memsz)
            })
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:x?}");
        let (dtb, purgatory) = (&s.segments[2], &s.segments[3]);
        assert_eq!(s.entry, purgatory.mem);
        assert_eq!(purgatory.data[24..32], dtb.mem.to_le_bytes());
        assert_eq!(purgatory.data[32..40], kernel.mem.to_le_bytes());
        let (chosen, _, _) = read(&dtb.data);
        let get = |n: &str| chosen.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let initrd_at = s.segments[1].mem;
        assert_eq!(
            get("linux,initrd-start"),
            Some(initrd_at.to_be_bytes().to_vec())
        );
        assert_eq!(
            get("linux,initrd-end"),
            Some((initrd_at + (3 << 20)).to_be_bytes().to_vec())
        );
        assert_eq!(get("bootargs"), Some(b"root=x\0".to_vec()));
    }

    #[test]
    fn a_kernel_that_is_not_an_arm64_image_or_does_not_fit_is_refused() {
        let free = free_ram(IOMEM);
        let t = tree(true);
        let err = |img: &[u8], free: &[(u64, u64)]| {
            arm64_segments(img, None, &t, "", free, 4096, &[0; 72]).unwrap_err()
        };
        assert!(err(&vec![0u8; 4096], &free).contains("not an arm64 Image"));
        assert!(err(&image(0, 4096), &free).contains("image_size"));
        assert!(err(&image(2 << 30, 4096), &free).contains("Image"));
    }
}
