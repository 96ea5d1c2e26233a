//! A technician at `updater serve`'s page in a real headless browser:
//! `browser/technician.py` (Debian's chromium through chromium-driver,
//! driven by selenium) from the venv `.ci/install-deps` prepares.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn venv() -> PathBuf {
    std::env::var_os("SWITCHBACK_BROWSER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/switchback/browser")
        })
}

/// A technician with a login at `url`; screenshots of every step go to
/// `shots`.
pub struct Technician {
    pub url: String,
    pub user: String,
    pub password: String,
    pub shots: PathBuf,
}

impl Technician {
    /// Runs one step of `technician.py` (`install --bundle ...`,
    /// `rollback --to ...`, `reboot`): what it printed, or an error with
    /// all of it and where the screenshots are.
    pub fn step(&self, args: &[&str]) -> Result<String, String> {
        let python = venv().join("bin/python");
        assert!(
            python.exists(),
            "no browser venv at {} (.ci/install-deps makes it)",
            venv().display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/technician.py");
        let out = Command::new(python)
            .arg(script)
            .args(["--url", &self.url, "--user", &self.user, "--shots"])
            .arg(&self.shots)
            .args(args)
            .env("SWITCHBACK_PASSWORD", &self.password)
            .output()
            .map_err(|e| format!("starting technician.py: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "the browser step {args:?} failed; screenshots in {}:\n{text}",
                self.shots.display()
            ))
        }
    }
}
