//! Accept loops: TCP (plain or TLS) and the Unix socket, HTTP/1.1 with a header timeout
//! (slowloris and idle keep-alive clients are closed), at most `max_connections` served
//! at once, and a bounded drain on stop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tower::ServiceExt as _;

use crate::Config;
use crate::auth::Peer;

/// How long a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// The TLS acceptor of a PEM certificate chain and key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let read = |p: &Path| {
        portwarden_ops::files::read_regular(p, 1 << 20)
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds no PEM certificate", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .with_context(|| format!("cannot read the key {}", key.display()))?
        .with_context(|| format!("{} holds no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Binds the Unix socket: a stale socket file is replaced, anything else at the path is
/// refused; the socket is made mode 0660.
pub fn unix_listener(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(l)
}

/// Connections open per source address: a share of `--max-connections`, so one client
/// (or one attacker holding idle connections) cannot take every slot.
#[derive(Clone)]
struct PerSource {
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    cap: usize,
}

/// A connection's place: its share of the limit and of its source's, given back on drop.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    source: Option<(PerSource, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((p, ip)) = &self.source {
            if let Ok(mut m) = p.open.lock() {
                if let Some(n) = m.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(ip);
                    }
                }
            }
        }
    }
}

impl PerSource {
    fn new(max_connections: usize) -> PerSource {
        PerSource {
            open: Arc::default(),
            cap: (max_connections / 4).max(1),
        }
    }

    /// A slot for `ip`, unless it already holds its share.
    fn take(&self, ip: IpAddr, permit: tokio::sync::OwnedSemaphorePermit) -> Option<Slot> {
        let mut m = self.open.lock().ok()?;
        let n = m.entry(ip).or_default();
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            _permit: permit,
            source: Some((self.clone(), ip)),
        })
    }
}

/// The answer to a connection over a limit, written without waiting (the accept loop
/// must not block on a client that does not read): 503 with `Retry-After`, so a client
/// knows why rather than seeing its connection reset.
fn refuse(s: &tokio::net::TcpStream, why: &str) {
    let body = serde_json::json!({
        "api": portwarden_api::API_VERSION,
        "error": "busy",
        "detail": why,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.try_write(answer.as_bytes());
}

/// A place for a new connection from `addr`, or `None` (answered 503, logged at most
/// once a second).
fn admit(
    s: &tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    slots: &Arc<Semaphore>,
    per: &PerSource,
    tls: bool,
    last_warn: &mut Option<std::time::Instant>,
) -> Option<Slot> {
    let slot = match slots.clone().try_acquire_owned() {
        Ok(p) => per
            .take(addr.ip(), p)
            .ok_or("too many connections from this address"),
        Err(_) => Err("the connection limit is reached"),
    };
    match slot {
        Ok(s) => Some(s),
        Err(why) => {
            // Plain text over TLS would be noise to the client: it is closed.
            if !tls {
                refuse(s, why);
            }
            let now = std::time::Instant::now();
            if last_warn.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                tracing::warn!(%addr, "{why}: refused (503)");
                *last_warn = Some(now);
            }
            None
        }
    }
}

/// Serves one connection with the router, the peer set on each request.
fn serve_conn<S>(
    io: S,
    router: Router,
    peer: Peer,
    cfg: &Config,
    watcher: Watcher,
    permit: impl Send + 'static,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer);
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(io), svc);
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(permit);
    });
}

async fn drain(graceful: GracefulShutdown) {
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {}s: closed",
            DRAIN.as_secs()
        );
    }
}

/// The TCP accept loop, until `stop`.
pub async fn tcp(
    l: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    cfg: Config,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per = PerSource::new(cfg.max_connections);
    let mut last_warn = None;
    loop {
        let (s, addr) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: say so and breathe, rather than spin.
                    tracing::warn!("accept: {e}");
                    // Real time: the descriptor shortage passes only with time.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(permit) = admit(&s, addr, &slots, &per, tls.is_some(), &mut last_warn) else {
            continue;
        };
        let _ = s.set_nodelay(true);
        match &tls {
            None => serve_conn(
                s,
                router.clone(),
                Peer::Tcp(addr),
                &cfg,
                graceful.watcher(),
                permit,
            ),
            Some(acc) => {
                let (acc, router, cfg2) = (acc.clone(), router.clone(), cfg.clone());
                let hs = cfg.header_timeout;
                let g = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(hs, acc.accept(s)).await {
                        Ok(Ok(t)) => serve_conn(t, router, Peer::Tcp(addr), &cfg2, g, permit),
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(l);
    drain(graceful).await;
    Ok(())
}

/// The Unix socket's accept loop, until `stop`: the peer's uid is who acts.
pub async fn unix(
    l: tokio::net::UnixListener,
    router: Router,
    cfg: Config,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    loop {
        let s = tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    // Real time: the descriptor shortage passes only with time.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let Ok(cred) = s.peer_cred() else {
            continue;
        };
        serve_conn(
            s,
            router.clone(),
            Peer::Unix { uid: cred.uid() },
            &cfg,
            graceful.watcher(),
            permit,
        );
    }
    drain(graceful).await;
    Ok(())
}
