//! The HTTP API under `/api/v1`: each handler turns the request into an ops use-case's
//! arguments, runs it on a blocking thread (SQLite, netlink and `nft` are plain calls)
//! and answers with its document. Every error is `{api, error, detail}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portwarden_api::API_VERSION;
use portwarden_api::serve::{
    AllocBody, ApplyBody, ErrorDoc, GrantBody, HealthDoc, ReleaseBody, RenewBody, TokenBody,
};
use portwarden_core::units::HumanDuration;
use portwarden_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::App;
use crate::auth::Caller;

/// The largest request body read, in bytes.
pub const BODY_LIMIT: usize = 64 << 10;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    /// An error with its status and word.
    pub fn new(status: StatusCode, error: &'static str, detail: String) -> ApiError {
        ApiError {
            status,
            error,
            detail,
        }
    }

    fn bad(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail.into())
    }

    /// A failure of the daemon, not of the request.
    pub fn internal(detail: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// A use-case's error: the store's kinds by what they mean to a client; anything
    /// else is the use-case refusing what was asked.
    fn of(e: anyhow::Error) -> ApiError {
        let detail = format!("{e:#}");
        if e.chain()
            .any(|c| c.is::<portwarden_ops::scan::NotPermitted>())
        {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail);
        }
        let status = match e.chain().find_map(|c| c.downcast_ref::<StoreError>()) {
            Some(StoreError::NotFound(_) | StoreError::NoChange(_) | StoreError::NoVersion(_)) => {
                (StatusCode::NOT_FOUND, "not-found")
            }
            Some(StoreError::Change { .. } | StoreError::Stale(_) | StoreError::Altered(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Some(StoreError::NotOwner { .. }) => (StatusCode::FORBIDDEN, "forbidden"),
            Some(StoreError::Exists(_) | StoreError::Pending(_) | StoreError::Refused(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Some(
                StoreError::Backend(_)
                | StoreError::Io { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Foreign { .. }
                | StoreError::TooNew { .. }
                | StoreError::Untrusted(_)
                | StoreError::Truncated(_)
                | StoreError::ReadOnly { .. },
            ) => (StatusCode::SERVICE_UNAVAILABLE, "store-unavailable"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
        };
        ApiError::new(status.0, status.1, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorDoc {
            api: API_VERSION,
            error: self.error.to_string(),
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn ok<T: Serialize>(doc: T) -> Answer {
    Ok(Json(doc).into_response())
}

/// Runs a use-case on a blocking thread (it may drive async parts on the runtime).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&tokio::runtime::Handle) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let h = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || f(&h)).await {
        Ok(r) => r.map_err(ApiError::of),
        Err(e) => Err(ApiError::internal(format!("the use-case failed: {e}"))),
    }
}

/// A JSON body: malformed, unknown fields or over [`BODY_LIMIT`] are 4xx.
fn body<T: DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let b = b.map_err(|e| {
        let st = e.status();
        if st == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                st,
                "too-large",
                format!("the body is over the {} KiB limit", BODY_LIMIT >> 10),
            )
        } else {
            ApiError::bad(e.body_text())
        }
    })?;
    // An empty body is an empty object: every field of a mutation's body is optional
    // where it can be.
    let b: &[u8] = if b.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &b
    };
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// Query parameters, each name known to the endpoint.
struct Params(BTreeMap<String, String>);

impl Params {
    fn of(
        q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(m) = q.map_err(|e| ApiError::bad(e.body_text()))?;
        if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::bad(format!(
                "unknown query parameter `{k}` (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(Params(m))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(false),
            Some("" | "1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(v) => Err(ApiError::bad(format!("`{k}={v}`: use true or false"))),
        }
    }
}

fn duration(what: &str, v: &str) -> Result<std::time::Duration, ApiError> {
    v.parse::<HumanDuration>()
        .map(HumanDuration::get)
        .map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

fn owner(o: Option<String>, c: &Caller) -> Result<String, ApiError> {
    let o = o.unwrap_or_else(|| c.name.clone());
    portwarden_core::auth::check_owner_label(&o)
        .map_err(|e| ApiError::bad(format!("owner: {e}")))?;
    Ok(o)
}

/// A lease id in a path: digits only, so `../x` or `1;drop` never reach anything.
fn lease_id(p: &str) -> Result<i64, ApiError> {
    if p.is_empty() || p.len() > 18 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad(format!("`{p}` is not a lease id")));
    }
    p.parse()
        .map_err(|_| ApiError::bad(format!("`{p}` is not a lease id")))
}

type Q = Result<Query<BTreeMap<String, String>>, QueryRejection>;

/// The API (behind auth), `/metrics` (behind auth) and the JSON fallbacks.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/check", get(check))
        .route("/api/v1/sockets", get(sockets))
        .route("/api/v1/leases", get(leases).post(alloc))
        .route("/api/v1/leases/reclaim", post(reclaim))
        .route("/api/v1/leases/{id}/renew", post(renew))
        .route("/api/v1/leases/{id}/release", post(release))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/balance", get(balance))
        .route("/api/v1/ports", get(ports))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events", get(events))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/scans", get(scans).post(scan_start))
        .route("/api/v1/scans/{id}", get(scan_get))
        .route("/api/v1/fw/plan", get(fw_plan))
        .route("/api/v1/fw/diff", get(fw_diff))
        .route("/api/v1/fw/status", get(fw_status))
        .route("/api/v1/fw/apply", post(fw_apply))
        .route("/api/v1/fw/confirm", post(fw_confirm))
        .route("/api/v1/fw/rollback", post(fw_rollback))
        .route("/api/v1/fw/grants", get(grants).post(grant).delete(revoke))
        .route("/api/v1/policy/history", get(policy_history))
        .route("/api/v1/changes", get(changes).post(change_request))
        .route("/api/v1/changes/{id}", get(change_show))
        .route("/api/v1/changes/{id}/approve", post(change_approve))
        .route("/api/v1/changes/{id}/reject", post(change_reject))
        .route("/api/v1/changes/{id}/apply", post(change_apply))
        .route("/api/v1/ledger", get(ledger))
        .route("/api/v1/ledger/head", get(ledger_head))
        .route("/api/v1/ledger/verify", get(ledger_verify))
        .route("/api/v1/report", get(report))
        .route("/api/v1/tokens", get(tokens).post(token_create))
        .route("/api/v1/tokens/{name}", axum::routing::delete(token_revoke))
        .route("/metrics", get(metrics))
        // Behind auth too: without a token, no path says whether it exists.
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::auth::require,
        ));
    Router::new()
        .route("/", get(dashboard).fallback(not_allowed))
        .merge(api)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// `/metrics` alone, without a token: the `--metrics-listen` listener.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(app)
}

/// Reads the body within `--header-timeout` (a client that sends its head and then
/// trickles the body would hold a connection and a handler for ever) and at most
/// [`BODY_LIMIT`].
async fn body_deadline(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = app.cfg.header_timeout;
    let read = tokio::time::timeout(limit, axum::body::to_bytes(body, BODY_LIMIT)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!(
                    "the body is over the {} KiB limit or broken off",
                    BODY_LIMIT >> 10
                ),
            )
            .into_response();
        }
        Err(_) => {
            tracing::warn!(
                path = %parts.uri.path(),
                "a request body did not arrive in {}: closed",
                HumanDuration(limit)
            );
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!("the body did not arrive in {}", HumanDuration(limit)),
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no endpoint {}", uri.path()),
    )
}

async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Answer {
    let text = blocking(move |_| crate::metrics::scrape(&app)).await?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}

async fn health(State(app): State<Arc<App>>, q: Q) -> Answer {
    Params::of(q, &[])?;
    let head = {
        let app = app.clone();
        blocking(move |_| portwarden_ops::log::head(&app.ctx("health"), app.state_dir())).await?
    };
    let jobs = app.jobs.docs();
    let degraded = jobs.iter().any(|j| j.last_error.is_some());
    ok(HealthDoc {
        api: API_VERSION,
        status: if degraded { "degraded" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        policy: app.policy().name.clone(),
        uptime_secs: app.started.elapsed().as_secs(),
        ledger_head: head.head,
        jobs,
    })
}

/// The dashboard: one page, its script and style inline, no outside resources; it asks
/// for a token and reads everything through the API with it.
async fn dashboard() -> Response {
    let mut r = include_str!("dashboard.html").into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing from elsewhere, no framing; the page's own inline script and style only.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn whoami(Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(portwarden_api::serve::WhoamiDoc {
        api: API_VERSION,
        name: c.name,
        role: c.role.as_str().into(),
    })
}

/// The last overview; before the health job's first sample, one taken now.
async fn current_overview(app: &Arc<App>) -> Result<Arc<str>, ApiError> {
    if let Some(o) = app.overview() {
        return Ok(o);
    }
    let a = app.clone();
    let doc = blocking(move |_| {
        let m = a
            .monitor
            .lock()
            .map_err(|_| anyhow::anyhow!("the monitor is poisoned"))?;
        portwarden_ops::health::sample(&a.ctx("overview"), a.state_dir(), Some(&m))
    })
    .await?;
    app.publish(doc);
    app.overview()
        .ok_or_else(|| ApiError::internal("the overview could not be encoded".into()))
}

async fn overview(State(app): State<Arc<App>>, q: Q) -> Answer {
    Params::of(q, &[])?;
    let o = current_overview(&app).await?;
    let mut r = o.to_string().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Server-Sent Events: the overview now, then after every health sample (`event:
/// overview`); a comment every 15 s keeps proxies from closing it; it ends when the
/// daemon stops.
async fn events(State(app): State<Arc<App>>, q: Q) -> Answer {
    use std::sync::atomic::Ordering;
    use tokio::sync::broadcast::error::RecvError;
    Params::of(q, &[])?;
    let first = current_overview(&app).await?;
    let rx = app.subscribe();
    let frame = |data: &str| Bytes::from(format!("event: overview\ndata: {data}\n\n"));
    let stream =
        futures_util::stream::unfold((rx, Some(first)), move |(mut rx, first)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, std::convert::Infallible>(frame(&f)), (rx, None)));
            }
            for _ in 0..15 {
                if crate::STOP.load(Ordering::SeqCst) {
                    return None;
                }
                match tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await {
                    Ok(Ok(o)) => return Some((Ok(frame(&o)), (rx, None))),
                    Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
                    Ok(Err(RecvError::Closed)) => return None,
                }
            }
            Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (rx, None)))
        });
    let mut r = axum::body::Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

async fn ports(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    let doc = blocking(move |_| {
        let m = app
            .monitor
            .lock()
            .map_err(|_| anyhow::anyhow!("the monitor is poisoned"))?;
        portwarden_ops::health::sample(&app.ctx(&c.actor), app.state_dir(), Some(&m))
    })
    .await?;
    ok(doc)
}

async fn check(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    let p = Params::of(q, &["fail_on"])?;
    let fail_on = match p.get("fail_on") {
        None => portwarden_core::findings::Severity::Medium,
        Some(s) => portwarden_core::findings::Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "fail_on `{s}`: info, low, medium, high or critical"
                ))
            })?,
    };
    let mut e = {
        let app = app.clone();
        blocking(move |h| {
            h.block_on(portwarden_ops::check::evaluate(
                &app.ctx(&c.actor),
                None,
                app.state_dir(),
            ))
        })
        .await?
    };
    e.add(app.health_findings());
    ok(e.doc(fail_on))
}

async fn sockets(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    let p = Params::of(
        q,
        &[
            "tcp",
            "udp",
            "ipv4",
            "ipv6",
            "listen",
            "state",
            "port",
            "pid",
            "process",
            "processes",
            "summary",
        ],
    )?;
    let req = portwarden_ops::inventory::LsReq {
        tcp: p.flag("tcp")?,
        udp: p.flag("udp")?,
        ipv4: p.flag("ipv4")?,
        ipv6: p.flag("ipv6")?,
        listen: p.flag("listen")?,
        states: match p.get("state") {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .map(|x| {
                    portwarden_core::facts::SocketState::parse(x)
                        .ok_or_else(|| ApiError::bad(format!("state `{x}` is not a socket state")))
                })
                .collect::<Result<_, _>>()?,
        },
        port: p
            .get("port")
            .map(|v| {
                v.parse()
                    .map_err(|e| ApiError::bad(format!("port `{v}`: {e}")))
            })
            .transpose()?,
        pid: p
            .get("pid")
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad(format!("pid `{v}` is not a number")))
            })
            .transpose()?,
        process: p.get("process").map(str::to_string),
        processes: p.flag("processes")?,
    };
    let summary = p.flag("summary")?;
    let ctx = app.ctx(&c.actor);
    // A host's whole inventory can be megabytes: at most INVENTORIES are built and
    // encoded at once, the others wait their turn (their memory is not taken yet).
    let _turn = app
        .inventories
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the daemon is stopping".into()))?;
    if summary {
        ok(blocking(move |_| portwarden_ops::inventory::summary(&ctx, &req)).await?)
    } else {
        ok(blocking(move |_| portwarden_ops::inventory::ls(&ctx, &req)).await?)
    }
}

async fn leases(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::lease::list(
            &app.ctx(&c.actor),
            app.state_dir(),
        ))
    })
    .await?)
}

async fn alloc(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let b: AllocBody = body(b)?;
    let count = b.count.unwrap_or(1);
    if !(1..=1024).contains(&count) {
        return Err(ApiError::bad(format!("count {count}: 1 to 1024")));
    }
    let port = match b.port {
        None => None,
        Some(p) => Some(
            portwarden_core::Port::new(p).ok_or_else(|| ApiError::bad("port 0 is not a port"))?,
        ),
    };
    let req = portwarden_ops::lease::AllocReq {
        owner: owner(b.owner, &c)?,
        service: b.service,
        pool: b.pool,
        port,
        count,
        ttl: b.ttl.as_deref().map(|t| duration("ttl", t)).transpose()?,
        seed: None,
        bind_probe: true,
    };
    let d = blocking(move |h| {
        h.block_on(portwarden_ops::lease::alloc(
            &app.ctx(&c.actor),
            None,
            app.state_dir(),
            &req,
            &mut |_| Ok(()),
        ))
    })
    .await?;
    let status = if d.leases.is_empty() && d.refused.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    Ok((status, Json(d)).into_response())
}

async fn renew(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = lease_id(&id)?;
    let b: RenewBody = body(b)?;
    let ttl = b.ttl.as_deref().map(|t| duration("ttl", t)).transpose()?;
    let who = owner(b.owner, &c)?;
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::lease::renew(
            &app.ctx(&c.actor),
            None,
            app.state_dir(),
            id,
            ttl,
            &who,
        ))
    })
    .await?)
}

async fn release(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = lease_id(&id)?;
    let b: ReleaseBody = body(b)?;
    let who = owner(b.owner, &c)?;
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::lease::release(
            &app.ctx(&c.actor),
            app.state_dir(),
            id,
            &who,
        ))
    })
    .await?)
}

async fn reclaim(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    let dry_run = Params::of(q, &["dry_run"])?.flag("dry_run")?;
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::lease::reclaim(
            &app.ctx(&c.actor),
            None,
            app.state_dir(),
            dry_run,
        ))
    })
    .await?)
}

async fn pools(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::lease::pools(
            &app.ctx(&c.actor),
            None,
            app.state_dir(),
        ))
    })
    .await?)
}

/// The balance groups `serve --balance` runs (404 when it runs none).
async fn balance(State(app): State<Arc<App>>, q: Q) -> Answer {
    Params::of(q, &[])?;
    match app.balance_status() {
        Some(d) => ok(d),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no balance groups run here (serve --balance, with [[balance]] groups in the policy)"
                .into(),
        )),
    }
}

fn backend(v: Option<&str>) -> Result<portwarden_ops::fw::Backend, ApiError> {
    use portwarden_ops::fw::Backend;
    match v {
        None | Some("auto") => Ok(Backend::Auto),
        Some("nft") => Ok(Backend::Nft),
        Some("iptables") => Ok(Backend::Iptables),
        Some(o) => Err(ApiError::bad(format!(
            "backend `{o}`: auto, nft or iptables"
        ))),
    }
}

async fn fw_plan(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    let p = Params::of(q, &["format"])?;
    let format = match backend(p.get("format"))? {
        portwarden_ops::fw::Backend::Auto => portwarden_ops::fw::Backend::Nft,
        b => b,
    };
    ok(blocking(move |_| {
        portwarden_ops::fw::plan(&app.ctx(&c.actor), None, app.state_dir(), format)
    })
    .await?)
}

async fn fw_diff(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(
        blocking(move |_| portwarden_ops::fw::diff(&app.ctx(&c.actor), None, app.state_dir()))
            .await?,
    )
}

async fn fw_status(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(blocking(move |_| portwarden_ops::fw::status(&app.ctx(&c.actor), app.state_dir())).await?)
}

/// An apply's settings from a request body: the commit-confirm window (default 60s) and
/// the backend (default auto).
fn apply_req(
    confirm_within: Option<&str>,
    backend_name: Option<&str>,
    allow_missing_interface: bool,
    how: &'static str,
) -> Result<portwarden_ops::fw::ApplyReq, ApiError> {
    Ok(portwarden_ops::fw::ApplyReq {
        confirm_within: duration("confirm_within", confirm_within.unwrap_or("60s"))?,
        backend: backend(backend_name)?,
        allow_missing_interface,
        how,
    })
}

async fn fw_apply(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let b: ApplyBody = body(b)?;
    let req = apply_req(
        b.confirm_within.as_deref(),
        b.backend.as_deref(),
        b.allow_missing_interface,
        "fw apply",
    )?;
    ok(
        blocking(move |_| {
            portwarden_ops::fw::apply(&app.ctx(&c.actor), None, app.state_dir(), req)
        })
        .await?,
    )
}

async fn fw_txn(app: Arc<App>, c: Caller, confirm: bool) -> Answer {
    let d = blocking(move |_| {
        let ctx = app.ctx(&c.actor);
        if confirm {
            portwarden_ops::fw::confirm(&ctx, app.state_dir())
        } else {
            portwarden_ops::fw::rollback(&ctx, app.state_dir())
        }
    })
    .await?;
    let status = if d.done {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(d)).into_response())
}

async fn policy_history(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Answer {
    ok(
        blocking(move |_| portwarden_ops::policy::history(&app.ctx(&c.actor), app.state_dir()))
            .await?,
    )
}

fn change_id(id: &str) -> Result<i64, ApiError> {
    lease_id(id).map_err(|_| ApiError::bad(format!("`{id}` is not a change id")))
}

async fn changes(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Answer {
    ok(
        blocking(move |_| portwarden_ops::change::list(&app.ctx(&c.actor), app.state_dir()))
            .await?,
    )
}

async fn change_show(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = change_id(&id)?;
    ok(
        blocking(move |_| portwarden_ops::change::show(&app.ctx(&c.actor), app.state_dir(), id))
            .await?,
    )
}

/// `POST /api/v1/changes`: the proposed policy's text, and why.
async fn change_request(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let b: portwarden_api::serve::ChangeBody = body(b)?;
    let req = portwarden_ops::change::RequestReq {
        source: portwarden_ops::change::Proposed::Text {
            text: b.policy,
            label: format!("POST /api/v1/changes ({})", c.actor),
        },
        reason: b.reason,
        ticket: b.ticket,
    };
    ok(blocking(move |h| {
        h.block_on(portwarden_ops::change::request(
            &app.ctx(&c.actor),
            app.state_dir(),
            &req,
        ))
    })
    .await?)
}

async fn change_approve(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = change_id(&id)?;
    ok(
        blocking(move |_| portwarden_ops::change::approve(&app.ctx(&c.actor), app.state_dir(), id))
            .await?,
    )
}

async fn change_reject(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = change_id(&id)?;
    let b: portwarden_api::serve::RejectBody = body(b)?;
    ok(blocking(move |_| {
        portwarden_ops::change::reject(&app.ctx(&c.actor), app.state_dir(), id, &b.reason)
    })
    .await?)
}

async fn change_apply(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = change_id(&id)?;
    let b: portwarden_api::serve::ChangeApplyBody = body(b)?;
    let req = apply_req(
        b.confirm_within.as_deref(),
        b.backend.as_deref(),
        false,
        "change apply",
    )?;
    ok(blocking(move |_| {
        portwarden_ops::change::apply(
            &app.ctx(&c.actor),
            app.state_dir(),
            id,
            req,
            b.keep_on_hook_failure,
        )
    })
    .await?)
}

async fn fw_confirm(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Answer {
    fw_txn(app, c, true).await
}

async fn fw_rollback(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Answer {
    fw_txn(app, c, false).await
}

async fn grants(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(
        blocking(move |_| portwarden_ops::fw::grants::active(&app.ctx(&c.actor), app.state_dir()))
            .await?,
    )
}

fn grant_item(
    b: &GrantBody,
    with_duration: bool,
) -> Result<portwarden_ops::fw::grants::Item, ApiError> {
    match (&b.duration, with_duration) {
        (None, true) => return Err(ApiError::bad("`for`: how long the grant lasts (`2h`)")),
        (Some(_), false) => return Err(ApiError::bad("`for` is not taken by a revocation")),
        _ => {}
    }
    portwarden_ops::fw::grants::parse_item(&b.port, &b.from, b.duration.as_deref())
        .map_err(|e| ApiError::bad(format!("{e:#}")))
}

async fn grant(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let item = grant_item(&body(b)?, true)?;
    ok(blocking(move |_| {
        portwarden_ops::fw::grants::grant(&app.ctx(&c.actor), app.state_dir(), &[item])
    })
    .await?)
}

async fn revoke(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let item = grant_item(&body(b)?, false)?;
    ok(blocking(move |_| {
        portwarden_ops::fw::grants::revoke(&app.ctx(&c.actor), app.state_dir(), &[item])
    })
    .await?)
}

async fn scans(State(app): State<Arc<App>>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(portwarden_api::serve::ScansDoc {
        api: API_VERSION,
        scans: app.scans.list().iter().map(|s| s.doc(false)).collect(),
    })
}

async fn scan_get(State(app): State<Arc<App>>, Path(id): Path<String>, q: Q) -> Answer {
    Params::of(q, &[])?;
    let n = lease_id(&id).map_err(|_| ApiError::bad(format!("`{id}` is not a scan id")))?;
    match u64::try_from(n).ok().and_then(|n| app.scans.get(n)) {
        Some(s) => ok(s.doc(true)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no scan {n} (the last {} are kept)", crate::scans::KEPT),
        )),
    }
}

/// The longest per-probe timeout a scan may be asked for.
const SCAN_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a scan of addresses the policy's `[scan]` allows (403 otherwise); 409 while
/// another runs; 202 with the scan to poll.
async fn scan_start(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let b: portwarden_api::serve::ScanBody = body(b)?;
    let timeout = match b.timeout.as_deref() {
        Some(t) => duration("timeout", t)?,
        None => std::time::Duration::from_secs(1),
    };
    if timeout.is_zero() || timeout > SCAN_TIMEOUT_MAX {
        return Err(ApiError::bad(format!(
            "timeout: between 1ms and {}",
            HumanDuration(SCAN_TIMEOUT_MAX)
        )));
    }
    if let Some(p) = &b.ports {
        portwarden_core::targets::parse_ports(p)
            .map_err(|e| ApiError::bad(format!("ports: {e}")))?;
    }
    let top = b.top.unwrap_or(100);
    if b.ports.is_none() && !(1..=65535).contains(&top) {
        return Err(ApiError::bad("top: between 1 and 65535"));
    }
    if let Some(r) = b.rate {
        if r == 0 || r > portwarden_ops::scan::RATE_MAX {
            return Err(ApiError::bad(format!(
                "rate: between 1 and {} probes per second",
                portwarden_ops::scan::RATE_MAX
            )));
        }
    }
    let (a, targets) = (app.clone(), b.targets.clone());
    let actor = c.actor.clone();
    let addrs =
        blocking(move |_| portwarden_ops::scan::permitted(&a.ctx(&actor), &targets)).await?;
    let now = app.ctx(&c.actor).clock.now();
    let scan = app.scans.begin(&c.actor, addrs.clone(), now).map_err(|r| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "scan {0} is running; poll GET /api/v1/scans/{0}",
                r.doc(false).id
            ),
        )
    })?;
    let id = scan.doc(false).id;
    let shown: Vec<String> = addrs.iter().take(8).map(ToString::to_string).collect();
    let more = addrs.len().saturating_sub(shown.len());
    let what = format!(
        "{}{} {} ports {}",
        shown.join(" "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        if b.udp { "udp" } else { "tcp" },
        b.ports.clone().unwrap_or_else(|| format!("top {top}")),
    );
    let (a, actor) = (app.clone(), c.actor.clone());
    let recorded = blocking(move |_| {
        portwarden_ops::log::record_change(
            &a.ctx(&actor),
            a.state_dir(),
            portwarden_store::Change {
                actor: actor.clone(),
                action: "scan.start".into(),
                subject: format!("scan:{id}"),
                before: None,
                after: None,
                reason: Some(what),
            },
        )
    })
    .await;
    if let Err(e) = recorded {
        app.scans.abandon(id);
        return Err(e);
    }
    let req = portwarden_ops::scan::ScanRequest {
        targets: addrs.iter().map(ToString::to_string).collect(),
        ports: b.ports.clone(),
        top: Some(top),
        udp: b.udp,
        rate: b.rate,
        service: b.service,
        timeout,
        retries: 2,
        max_hosts: addrs.len() as u64,
        args: format!("POST /api/v1/scans ({})", c.actor),
        ..Default::default()
    };
    let (a, s, actor) = (app.clone(), scan.clone(), c.actor.clone());
    tokio::spawn(async move {
        let mut ctx = a.ctx(&actor);
        let p = s.clone();
        ctx.progress = Arc::new(move |d, t| p.progress(d, t));
        let r = portwarden_ops::scan::run(&ctx, &req).await;
        match &r {
            Ok(d) if d.interrupted => tracing::info!(
                scan = id,
                open = d.ports.iter().filter(|p| p.state == "open").count(),
                ms = d.elapsed_ms,
                "scan interrupted: the daemon stops"
            ),
            Ok(d) => tracing::info!(
                scan = id,
                open = d.ports.iter().filter(|p| p.state == "open").count(),
                ms = d.elapsed_ms,
                "scan done"
            ),
            Err(e) => tracing::warn!(scan = id, "scan failed: {e:#}"),
        }
        s.finish(ctx.clock.now(), r);
    });
    let mut r = (StatusCode::ACCEPTED, Json(scan.doc(false))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/scans/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn ledger(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    let p = Params::of(q, &["since"])?;
    let since = p.get("since").map(|s| duration("since", s)).transpose()?;
    ok(
        blocking(move |_| portwarden_ops::log::list(&app.ctx(&c.actor), app.state_dir(), since))
            .await?,
    )
}

async fn ledger_head(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(blocking(move |_| portwarden_ops::log::head(&app.ctx(&c.actor), app.state_dir())).await?)
}

async fn ledger_verify(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    q: Q,
) -> Answer {
    let p = Params::of(q, &["expect_head"])?;
    let expect = p
        .get("expect_head")
        .map(|h| portwarden_ops::log::parse_head(h).map_err(|e| ApiError::bad(format!("{e:#}"))))
        .transpose()?;
    ok(blocking(move |_| {
        portwarden_ops::log::verify(&app.ctx(&c.actor), app.state_dir(), expect.as_ref(), false)
    })
    .await?)
}

async fn report(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    use portwarden_core::report::{to_csv, to_html, to_markdown};
    let p = Params::of(q, &["format"])?;
    let format = p.get("format").unwrap_or("json").to_string();
    if !matches!(format.as_str(), "json" | "md" | "html" | "csv") {
        return Err(ApiError::bad(format!(
            "format `{format}`: json, md, html or csv"
        )));
    }
    let d = blocking(move |h| {
        h.block_on(portwarden_ops::report::report(
            &app.ctx(&c.actor),
            None,
            app.state_dir(),
        ))
    })
    .await?;
    let (text, ty) = match format.as_str() {
        "md" => (to_markdown(&d.report), "text/markdown; charset=utf-8"),
        "html" => (to_html(&d.report), "text/html; charset=utf-8"),
        "csv" => (to_csv(&d.report), "text/csv; charset=utf-8"),
        _ => return ok(d),
    };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(ty))], text).into_response())
}

async fn tokens(State(app): State<Arc<App>>, Extension(c): Extension<Caller>, q: Q) -> Answer {
    Params::of(q, &[])?;
    ok(blocking(move |_| portwarden_ops::token::list(&app.ctx(&c.actor), app.state_dir())).await?)
}

async fn token_create(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let b: TokenBody = body(b)?;
    portwarden_core::auth::check_token_name(&b.name)
        .map_err(|e| ApiError::bad(format!("name: {e}")))?;
    ok(blocking(move |_| {
        portwarden_ops::token::create(&app.ctx(&c.actor), app.state_dir(), &b.name, b.role)
    })
    .await?)
}

async fn token_revoke(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    portwarden_core::auth::check_token_name(&name)
        .map_err(|e| ApiError::bad(format!("name: {e}")))?;
    let d = blocking(move |_| {
        portwarden_ops::token::revoke(&app.ctx(&c.actor), app.state_dir(), &name)
    })
    .await?;
    let status = if d.revoked {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, Json(d)).into_response())
}
