//! The running root's integrity: whether the release runs from its root
//! through dm-verity (the boot stage checked the release's signature and
//! passed its root hash; the initramfs opened the root with it), and, on
//! a trial boot, one whole read of it before the release is committed
//! (docs/boot-flow.md, "Integrity at every boot").
//!
//! dm-verity checks a block only when it is read. A block changed where
//! nothing reads it during the trial would fail only later, in a committed
//! release; reading the whole root once on trial (a few seconds per GiB on
//! an appliance's core) turns any changed block into a failed trial and a
//! fallback instead.

use bootctl::dm::{verity_device, VerityDevice, VerityState, ROOT_NAME};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use switchback_bundle::verity::{VeritySpec, CMDLINE_KEY};

/// How the running root is protected, in words for `updater status`.
pub fn describe() -> String {
    match guarding_device() {
        Ok(None) => "not checked after boot: the release has no dm-verity hash tree".into(),
        Ok(Some(VerityDevice {
            state: VerityState::Verified,
            node,
            ..
        })) => format!(
            "dm-verity ({}): every block read so far matched",
            node.display()
        ),
        Ok(Some(VerityDevice {
            state: VerityState::Corrupted,
            node,
            ..
        })) => format!(
            "dm-verity ({}): a block read did NOT match the signed hash tree",
            node.display()
        ),
        Err(e) => format!("NOT as the boot stage asked: {e}"),
    }
}

/// The verity device the running root is mounted from, held to what the
/// boot stage passed: `None` when it passed no root hash (a release built
/// without a tree). An error when it did and the root is not mounted from
/// a verity device with that very root hash: a release whose initramfs
/// mounted something else would otherwise pass as checked.
fn guarding_device() -> Result<Option<VerityDevice>, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading the kernel command line: {e}"))?;
    let Some(value) = bootctl::host::cmdline_value(&cmdline, CMDLINE_KEY) else {
        return Ok(None);
    };
    let passed = VeritySpec::from_cmdline_value(&value)
        .ok_or_else(|| format!("{CMDLINE_KEY}={value:?} is not verity parameters"))?;
    let device =
        match verity_device(ROOT_NAME) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(
                "the boot stage passed a root hash, but the root is not opened through dm-verity"
                    .into(),
            ),
            Err(e) => return Err(format!("cannot read the root's dm-verity state: {e:#}")),
        };
    if device.root_hash != passed.root_hash.to_string() {
        return Err(format!(
            "{} checks against root hash {}, not the {} the boot stage passed",
            device.node.display(),
            device.root_hash,
            passed.root_hash
        ));
    }
    let root = std::fs::metadata("/").map_err(|e| format!("reading /: {e}"))?;
    let node = std::fs::metadata(&device.node)
        .map_err(|e| format!("reading {}: {e}", device.node.display()))?;
    if root.dev() != node.rdev() {
        return Err(format!(
            "/ is not mounted from the dm-verity device {}",
            device.node.display()
        ));
    }
    Ok(Some(device))
}

/// On a trial boot: `Ok` when the root is not opened through dm-verity
/// (a release built without it) or when all of it reads back through
/// dm-verity; otherwise why not, for the health verdict.
pub fn check_whole_root() -> Result<(), String> {
    let node = match guarding_device().map_err(|e| format!("dm-verity: {e}"))? {
        None => return Ok(()),
        Some(VerityDevice {
            state: VerityState::Corrupted,
            node,
            ..
        }) => {
            return Err(format!(
                "dm-verity: a block of the root ({}) does not match the release's signed hash tree",
                node.display()
            ))
        }
        Some(d) => d.node,
    };
    let started = std::time::Instant::now();
    let mut f = std::fs::File::open(&node)
        .map_err(|e| format!("dm-verity: opening the root {}: {e}", node.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "dm-verity refused the root ({}) at byte {offset}: a block does not match the release's signed hash tree ({e})",
                    node.display()
                ))
            }
        }
    }
    log::info!(
        "dm-verity: the whole root ({} MiB) read back as signed in {:.1} s",
        offset >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
