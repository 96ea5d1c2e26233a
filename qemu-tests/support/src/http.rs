//! Loopback network parts for the tests: a minimal scripted HTTP server
//! for what goosebit does not do (cancelAction, 429, 410, hostile replies)
//! and for downloads that go wrong (dropped and stalled bodies, servers
//! that ignore ranges or never answer, a file replaced mid-download, a
//! certificate nobody trusts), and a slow TCP proxy that stretches a
//! download long enough to restart the server in the middle of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
    /// The status the server answered with.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

#[derive(Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub cut: Cut,
}

/// How a reply goes wrong on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cut {
    /// The whole reply is sent.
    #[default]
    None,
    /// The connection is closed after this many body bytes.
    CloseAfter(usize),
    /// This many body bytes, then nothing, with the connection left open.
    StallAfter(usize),
    /// The request is read and never answered.
    Silent,
}

pub fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: v.to_string().into_bytes(),
        cut: Cut::None,
    }
}

/// A 200 with `body` as its content, whole.
pub fn file(body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
        body,
        cut: Cut::None,
    }
}

/// How a file server misbehaves (all off by default: a good server).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The first `times` replies are cut this way.
    pub cut: Cut,
    pub times: usize,
    /// Every request gets 200 and the whole file, `Range` or not.
    pub ignore_range: bool,
    /// The file's ETag; `If-Range` is honoured against it.
    pub etag: Option<String>,
    /// The ETag of every reply after the first: the file was replaced.
    pub changed_etag: Option<String>,
}

/// An HTTP server whose every answer `route` gives; records every request.
pub struct Fixture {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Fixture {
    pub fn serve(route: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Fixture {
        Fixture::listen(None, route)
    }

    /// The same over HTTPS, with the PEM certificate chain and key given.
    pub fn serve_tls(
        cert: &Path,
        key: &Path,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Fixture {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("the certificate {}: {e}", cert.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("the key {}: {e}", key.display()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .unwrap_or_else(|e| panic!("a TLS server with {}: {e}", cert.display()));
        Fixture::listen(Some(Arc::new(config)), route)
    }

    /// Serves `file` at every path, with byte ranges (206 and
    /// Content-Range from `Range: bytes=N-`) and the faults asked for.
    pub fn serve_file(file: Vec<u8>, faults: Faults) -> Fixture {
        Fixture::serve(file_route(file, faults))
    }

    fn listen(
        tls: Option<Arc<rustls::ServerConfig>>,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Request>>> = Default::default();
        let log = requests.clone();
        let route = Arc::new(route);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (log, route, tls) = (log.clone(), route.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = match tls {
                        None => handle(stream, &log, &*route),
                        Some(config) => rustls::ServerConnection::new(config)
                            .map_err(std::io::Error::other)
                            .and_then(|conn| {
                                handle(rustls::StreamOwned::new(conn, stream), &log, &*route)
                            }),
                    };
                });
            }
        });
        Fixture { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn file_route(file: Vec<u8>, faults: Faults) -> impl Fn(&Request) -> Reply + Send + Sync {
    let served = Mutex::new(0usize);
    move |req| {
        let mut served = served.lock().unwrap();
        let etag = match (&faults.etag, &faults.changed_etag) {
            (Some(_), Some(changed)) if *served > 0 => Some(changed.clone()),
            (etag, _) => etag.clone(),
        };
        let cut = if *served < faults.times {
            faults.cut
        } else {
            Cut::None
        };
        *served += 1;
        // RFC 9110 §13.1.5: a stale validator in If-Range gets the whole,
        // new file.
        let stale = req
            .header("If-Range")
            .is_some_and(|v| etag.as_deref().is_some_and(|e| e != v));
        let start = req
            .header("Range")
            .filter(|_| !faults.ignore_range && !stale)
            .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
            .filter(|&start: &usize| start < file.len());
        let mut headers = vec![("Content-Type".into(), "application/octet-stream".into())];
        if let Some(etag) = etag {
            headers.push(("ETag".into(), etag));
        }
        let (status, body) = match start {
            Some(start) => {
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", file.len() - 1, file.len()),
                ));
                (206, file[start..].to_vec())
            }
            None => (200, file.clone()),
        };
        Reply {
            status,
            headers,
            body,
            cut,
        }
    }
}

/// A connection the server can cut (for TLS, the socket under it).
trait Conn: Read + Write {
    fn close(&mut self);
}

impl Conn for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn close(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// One request per connection: read it, log it with its answer, reply.
fn handle(
    mut stream: impl Conn,
    log: &Mutex<Vec<Request>>,
    route: &dyn Fn(&Request) -> Reply,
) -> std::io::Result<()> {
    let mut req = read_request(&mut stream)?;
    let reply = route(&req);
    req.status = reply.status;
    log.lock().unwrap().push(req);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let hang = || std::thread::sleep(Duration::from_secs(3600));
    match reply.cut {
        Cut::Silent => hang(),
        Cut::None => {
            stream.write_all(head.as_bytes())?;
            stream.write_all(&reply.body)?;
        }
        Cut::CloseAfter(n) | Cut::StallAfter(n) => {
            stream.write_all(head.as_bytes())?;
            stream.write_all(&reply.body[..n.min(reply.body.len())])?;
            stream.flush()?;
            if reply.cut == Cut::CloseAfter(n) {
                stream.close();
            } else {
                hang();
            }
            return Ok(());
        }
    }
    stream.flush()
}

fn read_request(stream: &mut impl Read) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
        status: 0,
    })
}

/// Forwards 127.0.0.1:`port` to `upstream`, the server's replies at
/// `bytes_per_s`; a connection whose upstream goes away is closed.
pub struct Proxy {
    pub port: u16,
}

impl Proxy {
    pub fn start(upstream: u16, bytes_per_s: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let pause = Duration::from_secs_f64(buf.len() as f64 / bytes_per_s as f64);
                    loop {
                        match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if c_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(pause);
                            }
                        }
                    }
                    let _ = c_write.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { port }
    }
}
