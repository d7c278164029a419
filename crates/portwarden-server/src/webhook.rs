//! `[alerts] webhook`: every alert raised or cleared is queued (bounded by the policy's
//! `queue`; more are dropped and counted) and one worker posts them, in order, as JSON
//! over HTTP/1.1 or HTTPS (rustls, the system's trust anchors and the policy's `ca`),
//! retrying with backoff. The policy in force is read for each event, so a SIGHUP
//! changes where the next one goes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_api::serve::AlertEvent;
use portwarden_core::policy::Webhook;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio_rustls::rustls;

use crate::App;

/// The longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the worker has done: `portwarden_webhook_events{outcome}`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Posted and answered 2xx.
    pub delivered: AtomicU64,
    /// Given up on (retries spent, or a 4xx).
    pub failed: AtomicU64,
    /// Not queued (the queue was full, or no webhook when it came to be sent).
    pub dropped: AtomicU64,
    /// Attempts after a first one.
    pub retried: AtomicU64,
}

/// The queue of events to post.
#[derive(Debug, Default)]
pub struct Outbox {
    q: Mutex<VecDeque<AlertEvent>>,
    ready: Notify,
    /// Counters.
    pub stats: Stats,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<AlertEvent>> {
        match self.q.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues an event, unless `cap` are waiting (then it is dropped and counted).
    pub fn push(&self, ev: AlertEvent, cap: usize) {
        {
            let mut q = self.lock();
            if q.len() >= cap {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    rule = %ev.rule,
                    "the webhook queue is full ({cap} waiting): an alert event is dropped"
                );
                return;
            }
            q.push_back(ev);
        }
        self.ready.notify_one();
    }

    /// Events waiting.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn pop(&self) -> Option<AlertEvent> {
        self.lock().pop_front()
    }
}

/// Whether an answer's status ends the attempts: 2xx (delivered), a redirect (never
/// followed: the policy names where alerts go) or a 4xx other than 408 and 429 (the
/// receiver refuses it; sending it again changes nothing).
fn settled(status: u16) -> bool {
    (200..400).contains(&status) || ((400..500).contains(&status) && !matches!(status, 408 | 429))
}

/// The pause before attempt `n` (1-based): 1 s, 2 s, 4 s … at most [`BACKOFF_MAX`].
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(BACKOFF_MAX)
}

/// Posts the events queued on `app` until `stop` turns.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let out = &app.outbox;
    loop {
        let Some(ev) = out.pop() else {
            tokio::select! {
                () = out.ready.notified() => continue,
                _ = stop.changed() => return,
            }
        };
        let Some(hook) = app.policy().policy.alerts.webhook.clone() else {
            out.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let body = match serde_json::to_vec(&ev) {
            Ok(b) => b,
            Err(_) => continue,
        };
        let mut attempt = 0;
        loop {
            // A stop does not wait for an attempt: the event is lost either way.
            let r = tokio::select! {
                r = tokio::time::timeout(hook.timeout.get(), post(&hook, app.hook_tls(), &body)) => r,
                _ = stop.changed() => return,
            };
            let r = r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {}", hook.timeout)));
            match r {
                Ok(st) if settled(st) => {
                    if (200..300).contains(&st) {
                        out.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(url = %hook.url, status = st, kind = %ev.kind, "webhook delivered");
                    } else {
                        out.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %hook.url, status = st, "the webhook refused an alert event: not retried");
                    }
                    break;
                }
                r => {
                    let why = match r {
                        Ok(st) => format!("HTTP {st}"),
                        Err(e) => format!("{e:#}"),
                    };
                    if attempt >= hook.retries {
                        out.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %hook.url, "the webhook failed {} times ({why}): an alert event is given up", attempt + 1);
                        break;
                    }
                    attempt += 1;
                    out.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(url = %hook.url, attempt, "the webhook failed ({why}): retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}

/// One POST; the answer's status.
async fn post(hook: &Webhook, tls: Option<Tls>, body: &[u8]) -> anyhow::Result<u16> {
    let u = &hook.url;
    let tcp = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", u.host, u.port))?;
    let _ = tcp.set_nodelay(true);
    if !u.tls {
        return exchange(tcp, hook, body).await;
    }
    let Some(cfg) = tls else {
        bail!("no TLS settings were made for this webhook (a reload raced the delivery)");
    };
    let name = rustls::pki_types::ServerName::try_from(u.host.clone())
        .with_context(|| format!("`{}` is not a TLS server name", u.host))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    exchange(tls, hook, body).await
}

/// TLS settings for an `https://` webhook.
pub type Tls = Arc<rustls::ClientConfig>;

/// The TLS settings of the policy's webhook (`None` for none, or `http://`): the system's
/// trust anchors and its `ca`, read now. Made when a policy is loaded, so that a bad `ca`
/// refuses the policy then, not at the first alert, and a file changed later changes
/// nothing until the next load.
pub fn tls(policy: &portwarden_core::policy::Policy) -> anyhow::Result<Option<Tls>> {
    match &policy.alerts.webhook {
        Some(hook) if hook.url.tls => client_config(hook).map(|c| Some(Arc::new(c))),
        _ => Ok(None),
    }
}

/// The system's trust anchors and the policy's `ca`.
fn client_config(hook: &Webhook) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(path) = &hook.ca {
        let pem = portwarden_ops::files::read_regular(path, 1 << 20)
            .with_context(|| format!("cannot read [alerts] ca {}", path.display()))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(c.with_context(|| format!("{}: not PEM certificates", path.display()))?)
                .with_context(|| format!("{}: a certificate rustls refuses", path.display()))?;
            n += 1;
        }
        if n == 0 {
            bail!("{}: no certificate in it", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Writes the request and reads the status line of the answer (its head at most 16 KiB).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    hook: &Webhook,
    body: &[u8],
) -> anyhow::Result<u16> {
    let u = &hook.url;
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: portwarden/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        u.path,
        u.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the receiver closed the connection without an answer");
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 16 << 10 {
            bail!("no status line in the first 16 KiB of the answer");
        }
    }
    let line = String::from_utf8_lossy(&got);
    let mut parts = line.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.trim().parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => bail!(
            "not an HTTP answer: {:?}",
            line.lines().next().unwrap_or("")
        ),
    }
}

/// The event of one alert change.
pub fn event(c: &portwarden_core::health::AlertChange, host: &str, at: i64) -> AlertEvent {
    AlertEvent {
        api: portwarden_api::API_VERSION,
        kind: if c.raised {
            "alert.raise"
        } else {
            "alert.clear"
        }
        .into(),
        host: host.into(),
        at,
        rule: c.rule.as_str().into(),
        severity: portwarden_core::health::alert_severity(c.rule)
            .as_str()
            .into(),
        service: c.port.service.clone(),
        protocol: c.port.protocol.to_string(),
        port: c.port.port,
        value: c.value,
        threshold: c.threshold,
        summary: format!("port {}: {}", c.port, c.describe()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried_and_how_long_it_waits() {
        for st in [200, 204, 301, 307, 400, 404, 410] {
            assert!(settled(st), "{st}");
        }
        for st in [408, 429, 500, 502, 503, 100] {
            assert!(!settled(st), "{st}");
        }
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
