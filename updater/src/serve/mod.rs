//! `updater serve`: the local API (docs/api.md) on a Unix socket, for a
//! technician's tools and an integrator's UI.
//!
//! Every state change goes through the code, the disk's lock and the
//! records the command line uses ([`crate::cli`], [`crate::install`],
//! [`crate::activate`], [`crate::rollback`], [`crate::health`]), one at a
//! time; this module only carries requests to them and their outcomes back
//! as JSON. An install streams the request body straight into the inactive
//! slot, with no copy on the disk; its events go to every `GET /v1/events`
//! listener as Server-Sent Events.
//!
//! One request a connection, each on a thread of its own, at most
//! [`MAX_REQUESTS`] at once. A client is never trusted to finish: the
//! request's head must come within [`HEAD_TIMEOUT`], an upload may pause
//! no longer than `--upload-idle`, a reply or an event that cannot be
//! written within [`WRITE_TIMEOUT`] ends the connection, and what a client
//! declares it will send is never waited for unless it is used: after a
//! reply, what still comes is dropped for at most [`LINGER`] (so that the
//! client reads its reply rather than a reset), and the connection is
//! closed. The request is parsed by `httparse`.
//!
//! Access on the socket is the socket's: its owner and group (mode 0660).
//! With `serve.listen` in the config, the API and the technician's page
//! (embedded in the binary, [`page`]) are also on that TCP address, in TLS
//! when a certificate is configured, and only after a login ([`auth`]).

mod auth;
mod conn;
mod page;

pub use auth::{remove_user, set_password};

use crate::cli::{Device, History};
use crate::events::{Event, Observer};
use crate::state::StateFile;
use anyhow::{anyhow, Result};
use bootctl::host::DiskArgs;
use conn::{Conn, Peer};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

/// Where the systemd unit puts the socket.
pub const DEFAULT_SOCKET: &str = "/run/switchback/updater.sock";
/// Requests handled at once; more are answered 503 at once.
const MAX_REQUESTS: usize = 16;
/// `events` listeners at once, fewer than the requests, so that a page
/// left open in many tabs never keeps an install out.
const MAX_LISTENERS: usize = 8;
/// The request's head: its size, and how long it may take to come.
const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A reply, or an event, not taken by the client within this ends the
/// connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long what a client still sends after its reply is read and dropped.
const LINGER: Duration = Duration::from_secs(2);
/// Largest JSON request body (activate, rollback): a few fields.
const MAX_JSON: u64 = 16 << 10;
/// What an upload may exceed the slot by: the bundle's header, signatures
/// and the `.swu` wrapper around an image that fills the slot.
const UPLOAD_SLACK: u64 = 1 << 20;
/// Events an `events` listener may fall behind by before it is dropped:
/// a slow reader never slows an install.
const EVENT_BACKLOG: usize = 256;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// The group that may use the socket besides its owner.
    pub group: Option<String>,
    pub config_path: PathBuf,
    pub target: DiskArgs,
    /// An upload that sends nothing for this long is ended and its lock
    /// released.
    pub upload_idle: Duration,
    pub threads: usize,
    pub memory: Option<u64>,
}

/// What the request handlers share.
struct Service {
    opts: ServeOptions,
    /// One state change at a time in this process: the disk's lock is the
    /// process's, and a second taker in it would be refused as a bug, not
    /// told "busy".
    changing: Mutex<()>,
    listeners: Mutex<Vec<Listener>>,
    /// Listeners' threads running, evicted ones until they notice.
    listening: AtomicUsize,
    requests: AtomicUsize,
    /// The same for the network listener, counted apart: nobody on the
    /// network, logged in or not, can crowd out the socket's users.
    network_requests: AtomicUsize,
    /// The network listener's logins; none without `serve.listen`.
    gate: Option<auth::Gate>,
}

/// Where an `events` listener's events go, and the flag that tells its
/// thread it was dropped for falling behind.
struct Listener {
    events: SyncSender<String>,
    evicted: Arc<std::sync::atomic::AtomicBool>,
}

/// Serves until killed. The device is opened once first, so that a broken
/// config or a missing disk fails the unit at start, not at the first
/// request.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let dev = Device::open(&opts.config_path, &opts.target, false)?;
    // The network side is checked whole (a user set, the certificate and
    // key readable, the port free) before anything listens.
    let network = match &dev.config.serve {
        Some(net) => {
            let gate = auth::Gate::new(&dev.config)?;
            let tls = match (&net.tls_cert, &net.tls_key) {
                (Some(cert), Some(key)) => Some(Arc::new(conn::tls_config(cert, key)?)),
                _ => None,
            };
            let tcp = TcpListener::bind(net.listen)
                .map_err(|e| anyhow!("listening on {} (serve.listen): {e}", net.listen))?;
            Some((gate, tls, tcp))
        }
        None => None,
    };
    let listener = listen(&opts.socket, opts.group.as_deref())?;
    log::info!("serving the API on {}", opts.socket.display());
    let (gate, network) = match network {
        Some((gate, tls, tcp)) => (Some(gate), Some((tls, tcp))),
        None => (None, None),
    };
    let service = Arc::new(Service {
        opts,
        changing: Mutex::new(()),
        listeners: Mutex::new(Vec::new()),
        listening: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        network_requests: AtomicUsize::new(0),
        gate,
    });
    if let Some((tls, tcp)) = network {
        let scheme = if tls.is_some() { "https" } else { "http" };
        log::info!(
            "serving the API and the page on {scheme}://{}",
            tcp.local_addr()?
        );
        let service = service.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let conn = stream.and_then(|s| {
                    // Small replies and events go out at once.
                    s.set_nodelay(true)?;
                    Conn::tcp(s, tls.as_ref())
                });
                match conn {
                    Ok(conn) => accept(&service, conn),
                    Err(e) => log::warn!("api: accepting a connection: {e}"),
                }
            }
            log::error!("api: the network listener closed");
        });
    }
    for stream in listener.incoming() {
        match stream {
            Ok(s) => accept(&service, Conn::unix(s)),
            Err(e) => log::warn!("api: accepting a connection: {e}"),
        }
    }
    Err(anyhow!(
        "the API socket {} closed",
        service.opts.socket.display()
    ))
}

/// Gives `conn` a thread of its own, or a 503 when [`MAX_REQUESTS`] run.
fn accept(service: &Arc<Service>, conn: Conn) {
    let network = matches!(conn.peer, Peer::Network { .. });
    let Some(place) = Place::take(service, network) else {
        // A short reply on a fresh connection fits its buffer: this write
        // does not wait for the client. A TLS one would wait for its
        // handshake: it is closed instead.
        if !matches!(conn.peer, Peer::Network { tls: true, .. }) {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_reply(
                &conn,
                problem(503, 1, "too many requests at once; try again").into(),
            );
        }
        return;
    };
    std::thread::spawn(move || place.0.connection(conn));
}

/// A place among the requests handled at once, the socket's or the
/// network's, given back when its thread ends, a panic included.
struct Place(Arc<Service>, bool);

impl Place {
    fn take(service: &Arc<Service>, network: bool) -> Option<Place> {
        let place = Place(service.clone(), network);
        let before = place.count().fetch_add(1, Ordering::SeqCst);
        (before < MAX_REQUESTS).then_some(place)
    }

    fn count(&self) -> &AtomicUsize {
        if self.1 {
            &self.0.network_requests
        } else {
            &self.0.requests
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.count().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds the socket with mode 0660 from the start (the umask, not a chmod
/// after: no moment where others may connect). A stale socket of a
/// stopped service is replaced; a live one, or another kind of file, is
/// refused.
fn listen(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(anyhow!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "another service already listens on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow!("removing the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("creating {} for the API socket: {e}", dir.display()))?;
    }
    // Still one thread: the umask is the process's.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| anyhow!("listening on {}: {e}", path.display()))?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("--group {name}: no such group"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| anyhow!("giving {} to group {name}: {e}", path.display()))?;
    }
    Ok(listener)
}

/// A reply: its status and JSON body.
struct Reply(u16, Value);

/// What goes out: a reply, a page's file, and their headers.
struct Out {
    status: u16,
    content_type: &'static str,
    body: std::borrow::Cow<'static, [u8]>,
    headers: Vec<String>,
}

impl From<Reply> for Out {
    fn from(Reply(status, body): Reply) -> Out {
        Out {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes().into(),
            headers: Vec::new(),
        }
    }
}

impl Out {
    fn with(mut self, header: String) -> Out {
        self.headers.push(header);
        self
    }
}

fn problem(status: u16, code: i32, message: &str) -> Reply {
    Reply(status, json!({"error": message, "code": code}))
}

/// An error as the API answers it: the updater's exit code (docs/updater.md,
/// docs/bundle-format.md) and its message, under the HTTP status of its
/// kind (the table in docs/api.md).
fn failure(e: &anyhow::Error) -> Reply {
    let code = crate::exit_code(e);
    problem(http_status(code), code, &format!("{e:#}"))
}

fn http_status(code: i32) -> u16 {
    match code {
        // An upload that could not be read: the client's side.
        20 => 400,
        47 => 409,
        // A server the device talks to (a download, the fleet server).
        48 | 61 | 62 => 502,
        // What was asked, refused: the bundle, the release, the answer.
        2 | 15 | 21..=31 | 33 | 34 | 41..=44 | 49 | 51..=57 | 60 | 63 | 64 | 66 | 68..=73 => 422,
        // The device itself: its disk, config, state file, a write.
        _ => 500,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `reply` and its head, all of it within [`WRITE_TIMEOUT`]; the
/// connection closes after it.
fn write_reply(stream: &Conn, out: Out) -> io::Result<()> {
    let mut text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        out.status,
        reason(out.status),
        out.content_type,
        out.body.len()
    );
    for h in &out.headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&out.body);
    write_within(stream, &bytes, WRITE_TIMEOUT)
}

/// Writes `reply`, then reads and drops what the client still sends, for
/// at most [`LINGER`], before the connection closes. A refusal often comes
/// before the client finished sending its body, and a socket closed with
/// unread bytes is reset: the client would lose the reply to "connection
/// reset" (curl's exit 56) instead of reading it.
fn answer(stream: &Conn, reply: impl Into<Out>) {
    if let Err(e) = write_reply(stream, reply.into()) {
        log::debug!("api: the reply was not delivered: {e}");
        return;
    }
    // The client reads its end of file after the reply, and closes.
    if stream.shutdown_write().is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + LINGER;
    let mut sink = [0u8; 64 << 10];
    while let Ok(1..) = read_by(stream, &mut sink, deadline) {}
}

/// Writes all of `bytes` within `limit` in all: a socket timeout bounds
/// each write only, and a client taking a byte now and then would
/// otherwise hold the connection for ever.
fn write_within(mut stream: &Conn, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads from `stream` with what is left until `deadline`; the error of a
/// deadline passed says `what` did not come in time.
fn read_by(mut stream: &Conn, buf: &mut [u8], deadline: std::time::Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buf)
}

/// A request's head, and what of its body came with it.
struct Request {
    method: String,
    /// The path and query.
    target: String,
    /// The declared body length (none: no body).
    length: Option<u64>,
    /// The headers the service looks at ([`KEPT_HEADERS`]), names in
    /// lower case.
    headers: Vec<(String, String)>,
    stream: Conn,
    early: Vec<u8>,
}

const KEPT_HEADERS: [&str; 7] = [
    "authorization",
    "cookie",
    "x-csrf-token",
    "origin",
    "host",
    "content-type",
    "sec-fetch-site",
];

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The body, read from the connection as it comes, at most the
    /// declared length; a connection that ends before, or pauses for
    /// `idle`, is an error.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(&self, idle: Duration) -> io::Result<Body> {
        let stream = self.stream.clone();
        stream.set_read_timeout(Some(idle))?;
        let length = self.length.unwrap_or(0);
        let mut early = self.early.clone();
        early.truncate(length.min(early.len() as u64) as usize);
        Ok(Body {
            stream,
            early,
            at: 0,
            length,
            got: 0,
            idle,
            started: std::time::Instant::now(),
        })
    }
}

/// Reads a request's head (bounded in size and time). None when the client
/// left without a request; an error reply for one that is not well formed.
fn read_request(stream: Conn) -> Result<Option<Request>, (Conn, Reply)> {
    let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut chunk = [0u8; 4096];
        let n = match read_by(&stream, &mut chunk, deadline) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let message = format!(
                    "the request did not come within {} s",
                    HEAD_TIMEOUT.as_secs()
                );
                return Err((stream, problem(408, 2, &message)));
            }
            Err(_) => return Ok(None),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        let at = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(at)) => at,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err((stream, problem(431, 2, "the request's head is too large")))
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err((stream, problem(431, 2, "the request has over 32 headers")))
            }
            Err(e) => {
                let message = format!("not an HTTP request: {e}");
                return Err((stream, problem(400, 2, &message)));
            }
        };
        let mut length = None;
        let mut kept = Vec::new();
        for h in parsed.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            if KEPT_HEADERS.contains(&name.as_str()) {
                kept.push((name, String::from_utf8_lossy(h.value).trim().to_string()));
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let message = "a body must come with its Content-Length, not chunked";
                return Err((stream, problem(411, 2, message)));
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(h.value).ok().map(str::trim);
                let n = value.and_then(|v| v.parse::<u64>().ok());
                if n.is_none() || (length.is_some() && length != n) {
                    return Err((stream, problem(400, 2, "a malformed Content-Length")));
                }
                length = n;
            }
        }
        let request = Request {
            method: parsed.method.unwrap_or_default().to_string(),
            target: parsed.path.unwrap_or_default().to_string(),
            length,
            headers: kept,
            early: buf[at..].to_vec(),
            stream,
        };
        return Ok(Some(request));
    }
}

/// The request's query parameter `name` as a yes/no (`1`, `true`, `yes`).
fn flag(target: &str, name: &str) -> bool {
    target.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| match pair.split_once('=') {
            Some((k, v)) => k == name && matches!(v, "1" | "true" | "yes"),
            None => pair == name,
        })
    })
}

/// The session cookie's name: over TLS with the `__Host-` prefix, which
/// a browser takes only from this host over TLS and never sends
/// elsewhere, so that no other service on the machine or the network can
/// plant or read one.
fn session_cookie(peer: Peer) -> &'static str {
    match peer {
        Peer::Network { tls: true, .. } => "__Host-switchback_session",
        _ => "switchback_session",
    }
}

/// A script's session: `Authorization: Bearer TOKEN`.
fn bearer(request: &Request) -> Option<&str> {
    request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The request's session token, a script's or the page's cookie.
fn session_token(request: &Request) -> Option<&str> {
    bearer(request).or_else(|| {
        request.header("cookie").and_then(|v| {
            v.split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| *k == session_cookie(request.stream.peer))
                .map(|(_, v)| v)
        })
    })
}

const ROUTES: [&str; 12] = [
    "/v1/login",
    "/v1/logout",
    "/v1/session",
    "/v1/status",
    "/v1/history",
    "/v1/events",
    "/v1/install",
    "/v1/activate",
    "/v1/rollback",
    "/v1/health",
    "/v1/reboot",
    "/v1/fleet/confirm",
];

impl Service {
    fn connection(&self, stream: Conn) {
        if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
            log::debug!("api: {e}");
            return;
        }
        let mut request = match read_request(stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((stream, reply)) => return answer(&stream, reply),
        };
        let path = request.path().to_string();
        let session = match self.admit(&request) {
            Ok(session) => session,
            Err(reply) => return answer(&request.stream, reply),
        };
        let network = matches!(request.stream.peer, Peer::Network { .. });
        if let ("GET", Some(file)) = (request.method.as_str(), page::file(&path)) {
            if network {
                return answer(&request.stream, page::out(file));
            }
        }
        let reply = match (request.method.as_str(), path.as_str()) {
            ("POST", "/v1/login") if network => return self.login(&mut request),
            ("POST", "/v1/logout") if network => return self.logout(&request),
            ("GET", "/v1/session") => match session {
                Some(seen) => Reply(200, json!({"user": seen.user, "csrf": seen.csrf})),
                None => Reply(200, json!({"user": null, "csrf": null})),
            },
            ("GET", "/v1/status") => self.status(),
            ("GET", "/v1/history") => self.history(),
            ("GET", "/v1/events") => return self.events(request),
            ("POST", "/v1/install") => self.install(&request),
            ("POST", "/v1/activate") => self.activate(&mut request),
            ("POST", "/v1/rollback") => self.rollback(&mut request),
            ("POST", "/v1/health") => self.health(),
            ("POST", "/v1/reboot") => return self.reboot(request),
            ("POST", "/v1/fleet/confirm") => self.confirm(&mut request),
            (method, p) if ROUTES.contains(&p) => {
                problem(405, 2, &format!("{method} is not allowed on {p}"))
            }
            _ if page::file(&path).is_some() => problem(
                404,
                2,
                "the page is served on the network listener only (serve.listen in the config)",
            ),
            _ => problem(404, 2, &format!("no such resource: {path}")),
        };
        answer(&request.stream, reply);
    }

    /// Who may make `request`: on the socket, its local user (the socket's
    /// mode decided), but never a browser, which a forwarded socket would
    /// expose to every site's forms; on the network, the page's files and
    /// the login for anyone, the rest for a session only, and a change
    /// made with the page's cookie only with the page's CSRF token.
    fn admit(&self, request: &Request) -> Result<Option<auth::Seen>, Reply> {
        let Some(gate) = &self.gate else {
            return self.admit_local(request);
        };
        if request.stream.peer == Peer::Local {
            return self.admit_local(request);
        }
        // Another site's page, sending what the browser lets it without
        // asking (a form, a `no-cors` fetch): refused before a login is
        // tried, so that it can neither guess nor use up the wait of the
        // technician's own address.
        if let Some(origin) = request.header("origin") {
            let host = request.header("host").unwrap_or_default();
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if !origin_host.eq_ignore_ascii_case(host) {
                return Err(problem(
                    403,
                    2,
                    &format!("a request from another site ({origin}) is refused"),
                ));
            }
        }
        let public = match request.method.as_str() {
            "GET" => page::file(request.path()).is_some(),
            "POST" => request.path() == "/v1/login",
            _ => false,
        };
        let seen = session_token(request).and_then(|t| gate.session(t));
        match seen {
            None if public || request.path() == "/v1/session" => Ok(None),
            None => Err(problem(401, 2, "log in first (POST /v1/login)")),
            Some(seen) => {
                // A browser sends the cookie with any site's form; only
                // the page knows the CSRF token. Authorization is never
                // added by a browser on its own.
                let by_cookie = bearer(request).is_none();
                let changes = request.method != "GET";
                let token = request.header("x-csrf-token").unwrap_or_default();
                if by_cookie && changes && !auth::same(token, &seen.csrf) {
                    return Err(problem(
                        403,
                        2,
                        "the request lacks the page's CSRF token (X-CSRF-Token)",
                    ));
                }
                Ok(Some(seen))
            }
        }
    }

    fn admit_local(&self, request: &Request) -> Result<Option<auth::Seen>, Reply> {
        if request.header("origin").is_some() || request.header("sec-fetch-site").is_some() {
            return Err(problem(
                403,
                2,
                "a browser's request on the local socket is refused: the page is on the network listener, with a login",
            ));
        }
        Ok(None)
    }

    /// `POST /v1/login {"user", "password"}`: a session, as a cookie for
    /// the page and a token for a script, and the CSRF token.
    fn login(&self, request: &mut Request) {
        let reply = match self.json_body(request) {
            Ok(body) => self.login_with(request, &body),
            Err(reply) => reply.into(),
        };
        answer(&request.stream, reply);
    }

    fn login_with(&self, request: &Request, body: &Value) -> Out {
        let (Some(gate), Peer::Network { addr, tls }) = (&self.gate, request.stream.peer) else {
            return problem(404, 2, "no login on the local socket").into();
        };
        // Only a script or the page sends JSON; a form cannot.
        let json = request
            .header("content-type")
            .is_some_and(|t| t.split(';').next().unwrap_or_default().trim() == "application/json");
        if !json {
            return problem(415, 2, "a login is sent as application/json").into();
        }
        let (Some(user), Some(password)) = (body["user"].as_str(), body["password"].as_str())
        else {
            return problem(
                400,
                2,
                "the body must be {\"user\": NAME, \"password\": PASSWORD}",
            )
            .into();
        };
        match gate.login(addr, user, password) {
            Ok(login) => {
                let secure = if tls { "; Secure" } else { "" };
                let cookie = format!(
                    "Set-Cookie: {}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                    session_cookie(request.stream.peer),
                    login.token,
                    auth::SESSION_MAX.as_secs()
                );
                log::info!("api: {} logged in from {addr}", login.user);
                // The token in the body only for a script that asks: the
                // page's stays in its HttpOnly cookie, out of any script's
                // reach.
                let mut reply = json!({"user": login.user, "csrf": login.csrf});
                if body["token"] == true {
                    reply["token"] = json!(login.token);
                }
                Out::from(Reply(200, reply)).with(cookie)
            }
            Err(auth::Refused::Wrong) => {
                log::warn!("api: a failed login from {addr}");
                problem(401, 2, "wrong user name or password").into()
            }
            Err(auth::Refused::Wait(secs)) => Out::from(problem(
                429,
                2,
                &format!("too many failed logins from this address: try again in {secs} s"),
            ))
            .with(format!("Retry-After: {secs}")),
            Err(auth::Refused::Broken(e)) => failure(&e).into(),
        }
    }

    fn logout(&self, request: &Request) {
        if let (Some(gate), Some(token)) = (&self.gate, session_token(request)) {
            gate.logout(token);
        }
        let gone = format!(
            "Set-Cookie: {}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            session_cookie(request.stream.peer)
        );
        answer(
            &request.stream,
            Out::from(Reply(200, json!({"logged_out": true}))).with(gone),
        );
    }

    fn device(&self, lock: bool) -> Result<Device> {
        Device::open(&self.opts.config_path, &self.opts.target, lock)
    }

    /// `--memory`, else the config's, as for `updater install`.
    fn memory(&self, dev: &Device) -> u64 {
        self.opts
            .memory
            .unwrap_or_else(|| dev.config.install_memory())
    }

    /// Runs `change` as the one change of the device under way in this
    /// service (409 while another runs): its value is the reply, its error
    /// the refusal.
    fn one_at_a_time(&self, change: impl FnOnce() -> Result<Value>) -> Reply {
        let _one = match self.one_change() {
            Ok(g) => g,
            Err(reply) => return reply,
        };
        match change() {
            Ok(v) => Reply(200, v),
            Err(e) => failure(&e),
        }
    }

    /// The right to change the device, or "busy" while another request of
    /// this service has it. A handler that panicked leaves nothing half
    /// done here (the records are the disk's business), so its poison is
    /// ignored.
    fn one_change(&self) -> Result<MutexGuard<'_, ()>, Reply> {
        match self.changing.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(problem(
                409,
                47,
                "busy: another install or change runs through this service",
            )),
        }
    }

    fn status(&self) -> Reply {
        match self.device(false) {
            Ok(dev) => match serde_json::to_value(dev.status()) {
                Ok(v) => Reply(200, v),
                Err(e) => problem(500, 1, &format!("status: {e}")),
            },
            Err(e) => failure(&e),
        }
    }

    fn history(&self) -> Reply {
        match self.device(false) {
            Ok(dev) => {
                let history = History(StateFile::of(&dev.config).state.history);
                match serde_json::to_value(history) {
                    Ok(v) => Reply(200, v),
                    Err(e) => problem(500, 1, &format!("history: {e}")),
                }
            }
            Err(e) => failure(&e),
        }
    }

    /// Server-Sent Events: each install event as `data: {json}`, until the
    /// listener goes away, stops reading, or falls [`EVENT_BACKLOG`]
    /// events behind.
    fn events(&self, request: Request) {
        // Counted until this thread ends, so that the cap holds for
        // threads, not only for subscriptions.
        if self.listening.fetch_add(1, Ordering::SeqCst) >= MAX_LISTENERS {
            self.listening.fetch_sub(1, Ordering::SeqCst);
            let reply = problem(503, 1, "too many events listeners; close one");
            return answer(&request.stream, reply);
        }
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _counted = Counted(&self.listening);
        let (tx, rx) = mpsc::sync_channel(EVENT_BACKLOG);
        let evicted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Listener {
                events: tx,
                evicted: evicted.clone(),
            });
        let mut text = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n: subscribed\n\n".to_string();
        // A listener on the network hears nothing more once its session
        // ended (a logout, a password changed, 30 minutes away).
        let session_ended = || match (&self.gate, request.stream.peer) {
            (Some(gate), Peer::Network { .. }) => {
                !session_token(&request).is_some_and(|t| gate.lives(t))
            }
            _ => false,
        };
        loop {
            if session_ended() {
                log::debug!("api: an events listener's session ended");
                return;
            }
            if write_within(&request.stream, text.as_bytes(), WRITE_TIMEOUT).is_err() {
                log::debug!("api: an events listener left or stopped reading");
                return;
            }
            // A keep-alive comment every 15 s finds a listener that left.
            text = match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(_) if evicted.load(Ordering::SeqCst) => return,
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => ": alive\n\n".to_string(),
                Err(RecvTimeoutError::Disconnected) => return,
            };
        }
    }

    fn publish(&self, event: &Event) {
        let Ok(data) = serde_json::to_string(event) else {
            return;
        };
        let line = format!("data: {data}\n\n");
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| match l.events.try_send(line.clone()) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(_)) => {
                    l.evicted.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::TrySendError::Disconnected(_)) => false,
            });
    }

    /// `POST /v1/install`: the body is the bundle (`.swb` or `.swu`),
    /// streamed into the inactive slot as it comes.
    fn install(&self, request: &Request) -> Reply {
        let Some(length) = request.length else {
            return problem(411, 2, "an upload needs its Content-Length");
        };
        let _one = match self.one_change() {
            Ok(g) => g,
            Err(reply) => return reply,
        };
        let run = || -> Result<Reply> {
            let dev = self.device(true)?;
            let booted = dev.booted()?;
            let disk = bootctl::Disk::open(&dev.disk, dev.sector_size, false)?;
            let slot = &dev.boot_state.table.slots[booted.other().index()];
            let room = (slot.last_lba + 1 - slot.first_lba) * disk.sector_size();
            if length > room + UPLOAD_SLACK {
                let message = format!(
                    "the upload ({length} bytes) is larger than {} ({room} bytes) can take",
                    booted.other()
                );
                return Ok(problem(413, 44, &message));
            }
            let opts = dev.install_options(
                flag(&request.target, "allow_downgrade"),
                !flag(&request.target, "no_activate"),
                self.opts.threads,
                self.memory(&dev),
            )?;
            let body = request.body(self.opts.upload_idle)?;
            Ok(self.install_from(&dev, &opts, Box::new(body)))
        };
        run().unwrap_or_else(|e| failure(&e))
    }

    fn install_from(
        &self,
        dev: &Device,
        opts: &crate::install::InstallOptions,
        body: Box<dyn Read + Send>,
    ) -> Reply {
        let mut observer = Publisher(self);
        let done = crate::source::unwrap(body, "the upload")
            .and_then(|input| crate::install::install(&dev.config, input, opts, &mut observer));
        match done {
            Ok(done) => Reply(
                200,
                json!({
                    "slot": done.slot.name(),
                    "compatible": done.manifest.compatible,
                    "version": done.manifest.version,
                    "activated": done.activated,
                }),
            ),
            Err(e) => {
                observer.event(&Event::Error {
                    code: crate::exit_code(&e),
                    message: format!("{e:#}"),
                });
                failure(&e)
            }
        }
    }

    fn activate(&self, request: &mut Request) -> Reply {
        let body = match self.json_body(request) {
            Ok(b) => b,
            Err(r) => return r,
        };
        self.one_at_a_time(|| {
            let dev = self.device(true)?;
            let opts = dev.activate_options(body["allow_downgrade"] == true, self.opts.threads)?;
            let (slot, m) = crate::activate::activate(&dev.config, &opts, &mut Publisher(self))?;
            Ok(json!({"slot": slot.name(), "compatible": m.compatible, "version": m.version}))
        })
    }

    /// `POST /v1/rollback {"confirm": VERSION}`: the confirmation names the
    /// release it goes back to, as the page shows it, so that a stale page
    /// cannot roll back to something else than the technician saw.
    fn rollback(&self, request: &mut Request) -> Reply {
        let body = match self.json_body(request) {
            Ok(b) => b,
            Err(r) => return r,
        };
        self.one_at_a_time(|| {
            let dev = self.device(true)?;
            let booted = dev.booted()?;
            let target = booted.other();
            let back_to = dev
                .status()
                .slots
                .into_iter()
                .find(|s| s.name == target)
                .and_then(|s| s.version)
                .unwrap_or_else(|| "an unknown release".into());
            if body["confirm"].as_str() != Some(back_to.as_str()) {
                return Err(crate::UpdateError::RollbackNotNamed {
                    slot: target.name(),
                    to: back_to,
                }
                .into());
            }
            let slot = crate::rollback::rollback(
                &dev.config,
                &dev.disk,
                dev.sector_size,
                booted,
                body["below_security_floor"] == true,
            )?;
            Ok(json!({"slot": slot.name(), "version": back_to}))
        })
    }

    /// `POST /v1/health`: the health check, as `updater health --no-reboot`
    /// runs it (a failure marks the slot bad; `POST /v1/reboot` then boots
    /// the other).
    fn health(&self) -> Reply {
        self.one_at_a_time(|| {
            let dev = self.device(true)?;
            let booted = dev.booted()?;
            let outcome = crate::health::health(&dev.config, &dev.disk, dev.sector_size, booted)?;
            let verdict = match outcome {
                crate::health::HealthOutcome::AlreadyGood => "committed-already",
                _ => "committed",
            };
            crate::fleet::report_after_health(&dev.config, &dev.disk);
            let line = crate::cli::health_result(outcome, &dev.disk, booted, true)?;
            Ok(json!({"slot": booted.name(), "verdict": verdict, "message": line}))
        })
    }

    /// `POST /v1/fleet/confirm {"action": ID, "confirmed": BOOL}`: the
    /// answer to the fleet server's request to confirm an action, as
    /// `updater fleet --once --confirm ID` (or `--deny ID`) gives it.
    fn confirm(&self, request: &mut Request) -> Reply {
        let body = match self.json_body(request) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (Some(id), Some(confirmed)) = (body["action"].as_str(), body["confirmed"].as_bool())
        else {
            return problem(
                400,
                2,
                "the body must be {\"action\": ID, \"confirmed\": true or false}",
            );
        };
        // The cycle settles and saves the state: a change like another.
        self.one_at_a_time(|| {
            let dev = self.device(false)?;
            let opts = crate::fleet::FleetOptions {
                answer: Some((id.to_string(), confirmed)),
                no_reboot: true,
                threads: self.opts.threads,
                memory: self.memory(&dev),
                http: crate::source::HttpOptions::default(),
            };
            let (done, _) = crate::cli::fleet_client(&dev, opts)?.cycle()?;
            Ok(json!({"action": id, "confirmed": confirmed, "message": done.to_string()}))
        })
    }

    /// `POST /v1/reboot`: only on the disk the machine runs from, and under
    /// the disk's lock, as the command line reboots; the reply goes out
    /// first, or the client would never hear it.
    fn reboot(&self, request: Request) {
        let stream = &request.stream;
        let _one = match self.one_change() {
            Ok(g) => g,
            Err(reply) => return answer(stream, reply),
        };
        let dev = match self.device(true) {
            Ok(dev) => dev,
            Err(e) => return answer(stream, failure(&e)),
        };
        let cmdline = bootctl::host::read_cmdline();
        if let Some(why) = crate::not_the_running_disk(&dev.disk, &cmdline) {
            let message = format!("not rebooting: {} {why}", dev.disk.display());
            return answer(stream, problem(422, 1, &message));
        }
        let _ = write_reply(stream, Reply(202, json!({"rebooting": true})).into());
        if let Err(e) = crate::reboot(&dev.disk) {
            log::error!("api: {e:#}");
        }
    }

    /// A small JSON body (none counts as `{}`); one larger than
    /// [`MAX_JSON`] is refused unread.
    fn json_body(&self, request: &mut Request) -> Result<Value, Reply> {
        let length = request.length.unwrap_or(0);
        if length > MAX_JSON {
            return Err(problem(413, 2, "the request body is too large"));
        }
        let mut text = Vec::new();
        request
            .body(HEAD_TIMEOUT)
            .and_then(|body| body.take(MAX_JSON).read_to_end(&mut text))
            .map_err(|e| problem(400, 2, &format!("reading the request: {e}")))?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(&text)
            .map_err(|e| problem(400, 2, &format!("the request body is not JSON: {e}")))
    }
}

/// Install events to the `events` listeners.
struct Publisher<'a>(&'a Service);

impl Observer for Publisher<'_> {
    fn event(&mut self, event: &Event) {
        self.0.publish(event);
    }
}

/// A request's body as the install reads it: what came with the head,
/// then the connection, up to the declared length.
struct Body {
    stream: Conn,
    early: Vec<u8>,
    at: usize,
    length: u64,
    got: u64,
    idle: Duration,
    started: std::time::Instant,
}

/// The average an upload must keep once its first `idle` seconds have
/// passed, as the fleet's downloads must (`--min-rate`): a client sending
/// a byte now and then would otherwise hold the disk's lock for days.
const MIN_RATE: u64 = 16 << 10;

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.length - self.got;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let secs = self.started.elapsed().as_secs_f64();
        if secs > self.idle.as_secs_f64() && (self.got as f64) < MIN_RATE as f64 * secs {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the upload averaged {:.0} bytes/s over {secs:.0} s, under the {MIN_RATE} an upload must keep (after {} of its {} bytes)",
                    self.got as f64 / secs,
                    self.got,
                    self.length
                ),
            ));
        }
        let room = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = if self.at < self.early.len() {
            let n = room.min(self.early.len() - self.at);
            buf[..n].copy_from_slice(&self.early[self.at..self.at + n]);
            self.at += n;
            n
        } else {
            match (&self.stream).read(&mut buf[..room]) {
                // Not UnexpectedEof, which the bundle reader takes for a
                // bundle cut short: the upload was.
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!(
                            "the upload ended after {} of its {} bytes",
                            self.got, self.length
                        ),
                    ))
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the upload sent nothing for {} s (after {} of its {} bytes)",
                            self.idle.as_secs(),
                            self.got,
                            self.length
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        self.got += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_from_the_query() {
        assert!(flag("/v1/install?no_activate=1", "no_activate"));
        assert!(flag(
            "/v1/install?a=0&allow_downgrade=true",
            "allow_downgrade"
        ));
        assert!(flag("/v1/install?no_activate", "no_activate"));
        assert!(!flag("/v1/install?no_activate=0", "no_activate"));
        assert!(!flag("/v1/install", "no_activate"));
        assert!(!flag("/v1/install?xno_activate=1", "no_activate"));
    }

    /// A body is what came with the head, then the connection, never more
    /// than declared; a connection that ends early or stalls is an error.
    #[test]
    fn a_body_ends_at_its_length_and_a_short_or_stalled_one_is_an_error() {
        let pair = |idle: Duration, early: &[u8], length: u64| {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ours.set_read_timeout(Some(idle)).unwrap();
            let body = Body {
                stream: Conn::unix(ours),
                early: early.to_vec(),
                at: 0,
                length,
                got: 0,
                idle,
                started: std::time::Instant::now(),
            };
            (body, theirs)
        };
        let (mut body, mut theirs) = pair(Duration::from_secs(5), b"abc", 6);
        theirs.write_all(b"defgh").unwrap();
        let mut all = Vec::new();
        body.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdef");

        let mut buf = [0u8; 16];
        let (mut body, mut theirs) = pair(Duration::from_millis(100), b"", 10);
        theirs.write_all(b"12").unwrap();
        assert_eq!(body.read(&mut buf).unwrap(), 2);
        let stalled = body.read(&mut buf).unwrap_err();
        assert_eq!(stalled.kind(), io::ErrorKind::TimedOut);
        assert!(
            stalled
                .to_string()
                .contains("sent nothing for 0 s (after 2 of its 10 bytes)"),
            "{stalled}"
        );
        // Past its first `idle`, a trickle under the floor is ended too.
        theirs.write_all(b"3").unwrap();
        let slow = body.read(&mut buf).unwrap_err();
        assert!(
            slow.to_string()
                .contains("under the 16384 an upload must keep"),
            "{slow}"
        );

        let (mut body, mut theirs) = pair(Duration::from_secs(5), b"", 10);
        theirs.write_all(b"12").unwrap();
        drop(theirs);
        assert_eq!(body.read(&mut buf).unwrap(), 2);
        let cut = body.read(&mut buf).unwrap_err();
        assert_eq!(cut.to_string(), "the upload ended after 2 of its 10 bytes");
    }
}
