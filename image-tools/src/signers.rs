//! Where a vendor's signing key lives, one adapter each (docs/signing.md):
//! a PEM file, a PKCS#11 token (an HSM, SoftHSM2, a smart card) named by an
//! RFC 7512 URI, or an external command (a cloud KMS's CLI, Vault, an
//! air-gapped signing box) that gets the bytes to sign on standard input and
//! prints the signature. All of them sign ed25519, pure (RFC 8032); the
//! format crate checks every signature they return before it is written.

use crate::bundle::error::{BundleError, Result as BundleResult};
use crate::bundle::keys;
use crate::bundle::signing::Signer;
use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The signers a command line names, in its order.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SignerArgs {
    /// A private key (PKCS#8 PEM) to sign with; repeatable.
    #[arg(long = "key", value_name = "PEM")]
    pub keys: Vec<PathBuf>,
    /// A key in a PKCS#11 token, as an RFC 7512 URI with its module, e.g.
    /// 'pkcs11:token=release;object=vendor?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin';
    /// repeatable.
    #[arg(long = "pkcs11", value_name = "URI")]
    pub pkcs11: Vec<String>,
    /// PUBLIC=COMMAND: COMMAND (run by sh) gets the bytes to sign on its
    /// standard input and prints their ed25519 signature (64 raw bytes, hex
    /// or base64); PUBLIC is the key's public half (SPKI PEM); repeatable.
    #[arg(long = "sign-command", value_name = "PUBLIC=COMMAND")]
    pub commands: Vec<String>,
    /// Seconds a --sign-command has to print its signature (an approval
    /// on a signing box may take a while) before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub sign_timeout: u64,
}

impl SignerArgs {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.pkcs11.is_empty() && self.commands.is_empty()
    }

    /// Every signer named, ready to sign (keys read, tokens opened).
    pub fn load(&self) -> Result<Vec<Box<dyn Signer>>> {
        let mut out: Vec<Box<dyn Signer>> = Vec::new();
        for path in &self.keys {
            out.push(Box::new(keys::load_private(path)?));
        }
        for uri in &self.pkcs11 {
            // The query may hold the PIN: never in a message.
            let shown = uri.split('?').next().unwrap_or(uri);
            out.push(Box::new(
                Pkcs11Signer::open(uri).with_context(|| format!("--pkcs11 {shown}"))?,
            ));
        }
        for spec in &self.commands {
            let mut signer =
                CommandSigner::parse(spec).with_context(|| format!("--sign-command {spec}"))?;
            signer.timeout = std::time::Duration::from_secs(self.sign_timeout);
            out.push(Box::new(signer));
        }
        Ok(out)
    }
}

fn signer_err(who: &str, reason: impl std::fmt::Display) -> BundleError {
    BundleError::Key {
        path: PathBuf::from(who),
        reason: reason.to_string(),
    }
}

/// A command that signs: the message on its standard input, the signature
/// on its standard output.
pub struct CommandSigner {
    public: VerifyingKey,
    command: String,
    timeout: std::time::Duration,
}

/// The most a signing command may print: a signature is at most 128 hex
/// digits and a newline; the rest of its standard error is for the message.
const MAX_STDOUT: u64 = 4096;
const MAX_STDERR: u64 = 64 << 10;

impl CommandSigner {
    /// `PUBLIC=COMMAND`.
    pub fn parse(spec: &str) -> Result<CommandSigner> {
        let Some((public, command)) = spec.split_once('=') else {
            bail!("not PUBLIC=COMMAND (the signer's public key, then the command)");
        };
        if command.trim().is_empty() {
            bail!("no command after {public}=");
        }
        Ok(CommandSigner {
            public: keys::load_public(std::path::Path::new(public))?,
            command: command.to_string(),
            timeout: std::time::Duration::from_secs(600),
        })
    }
}

/// A signature as a tool prints it: 64 raw bytes, or hex, or base64.
fn decode_signature(out: &[u8]) -> Option<[u8; 64]> {
    if let Ok(raw) = <[u8; 64]>::try_from(out) {
        return Some(raw);
    }
    let text = std::str::from_utf8(out).ok()?.trim();
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(text, &mut sig).is_ok() {
        return Some(sig);
    }
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

impl Signer for CommandSigner {
    fn public_key(&self) -> BundleResult<VerifyingKey> {
        Ok(self.public)
    }

    fn sign(&self, message: &[u8]) -> BundleResult<[u8; 64]> {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let who = self.describe();
        // Its own process group, so that whatever it started goes with it
        // when it is killed or done.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| signer_err(&who, format!("cannot start: {e}")))?;
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let kill_group = || {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        };
        // Written and read from threads: a command that prints before it
        // has read everything would otherwise block both sides. Each stream
        // is read up to its cap, then dropped (the command gets SIGPIPE).
        let mut stdin = child.stdin.take();
        let message = message.to_vec();
        let writer =
            std::thread::spawn(move || stdin.as_mut().map_or(Ok(()), |s| s.write_all(&message)));
        let capped = |pipe: Option<Box<dyn Read + Send>>, cap: u64| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(cap + 1).read_to_end(&mut out);
                }
                out
            })
        };
        let stdout = capped(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            MAX_STDOUT,
        );
        let stderr = capped(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            MAX_STDERR,
        );
        let deadline = std::time::Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    kill_group();
                    let _ = child.wait();
                    return Err(signer_err(
                        &who,
                        format!(
                            "printed no signature in {} s (--sign-timeout); killed",
                            self.timeout.as_secs()
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => return Err(signer_err(&who, format!("waiting for it: {e}"))),
            }
        };
        // What it left running would hold the pipes open.
        kill_group();
        let written = writer.join().unwrap_or(Ok(()));
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        // Before its status: cut off, it died of SIGPIPE.
        if out.len() as u64 > MAX_STDOUT {
            return Err(signer_err(
                &who,
                format!("printed over {MAX_STDOUT} bytes, not an ed25519 signature"),
            ));
        }
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            return Err(signer_err(
                &who,
                format!("{status}: {}", last.unwrap_or("(nothing on stderr)")),
            ));
        }
        if let Err(e) = written {
            return Err(signer_err(
                &who,
                format!("it did not read the message: {e}"),
            ));
        }
        decode_signature(&out).ok_or_else(|| {
            signer_err(
                &who,
                format!(
                    "printed {} bytes, not an ed25519 signature (64 bytes, hex or base64)",
                    out.len()
                ),
            )
        })
    }

    fn describe(&self) -> String {
        format!("the command `{}`", self.command)
    }
}

/// An RFC 7512 URI's attributes (path and query), percent-decoded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pkcs11Uri {
    token: Option<String>,
    serial: Option<String>,
    object: Option<String>,
    id: Option<Vec<u8>>,
    slot_id: Option<u64>,
    module_path: Option<String>,
    pin_value: Option<String>,
    pin_source: Option<String>,
}

fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("a % without two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("%{hex} is not hex"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

impl Pkcs11Uri {
    fn parse(uri: &str) -> Result<Pkcs11Uri> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .context("a PKCS#11 URI starts with pkcs11:")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let text = |v: &str| -> Result<String> {
            String::from_utf8(percent_decode(v)?).context("not UTF-8 after percent-decoding")
        };
        let mut u = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .with_context(|| format!("{attr:?} is not NAME=VALUE"))?;
            match k {
                "token" => u.token = Some(text(v)?),
                "serial" => u.serial = Some(text(v)?),
                "object" => u.object = Some(text(v)?),
                "id" => u.id = Some(percent_decode(v)?),
                "slot-id" => {
                    u.slot_id = Some(
                        text(v)?
                            .parse()
                            .with_context(|| format!("slot-id={v} is not a number"))?,
                    )
                }
                "type" if v != "private" => bail!("type={v}: only a private key signs"),
                "type" => {}
                // Ignoring an attribute that narrows the search would
                // widen it: another token's key could sign.
                other => bail!(
                    "attribute {other:?} is not supported: name the token by token=, serial= or slot-id="
                ),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .with_context(|| format!("{attr:?} is not NAME=VALUE"))?;
            match k {
                "module-path" => u.module_path = Some(text(v)?),
                "pin-value" => u.pin_value = Some(text(v)?),
                "pin-source" => u.pin_source = Some(text(v)?),
                other => bail!("unknown query attribute {other:?}"),
            }
        }
        if u.object.is_none() && u.id.is_none() {
            bail!("name the key with object= or id=");
        }
        Ok(u)
    }
}

/// A private key in a PKCS#11 token, signing with `CKM_EDDSA`.
pub struct Pkcs11Signer {
    uri: String,
    session: cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    public: VerifyingKey,
    // Dropped after the session: it closes through the module.
    _context: cryptoki::context::Pkcs11,
}

impl Pkcs11Signer {
    pub fn open(uri: &str) -> Result<Pkcs11Signer> {
        use cryptoki::context::{CInitializeArgs, Pkcs11};
        use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
        use cryptoki::session::UserType;
        let u = Pkcs11Uri::parse(uri)?;
        let module = u
            .module_path
            .clone()
            .or_else(|| std::env::var("PKCS11_MODULE").ok())
            .context("no module: add ?module-path=… to the URI or set PKCS11_MODULE")?;
        let context = Pkcs11::new(&module).with_context(|| format!("loading {module}"))?;
        context
            .initialize(CInitializeArgs::OsThreads)
            .with_context(|| format!("initialising {module}"))?;
        let slots = context.get_slots_with_token().context("listing tokens")?;
        let mut matching = Vec::new();
        for slot in slots {
            let info = context.get_token_info(slot).context("reading a token")?;
            let token_ok = u.token.as_deref().is_none_or(|t| info.label().trim() == t);
            let serial_ok = u
                .serial
                .as_deref()
                .is_none_or(|s| info.serial_number().trim() == s);
            let slot_ok = u.slot_id.is_none_or(|id| slot.id() == id);
            if token_ok && serial_ok && slot_ok {
                matching.push(slot);
            }
        }
        let slot = match matching.as_slice() {
            [one] => *one,
            [] => bail!(
                "no token {} in {module}",
                u.token.as_deref().unwrap_or("(any)")
            ),
            _ => bail!(
                "{} tokens in {module} match: name one by token=, serial= or slot-id=",
                matching.len()
            ),
        };
        let session = context.open_ro_session(slot).context("opening a session")?;
        let pin = match (&u.pin_value, &u.pin_source) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(src)) => {
                let path = src.strip_prefix("file:").unwrap_or(src);
                let pin = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the PIN from {path}"))?;
                Some(pin.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => None,
        };
        let logged_in = pin.is_some();
        if let Some(pin) = pin {
            session
                .login(UserType::User, Some(&cryptoki::types::AuthPin::new(pin)))
                .context("logging in to the token (wrong PIN?)")?;
        }
        let mut template = vec![Attribute::KeyType(KeyType::EC_EDWARDS)];
        if let Some(label) = &u.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &u.id {
            template.push(Attribute::Id(id.clone()));
        }
        let find = |template: &[Attribute],
                    class: ObjectClass|
         -> Result<cryptoki::object::ObjectHandle> {
            let mut t = template.to_vec();
            t.push(Attribute::Class(class));
            let found = session.find_objects(&t).context("searching the token")?;
            match found.as_slice() {
                [one] => Ok(*one),
                [] if class == ObjectClass::PRIVATE_KEY && !logged_in => bail!(
                    "no ed25519 private key matches the URI without a login: add pin-source= or pin-value="
                ),
                [] => bail!("no ed25519 {class} matches the URI in the token"),
                _ => bail!(
                    "{} ed25519 {class}s match the URI: name one by id=",
                    found.len()
                ),
            }
        };
        let key = find(&template, ObjectClass::PRIVATE_KEY)?;
        // The public half is the one of the same CKA_ID: a label alone may
        // name another pair's public key.
        let id = match session
            .get_attributes(key, &[AttributeType::Id])
            .context("reading the private key's id")?
            .into_iter()
            .next()
        {
            Some(Attribute::Id(id)) if !id.is_empty() => id,
            _ => bail!("the private key has no CKA_ID to find its public key by"),
        };
        template.retain(|a| !matches!(a, Attribute::Id(_)));
        template.push(Attribute::Id(id));
        let public_handle = find(&template, ObjectClass::PUBLIC_KEY)?;
        let point = session
            .get_attributes(public_handle, &[AttributeType::EcPoint])
            .context("reading the public key")?;
        let Some(Attribute::EcPoint(point)) = point.into_iter().next() else {
            bail!("the public key has no CKA_EC_POINT");
        };
        // CKA_EC_POINT: the 32 bytes, DER OCTET STRING-wrapped (as SoftHSM2
        // and OpenSC store it) or bare.
        let raw: [u8; 32] = match point.as_slice() {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.try_into()?,
            bare if bare.len() == 32 => bare.try_into()?,
            _ => bail!("the public key's CKA_EC_POINT is not an ed25519 point"),
        };
        let public = VerifyingKey::from_bytes(&raw).context("the token's public key")?;
        Ok(Pkcs11Signer {
            uri: uri.split('?').next().unwrap_or(uri).to_string(),
            session,
            key,
            public,
            _context: context,
        })
    }
}

impl Signer for Pkcs11Signer {
    fn public_key(&self) -> BundleResult<VerifyingKey> {
        Ok(self.public)
    }

    fn sign(&self, message: &[u8]) -> BundleResult<[u8; 64]> {
        use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
        use cryptoki::mechanism::Mechanism;
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = self
            .session
            .sign(&mechanism, self.key, message)
            .map_err(|e| signer_err(&self.uri, format!("CKM_EDDSA: {e}")))?;
        sig.try_into().map_err(|s: Vec<u8>| {
            signer_err(
                &self.uri,
                format!("returned {} bytes, not an ed25519 signature", s.len()),
            )
        })
    }

    fn describe(&self) -> String {
        self.uri.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_read_as_rfc_7512_writes_them() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=vendor;id=%01%ff;type=private?module-path=/m.so&pin-value=1234",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("vendor"));
        assert_eq!(u.id, Some(vec![1, 0xff]));
        assert_eq!(u.module_path.as_deref(), Some("/m.so"));
        assert_eq!(u.pin_value.as_deref(), Some("1234"));
        let u = Pkcs11Uri::parse("pkcs11:slot-id=7;id=%01").unwrap();
        assert_eq!(u.slot_id, Some(7));
        for bad in [
            "token=x;object=y",
            "pkcs11:token=x",
            "pkcs11:object=y;type=public",
            "pkcs11:object=%zz",
            "pkcs11:object=y;colour=red",
            "pkcs11:object=y;manufacturer=SoftHSM",
            "pkcs11:object=y;slot-id=first",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signature_reads_raw_hex_or_base64() {
        let sig = [0xa5u8; 64];
        assert_eq!(decode_signature(&sig), Some(sig));
        assert_eq!(
            decode_signature(format!("{}\n", hex::encode(sig)).as_bytes()),
            Some(sig)
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        assert_eq!(decode_signature(b64.as_bytes()), Some(sig));
        assert_eq!(decode_signature(b"not a signature"), None);
        assert_eq!(decode_signature(&[0u8; 63]), None);
    }
}
