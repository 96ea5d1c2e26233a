//! The device configuration, `/etc/switchback/config.json` by default.
//! Documented in docs/configuration.md. Unknown fields are refused: a
//! misspelt `boot_tries` silently ignored would be a device that behaves
//! unlike its vendor thinks.

use crate::error::UpdateError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/switchback/config.json";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The product identifier a bundle must carry.
    pub compatible: String,
    /// Directory of trusted public keys.
    pub keyring: PathBuf,
    /// The disk holding the slots; default: the disk of the running root.
    #[serde(default)]
    pub disk: Option<PathBuf>,
    #[serde(default = "default_tries")]
    pub boot_tries: u8,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Default: `<data_dir>/switchback`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub health: Health,
    /// Longest a single data migration may run.
    #[serde(default = "default_migration_timeout")]
    pub migration_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// All checks together must finish within this many seconds.
    #[serde(default = "default_deadline")]
    pub deadline_s: u64,
    #[serde(default)]
    pub checks: Vec<Check>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            deadline_s: default_deadline(),
            checks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// argv; not run through a shell.
    pub command: Vec<String>,
    #[serde(default = "default_check_timeout")]
    pub timeout_s: u64,
}

fn default_tries() -> u8 {
    bootctl::DEFAULT_TRIES
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/data")
}
fn default_deadline() -> u64 {
    300
}
fn default_migration_timeout() -> u64 {
    600
}
fn default_check_timeout() -> u64 {
    60
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, UpdateError> {
        let err = |reason: String| UpdateError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: Config = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.compatible.is_empty() {
            return Err("field `compatible` must not be empty".into());
        }
        if self.boot_tries == 0 || self.boot_tries > bootctl::attr::MAX_NIBBLE {
            return Err(format!(
                "field `boot_tries` must be 1 to 15, not {}",
                self.boot_tries
            ));
        }
        for (i, c) in self.health.checks.iter().enumerate() {
            if c.command.is_empty() {
                return Err(format!(
                    "field `health.checks[{i}].command` ({:?}) must name a program",
                    c.name
                ));
            }
        }
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("switchback"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, UpdateError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = load(r#"{"compatible":"acme","keyring":"/etc/keys"}"#).unwrap();
        assert_eq!(c.boot_tries, 3);
        assert_eq!(c.state_dir(), PathBuf::from("/data/switchback"));
        assert_eq!(c.health.deadline_s, 300);
        let e = load(r#"{"keyring":"/k"}"#).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("missing field `compatible`"),
            "{e}"
        );
        let e = load(r#"{"compatible":"a","keyring":"/k","boot_trys":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `boot_trys`"), "{e}");
        let e = load(r#"{"compatible":"a","keyring":"/k","boot_tries":0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("boot_tries"), "{e}");
        let e = load(
            r#"{"compatible":"a","keyring":"/k","health":{"checks":[{"name":"x","command":[]}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("health.checks[0].command"), "{e}");
    }
}
