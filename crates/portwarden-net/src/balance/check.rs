//! Active health checks: connect only, a banner (`expect`), `send` then `expect`, or an
//! HTTP GET with its status. A backend that accepts and then hangs (SIGSTOPped: the kernel
//! still completes the handshake) fails every check that waits for bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portwarden_core::policy::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The most a check reads looking for `expect` or a status line.
const READ_MAX: usize = 16 * 1024;

/// Whether `hay` holds `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The status of an HTTP response's first line (`HTTP/1.1 200 OK`).
fn http_status(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// For a person.
    pub why: String,
    /// The failure is this host's (out of descriptors, memory or ports): it says nothing
    /// about the backend.
    pub local: bool,
}

impl From<&str> for Failure {
    fn from(why: &str) -> Failure {
        why.to_string().into()
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure { why, local: false }
    }
}

/// One check of a TCP backend, bounded by `h.timeout`. `Ok` with the time it took, or why
/// it failed.
pub async fn tcp(addr: SocketAddr, h: &HealthCheck) -> Result<Duration, Failure> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let r = tokio::time::timeout(h.timeout.get(), tcp_inner(addr, h, &mut seen)).await;
    match r {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) if seen.is_empty() => Err(format!("no answer within {}", h.timeout).into()),
        // What it said instead (escaped: it reaches logs, the ledger and terminals).
        Err(_) => Err(format!(
            "no expected answer within {}; got `{}`",
            h.timeout,
            seen[..seen.len().min(60)].escape_ascii()
        )
        .into()),
    }
}

async fn tcp_inner(addr: SocketAddr, h: &HealthCheck, seen: &mut Vec<u8>) -> Result<(), Failure> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| Failure {
        why: format!("connect: {e}"),
        local: super::local_error(&e),
    })?;
    let _ = s.set_nodelay(true);
    if let Some(path) = &h.http {
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: portwarden-check\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let head = read_until(&mut s, seen, |b| b.windows(2).any(|w| w == b"\r\n")).await?;
        let code = http_status(&head).ok_or("the answer is not an HTTP status line")?;
        let good = match h.status {
            Some(want) => code == want,
            None => (200..400).contains(&code),
        };
        return if good {
            Ok(())
        } else {
            Err(format!("HTTP status {code}").into())
        };
    }
    if let Some(send) = &h.send {
        s.write_all(send.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    if let Some(expect) = &h.expect {
        let want = expect.as_bytes();
        read_until(&mut s, seen, |b| contains(b, want)).await?;
    }
    Ok(())
}

async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the expected answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if done(buf) {
            return Ok(buf.clone());
        }
        if buf.len() >= READ_MAX {
            return Err(format!("expected answer not in the first {READ_MAX} bytes"));
        }
    }
}

/// A UDP socket on an ephemeral port of the wildcard address of `to`'s family, to talk
/// to `to` from.
pub(crate) async fn udp_socket_for(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    UdpSocket::bind(any).await
}

/// One check of a UDP backend: `send` a datagram, the answer must hold `expect`.
pub async fn udp(addr: SocketAddr, h: &HealthCheck) -> Result<Duration, Failure> {
    let t0 = Instant::now();
    let run = async {
        let s = udp_socket_for(addr).await.map_err(|e| Failure {
            why: format!("bind: {e}"),
            local: super::local_error(&e),
        })?;
        s.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let send = h.send.as_deref().unwrap_or("");
        s.send(send.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 65536];
        let n = s.recv(&mut buf).await.map_err(|e| format!("recv: {e}"))?;
        match &h.expect {
            Some(e) if !contains(&buf[..n], e.as_bytes()) => {
                Err(Failure::from("the answer does not hold `expect`"))
            }
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(h.timeout.get(), run).await {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}", h.timeout).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            http_status(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n"),
            Some(503)
        );
        assert_eq!(http_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status(b"HTTP/1.1 200"), None);
    }
}
