//! Accept loops: TCP (plain or TLS) and the Unix socket, HTTP/1.1 with a header timeout
//! (slowloris and idle keep-alive clients are closed), at most `max_connections` served
//! at once, and a bounded drain on stop.

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

/// Serves one connection with the router, the peer set on each request.
fn serve_conn<S>(
    io: S,
    router: Router,
    peer: Peer,
    cfg: &Config,
    watcher: Watcher,
    permit: tokio::sync::OwnedSemaphorePermit,
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the limit: closed at once, so idle floods cannot starve the rest.
            tracing::debug!(%addr, "connection limit reached: closed");
            drop(s);
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
