//! Port health: one socket dump, counted per managed port (the policy's fixed ports and
//! the store's leases): listening, established connections, accept queue and backlog;
//! and the monitor's step: that sample plus connect probes of every TCP listener, fed to
//! core's [`Monitor`], each raise and clear a ledger record.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use portwarden_api::API_VERSION;
use portwarden_api::health::{PortHealth, PortsDoc};
use portwarden_core::Protocol;
use portwarden_core::facts::SocketState;
use portwarden_core::health::{AlertChange, Monitor, Observation, PortKey, Thresholds};

use crate::Ctx;

/// Fixed ranges longer than this are not sampled port by port.
const RANGE_SAMPLED: u32 = 64;

/// Connect probes of each TCP listener per sample: with a sample every 10 s, 120 in the
/// five-minute window, so one lost probe stays under the 1 % alert and two do not.
pub const PROBES_PER_SAMPLE: u32 = 4;

/// How long a probe's connect may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One sample: the document and, per listening port, where to probe it.
struct Sampled {
    doc: PortsDoc,
    probe_at: HashMap<(Protocol, u16), SocketAddr>,
}

/// Samples every managed port now; with the monitor, each row carries its alerts and
/// error rate.
pub fn sample(ctx: &Ctx, state_dir: &Path, monitor: Option<&Monitor>) -> anyhow::Result<PortsDoc> {
    let mut s = sample_ports(ctx, state_dir, false)?;
    if let Some(m) = monitor {
        for p in &mut s.doc.ports {
            annotate(p, m);
        }
    }
    Ok(s.doc)
}

/// One dump; with `owners`, each listener's process is resolved too (a walk of
/// `/proc/*/fd` for the managed listeners only).
fn sample_ports(ctx: &Ctx, state_dir: &Path, owners: bool) -> anyhow::Result<Sampled> {
    let loaded = crate::policy::load(ctx, None)?;
    let leases = match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => s.leases()?,
        None => Vec::new(),
    };
    // Per service: max_conn, zone, tls.
    let declared: HashMap<&str, (Option<u32>, String, &'static str)> = loaded
        .policy
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                (s.max_conn, s.zone.to_string(), s.tls.as_str()),
            )
        })
        .collect();
    // (protocol, port) → (service, source), the policy's first.
    let mut managed: BTreeMap<(Protocol, u16), (String, &'static str)> = BTreeMap::new();
    for svc in &loaded.policy.services {
        for spec in svc.fixed_ports() {
            if spec.range.len() > RANGE_SAMPLED {
                continue;
            }
            for p in spec.range.start().get()..=spec.range.end().get() {
                managed
                    .entry((spec.protocol, p))
                    .or_insert((svc.name.clone(), "service"));
            }
        }
    }
    for l in &leases {
        managed
            .entry((l.protocol, l.port.get()))
            .or_insert((l.service.clone(), "lease"));
    }
    let mut inv = portwarden_os::sockets(&portwarden_os::Query {
        states: Some(vec![
            SocketState::Listen,
            SocketState::Unconn,
            SocketState::Established,
        ]),
        ..portwarden_os::Query::default()
    })
    .context("cannot read the socket table")?;
    #[derive(Default)]
    struct Seen {
        listening: bool,
        established: u64,
        queue: u64,
        backlog: u64,
    }
    let mut seen: HashMap<(Protocol, u16), Seen> = HashMap::new();
    let mut probe_at = HashMap::new();
    let mut listeners = Vec::new();
    for s in &inv.sockets {
        let key = (s.protocol, s.local_port);
        if !managed.contains_key(&key) {
            continue;
        }
        let e = seen.entry(key).or_default();
        match s.state {
            SocketState::Listen | SocketState::Unconn => {
                e.listening = true;
                if owners {
                    listeners.push(s.clone());
                }
                if s.state == SocketState::Listen {
                    e.queue += u64::from(s.recv_q);
                    e.backlog += u64::from(s.send_q);
                    probe_at
                        .entry(key)
                        .or_insert_with(|| SocketAddr::new(probe_addr(s.local_addr), s.local_port));
                }
            }
            _ => e.established += 1,
        }
    }
    let mut process: HashMap<(Protocol, u16), String> = HashMap::new();
    if owners && !listeners.is_empty() {
        inv.sockets = listeners;
        // An unreadable owner is only a missing name on the dashboard.
        if portwarden_os::attach_owners(&mut inv, portwarden_os::Walk::FirstOwner).is_ok() {
            for s in &inv.sockets {
                if let Some(o) = s.owners.as_ref().and_then(|o| o.first()) {
                    process
                        .entry((s.protocol, s.local_port))
                        .or_insert_with(|| o.comm.clone());
                }
            }
        }
    }
    let ports = managed
        .into_iter()
        .map(|((protocol, port), (service, source))| {
            let s = seen.remove(&(protocol, port)).unwrap_or_default();
            let (max_conn, zone, tls) =
                declared
                    .get(service.as_str())
                    .cloned()
                    .unwrap_or((None, String::new(), ""));
            let mut p = PortHealth {
                max_conn,
                zone,
                tls: tls.to_string(),
                process: process.remove(&(protocol, port)),
                recent: Vec::new(),
                service,
                source: source.into(),
                protocol: protocol.to_string(),
                port,
                listening: s.listening,
                established: s.established,
                accept_queue: s.queue,
                backlog: s.backlog,
                utilisation: None,
                error_rate: None,
                alerts: Vec::new(),
            };
            p.utilisation = observation(&p, 0, 0).utilisation();
            p
        })
        .collect();
    Ok(Sampled {
        doc: PortsDoc {
            api: API_VERSION,
            at: ctx.clock.now(),
            ports,
        },
        probe_at,
    })
}

/// A wildcard listener is probed on loopback; a bound one on its own address (this
/// host's).
fn probe_addr(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

fn observation(p: &PortHealth, probes: u32, probe_errors: u32) -> Observation {
    Observation {
        established: p.established,
        accept_queue: p.accept_queue,
        backlog: p.backlog,
        max_conn: p.max_conn,
        probes,
        probe_errors,
    }
}

fn key(p: &PortHealth) -> Option<PortKey> {
    Some(PortKey {
        service: p.service.clone(),
        protocol: p.protocol.parse().ok()?,
        port: p.port,
    })
}

fn annotate(p: &mut PortHealth, m: &Monitor) {
    let Some(st) = key(p).and_then(|k| m.port(&k).cloned()) else {
        return;
    };
    p.error_rate = st.error_rate();
    p.recent = st.recent.iter().copied().collect();
    for (raised, rule) in [
        (
            st.utilisation.raised,
            portwarden_core::findings::RuleId::PortUtilisationHigh,
        ),
        (
            st.errors.raised,
            portwarden_core::findings::RuleId::PortErrorRateHigh,
        ),
    ] {
        if raised {
            p.alerts.push(rule.as_str().to_string());
        }
    }
}

/// How long a probe waits after connecting for the peer to reset it.
pub const PROBE_LINGER: Duration = Duration::from_millis(200);

/// Connects to `addr` `n` times at once, each bounded by [`PROBE_TIMEOUT`], then waits
/// [`PROBE_LINGER`] for the peer's first word; returns the failures: refused,
/// unreachable, timed out, or reset after the handshake (a listener that accepts and
/// aborts). Data, a clean close or silence are a success.
async fn probe(addr: SocketAddr, n: u32) -> u32 {
    use tokio::io::AsyncReadExt as _;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(async move {
            let Ok(Ok(mut s)) =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            else {
                return false;
            };
            let mut buf = [0u8; 64];
            !matches!(
                tokio::time::timeout(PROBE_LINGER, s.read(&mut buf)).await,
                Ok(Err(_))
            )
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failed += 1;
        }
    }
    failed
}

/// The thresholds of the policy in force.
pub fn thresholds(ctx: &Ctx) -> anyhow::Result<Thresholds> {
    let c = &crate::policy::load(ctx, None)?.policy.compliance;
    Ok(Thresholds {
        utilisation: c.port_utilisation_alert,
        error_rate: c.port_error_rate_alert,
    })
}

/// One monitoring step: sample every managed port, probe every TCP listener
/// ([`PROBES_PER_SAMPLE`] connects each, all at once), feed the monitor; every alert
/// raised or cleared is a ledger record (`alert.raise`, `alert.clear`). Returns the
/// annotated sample and the changes.
pub async fn step(
    ctx: &Ctx,
    state_dir: &Path,
    monitor: &std::sync::Mutex<Monitor>,
) -> anyhow::Result<(PortsDoc, Vec<AlertChange>)> {
    let t = thresholds(ctx)?;
    let s = sample_ports(ctx, state_dir, true)?;
    let mut probes: tokio::task::JoinSet<((Protocol, u16), u32)> = tokio::task::JoinSet::new();
    for (&k, &addr) in &s.probe_at {
        if k.0 == Protocol::Tcp {
            probes.spawn(async move { (k, probe(addr, PROBES_PER_SAMPLE).await) });
        }
    }
    let mut failed = HashMap::new();
    while let Some(r) = probes.join_next().await {
        if let Ok((k, f)) = r {
            failed.insert(k, f);
        }
    }
    let seen: Vec<(PortKey, Observation)> = s
        .doc
        .ports
        .iter()
        .filter_map(|p| {
            let k = key(p)?;
            let (probes, errors) = match failed.get(&(k.protocol, k.port)) {
                Some(&f) => (PROBES_PER_SAMPLE, f),
                None => (0, 0),
            };
            Some((k, observation(p, probes, errors)))
        })
        .collect();
    let now = ctx.clock.now();
    let (changes, mut doc) = {
        let mut m = monitor
            .lock()
            .map_err(|_| anyhow::anyhow!("the health monitor is poisoned"))?;
        let changes = m.observe(now, &seen, t);
        let mut doc = s.doc;
        for p in &mut doc.ports {
            annotate(p, &m);
        }
        (changes, doc)
    };
    for c in &changes {
        crate::log::record_change(
            ctx,
            state_dir,
            portwarden_store::Change {
                actor: ctx.actor.clone(),
                action: if c.raised {
                    "alert.raise"
                } else {
                    "alert.clear"
                }
                .into(),
                subject: format!(
                    "port:{}/{} {}",
                    c.port.protocol,
                    c.port.port,
                    c.rule.as_str()
                ),
                before: None,
                after: None,
                reason: Some(c.describe()),
            },
        )
        .context("cannot record the alert in the ledger")?;
    }
    doc.at = now;
    Ok((doc, changes))
}
