//! Who is asking, and may they: bearer tokens (SHA-256 in the store, compared in
//! constant time), the peer's uid on the Unix socket, the role each request needs, and a
//! limit on failed attempts per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portwarden_core::auth::Role;

use crate::App;
use crate::http::ApiError;

/// Where a connection comes from, set by the listener on every request.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// A TCP client.
    Tcp(std::net::SocketAddr),
    /// A local process on the Unix socket, by its uid.
    Unix {
        /// The peer's uid (SO_PEERCRED).
        uid: u32,
    },
}

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The ledger's actor: `token:NAME`, or the local user.
    pub actor: String,
    /// A token's name, or the local user's.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Failed attempts allowed per source address in [`WINDOW`] before it is refused.
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Source addresses remembered at most (the oldest are forgotten first).
const REMEMBERED: usize = 4096;

/// Failed authentication per source address: (window start, count).
#[derive(Default)]
pub struct Failures(HashMap<IpAddr, (Instant, u32)>);

impl Failures {
    /// Whether `ip` is over the limit now.
    fn limited(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.0.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < WINDOW => *n >= MAX_FAILURES,
            Some(_) => {
                self.0.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Counts a failure of `ip`; returns its count in the window.
    fn failed(&mut self, ip: IpAddr, now: Instant) -> u32 {
        if self.0.len() >= REMEMBERED && !self.0.contains_key(&ip) {
            self.0
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.0.len() >= REMEMBERED {
                if let Some(oldest) = self.0.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    self.0.remove(&oldest);
                }
            }
        }
        let e = self.0.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1
    }
}

/// The role a request needs: changing who may act needs `admin`, any other change
/// `operate`, a read `read`.
pub fn needed(method: &Method, path: &str) -> Role {
    if path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/") {
        Role::Admin
    } else if matches!(*method, Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Operate
    }
}

/// The local user on the Unix socket: root administers, anyone else (the socket's mode
/// lets in the group) reads.
fn local(uid: u32) -> Caller {
    let name = portwarden_os::identity::user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    Caller {
        actor: format!("{name} (uid {uid}, local socket)"),
        name,
        role: if uid == 0 { Role::Admin } else { Role::Read },
    }
}

/// The bearer token of a request, if it has one; two `Authorization` headers are an
/// error (which one a proxy in front passed on is anyone's guess).
fn bearer(req: &Request) -> Result<Option<&str>, ApiError> {
    let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad-request",
            "more than one Authorization header".into(),
        ));
    }
    let Some((scheme, token)) = v.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Ok(None);
    };
    Ok(scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()))
}

/// The middleware: 401 without a valid token, 403 with one whose role is too small,
/// 429 for a source over its failed attempts; the caller goes into the request.
pub async fn require(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let caller = match peer {
        Some(Peer::Unix { uid }) => local(uid),
        other => {
            let ip = match other {
                Some(Peer::Tcp(a)) => a.ip(),
                _ => IpAddr::from([127, 0, 0, 1]),
            };
            let now = Instant::now();
            let limited = app.failures.lock().is_ok_and(|mut f| f.limited(ip, now));
            if limited {
                return ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!(
                        "more than {MAX_FAILURES} failed authentications from {ip} in {}s: wait",
                        WINDOW.as_secs()
                    ),
                )
                .into_response();
            }
            let token = match bearer(&req) {
                Ok(t) => t.map(str::to_string),
                Err(e) => return e.into_response(),
            };
            let Some(token) = token else {
                return unauthorized("no bearer token: send `Authorization: Bearer TOKEN`");
            };
            let app2 = app.clone();
            let found = tokio::task::spawn_blocking(move || {
                let ctx = app2.ctx("auth");
                match portwarden_ops::store::open_existing(&ctx, app2.state_dir())? {
                    Some(s) => portwarden_ops::token::authenticate(&s, &token),
                    None => Ok(None),
                }
            })
            .await;
            match found {
                Ok(Ok(Some(t))) => Caller {
                    actor: format!("token:{}", t.name),
                    name: t.name,
                    role: t.role,
                },
                Ok(Ok(None)) => {
                    let n = app.failures.lock().map_or(0, |mut f| f.failed(ip, now));
                    // The first of a window, and the one that hits the limit, are worth a
                    // warning; the rest would only flood the log.
                    if n == 1 || n == MAX_FAILURES {
                        tracing::warn!(%ip, failures = n, "rejected an unknown or revoked token");
                    } else {
                        tracing::debug!(%ip, failures = n, "rejected an unknown or revoked token");
                    }
                    return unauthorized("unknown or revoked token");
                }
                Ok(Err(e)) => return ApiError::internal(format!("{e:#}")).into_response(),
                Err(e) => return ApiError::internal(e.to_string()).into_response(),
            }
        }
    };
    let need = needed(req.method(), req.uri().path());
    if !caller.role.allows(need) {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "`{}` has role {}; this needs {}",
                caller.name,
                caller.role.as_str(),
                need.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn unauthorized(detail: &str) -> Response {
    let mut r = ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        detail.to_string(),
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"portwarden\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_needed() {
        assert_eq!(needed(&Method::GET, "/api/v1/leases"), Role::Read);
        assert_eq!(needed(&Method::POST, "/api/v1/leases"), Role::Operate);
        assert_eq!(needed(&Method::GET, "/api/v1/tokens"), Role::Admin);
        assert_eq!(needed(&Method::DELETE, "/api/v1/tokens/ci"), Role::Admin);
    }

    #[test]
    fn failures_limit_then_forget() {
        let mut f = Failures::default();
        let ip = IpAddr::from([127, 0, 0, 9]);
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(!f.limited(ip, t0));
            f.failed(ip, t0);
        }
        assert!(f.limited(ip, t0));
        assert!(!f.limited(IpAddr::from([127, 0, 0, 8]), t0));
        assert!(!f.limited(ip, t0 + WINDOW));
        for i in 0..(REMEMBERED as u32 + 10) {
            f.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(f.0.len() <= REMEMBERED);
    }
}
