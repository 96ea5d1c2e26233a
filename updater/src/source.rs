//! Where a bundle comes from: a file, standard input, or HTTP(S).
//!
//! Over HTTP a dropped connection is resumed with a `Range` request from the
//! byte where the stream stopped (every byte is still checked against the
//! signed chunk hashes, so resuming mid-chunk is as safe as at a chunk
//! boundary and wastes nothing). A server that answers a range request with
//! 200 and the whole body is detected, and the bytes already consumed are
//! skipped, so no byte is ever delivered twice or out of place. A resume
//! carries `If-Range` with the first response's validator (a strong ETag,
//! else Last-Modified): if the file on the server changed meanwhile, the
//! server sends it whole and the download stops instead of splicing two
//! files.
//!
//! A server that stops answering is dropped after `idle_timeout` without a
//! byte (connecting, waiting for the response, or any read of the body),
//! and resumed. Every failure spends one unit of one retry budget for the
//! whole download; TLS failures and redirect loops are not retried.

use crate::error::UpdateError;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
    Url(String),
}

impl std::str::FromStr for Source {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Source, Self::Err> {
        Ok(if s == "-" {
            Source::Stdin
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Source::Url(s.to_string())
        } else {
            Source::File(PathBuf::from(s))
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Stdin => f.write_str("standard input"),
            Source::Url(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct HttpOptions {
    /// Over HTTP: failed attempts (connections refused, dropped or
    /// stalled) allowed over the whole download, with doubling waits.
    #[arg(long = "retries", default_value_t = 10)]
    pub max_retries: u32,
    /// First wait between attempts; doubles each time, up to 30 s.
    #[arg(skip = Duration::from_millis(500))]
    pub backoff: Duration,
    /// Over HTTP: seconds without progress (connecting, the response, each
    /// read) before a connection is dropped and resumed.
    #[arg(long = "idle-timeout", default_value = "30", value_parser = parse_idle_timeout)]
    pub idle_timeout: Duration,
    /// Over HTTP: the least average rate, in bytes a second, once the first
    /// --idle-timeout has passed; a slower download (a server that drips)
    /// is ended, so it ends at the latest idle-timeout + size / rate after
    /// its start.
    #[arg(long = "min-rate", default_value_t = DEFAULT_MIN_RATE,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub min_rate: u64,
}

/// Bytes a second a download must average after its first idle timeout
/// (connecting, TLS, the first bytes).
pub const DEFAULT_MIN_RATE: u64 = 16 << 10;

fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(s @ 1..=3600) => Ok(Duration::from_secs(s)),
        _ => Err(format!("{text:?}: give 1 to 3600 seconds")),
    }
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            max_retries: 10,
            backoff: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(30),
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

/// Opens `source`. A bundle wrapped for fleet servers (`.swu`) is
/// unwrapped here, so every way in takes both forms.
const READ_BUFFER: usize = 128 << 10;

pub fn open(source: &Source, http: &HttpOptions) -> anyhow::Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = match source {
        // Frames are read whole past the buffer; it serves the small reads
        // of the header and the wrapper, and counts against the install's
        // memory (crate::memory).
        Source::File(p) => Box::new(BufReader::with_capacity(READ_BUFFER, open_file(p)?)),
        Source::Stdin => Box::new(BufReader::with_capacity(READ_BUFFER, io::stdin())),
        Source::Url(u) => Box::new(HttpReader::new(u, http.clone())?),
    };
    unwrap(raw, &source.to_string())
}

/// A bundle file: a regular file (or a block device, which has an end too).
/// A FIFO, socket or character device may never end, and the install would
/// hold the disk's lock while it waits: refused, as is a directory.
fn open_file(path: &std::path::Path) -> anyhow::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: String| switchback_bundle::BundleError::io(what);
    // Non-blocking, so that opening a FIFO with no writer returns at once
    // and is refused below instead of waiting.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(format!("opening bundle {}", path.display())))?;
    let kind = file
        .metadata()
        .map_err(io(format!("reading bundle {}", path.display())))?
        .file_type();
    let refused = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO, which may never end"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device, which may never end"
    } else {
        // Reads of a regular file or a block device wait as they should.
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| io(format!("reading bundle {}", path.display()))(e.into()))?;
        return Ok(file);
    };
    Err(UpdateError::NotABundleFile {
        path: path.to_path_buf(),
        kind: refused,
    }
    .into())
}

/// The bundle inside `raw`, which is a bundle or a `.swu` wrapping one.
pub fn unwrap(raw: Box<dyn Read + Send>, name: &str) -> anyhow::Result<Box<dyn Read + Send>> {
    let opened = switchback_bundle::swu::open(raw)?;
    if let switchback_bundle::swu::Opened::Wrapped { member, .. } = &opened {
        log::info!(
            "{name}: a .swu wrapper; its bundle {:?} ({} bytes) is what is checked",
            member.name,
            member.size
        );
    }
    Ok(Box::new(opened))
}

/// A `Read` over an HTTP body that survives dropped connections.
pub struct HttpReader {
    agent: ureq::Agent,
    authorization: Option<String>,
    url: String,
    opts: HttpOptions,
    /// Bytes delivered to our reader so far.
    pos: u64,
    /// Total length, once a response told us.
    total: Option<u64>,
    body: Option<Box<dyn Read + Send>>,
    /// The first response's ETag or Last-Modified, sent as `If-Range`.
    validator: Option<String>,
    /// Failures left in the retry budget.
    retries_left: u32,
    /// How many times the server ignored Range (for tests and logs).
    pub range_ignored: u32,
    /// How many times the stream was resumed.
    pub resumes: u32,
    /// Time spent waiting on the network (connecting, reading): what the
    /// minimum rate is measured against, not the consumer's own pauses.
    waited: Duration,
}

fn http_err(url: &str, reason: impl Into<String>) -> io::Error {
    io::Error::other(UpdateError::Http {
        url: url.into(),
        reason: reason.into(),
    })
}

/// What is wrong with a server's certificate, in words a technician can
/// act on, from rustls's own classification.
fn certificate_problem(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let known = match e {
        C::UnknownIssuer => "it is issued by an authority this device does not trust",
        C::Other(other)
            if other.0.downcast_ref::<webpki::Error>()
                == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            "the server presents a CA (self-signed) certificate as its own"
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired",
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "it is not valid yet (is the device's clock right?)"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for this host name"
        }
        C::Revoked => "it is revoked",
        C::BadSignature => "its signature does not verify",
        _ => return e.to_string(),
    };
    known.to_string()
}

/// A one-line reason for a failed request, and whether trying again can help.
fn describe(e: &ureq::Error, idle: Duration) -> (bool, String) {
    // rustls's error reaches us as ureq's Rustls or inside its Io (a
    // failed handshake); ureq's error has no source() to walk.
    let tls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => crate::error::typed::<rustls::Error>(io),
        _ => None,
    };
    match (e, tls) {
        (ureq::Error::Timeout(_), _) => (true, format!("no answer for {} s ({e})", idle.as_secs())),
        (ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed, _) => {
            (false, format!("redirect loop or broken redirect: {e}"))
        }
        (ureq::Error::HostNotFound, _) => (true, format!("host not found: {e}")),
        (_, Some(rustls::Error::InvalidCertificate(c))) => (
            false,
            format!("certificate not trusted: {}", certificate_problem(c)),
        ),
        (_, Some(t)) => (false, format!("TLS failed: {t}")),
        (ureq::Error::Tls(_), None) => (false, format!("TLS failed: {e}")),
        _ => (true, e.to_string()),
    }
}

/// An HTTP agent that drops a connection after `idle` without progress,
/// trusting the CA certificates in the PEM file `ca` instead of the
/// built-in roots when one is given. With `status_as_error`, a 4xx or 5xx
/// answer is an error; without, the caller reads its status and headers.
/// `whole` bounds a request from start to end, name lookup included.
/// What TLS trusts instead of the built-in roots, and the client
/// certificate and key it presents when a server asks for one.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

pub fn agent(
    idle: Duration,
    tls: &TlsFiles,
    status_as_error: bool,
    whole: Option<Duration>,
) -> anyhow::Result<ureq::Agent> {
    use anyhow::Context;
    let idle = Some(idle);
    let config = ureq::Agent::config_builder()
        .timeout_connect(idle)
        .timeout_send_request(idle)
        .timeout_recv_response(idle)
        .timeout_per_read(idle)
        .timeout_recv_body(None)
        .timeout_resolve(idle)
        .timeout_global(whole)
        .http_status_as_error(status_as_error);
    let mut builder = ureq::tls::TlsConfig::builder();
    if let Some((cert, key)) = &tls.client {
        let chain = std::fs::read(cert)
            .with_context(|| format!("reading the client certificate {}", cert.display()))?;
        let chain = ureq::tls::parse_pem(&chain)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c.to_owned())),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the client certificate {} is not PEM", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!(
                "the client certificate {} holds no certificate",
                cert.display()
            );
        }
        let pem =
            crate::config::read_secret(key, "client key", 64 << 10).map_err(anyhow::Error::msg)?;
        let key = ureq::tls::PrivateKey::from_pem(&pem).with_context(|| {
            format!("the client key {} is not a PEM private key", key.display())
        })?;
        builder = builder.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    if let Some(ca) = &tls.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("CA file {} is not PEM", ca.display()))?;
        if certs.is_empty() {
            anyhow::bail!("CA file {} holds no certificate", ca.display());
        }
        builder = builder.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(config.tls_config(builder.build()).build().into())
}

impl HttpReader {
    pub fn new(url: &str, opts: HttpOptions) -> anyhow::Result<HttpReader> {
        let agent = agent(opts.idle_timeout, &TlsFiles::default(), true, None)?;
        HttpReader::with_agent(url, opts, agent, None)
    }

    /// Over `agent`, sending `authorization` (an `Authorization` header
    /// value) with every request.
    pub fn with_agent(
        url: &str,
        opts: HttpOptions,
        agent: ureq::Agent,
        authorization: Option<String>,
    ) -> anyhow::Result<HttpReader> {
        let retries = opts.max_retries;
        let mut r = HttpReader {
            agent,
            authorization,
            url: url.into(),
            opts,
            pos: 0,
            total: None,
            body: None,
            validator: None,
            retries_left: retries,
            range_ignored: 0,
            resumes: 0,
            waited: Duration::ZERO,
        };
        // Connect now so that a wrong URL fails before anything else happens.
        r.connect_with_retries().map_err(anyhow::Error::from)?;
        Ok(r)
    }

    fn connect_once(&mut self) -> Result<(), (bool, io::Error)> {
        let mut req = self.agent.get(&self.url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a.as_str());
        }
        if self.pos > 0 {
            req = req.header("Range", format!("bytes={}-", self.pos));
            if let Some(v) = &self.validator {
                req = req.header("If-Range", v.as_str());
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(code)) => {
                // 4xx will not get better by asking again; 5xx might.
                let retry = code >= 500;
                return Err((
                    retry,
                    http_err(&self.url, format!("server answered {code}")),
                ));
            }
            Err(e) => {
                let (retry, reason) = describe(&e, self.opts.idle_timeout);
                return Err((retry, http_err(&self.url, reason)));
            }
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if self.pos == 0 {
            // Only a strong ETag may guard a range (RFC 9110 13.1.5).
            self.validator = header("etag")
                .filter(|t| !t.starts_with("W/"))
                .or_else(|| header("last-modified"));
        }
        let mut skip = 0u64;
        match status {
            206 => {
                let range = header("content-range").unwrap_or_default();
                let start = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if start != Some(self.pos) {
                    return Err((
                        true,
                        http_err(
                            &self.url,
                            format!("asked for byte {} but got range {range:?}", self.pos),
                        ),
                    ));
                }
                if let Some(total) = range.rsplit('/').next().and_then(|t| t.parse().ok()) {
                    self.total = Some(total);
                }
            }
            200 => {
                if let Some(len) = header("content-length").and_then(|l| l.parse().ok()) {
                    self.total = Some(len);
                }
                // A server that ignores Range sends the whole file: the same
                // one (its validator unchanged) is skipped into, another is not.
                let same = header("etag")
                    .filter(|t| !t.starts_with("W/"))
                    .or_else(|| header("last-modified"))
                    == self.validator;
                if self.pos > 0 && self.validator.is_some() && !same {
                    return Err((
                        false,
                        http_err(
                            &self.url,
                            format!(
                                "the file on the server changed during the download (it no longer matches {}); start the install again",
                                self.validator.as_deref().unwrap_or_default()
                            ),
                        ),
                    ));
                }
                if self.pos > 0 {
                    log::warn!(
                        "{}: server ignores Range; skipping {} bytes already read",
                        self.url,
                        self.pos
                    );
                    self.range_ignored += 1;
                    skip = self.pos;
                }
            }
            other => {
                return Err((
                    false,
                    http_err(&self.url, format!("unexpected status {other}")),
                ))
            }
        }
        let mut body: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
        if skip > 0 {
            let skipped =
                io::copy(&mut (&mut body).take(skip), &mut io::sink()).map_err(|e| (true, e))?;
            if skipped != skip {
                return Err((
                    true,
                    http_err(&self.url, "body shorter than on the previous attempt"),
                ));
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// Spends one unit of the retry budget, waiting before the next try;
    /// fails when the budget is gone.
    fn spend_retry(&mut self, e: io::Error) -> io::Result<()> {
        if self.retries_left == 0 {
            return Err(http_err(
                &self.url,
                format!(
                    "gave up after {} failed attempts; the last: {}",
                    self.opts.max_retries + 1,
                    e.get_ref().map_or(e.to_string(), |inner| inner.to_string())
                ),
            ));
        }
        let spent = self.opts.max_retries - self.retries_left;
        let wait = crate::backoff::Backoff {
            first: self.opts.backoff,
            max: Duration::from_secs(30),
        }
        .after(spent + 1);
        self.retries_left -= 1;
        log::warn!(
            "{e}; retrying in {wait:?} ({} retries left)",
            self.retries_left
        );
        std::thread::sleep(wait);
        Ok(())
    }

    fn connect_with_retries(&mut self) -> io::Result<()> {
        loop {
            match self.connect_once() {
                Ok(()) => return Ok(()),
                Err((false, e)) => return Err(e),
                Err((true, e)) => self.spend_retry(e)?,
            }
        }
    }
}

impl HttpReader {
    /// Ends a download that has fallen below the minimum average rate
    /// ([`HttpOptions::min_rate`]): a server that drips a byte now and then
    /// would otherwise hold the disk's lock for ever.
    fn check_rate(&self) -> io::Result<()> {
        let elapsed = self.waited;
        let Some(counted) = elapsed.checked_sub(self.opts.idle_timeout) else {
            return Ok(());
        };
        if self.pos >= self.opts.min_rate.saturating_mul(counted.as_secs()) {
            return Ok(());
        }
        Err(http_err(
            &self.url,
            format!(
                "too slow: {} bytes in {} s of waiting on the network, below the minimum of {} bytes/s after the first {} s (--min-rate)",
                self.pos,
                elapsed.as_secs(),
                self.opts.min_rate,
                self.opts.idle_timeout.as_secs()
            ),
        ))
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check_rate()?;
            let waiting = std::time::Instant::now();
            if self.body.is_none() {
                self.resumes += 1;
                log::warn!("{}: resuming at byte {}", self.url, self.pos);
                let connected = self.connect_with_retries();
                self.waited += waiting.elapsed();
                connected?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let waiting = std::time::Instant::now();
            let result = body.read(buf);
            self.waited += waiting.elapsed();
            match result {
                Ok(0) if buf.is_empty() => return Ok(0),
                Ok(0) if self.total.is_none_or(|t| self.pos >= t) => return Ok(0),
                Ok(0) => {
                    self.body = None;
                    let why = format!("connection closed at byte {} of {:?}", self.pos, self.total);
                    self.spend_retry(http_err(&self.url, why))?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => {
                    self.body = None;
                    let stalled = e.kind() == io::ErrorKind::TimedOut
                        || e.to_string().to_lowercase().contains("timeout");
                    let why = if stalled {
                        format!(
                            "no data for {} s at byte {}",
                            self.opts.idle_timeout.as_secs(),
                            self.pos
                        )
                    } else {
                        format!("{e} at byte {}", self.pos)
                    };
                    self.spend_retry(http_err(&self.url, why))?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    /// The words depend on rustls's variants, not on how it prints them.
    #[test]
    fn certificate_problems_are_named_by_their_kind() {
        let ca = C::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        for (e, want) in [
            (C::UnknownIssuer, "an authority this device does not trust"),
            (ca, "a CA (self-signed) certificate"),
            (C::Expired, "it has expired"),
            (C::NotValidYet, "the device's clock"),
            (C::NotValidForName, "not valid for this host name"),
        ] {
            assert!(certificate_problem(&e).contains(want), "{e:?}");
        }
        let revoked = ureq::Error::Rustls(rustls::Error::InvalidCertificate(C::Revoked));
        let (retry, why) = describe(&revoked, Duration::from_secs(30));
        assert!(
            !retry && why == "certificate not trusted: it is revoked",
            "{why}"
        );
    }
}

/// An artifact's SHA-256 as a fleet server announced it, checked over
/// every byte of the download: the reader given to the install hashes
/// what passes through it, and [`ArtifactDigest::check`] reads whatever
/// the install left unread (a `.swu`'s last members) and compares, before
/// anything is flipped. Clones share one download.
#[derive(Clone)]
pub struct ArtifactDigest {
    name: String,
    expected: [u8; 32],
    inner: std::sync::Arc<std::sync::Mutex<Digesting>>,
}

struct Digesting {
    reader: Box<dyn Read + Send>,
    sha256: sha2::Sha256,
    bytes: u64,
}

impl std::fmt::Debug for ArtifactDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArtifactDigest({}, {})",
            self.name,
            hex::encode(self.expected)
        )
    }
}

impl ArtifactDigest {
    /// Wraps the download `reader` of the artifact `name`, whose SHA-256
    /// the server says is `expected` (hex); an `expected` that is no
    /// SHA-256 is refused here.
    pub fn new(
        name: &str,
        expected: &str,
        reader: Box<dyn Read + Send>,
    ) -> Result<ArtifactDigest, UpdateError> {
        let bad = || UpdateError::ArtifactMismatch {
            artifact: name.into(),
            detail: format!("the server's SHA-256 {expected:?} is not 64 hex digits"),
        };
        let mut digest = [0u8; 32];
        hex::decode_to_slice(expected.trim(), &mut digest).map_err(|_| bad())?;
        Ok(ArtifactDigest {
            name: name.into(),
            expected: digest,
            inner: std::sync::Arc::new(std::sync::Mutex::new(Digesting {
                reader,
                sha256: sha2::Digest::new(),
                bytes: 0,
            })),
        })
    }

    /// Reads the rest of the artifact and compares its SHA-256 with the
    /// server's. Called once, when the install has read what it needs.
    pub fn check(&self) -> Result<(), UpdateError> {
        let mut d = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rest = [0u8; 64 << 10];
        loop {
            match d.read_some(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The network's failure, not the artifact's: tried again.
                Err(e) => {
                    return Err(UpdateError::Http {
                        url: self.name.clone(),
                        reason: format!("reading its last bytes: {e}"),
                    })
                }
            }
        }
        let got: [u8; 32] = sha2::Digest::finalize_reset(&mut d.sha256).into();
        if got != self.expected {
            return Err(UpdateError::ArtifactMismatch {
                artifact: self.name.clone(),
                detail: format!(
                    "its {} bytes have SHA-256 {}, the server announced {}",
                    d.bytes,
                    hex::encode(got),
                    hex::encode(self.expected)
                ),
            });
        }
        Ok(())
    }
}

impl Digesting {
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        sha2::Digest::update(&mut self.sha256, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Read for ArtifactDigest {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read_some(buf)
    }
}
