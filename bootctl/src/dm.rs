//! The kernel's device-mapper, for one device: the release's root opened
//! read-only through the `verity` target, so that every block read is
//! checked against the hash tree whose root hash the signed release carries
//! (docs/boot-flow.md, "Integrity at every boot").
//!
//! The ioctls of `linux/dm-ioctl.h`, spoken directly: the release's
//! initramfs has no libdevmapper or veritysetup, and the crates that wrap
//! device-mapper generate their bindings with libclang at build time, which
//! a static, cross-compiled `bootctl` cannot carry.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use switchback_bundle::verity::{VeritySpec, CMDLINE_KEY};

/// The name of the release's verified root under /dev/mapper's control.
pub const ROOT_NAME: &str = "switchback-root";

const CONTROL: &str = "/dev/mapper/control";
/// `struct dm_ioctl`'s size: the data after it starts here.
const HEADER_LEN: usize = 312;
/// `struct dm_target_spec`'s size: its parameter string follows.
const TARGET_SPEC_LEN: usize = 40;
const NAME_LEN: usize = 128;
const READONLY_FLAG: u32 = 1 << 0;
const STATUS_TABLE_FLAG: u32 = 1 << 4;
const BUFFER_FULL_FLAG: u32 = 1 << 8;

/// The request's header only; the kernel reads `data_size` bytes from it.
#[repr(C)]
pub struct DmIoctl {
    _header: [u8; HEADER_LEN],
}

nix::ioctl_readwrite!(dm_dev_create, 0xfd, 3, DmIoctl);
nix::ioctl_readwrite!(dm_dev_remove, 0xfd, 4, DmIoctl);
nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, 6, DmIoctl);
nix::ioctl_readwrite!(dm_table_load, 0xfd, 9, DmIoctl);
nix::ioctl_readwrite!(dm_table_status, 0xfd, 12, DmIoctl);

/// One request: the header for `name` and `flags`, then `data`; kept in
/// 8-byte words because the kernel's structures are 8-byte aligned.
struct Request {
    words: Vec<u64>,
}

impl Request {
    fn new(name: &str, flags: u32, data: &[u8], room: usize) -> Result<Request> {
        if name.is_empty() || name.len() >= NAME_LEN {
            bail!("device-mapper name {name:?} is not 1 to 127 bytes");
        }
        let len = (HEADER_LEN + data.len()).max(HEADER_LEN + room);
        let mut bytes = vec![0u8; len.div_ceil(8) * 8];
        // The interface version this speaks: 4.0.0, any kernel's since 2.6.
        bytes[0..4].copy_from_slice(&4u32.to_ne_bytes());
        let total = u32::try_from(bytes.len()).context("a device-mapper request of 4 GiB")?;
        bytes[12..16].copy_from_slice(&total.to_ne_bytes());
        bytes[16..20].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
        let targets = u32::from(!data.is_empty());
        bytes[20..24].copy_from_slice(&targets.to_ne_bytes());
        bytes[28..32].copy_from_slice(&flags.to_ne_bytes());
        bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
        bytes[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        let words = bytes
            .chunks(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Request { words })
    }

    fn ptr(&mut self) -> *mut DmIoctl {
        self.words.as_mut_ptr().cast()
    }

    fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.bytes();
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The device's node, `/dev/dm-N`, from the reply's `dev`.
    fn node(&self) -> PathBuf {
        let b = self.bytes();
        let dev = u64::from_ne_bytes(b[40..48].try_into().unwrap_or([0; 8]));
        // The kernel's huge_encode_dev: minor's low 8 bits, major, then the
        // minor's high bits.
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        PathBuf::from(format!("/dev/dm-{minor}"))
    }
}

fn control() -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(CONTROL)
        .with_context(|| format!("opening {CONTROL} (is the dm-mod module loaded?)"))
}

/// Issues one ioctl on the device `name`; `what` names it in the error.
fn call(
    what: &str,
    name: &str,
    f: unsafe fn(i32, *mut DmIoctl) -> nix::Result<i32>,
    req: &mut Request,
) -> Result<()> {
    let ctl = control()?;
    // SAFETY: `req` holds a `struct dm_ioctl` whose `data_size` is the
    // length of its buffer, which lives across the call; the kernel writes
    // no further than `data_size`.
    unsafe { f(ctl.as_raw_fd(), req.ptr()) }
        .with_context(|| format!("device-mapper {what} of {name}"))?;
    Ok(())
}

/// A `verity` table of one target over `device` (data and tree on it).
fn verity_table(spec: &VeritySpec, device: &str) -> Vec<u8> {
    let sectors = spec.data_blocks * u64::from(spec.data_block_size) / 512;
    let mut t = vec![0u8; TARGET_SPEC_LEN];
    t[8..16].copy_from_slice(&sectors.to_ne_bytes());
    t[24..30].copy_from_slice(b"verity");
    t.extend_from_slice(spec.table_params(device).as_bytes());
    t.push(0);
    t.resize(t.len().div_ceil(8) * 8, 0);
    t
}

/// The root the release's initramfs mounts for the partition `device`:
/// opened through dm-verity when the boot stage passed verity parameters
/// on the command line ([`CMDLINE_KEY`]), else `device` itself (a release
/// built without `--verity`). Parameters that are there but wrong are an
/// error, never a mount without the check.
pub fn open_root(device: &str) -> Result<PathBuf> {
    // Unreadable is not "no parameters": that would mount unchecked.
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").context("reading the kernel command line")?;
    let Some(value) = crate::host::cmdline_value(&cmdline, CMDLINE_KEY) else {
        return Ok(PathBuf::from(device));
    };
    let spec = VeritySpec::from_cmdline_value(&value)
        .with_context(|| format!("{CMDLINE_KEY}={value:?} is not verity parameters"))?;
    let size = File::open(device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .with_context(|| format!("measuring {device}"))?;
    open_verity(device, &spec, size)
}

/// Opens `device` (of `device_size` bytes) through dm-verity with `spec`
/// as [`ROOT_NAME`], read-only; returns the device node to mount. Nothing
/// is left behind on failure.
pub fn open_verity(device: &str, spec: &VeritySpec, device_size: u64) -> Result<PathBuf> {
    let image = spec
        .image_len()
        .context("the verity parameters: the hash tree's size overflows")?;
    spec.check(image)
        .map_err(|e| anyhow::anyhow!("the verity parameters: {e}"))?;
    if image > device_size {
        bail!("{device} is {device_size} bytes; its verity data and hash tree need {image}");
    }
    let mut create = Request::new(ROOT_NAME, 0, &[], 0)?;
    call("create", ROOT_NAME, dm_dev_create, &mut create)
        .with_context(|| format!("opening {device} through dm-verity"))?;
    let node = create.node();
    let loaded = (|| -> Result<()> {
        let mut load = Request::new(ROOT_NAME, READONLY_FLAG, &verity_table(spec, device), 0)?;
        call("table load (verity)", ROOT_NAME, dm_table_load, &mut load)?;
        // Resuming a device with a loaded table makes it live.
        let mut resume = Request::new(ROOT_NAME, 0, &[], 0)?;
        call("resume", ROOT_NAME, dm_dev_suspend, &mut resume)
    })();
    if let Err(e) = loaded {
        let mut remove = Request::new(ROOT_NAME, 0, &[], 0)?;
        let _ = call("remove", ROOT_NAME, dm_dev_remove, &mut remove);
        return Err(e.context(format!("opening {device} through dm-verity")));
    }
    Ok(node)
}

/// What dm-verity says of the root it guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityState {
    /// Every block read so far matched the tree.
    Verified,
    /// A block read did not match: the kernel refused it.
    Corrupted,
}

/// A verity device as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityDevice {
    pub state: VerityState,
    /// Its node, `/dev/dm-N`.
    pub node: PathBuf,
    /// The root hash of its loaded table: what every block is checked
    /// against, whatever the command line says.
    pub root_hash: String,
}

/// The verity device `name` (`None`: there is no such device, the root is
/// not opened through verity).
pub fn verity_device(name: &str) -> Result<Option<VerityDevice>> {
    let Some((info, node)) = target_of(name, 0)? else {
        return Ok(None);
    };
    let state = match info.first() {
        Some(b'V') => VerityState::Verified,
        Some(b'C') => VerityState::Corrupted,
        _ => bail!(
            "device-mapper device {name}: unknown verity status {:?}",
            String::from_utf8_lossy(&info)
        ),
    };
    let Some((table, _)) = target_of(name, STATUS_TABLE_FLAG)? else {
        return Ok(None);
    };
    // "version data_dev hash_dev data_bs hash_bs blocks hash_start alg
    // root_hash salt [options]"
    let table = String::from_utf8_lossy(&table).into_owned();
    let root_hash = table
        .split_whitespace()
        .nth(8)
        .with_context(|| {
            format!("device-mapper device {name}: verity table {table:?} has no root hash")
        })?
        .to_string();
    Ok(Some(VerityDevice {
        state,
        node,
        root_hash,
    }))
}

/// The single verity target of `name`: its status line (`flags` 0) or its
/// table line ([`STATUS_TABLE_FLAG`]), and its node.
fn target_of(name: &str, flags: u32) -> Result<Option<(Vec<u8>, PathBuf)>> {
    let mut room = 4096;
    loop {
        let mut req = Request::new(name, flags, &[], room)?;
        match call("status", name, dm_table_status, &mut req) {
            Err(e) if e.root_cause().downcast_ref::<nix::Error>() == Some(&nix::Error::ENXIO) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        if req.u32_at(28) & BUFFER_FULL_FLAG != 0 {
            if room > 1 << 20 {
                bail!("device-mapper device {name}: its status does not fit 1 MiB");
            }
            room *= 4;
            continue;
        }
        let b = req.bytes();
        let start = req.u32_at(16) as usize;
        if req.u32_at(20) != 1 || b.len() < start + TARGET_SPEC_LEN {
            bail!("device-mapper device {name} is not one verity target");
        }
        let spec = &b[start..];
        if !spec[24..40].starts_with(b"verity\0") {
            bail!("device-mapper device {name} is not a verity device");
        }
        let line = &spec[TARGET_SPEC_LEN..];
        let line = &line[..line.iter().position(|&c| c == 0).unwrap_or(line.len())];
        return Ok(Some((line.to_vec(), req.node())));
    }
}
