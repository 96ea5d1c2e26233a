//! Where a bundle comes from: a file, standard input, or HTTP(S).
//!
//! Over HTTP a dropped connection is resumed with a `Range` request from the
//! byte where the stream stopped (every byte is still checked against the
//! signed chunk hashes, so resuming mid-chunk is as safe as at a chunk
//! boundary and wastes nothing). A server that answers a range request with
//! 200 and the whole body is detected, and the bytes already consumed are
//! skipped, so no byte is ever delivered twice or out of place.

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

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Consecutive failed attempts before giving up.
    pub max_retries: u32,
    /// First wait between attempts; doubles each time, up to 30 s.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            max_retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

pub fn open(source: &Source, http: &HttpOptions) -> anyhow::Result<Box<dyn Read + Send>> {
    Ok(match source {
        Source::File(p) => Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(p).map_err(image_tools::bundle::BundleError::io(format!(
                "opening bundle {}",
                p.display()
            )))?,
        )),
        Source::Stdin => Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
        Source::Url(u) => Box::new(HttpReader::new(u, http.clone())?),
    })
}

/// A `Read` over an HTTP body that survives dropped connections.
pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    opts: HttpOptions,
    /// Bytes delivered to our reader so far.
    pos: u64,
    /// Total length, once a response told us.
    total: Option<u64>,
    body: Option<Box<dyn Read + Send>>,
    /// How many times the server ignored Range (for tests and logs).
    pub range_ignored: u32,
    /// How many times the stream was resumed.
    pub resumes: u32,
}

fn http_err(url: &str, reason: impl Into<String>) -> io::Error {
    io::Error::other(UpdateError::Http {
        url: url.into(),
        reason: reason.into(),
    })
}

impl HttpReader {
    pub fn new(url: &str, opts: HttpOptions) -> anyhow::Result<HttpReader> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .build()
            .into();
        let mut r = HttpReader {
            agent,
            url: url.into(),
            opts,
            pos: 0,
            total: None,
            body: None,
            range_ignored: 0,
            resumes: 0,
        };
        // Connect now so that a wrong URL fails before anything else happens.
        r.connect_with_retries().map_err(anyhow::Error::from)?;
        Ok(r)
    }

    fn connect_once(&mut self) -> Result<(), (bool, io::Error)> {
        let mut req = self.agent.get(&self.url);
        if self.pos > 0 {
            req = req.header("Range", format!("bytes={}-", self.pos));
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
            Err(e) => return Err((true, http_err(&self.url, e.to_string()))),
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
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

    fn connect_with_retries(&mut self) -> io::Result<()> {
        let mut wait = self.opts.backoff;
        let mut attempt = 0;
        loop {
            match self.connect_once() {
                Ok(()) => return Ok(()),
                Err((retry, e)) => {
                    attempt += 1;
                    if !retry || attempt > self.opts.max_retries {
                        return Err(e);
                    }
                    log::warn!(
                        "{e}; retrying in {wait:?} ({attempt}/{})",
                        self.opts.max_retries
                    );
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut failures = 0;
        loop {
            if self.body.is_none() {
                self.resumes += 1;
                log::warn!("{}: resuming at byte {}", self.url, self.pos);
                self.connect_with_retries()?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let result = body.read(buf);
            match result {
                Ok(0) if buf.is_empty() => return Ok(0),
                Ok(0) if self.total.is_none_or(|t| self.pos >= t) => return Ok(0),
                Ok(0) => {
                    log::warn!(
                        "{}: connection closed at byte {} of {:?}",
                        self.url,
                        self.pos,
                        self.total
                    );
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => log::warn!("{}: {e} at byte {}", self.url, self.pos),
            }
            self.body = None;
            failures += 1;
            if failures > self.opts.max_retries {
                return Err(http_err(
                    &self.url,
                    format!("gave up after {failures} dropped connections"),
                ));
            }
            std::thread::sleep(self.opts.backoff);
        }
    }
}
