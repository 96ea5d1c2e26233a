//! The factory disk image: GPT with `slot_a` holding the first release,
//! `slot_b` empty and unbootable, and an ext4 `data` partition.

use anyhow::{bail, Context, Result};
use bootctl::provision::{self, Layout, Provisioned};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub struct MkdiskOptions {
    pub out: PathBuf,
    pub slot_size: u64,
    pub data_size: u64,
    pub slot_a: Option<PathBuf>,
    pub sector_size: u64,
}

/// Finds a program the way a shell would, plus the sbin directories that a
/// non-root PATH often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn mkdisk(opts: &MkdiskOptions) -> Result<Provisioned> {
    // Check everything that can be checked before the output file exists.
    let mkfs = find_program("mkfs.ext4")
        .context("mkfs.ext4 not found: install e2fsprogs to format the data partition")?;
    let image = match &opts.slot_a {
        Some(path) => {
            let file = File::open(path)
                .with_context(|| format!("opening slot image {}", path.display()))?;
            let len = file.metadata()?.len();
            if len > opts.slot_size {
                bail!(
                    "slot image {} is {len} bytes, larger than the slot size {}",
                    path.display(),
                    opts.slot_size
                );
            }
            Some((path, file))
        }
        None => None,
    };
    let layout = Layout {
        slot_size: opts.slot_size,
        data_size: opts.data_size,
        sector_size: opts.sector_size,
    };
    let disk = provision::create(&opts.out, layout)?;

    if let Some((path, mut src)) = image {
        let out = File::options().write(true).open(&opts.out)?;
        copy_at(&mut src, &out, disk.slots[0].offset).with_context(|| {
            format!(
                "copying {} into slot_a of {}",
                path.display(),
                opts.out.display()
            )
        })?;
        out.sync_all()?;
    }
    format_ext4(&mkfs, &opts.out, disk.data.offset, disk.data.size)?;
    Ok(disk)
}

/// Copies all of `src` into `out` starting at byte `offset`.
fn copy_at(src: &mut impl Read, out: &File, offset: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(at - offset);
        }
        out.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
}

fn format_ext4(mkfs: &Path, disk: &Path, offset: u64, size: u64) -> Result<()> {
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-L", "data", "-E"])
        .arg(format!("offset={offset}"))
        .arg(disk)
        .arg(format!("{}k", size / 1024))
        .output()
        .with_context(|| format!("running {}", mkfs.display()))?;
    if !output.status.success() {
        let mut err = std::io::stderr();
        err.write_all(&output.stderr).ok();
        bail!(
            "{} failed on the data partition of {} ({})",
            mkfs.display(),
            disk.display(),
            output.status
        );
    }
    Ok(())
}
