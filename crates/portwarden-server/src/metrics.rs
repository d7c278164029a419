//! `/metrics` in the OpenMetrics text format (prometheus-client). Every metric is named
//! once, in [`names`], as `portwarden_<thing>_<unit>`; label values come from closed sets
//! (rule ids, severities, protocols, job names) or from the policy (service and pool
//! names), never from a request.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::App;

/// Every metric's name, help and labels.
pub mod names {
    /// One metric family.
    #[derive(Debug, Clone, Copy)]
    pub struct Def {
        /// The family name as exposed.
        pub name: &'static str,
        /// Its help text.
        pub help: &'static str,
        /// Its type (`gauge`).
        pub kind: &'static str,
        /// Its label names, in order.
        pub labels: &'static [&'static str],
    }

    const PORT: &[&str] = &["service", "source", "protocol", "port"];
    const PORT_RULE: &[&str] = &["service", "source", "protocol", "port", "rule"];

    /// 1 when something listens on a managed port.
    pub const PORT_LISTENING: Def = Def {
        name: "portwarden_port_listening",
        help: "Whether something listens on a managed port (1) or not (0)",
        kind: "gauge",
        labels: PORT,
    };
    /// Established connections to a managed port.
    pub const PORT_CONNECTIONS: Def = Def {
        name: "portwarden_port_established_connections",
        help: "Established TCP connections to a managed port",
        kind: "gauge",
        labels: PORT,
    };
    /// Connections in a listener's accept queue.
    pub const PORT_ACCEPT_QUEUE: Def = Def {
        name: "portwarden_port_accept_queue_connections",
        help: "Connections waiting in the accept queue of a managed port's listener",
        kind: "gauge",
        labels: PORT,
    };
    /// A listener's backlog.
    pub const PORT_BACKLOG: Def = Def {
        name: "portwarden_port_backlog_connections",
        help: "The backlog (accept queue limit) of a managed port's listener",
        kind: "gauge",
        labels: PORT,
    };
    /// A managed port's utilisation.
    pub const PORT_UTILISATION: Def = Def {
        name: "portwarden_port_utilisation_ratio",
        help: "The larger of established connections over max_conn and accept queue over backlog",
        kind: "gauge",
        labels: PORT,
    };
    /// A managed port's probe error rate.
    pub const PORT_ERROR_RATE: Def = Def {
        name: "portwarden_port_probe_error_ratio",
        help: "Failed health probes over probes of a managed port in the last five minutes",
        kind: "gauge",
        labels: PORT,
    };
    /// The port health alerts.
    pub const PORT_ALERT: Def = Def {
        name: "portwarden_port_alert",
        help: "Whether a port health alert stands (1) or not (0)",
        kind: "gauge",
        labels: PORT_RULE,
    };
    /// The kernel's accept queue overflows.
    pub const LISTEN_OVERFLOWS: Def = Def {
        name: "portwarden_host_listen_overflows",
        help: "TcpExt ListenOverflows: connections dropped because an accept queue was full, since boot (use rate())",
        kind: "gauge",
        labels: &[],
    };
    /// The kernel's listen drops.
    pub const LISTEN_DROPS: Def = Def {
        name: "portwarden_host_listen_drops",
        help: "TcpExt ListenDrops: SYNs and connections a listener dropped, since boot (use rate())",
        kind: "gauge",
        labels: &[],
    };
    /// Ports in a pool.
    pub const POOL_SIZE: Def = Def {
        name: "portwarden_pool_size_ports",
        help: "Ports in a pool",
        kind: "gauge",
        labels: &["pool", "protocol"],
    };
    /// Leased ports of a pool.
    pub const POOL_LEASED: Def = Def {
        name: "portwarden_pool_leased_ports",
        help: "Leased ports of a pool",
        kind: "gauge",
        labels: &["pool", "protocol"],
    };
    /// leased / size.
    pub const POOL_UTILISATION: Def = Def {
        name: "portwarden_pool_utilisation_ratio",
        help: "Leased ports over pool size, 0 to 1",
        kind: "gauge",
        labels: &["pool", "protocol"],
    };
    /// Findings of the last inventory, by rule and severity.
    pub const FINDINGS: Def = Def {
        name: "portwarden_findings",
        help: "Findings of the last inventory job, by rule and severity",
        kind: "gauge",
        labels: &["rule", "severity"],
    };
    /// The exposure score.
    pub const EXPOSURE: Def = Def {
        name: "portwarden_exposure_score",
        help: "The exposure score of the last inventory job (docs/exposure.md)",
        kind: "gauge",
        labels: &[],
    };
    /// The ledger head's sequence number.
    pub const LEDGER_HEAD_SEQ: Def = Def {
        name: "portwarden_ledger_head_seq",
        help: "Sequence number of the ledger's head record: a copy kept elsewhere shows truncation",
        kind: "gauge",
        labels: &[],
    };
    /// The ledger head's hash.
    pub const LEDGER_HEAD: Def = Def {
        name: "portwarden_ledger_head_info",
        help: "The ledger's head record, its hash as a label (always 1)",
        kind: "gauge",
        labels: &["seq", "hash"],
    };
    /// A firewall apply waiting for its confirm.
    pub const FW_PENDING: Def = Def {
        name: "portwarden_fw_pending_transactions",
        help: "Firewall applies waiting for confirm (0 or 1)",
        kind: "gauge",
        labels: &[],
    };
    /// Grants in force.
    pub const FW_GRANTS: Def = Def {
        name: "portwarden_fw_grants_active",
        help: "Time-limited firewall grants in force",
        kind: "gauge",
        labels: &[],
    };
    /// A job's last start.
    pub const JOB_LAST_RUN: Def = Def {
        name: "portwarden_job_last_run_timestamp_seconds",
        help: "Unix time of a periodic job's last start",
        kind: "gauge",
        labels: &["job"],
    };
    /// A job's last duration.
    pub const JOB_DURATION: Def = Def {
        name: "portwarden_job_duration_seconds",
        help: "How long a periodic job's last run took",
        kind: "gauge",
        labels: &["job"],
    };
    /// Whether a job's last run failed.
    pub const JOB_FAILED: Def = Def {
        name: "portwarden_job_last_failed",
        help: "Whether a periodic job's last run failed (1) or not (0)",
        kind: "gauge",
        labels: &["job"],
    };
    /// What the webhook worker did with alert events.
    pub const WEBHOOK_EVENTS: Def = Def {
        name: "portwarden_webhook_events",
        help: "Alert events for [alerts] webhook since the daemon started, by outcome (delivered, failed, dropped, retried attempts)",
        kind: "gauge",
        labels: &["outcome"],
    };
    /// Alert events waiting for the webhook.
    pub const WEBHOOK_QUEUE: Def = Def {
        name: "portwarden_webhook_queue_events",
        help: "Alert events waiting for [alerts] webhook",
        kind: "gauge",
        labels: &[],
    };
    const BACKEND: &[&str] = &["group", "backend"];
    /// A balance backend's health.
    pub const BALANCE_UP: Def = Def {
        name: "portwarden_balance_backend_up",
        help: "Whether a balance group's backend is up (1) or down (0) (serve --balance)",
        kind: "gauge",
        labels: BACKEND,
    };
    /// Connections open to a backend.
    pub const BALANCE_ACTIVE: Def = Def {
        name: "portwarden_balance_backend_active_connections",
        help: "Proxied connections (TCP) or sessions (UDP) open to a balance backend",
        kind: "gauge",
        labels: BACKEND,
    };
    /// Connections sent to a backend.
    pub const BALANCE_SENT: Def = Def {
        name: "portwarden_balance_backend_connections",
        help: "Connections sent to a balance backend since the daemon started",
        kind: "gauge",
        labels: BACKEND,
    };
    /// Bytes through a backend.
    pub const BALANCE_BYTES: Def = Def {
        name: "portwarden_balance_backend_bytes",
        help: "Bytes forwarded to (in) and from (out) a balance backend since the daemon started",
        kind: "gauge",
        labels: &["group", "backend", "direction"],
    };
    /// Failed connects and checks.
    pub const BALANCE_FAILED: Def = Def {
        name: "portwarden_balance_backend_failures",
        help: "Failed proxied connects (each redispatched) and failed health checks of a balance backend",
        kind: "gauge",
        labels: &["group", "backend", "kind"],
    };
    /// The last check's latency.
    pub const BALANCE_CHECK: Def = Def {
        name: "portwarden_balance_backend_check_seconds",
        help: "How long a balance backend's last passed health check took",
        kind: "gauge",
        labels: BACKEND,
    };
    /// Connections a group refused or dropped, by reason.
    pub const BALANCE_REFUSED: Def = Def {
        name: "portwarden_balance_refused_connections",
        help: "Connections a balance group closed without a backend, by reason (source-conn, source-rate, no-backend, queue-timeout, bad-proxy-header, local-error)",
        kind: "gauge",
        labels: &["group", "reason"],
    };
    /// How long the scrape took.
    pub const SCRAPE: Def = Def {
        name: "portwarden_scrape_duration_seconds",
        help: "How long gathering this scrape took",
        kind: "gauge",
        labels: &[],
    };

    /// Every family, in exposition order.
    pub const ALL: &[Def] = &[
        PORT_LISTENING,
        PORT_CONNECTIONS,
        PORT_ACCEPT_QUEUE,
        PORT_BACKLOG,
        PORT_UTILISATION,
        PORT_ERROR_RATE,
        PORT_ALERT,
        LISTEN_OVERFLOWS,
        LISTEN_DROPS,
        POOL_SIZE,
        POOL_LEASED,
        POOL_UTILISATION,
        FINDINGS,
        EXPOSURE,
        LEDGER_HEAD_SEQ,
        LEDGER_HEAD,
        FW_PENDING,
        FW_GRANTS,
        JOB_LAST_RUN,
        JOB_DURATION,
        JOB_FAILED,
        WEBHOOK_EVENTS,
        WEBHOOK_QUEUE,
        BALANCE_UP,
        BALANCE_ACTIVE,
        BALANCE_SENT,
        BALANCE_BYTES,
        BALANCE_FAILED,
        BALANCE_CHECK,
        BALANCE_REFUSED,
        SCRAPE,
    ];
}

type Labels = Vec<(String, String)>;
type F64 = Gauge<f64, AtomicU64>;

/// The families of one scrape, registered in [`names::ALL`]'s order.
struct Scrape {
    reg: Registry,
}

impl Scrape {
    fn gauge(&mut self, d: names::Def, rows: Vec<(Vec<String>, f64)>) {
        let fam = Family::<Labels, F64>::default();
        for (values, v) in rows {
            let labels = d
                .labels
                .iter()
                .map(|l| l.to_string())
                .zip(values)
                .collect::<Labels>();
            fam.get_or_create(&labels).set(v);
        }
        self.reg.register(d.name, d.help, fam);
    }

    fn scalar(&mut self, d: names::Def, v: f64) {
        let g = F64::default();
        g.set(v);
        self.reg.register(d.name, d.help, g);
    }
}

/// The balance groups' families (rows only with `serve --balance`).
fn balance_rows(s: &mut Scrape, app: &Arc<App>) {
    use names::*;
    let groups = app.balance_status().map(|d| d.groups).unwrap_or_default();
    let per = |f: &dyn Fn(&portwarden_core::balance::BackendStatus) -> Option<f64>| {
        groups
            .iter()
            .flat_map(|g| {
                g.backends
                    .iter()
                    .filter_map(|b| Some((vec![g.name.clone(), b.addr.to_string()], f(b)?)))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    s.gauge(BALANCE_UP, per(&|b| Some(f64::from(u8::from(b.up)))));
    s.gauge(BALANCE_ACTIVE, per(&|b| Some(b.active as f64)));
    s.gauge(BALANCE_SENT, per(&|b| Some(b.total as f64)));
    let mut bytes = Vec::new();
    let mut failed = Vec::new();
    for g in &groups {
        for b in &g.backends {
            let l = |x: &str| vec![g.name.clone(), b.addr.to_string(), x.to_string()];
            bytes.push((l("in"), b.bytes_in as f64));
            bytes.push((l("out"), b.bytes_out as f64));
            failed.push((l("connect"), b.failed_connects as f64));
            failed.push((l("check"), b.failed_checks as f64));
        }
    }
    s.gauge(BALANCE_BYTES, bytes);
    s.gauge(BALANCE_FAILED, failed);
    s.gauge(BALANCE_CHECK, per(&|b| b.check_ms.map(|m| m / 1000.0)));
    s.gauge(
        BALANCE_REFUSED,
        groups
            .iter()
            .flat_map(|g| {
                [
                    ("source-conn", g.refused_source_conn),
                    ("source-rate", g.refused_source_rate),
                    ("no-backend", g.no_backend),
                    ("queue-timeout", g.queue_timeouts),
                    ("bad-proxy-header", g.bad_proxy_header),
                    ("local-error", g.local_errors),
                ]
                .map(|(r, n)| (vec![g.name.clone(), r.to_string()], n as f64))
            })
            .collect(),
    );
}

/// Gathers and encodes one scrape: a socket dump, the store's leases, pools, grants and
/// ledger head, and what the jobs saw last.
pub fn scrape(app: &Arc<App>) -> anyhow::Result<String> {
    use names::*;
    let started = Instant::now();
    let ctx = app.ctx("metrics");
    let dir = app.state_dir();
    let ports = {
        let m = app
            .monitor
            .lock()
            .map_err(|_| anyhow::anyhow!("the monitor is poisoned"))?;
        portwarden_ops::health::sample(&ctx, dir, Some(&m))?
    };
    let pools = tokio::runtime::Handle::current()
        .block_on(portwarden_ops::lease::pools(&ctx, None, dir))?;
    let head = portwarden_ops::log::head(&ctx, dir)?;
    let grants = portwarden_ops::fw::grants::active(&ctx, dir)?;
    let pending = portwarden_ops::fw::pending_txn(&ctx, dir)?;
    let mut s = Scrape {
        reg: Registry::default(),
    };
    let port_rows = |f: &dyn Fn(&portwarden_api::health::PortHealth) -> f64| {
        ports
            .ports
            .iter()
            .map(|p| {
                (
                    vec![
                        p.service.clone(),
                        p.source.clone(),
                        p.protocol.clone(),
                        p.port.to_string(),
                    ],
                    f(p),
                )
            })
            .collect::<Vec<_>>()
    };
    s.gauge(
        PORT_LISTENING,
        port_rows(&|p| f64::from(u8::from(p.listening))),
    );
    s.gauge(PORT_CONNECTIONS, port_rows(&|p| p.established as f64));
    s.gauge(PORT_ACCEPT_QUEUE, port_rows(&|p| p.accept_queue as f64));
    s.gauge(PORT_BACKLOG, port_rows(&|p| p.backlog as f64));
    // A port without a limit to count against, or not yet probed, has no row.
    let some_rows = |f: &dyn Fn(&portwarden_api::health::PortHealth) -> Option<f64>| {
        port_rows(&|p| f(p).unwrap_or(f64::NAN))
            .into_iter()
            .filter(|r| !r.1.is_nan())
            .collect::<Vec<_>>()
    };
    s.gauge(PORT_UTILISATION, some_rows(&|p| p.utilisation));
    s.gauge(PORT_ERROR_RATE, some_rows(&|p| p.error_rate));
    let mut alerts = Vec::new();
    for p in &ports.ports {
        for rule in [
            portwarden_core::findings::RuleId::PortUtilisationHigh,
            portwarden_core::findings::RuleId::PortErrorRateHigh,
        ] {
            let labels = vec![
                p.service.clone(),
                p.source.clone(),
                p.protocol.clone(),
                p.port.to_string(),
                rule.as_str().to_string(),
            ];
            let on = p.alerts.iter().any(|a| a == rule.as_str());
            alerts.push((labels, f64::from(u8::from(on))));
        }
    }
    s.gauge(PORT_ALERT, alerts);
    let (overflows, drops) = portwarden_os::host::listen_overflows().unwrap_or((0, 0));
    // Gauges holding the kernel's counters: an OpenMetrics counter's `_total` sample
    // name differs from its family's, which the text format (and promtool) refuse.
    s.scalar(LISTEN_OVERFLOWS, overflows as f64);
    s.scalar(LISTEN_DROPS, drops as f64);
    let pool_rows = |f: &dyn Fn(&portwarden_api::lease::Pool) -> f64| {
        pools
            .pools
            .iter()
            .map(|p| (vec![p.name.clone(), p.protocol.clone()], f(p)))
            .collect::<Vec<_>>()
    };
    s.gauge(POOL_SIZE, pool_rows(&|p| f64::from(p.size)));
    s.gauge(POOL_LEASED, pool_rows(&|p| f64::from(p.leased)));
    s.gauge(POOL_UTILISATION, pool_rows(&|p| p.utilisation));
    let latest = app.latest();
    s.gauge(
        FINDINGS,
        latest
            .as_ref()
            .map(|l| {
                l.findings
                    .iter()
                    .map(|((rule, sev), n)| {
                        (
                            vec![rule.as_str().to_string(), sev.as_str().to_string()],
                            *n as f64,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    );
    s.scalar(EXPOSURE, latest.map_or(0.0, |l| l.exposure));
    let (seq, hash) = head.head.map_or((0, String::new()), |h| (h.seq, h.hash));
    s.scalar(LEDGER_HEAD_SEQ, seq as f64);
    s.gauge(LEDGER_HEAD, vec![(vec![seq.to_string(), hash], 1.0)]);
    s.scalar(FW_PENDING, f64::from(u8::from(pending.is_some())));
    s.scalar(FW_GRANTS, grants.granted.len() as f64);
    let jobs = app.jobs.docs();
    s.gauge(
        JOB_LAST_RUN,
        jobs.iter()
            .map(|j| (vec![j.name.clone()], j.last_run.unwrap_or(0) as f64))
            .collect(),
    );
    s.gauge(
        JOB_DURATION,
        jobs.iter()
            .map(|j| {
                (
                    vec![j.name.clone()],
                    j.last_duration_ms.unwrap_or(0) as f64 / 1000.0,
                )
            })
            .collect(),
    );
    s.gauge(
        JOB_FAILED,
        jobs.iter()
            .map(|j| {
                (
                    vec![j.name.clone()],
                    f64::from(u8::from(j.last_error.is_some())),
                )
            })
            .collect(),
    );
    balance_rows(&mut s, app);
    let w = &app.outbox.stats;
    s.gauge(
        WEBHOOK_EVENTS,
        [
            ("delivered", &w.delivered),
            ("failed", &w.failed),
            ("dropped", &w.dropped),
            ("retried", &w.retried),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                vec![k.to_string()],
                v.load(std::sync::atomic::Ordering::Relaxed) as f64,
            )
        })
        .collect(),
    );
    s.scalar(WEBHOOK_QUEUE, app.outbox.waiting() as f64);
    s.scalar(SCRAPE, started.elapsed().as_secs_f64());
    let mut out = String::new();
    encode(&mut out, &s.reg)?;
    Ok(out)
}
