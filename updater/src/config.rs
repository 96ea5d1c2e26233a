//! The device configuration, `/etc/switchback/config.json` by default.
//! Documented in docs/updater.md ("Configuration"). Unknown fields are refused: a
//! misspelt `boot_tries` silently ignored would be a device that behaves
//! unlike its vendor thinks.

use crate::error::UpdateError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/switchback/config.json";
/// Longest any timeout may be: a day. Far above any real check, far below
/// what would overflow a clock.
pub const MAX_SECONDS: u64 = 86_400;

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
    /// Updates from a hawkBit DDI server (`updater fleet`, docs/fleet.md).
    #[serde(default)]
    pub fleet: Option<Fleet>,
    /// The most memory an install may use, whole process: a number of
    /// bytes or a size such as `"24M"` (docs/updater.md, "Memory").
    #[serde(default, deserialize_with = "size")]
    pub install_memory: Option<u64>,
    /// Refuse a release whose root has no dm-verity hash tree (built
    /// without `image-tools build --verity`): docs/boot-flow.md,
    /// "Integrity at every boot".
    #[serde(default)]
    pub require_verity: bool,
    /// The API on the network (`updater serve`, docs/api.md): off unless
    /// set, and then only with a login.
    #[serde(default)]
    pub serve: Option<Serve>,
    /// Not read from the file: the GPT GUID of the disk the command acts
    /// on, set when the device is opened ([`crate::cli::Device::open`]).
    /// The state file is stamped with it when saved.
    #[serde(skip)]
    pub disk_guid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// The address and port to listen on, e.g. `"0.0.0.0:8443"` (the
    /// service port a technician's laptop plugs into).
    pub listen: std::net::SocketAddr,
    /// TLS with this PEM certificate chain and key (mode 0600).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Serve {
    fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(()),
            (Some(cert), Some(key)) => {
                for (field, p) in [("serve.tls_cert", cert), ("serve.tls_key", key)] {
                    if !p.is_absolute() {
                        return Err(format!(
                            "field `{field}` ({}) must be an absolute path",
                            p.display()
                        ));
                    }
                }
                Ok(())
            }
            _ => Err("fields `serve.tls_cert` and `serve.tls_key` come together".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// The server, e.g. `https://updates.example.com` (no tenant, no path).
    pub url: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// This device's name on the server. Default: the machine's serial
    /// number ([`SERIAL_PATH`]), so that one release image, config
    /// included, serves every device of a fleet.
    #[serde(default)]
    pub controller_id: Option<String>,
    /// File holding the device's security token; none when the server
    /// knows the device by its client certificate alone.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// What the token is: the device's own (`target`, sent as
    /// `TargetToken`) or the tenant's gateway token (`gateway`, sent as
    /// `GatewayToken`).
    #[serde(default)]
    pub token_kind: TokenKind,
    /// What the device says to an action the server asks it to confirm
    /// (hawkBit's confirmation flow): `local` waits for `updater fleet
    /// --confirm ID` (or `--deny ID`), `auto` confirms at once.
    #[serde(default)]
    pub confirm: Confirm,
    /// PEM client certificate (chain) and its key (mode 600), presented to
    /// servers that authenticate devices by mutual TLS (hawkBit behind a
    /// reverse proxy that checks them).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Reported as `hw_revision`; the server matches releases to it.
    pub hw_revision: String,
    /// The name of this product's distribution sets on the server, told
    /// with the version in `installedBase` when a release was installed
    /// without the server. Default: the config's `compatible`.
    #[serde(default)]
    pub distribution: Option<String>,
    /// PEM CA certificates to trust instead of the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Reboot into a release as soon as it is installed.
    #[serde(default = "default_true")]
    pub reboot: bool,
    /// Poll at least this often, whatever the server asks (seconds).
    #[serde(default = "default_max_poll")]
    pub max_poll_s: u64,
}

impl Fleet {
    /// `{url}/{tenant}/controller/v1/{controller_id}`: where DDI lives.
    pub fn controller_url(&self) -> Result<String, String> {
        Ok(format!(
            "{}/{}/controller/v1/{}",
            self.url.trim_end_matches('/'),
            self.tenant,
            self.controller_id()?
        ))
    }

    /// The configured `controller_id`, else the serial number the
    /// firmware reports (SMBIOS), read when needed: a device without one
    /// can still install from a file.
    pub fn controller_id(&self) -> Result<String, String> {
        if let Some(id) = &self.controller_id {
            return Ok(id.clone());
        }
        let serial = std::fs::read_to_string(SERIAL_PATH).map_err(|e| {
            format!("no `fleet.controller_id` is set and the machine's serial number ({SERIAL_PATH}) cannot be read: {e}")
        })?;
        let serial = serial.trim();
        let refused = |e: String| {
            format!("no `fleet.controller_id` is set and {e} (read from {SERIAL_PATH}); set `fleet.controller_id`")
        };
        path_segment("the machine's serial number", serial).map_err(refused)?;
        if placeholder_serial(serial) {
            return Err(refused(format!(
                "the machine's serial number ({serial:?}) is a placeholder that other machines report too"
            )));
        }
        Ok(serial.to_string())
    }

    /// Whether hawkBit takes the attributes made of the config: checked by
    /// the fleet client only, so that a config that served before (a
    /// `compatible` hawkBit refuses) never stops a health check or an
    /// install; `updater fleet` refuses it (exit 40) rather than have the
    /// server refuse every cycle.
    pub fn check_attributes(&self, compatible: &str) -> Result<(), String> {
        if let Some(problem) = crate::fleet::ddi::attribute_problem(&self.hw_revision) {
            return Err(format!(
                "field `fleet.hw_revision` ({:?}) {problem}",
                self.hw_revision
            ));
        }
        // The server hears it as `hw_boardname`.
        if let Some(problem) = crate::fleet::ddi::attribute_problem(compatible) {
            return Err(format!(
                "field `compatible` ({compatible:?}) {problem}: the fleet server would refuse the device's attributes"
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        let url = self.url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                format!("field `fleet.url` ({url}) must start with http:// or https://")
            })?;
        if rest.is_empty() || rest.contains(['?', '#', ' ', '@', '\\']) {
            return Err(format!(
                "field `fleet.url` ({url}) must be the server's address, without query or spaces"
            ));
        }
        path_segment("field `fleet.tenant`", &self.tenant)?;
        if let Some(id) = &self.controller_id {
            path_segment("field `fleet.controller_id`", id)?;
        }
        if self.hw_revision.is_empty() || self.hw_revision.chars().any(char::is_control) {
            return Err("field `fleet.hw_revision` must be one line of 1 to 128 characters".into());
        }
        if let Some(name) = &self.distribution {
            if name.trim().is_empty()
                || name.chars().count() > 128
                || name.chars().any(char::is_control)
            {
                return Err(
                    "field `fleet.distribution` must be one line of 1 to 128 characters (hawkBit's limit for a distribution set's name)".into(),
                );
            }
        }
        if self.token_file.is_none() && self.client_cert.is_none() {
            return Err("the `fleet` section needs `token_file`, `client_cert` and `client_key`, or both: the server must know the device".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("fields `fleet.client_cert` and `fleet.client_key` go together".into());
        }
        let mut paths = vec![];
        for (field, p) in [
            ("fleet.token_file", &self.token_file),
            ("fleet.ca_file", &self.ca_file),
            ("fleet.client_cert", &self.client_cert),
            ("fleet.client_key", &self.client_key),
        ] {
            paths.extend(p.as_ref().map(|p| (field, p)));
        }
        for (field, p) in paths {
            if !p.is_absolute() {
                return Err(format!(
                    "field `{field}` ({}) must be an absolute path",
                    p.display()
                ));
            }
        }
        if !(1..=MAX_SECONDS).contains(&self.max_poll_s) {
            return Err(format!(
                "field `fleet.max_poll_s` must be 1 to {MAX_SECONDS} seconds, not {}",
                self.max_poll_s
            ));
        }
        Ok(())
    }

    /// The `Authorization` value for the server: the token in
    /// `token_file` (read when needed: it may be rotated) with its scheme;
    /// none when the device authenticates by its certificate alone.
    pub fn authorization(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = read_secret(path, "fleet token", MAX_TOKEN_FILE)?;
        let token = String::from_utf8(text)
            .map_err(|_| format!("the fleet token {} is not text", path.display()))?;
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the fleet token {} must be one line of printable characters",
                path.display()
            ));
        }
        let scheme = match self.token_kind {
            TokenKind::Target => "TargetToken",
            TokenKind::Gateway => "GatewayToken",
        };
        Ok(Some(format!("{scheme} {token}")))
    }

    /// What TLS trusts and presents for this server.
    pub fn tls(&self) -> crate::source::TlsFiles {
        crate::source::TlsFiles {
            ca: self.ca_file.clone(),
            client: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }
}

/// Who confirms an action the server asks the device to confirm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// Someone at the device, with `updater fleet --confirm ID`.
    #[default]
    Local,
    /// The device itself, at once.
    Auto,
}

/// hawkBit's two device credentials (its DDI security: target and gateway
/// security tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Target,
    Gateway,
}

/// A secret's bytes (a token, a TLS key): refused, as ssh refuses a key,
/// when it is not a regular file of the user the updater runs as, or
/// others may read or write it, and read only up to `max` bytes.
pub fn read_secret(path: &std::path::Path, what: &str, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let shown = path.display();
    let cannot = |e: std::io::Error| format!("cannot read the {what} {shown}: {e}");
    // Non-blocking: a FIFO planted there is refused, not waited on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("the {what} {shown} is not a regular file"));
    }
    let owner = meta.uid();
    if owner != nix::unistd::Uid::effective().as_raw() {
        return Err(format!(
            "the {what} {shown} belongs to user {owner}, not to the user the updater runs as"
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the {what} {shown} is open to others (mode {mode:04o}): chmod 600 it"
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "the {what} {shown} is larger than {max} bytes: not a {what}"
        ));
    }
    Ok(bytes)
}

/// The most a fleet token file may hold.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// Where Linux shows the serial number of the machine (SMBIOS type 1).
pub const SERIAL_PATH: &str = "/sys/class/dmi/id/product_serial";

/// What boards without a serial number of their own report instead (those
/// with spaces are refused as path segments already): as a device's name
/// on the server, a whole batch would share it.
fn placeholder_serial(serial: &str) -> bool {
    const KNOWN: &[&str] = &[
        "0123456789",
        "1234567890",
        "123456789",
        "default",
        "default_string",
        "none",
        "na",
        "null",
        "not_specified",
        "serial",
        "system_serial_number",
        "unknown",
    ];
    let lower = serial.to_ascii_lowercase();
    // 0, 00000000, FFFFFFFF, xxxx: one character repeated.
    let repeated = serial.chars().all(|c| serial.starts_with(c));
    repeated || KNOWN.contains(&lower.as_str())
}

/// `value` as a segment of every request's path: nothing that could leave
/// the device's own URL. `what` names it in the error.
fn path_segment(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} ({value:?}) must be 1 to 128 letters, digits, '-', '_', '.' or ':'"
        ))
    }
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

/// A size given as a number of bytes or as text with a unit (`"24M"`).
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => switchback_bundle::size::parse_size(&t)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("install_memory: {e}"))),
    }
}

fn default_tenant() -> String {
    "DEFAULT".into()
}
fn default_true() -> bool {
    true
}
fn default_max_poll() -> u64 {
    3600
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
    /// The memory an install may use when `--memory` does not say.
    pub fn install_memory(&self) -> u64 {
        self.install_memory.unwrap_or(crate::memory::DEFAULT_MEMORY)
    }

    pub fn load(path: &Path) -> Result<Config, UpdateError> {
        let err = |reason: String| UpdateError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// A config from the bytes of the file at `path` (named in errors).
    pub fn parse(text: &[u8], path: &Path) -> Result<Config, UpdateError> {
        let err = |reason: String| UpdateError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| err(format!("not JSON: {e}")))?;
        if !value.is_object() {
            return Err(err(
                "must be a JSON object ({\"compatible\": ..., \"keyring\": ...})".into(),
            ));
        }
        let config: Config = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.compatible.is_empty() {
            return Err("field `compatible` must not be empty".into());
        }
        // Relative paths would depend on where the updater was started.
        let mut paths = vec![("keyring", &self.keyring), ("data_dir", &self.data_dir)];
        paths.extend(self.state_dir.as_ref().map(|p| ("state_dir", p)));
        paths.extend(self.disk.as_ref().map(|p| ("disk", p)));
        for (field, p) in paths {
            if !p.is_absolute() {
                return Err(format!(
                    "field `{field}` ({}) must be an absolute path",
                    p.display()
                ));
            }
        }
        // A missing data directory (an unmounted data partition) would
        // silently start a fresh state with a security floor of 0.
        for (field, p) in [("keyring", &self.keyring), ("data_dir", &self.data_dir)] {
            if !p.is_dir() {
                return Err(format!(
                    "field `{field}` ({}) must be an existing directory",
                    p.display()
                ));
            }
        }
        let mut seconds = vec![
            ("health.deadline_s".to_string(), self.health.deadline_s),
            ("migration_timeout_s".to_string(), self.migration_timeout_s),
        ];
        for (i, c) in self.health.checks.iter().enumerate() {
            seconds.push((format!("health.checks[{i}].timeout_s"), c.timeout_s));
        }
        for (field, value) in seconds {
            if !(1..=MAX_SECONDS).contains(&value) {
                return Err(format!(
                    "field `{field}` must be 1 to {MAX_SECONDS} seconds, not {value}"
                ));
            }
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
        if let Some(f) = &self.fleet {
            f.validate()?;
        }
        if let Some(s) = &self.serve {
            s.validate()?;
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
        let c = load(r#"{"compatible":"acme","keyring":"/","data_dir":"/"}"#).unwrap();
        assert_eq!(c.boot_tries, 3);
        assert_eq!(c.state_dir(), PathBuf::from("/switchback"));
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
        let e = load(r#"{"compatible":"a","keyring":"/","data_dir":"/","boot_tries":0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("boot_tries"), "{e}");
        let e = load(
            r#"{"compatible":"a","keyring":"/","data_dir":"/","health":{"checks":[{"name":"x","command":[]}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("health.checks[0].command"), "{e}");
    }

    #[test]
    fn paths_and_numbers_are_checked_at_load() {
        let cases = [
            (r#"[1, 2]"#, "must be a JSON object"),
            (
                r#"{"compatible":"a","keyring":"keys","data_dir":"/"}"#,
                "`keyring` (keys) must be an absolute path",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"data"}"#,
                "`data_dir` (data) must be an absolute path",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/nonexistent-data"}"#,
                "`data_dir` (/nonexistent-data) must be an existing directory",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","migration_timeout_s":18446744073709551615}"#,
                "`migration_timeout_s` must be 1 to 86400 seconds",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","health":{"deadline_s":0}}"#,
                "`health.deadline_s` must be 1 to 86400",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","health":{"checks":[{"name":"x","command":["true"],"timeout_s":18446744073709551615}]}}"#,
                "`health.checks[0].timeout_s` must be 1 to 86400",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","fleet":{"url":"ftp://x","controller_id":"d","token_file":"/t","hw_revision":"1"}}"#,
                "`fleet.url` (ftp://x) must start with http:// or https://",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","fleet":{"url":"http://x","controller_id":"../admin","token_file":"/t","hw_revision":"1"}}"#,
                "`fleet.controller_id` (\"../admin\") must be 1 to 128",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","fleet":{"url":"http://x","controller_id":"d","token_file":"t","hw_revision":"1"}}"#,
                "`fleet.token_file` (t) must be an absolute path",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","fleet":{"url":"http://x","controller_id":"d","token_file":"/t","hw_revision":"1","poll":5}}"#,
                "unknown field `poll`",
            ),
            (
                r#"{"compatible":"a","keyring":"/","data_dir":"/","fleet":{"url":"http://x","controller_id":"d","token_file":"/t","hw_revision":"1","distribution":" "}}"#,
                "field `fleet.distribution` must be one line",
            ),
        ];
        for (text, message) in cases {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn the_fleet_client_holds_the_attributes_to_hawkbits_rules_and_nothing_else_does() {
        let text = |compatible: &str, hw: &str| {
            format!(
                r#"{{"compatible":"{compatible}","keyring":"/","data_dir":"/","fleet":{{"url":"http://x","controller_id":"d","token_file":"/t","hw_revision":"{hw}"}}}}"#
            )
        };
        for (compatible, hw, message) in [
            (
                "a",
                "rev~2",
                "field `fleet.hw_revision` (\"rev~2\") has '~', which hawkBit refuses",
            ),
            ("gwé", "1", "field `compatible` (\"gwé\") has 'é'"),
        ] {
            let config = load(&text(compatible, hw)).expect("other commands take it");
            let fleet = config.fleet.as_ref().unwrap();
            let e = fleet.check_attributes(&config.compatible).unwrap_err();
            assert!(e.contains(message), "{e}");
        }
        let config = load(&text("acme-gw", "rev 2 (B)")).unwrap();
        assert_eq!(
            config
                .fleet
                .as_ref()
                .unwrap()
                .check_attributes(&config.compatible),
            Ok(())
        );
    }

    #[test]
    fn placeholder_serial_numbers_are_not_device_names() {
        // What boards without a real serial number report.
        for junk in ["To Be Filled By O.E.M.", "Not Specified", "", "../x", "a/b"] {
            assert!(path_segment("serial", junk).is_err(), "{junk:?}");
        }
        for good in ["ha-a", "SN:0042.7", "CZC1234XYZ"] {
            assert!(path_segment("serial", good).is_ok(), "{good:?}");
            assert!(!placeholder_serial(good), "{good:?}");
        }
        for junk in [
            "0",
            "00000000",
            "FFFFFFFF",
            "0123456789",
            "Default_String",
            "None",
        ] {
            assert!(placeholder_serial(junk), "{junk:?}");
        }
    }
}
