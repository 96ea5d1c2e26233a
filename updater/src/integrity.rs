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

use bootctl::dm::{verity_state, VerityState, ROOT_NAME};
use std::io::Read;
use switchback_bundle::verity::CMDLINE_KEY;

/// How the running root is protected, in words for `updater status`.
pub fn describe() -> String {
    let cmdline = bootctl::host::read_cmdline();
    if bootctl::host::cmdline_value(&cmdline, CMDLINE_KEY).is_none() {
        return "not checked after boot: the release has no dm-verity hash tree".into();
    }
    match verity_state(ROOT_NAME) {
        Ok(Some((VerityState::Verified, node))) => {
            format!(
                "dm-verity ({}): every block read so far matched",
                node.display()
            )
        }
        Ok(Some((VerityState::Corrupted, node))) => format!(
            "dm-verity ({}): a block read did NOT match the signed hash tree",
            node.display()
        ),
        Ok(None) => {
            "the boot stage passed a root hash, but the root is not a dm-verity device".into()
        }
        Err(e) => format!("unknown: {e:#}"),
    }
}

/// On a trial boot: `Ok` when the root is not opened through dm-verity
/// (a release built without it) or when all of it reads back through
/// dm-verity; otherwise why not, for the health verdict.
pub fn check_whole_root() -> Result<(), String> {
    let cmdline = bootctl::host::read_cmdline();
    if bootctl::host::cmdline_value(&cmdline, CMDLINE_KEY).is_none() {
        return Ok(());
    }
    let node = match verity_state(ROOT_NAME) {
        Ok(Some((VerityState::Corrupted, node))) => {
            return Err(format!(
                "dm-verity: a block of the root ({}) does not match the release's signed hash tree",
                node.display()
            ))
        }
        Ok(Some((VerityState::Verified, node))) => node,
        Ok(None) => return Err(
            "dm-verity: the boot stage passed a root hash, but the root is not opened through it"
                .into(),
        ),
        Err(e) => return Err(format!("dm-verity: cannot read the root's state: {e:#}")),
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
