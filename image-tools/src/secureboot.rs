//! Signing an EFI program for Secure Boot (the firmware's `db` key), with
//! Debian's `sbsigntool`: the UEFI boot stage after its keyring is in
//! place, and a release's kernel before its root file system is built
//! (docs/boot-flow.md, "Secure Boot").

use crate::programs::find_program;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware's `db` key and certificate (PEM) to sign with.
#[derive(Debug, Clone, clap::Args)]
pub struct DbKey {
    /// The private key of a certificate in the firmware's `db` (PEM,
    /// unencrypted): the program is signed for Secure Boot with it.
    #[arg(long, requires = "db_cert")]
    pub db_key: Option<PathBuf>,
    /// The certificate of --db-key (PEM).
    #[arg(long, requires = "db_key")]
    pub db_cert: Option<PathBuf>,
}

/// Signs `program` in place with `key` and `cert`, and checks the result
/// against `cert`: a signature the firmware would not accept is not left
/// behind as if it were one.
pub fn sign(program: &Path, key: &Path, cert: &Path) -> Result<()> {
    let sbsign = find_program("sbsign")
        .context("sbsign not found: apt-get install sbsigntool to sign for Secure Boot")?;
    let work = crate::uki::work_dir_beside(program)?;
    let signed = work.path().join("signed.efi");
    run(
        Command::new(&sbsign)
            .arg("--key")
            .arg(key)
            .arg("--cert")
            .arg(cert)
            .arg("--output")
            .arg(&signed)
            .arg(program),
        &format!("signing {} with {}", program.display(), key.display()),
    )?;
    let sbverify = find_program("sbverify")
        .context("sbverify not found: apt-get install sbsigntool to sign for Secure Boot")?;
    run(
        Command::new(&sbverify).arg("--cert").arg(cert).arg(&signed),
        &format!(
            "checking the signature of {} against {}",
            program.display(),
            cert.display()
        ),
    )?;
    std::fs::rename(&signed, program).with_context(|| format!("writing {}", program.display()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let err = err.join("; ");
        bail!("{what}: {err}");
    }
    Ok(())
}
