//! A client's connection to `updater serve`, whichever listener it came
//! from: the Unix socket, TCP, or TLS over TCP. The request handlers read
//! and write it alike; only the timeouts reach through to the socket.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, Timed>>),
}

/// The TCP socket under TLS, with one deadline for a whole read or write
/// of the connection. rustls reads the socket as often as it takes to
/// complete a record (or the handshake): a socket timeout alone would
/// bound each of those reads, and a client sending a byte every few
/// seconds would hold the connection for ever.
struct Timed {
    tcp: TcpStream,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl Timed {
    /// Starts one read (or write) of the connection: `timeout` from now.
    fn start(&mut self, timeout: Option<Duration>) {
        self.deadline = timeout.map(|t| Instant::now() + t);
    }

    fn left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(io::ErrorKind::TimedOut.into())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(left)?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(left)?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Sends what rustls holds for the client, never reading: a client that
/// stops reading meets the write deadline, not a read.
fn send_tls(s: &mut rustls::StreamOwned<rustls::ServerConnection, Timed>) -> io::Result<()> {
    s.sock.start(s.sock.write_timeout);
    while s.conn.wants_write() {
        if s.conn.write_tls(&mut s.sock)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Who is at the other end: a local user the socket's mode let in, or an
/// address on the network that must log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Local,
    Network { addr: IpAddr, tls: bool },
}

/// One connection, shared by the request (its reply) and the upload's
/// reader. Never read and written at once: a request is read, then
/// answered.
#[derive(Clone)]
pub struct Conn {
    stream: Arc<Mutex<Stream>>,
    pub peer: Peer,
}

impl Conn {
    pub fn unix(s: UnixStream) -> Conn {
        Conn::new(Stream::Unix(s), Peer::Local)
    }

    pub fn tcp(s: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Conn> {
        let addr = s.peer_addr()?.ip();
        let peer = Peer::Network {
            addr,
            tls: tls.is_some(),
        };
        Ok(match tls {
            // The handshake happens at the first read, under the head's
            // deadline like the request itself.
            Some(config) => {
                let session = rustls::ServerConnection::new(config.clone())
                    .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                let timed = Timed {
                    tcp: s,
                    read_timeout: None,
                    write_timeout: None,
                    deadline: None,
                };
                Conn::new(
                    Stream::Tls(Box::new(rustls::StreamOwned::new(session, timed))),
                    peer,
                )
            }
            None => Conn::new(Stream::Tcp(s), peer),
        })
    }

    fn new(stream: Stream, peer: Peer) -> Conn {
        Conn {
            stream: Arc::new(Mutex::new(stream)),
            peer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(s) => {
                s.sock.read_timeout = t;
                Ok(())
            }
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(s) => {
                s.sock.write_timeout = t;
                Ok(())
            }
        }
    }

    /// Ends what this side sends; the client reads its end of file.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Tls(s) => {
                s.conn.send_close_notify();
                send_tls(s)?;
                s.sock.tcp.shutdown(Shutdown::Write)
            }
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            // A client that closes without TLS's close_notify has ended
            // its request as a plain socket would: an end of file, which
            // the upload's reader reports as the upload cut short.
            Stream::Tls(s) => {
                s.sock.start(s.sock.read_timeout);
                match s.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    other => other,
                }
            }
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            // Records go out now, not when the buffer would fill: an event
            // is for the listener's eyes at once. Only what went out
            // counts as written.
            Stream::Tls(s) => {
                if s.conn.is_handshaking() {
                    return Err(io::Error::other("the TLS handshake did not finish"));
                }
                let n = s.conn.writer().write(buf)?;
                send_tls(s)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.lock() {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => send_tls(s),
        }
    }
}

/// The TLS configuration from a PEM certificate chain and key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::anyhow;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(crate::UpdateError::ConfigFile(format!(
                "the API's TLS certificate {}: {e}",
                cert.display()
            )))
        })?;
    if chain.is_empty() {
        return Err(anyhow!(crate::UpdateError::ConfigFile(format!(
            "the API's TLS certificate {} holds no certificate",
            cert.display()
        ))));
    }
    // Checked as every secret the updater reads: this user's, mode 0600.
    let pem = crate::config::read_secret(key, "API's TLS key", 64 << 10)
        .map_err(|e| anyhow!(crate::UpdateError::ConfigFile(e)))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow!("the API's TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| {
            anyhow!(
                "the API's TLS certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            )
        })
}
