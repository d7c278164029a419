//! The lease use-cases: `alloc`, `renew`, `release`, `leases`, `reclaim`, `pools`
//! (and `pools reserve`), and leases as the rules see them. Blocking (SQLite, the socket
//! table): the daemon calls them on a blocking thread.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_api::API_VERSION;
use portwarden_api::lease::{
    AllocDoc, LeaseOpDoc, LeasesDoc, PoolsDoc, ReclaimDoc, Reclaimed, ReserveDoc,
};
use portwarden_core::alloc::{
    AllocError, HostCheck, PortCheck, ReclaimAction, ReclaimReason, SplitMix, Unusable, pick,
    pool_usage, reclaim_decision, request_for, reserved_with_pools,
};
use portwarden_core::facts::SocketState;
use portwarden_core::units::HumanDuration;
use portwarden_core::{Policy, Port, Protocol};
use portwarden_os::Query;
use portwarden_store::{
    Change, Journal, LeaseProbe, LeaseStore, NewLease, SqliteLeases, StoreError,
};

use crate::Ctx;
use portwarden_core::alloc::LeaseFact;
use portwarden_store::Lease;

/// The store's leases as core's facts.
pub fn lease_facts(leases: &[Lease]) -> Vec<LeaseFact> {
    leases
        .iter()
        .map(|l| LeaseFact {
            id: l.id,
            port: l.port,
            protocol: l.protocol,
            service: l.service.clone(),
            pool: l.pool.clone(),
            owner: l.owner.clone(),
            process: l.process.clone(),
            expires_at: l.expires_at,
        })
        .collect()
}

const DEFAULT_TTL_SECS: i64 = 86_400;

/// A lease as the documents carry it.
pub fn lease_doc(l: &Lease) -> portwarden_api::lease::Lease {
    portwarden_api::lease::Lease {
        id: l.id,
        scope: l.scope.clone(),
        protocol: l.protocol.to_string(),
        port: l.port.get(),
        service: l.service.clone(),
        pool: l.pool.clone(),
        owner: l.owner.clone(),
        process: l.process.clone(),
        state: l.state.as_str().into(),
        created_at: l.created_at,
        expires_at: l.expires_at,
        last_seen_listening: l.last_seen_listening,
        missed: l.missed,
        ttl_max: l.ttl_max,
    }
}

/// The lease lifetime in seconds: `ttl`, at most the pool's `lease_ttl` (24 h outside
/// pools), else that default.
///
/// A pool the policy at hand does not know (`renew` without `--policy`) is capped by what
/// the lease recorded at allocation, `known_max`.
fn ttl_secs(
    arg: Option<Duration>,
    policy: &Policy,
    pool_name: Option<&str>,
    known_max: Option<i64>,
) -> anyhow::Result<i64> {
    let pool = pool_name.and_then(|p| policy.pool(p));
    let max = match (pool, known_max) {
        (Some(p), _) => (p.lease_ttl.get().as_secs() as i64).max(1),
        (None, Some(m)) => m.max(1),
        (None, None) => DEFAULT_TTL_SECS,
    };
    let Some(d) = arg else {
        return Ok(max);
    };
    let t = HumanDuration(d);
    if d.is_zero() {
        bail!("invalid --ttl `{t}`: a lease must live longer than zero");
    }
    if d.subsec_nanos() != 0 {
        bail!("invalid --ttl `{t}`: a lease lasts whole seconds");
    }
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
    if secs > max {
        let limit = HumanDuration(Duration::from_secs(max as u64));
        match pool {
            Some(p) => bail!(
                "invalid --ttl `{t}`: pool `{}` leases for at most {limit} (its lease_ttl); renew before it expires",
                p.name
            ),
            None => match pool_name.filter(|_| known_max.is_some()) {
                Some(p) => bail!(
                    "invalid --ttl `{t}`: pool `{p}` leases for at most {limit} (its lease_ttl when the lease was made)"
                ),
                None => bail!("invalid --ttl `{t}`: a lease outside a pool lasts at most {limit}"),
            },
        }
    }
    Ok(secs)
}

/// Ports in use on the host (any socket but TIME-WAIT), per protocol.
fn live_ports() -> anyhow::Result<BTreeSet<(Protocol, u16)>> {
    let inv = portwarden_os::sockets(&Query::default()).context("cannot read the socket table")?;
    Ok(inv
        .sockets
        .iter()
        .filter(|s| s.state != SocketState::TimeWait && s.local_port != 0)
        .map(|s| (s.protocol, s.local_port))
        .collect())
}

/// Host facts, the store's leases and (optionally) a bind probe, as one check.
struct Combined<'a> {
    host: &'a HostCheck<'a>,
    leases: &'a mut dyn LeaseProbe,
    bind_probe: bool,
}

impl PortCheck for Combined<'_> {
    fn check(&mut self, protocol: Protocol, port: Port) -> Option<Unusable> {
        if let Some(why) = self.host.check(protocol, port) {
            return Some(why);
        }
        if self.leases.is_leased(protocol, port) {
            return Some(Unusable::Leased);
        }
        if self.bind_probe && bind_in_use(protocol, port) {
            return Some(Unusable::Live);
        }
        None
    }
}

fn bind_in_use(protocol: Protocol, port: Port) -> bool {
    let in_use =
        |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    match protocol {
        Protocol::Tcp => in_use(std::net::TcpListener::bind(("0.0.0.0", port.get())).map(drop)),
        Protocol::Udp => in_use(std::net::UdpSocket::bind(("0.0.0.0", port.get())).map(drop)),
    }
}

/// What `alloc` is asked.
#[derive(Debug, Clone)]
pub struct AllocReq {
    pub service: String,
    /// A pool other than the service's own.
    pub pool: Option<String>,
    /// This exact port.
    pub port: Option<Port>,
    /// How many leases, each in its own store transaction.
    pub count: u32,
    pub ttl: Option<Duration>,
    /// The owner label.
    pub owner: String,
    /// The random start of the pool scan (`None`: from the clock and pid).
    pub seed: Option<u64>,
    /// Double-check a chosen port by binding it.
    pub bind_probe: bool,
}

/// `alloc`: leases from the service's pool (or its standard port), never a live port,
/// never the ephemeral range, never one leased already. `granted` hears of each lease as
/// it is made (a killed `--count` run has said exactly what it got); when it fails (no
/// one reads any more), no further lease is made. Every granted lease is admitted into
/// the live firewall table before this returns, also on an error.
pub async fn alloc(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    req: &AllocReq,
    granted: &mut (dyn FnMut(&portwarden_api::lease::Lease) -> std::io::Result<()> + Send),
) -> anyhow::Result<AllocDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let policy = &loaded.policy;
    let Some(svc) = policy.service(&req.service) else {
        let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            bail!(
                "unknown service `{}`: {} declares no services",
                req.service,
                loaded.name
            );
        }
        bail!(
            "unknown service `{}`: the policy declares {}",
            req.service,
            names.join(", ")
        );
    };
    if let Some(p) = &req.pool {
        if policy.pool(p).is_none() {
            bail!("unknown pool `{p}`");
        }
    }
    if req.count > 1 && req.port.is_some() {
        bail!("--count and --port cannot be combined: one exact port is one lease");
    }
    let pick_req = request_for(policy, &req.service, req.pool.as_deref(), req.port)
        .context("service has no way to get a port")?;
    let pool_name = pick_req.pool.map(|p| p.name.clone());
    let ttl = ttl_secs(req.ttl, policy, pool_name.as_deref(), None)?;
    let ttl_max = ttl_secs(None, policy, pool_name.as_deref(), None)?;
    let live = live_ports()?;
    let sysctls = portwarden_os::sysctl::read_host();
    let host = HostCheck {
        live: &live,
        sysctls: &sysctls,
        policy,
        allow_ephemeral: pick_req.pool.is_some_and(|p| p.allow_ephemeral),
        service: Some(&req.service),
    };
    let store = SqliteLeases::new(crate::store::open(ctx, state_dir, true)?);
    let mut rng = SplitMix::new(req.seed.unwrap_or_else(|| {
        (ctx.clock.now() as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x5eed
    }));
    let mut made: Vec<Lease> = Vec::new();
    let mut refused = None;
    let mut unheard = None;
    for _ in 0..req.count {
        let now = ctx.clock.now();
        let r = store
            .allocate(now, &ctx.actor, &mut |probe| {
                let mut check = Combined {
                    host: &host,
                    leases: probe,
                    bind_probe: req.bind_probe,
                };
                let port = pick(&pick_req, &mut check, &mut rng)?;
                Ok(NewLease {
                    scope: "local".into(),
                    protocol: pick_req.protocol,
                    port,
                    service: svc.name.clone(),
                    pool: pool_name.clone(),
                    owner: req.owner.clone(),
                    process: svc.process.clone(),
                    expires_at: now + ttl,
                    ttl_max: Some(ttl_max),
                })
            })
            .await;
        match r {
            Ok(l) => {
                let heard = granted(&lease_doc(&l));
                made.push(l);
                if let Err(e) = heard {
                    unheard = Some(e);
                    break;
                }
            }
            Err(StoreError::Refused(
                e @ (AllocError::Exhausted { .. } | AllocError::Busy { .. }),
            )) => {
                refused = Some(e.to_string());
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(store);
    crate::fw::sync_leases(ctx, state_dir, &made, &[])?;
    if let Some(e) = unheard {
        return Err(e.into());
    }
    Ok(AllocDoc {
        api: API_VERSION,
        leases: made.iter().map(lease_doc).collect(),
        refused,
    })
}

async fn find_lease(store: &dyn LeaseStore, id: i64) -> anyhow::Result<Lease> {
    store
        .leases()
        .await?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| StoreError::NotFound(id).into())
}

/// `renew`: a new lifetime from now, at most the pool's `lease_ttl`; `owner` must be the
/// lease's owner label.
pub async fn renew(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    id: i64,
    ttl: Option<Duration>,
    owner: &str,
) -> anyhow::Result<LeaseOpDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let store = SqliteLeases::new(crate::store::open(ctx, state_dir, false)?);
    let lease = find_lease(&store, id).await?;
    let ttl = ttl_secs(ttl, &loaded.policy, lease.pool.as_deref(), lease.ttl_max)?;
    let now = ctx.clock.now();
    let l = store.renew(id, owner, now + ttl, now, &ctx.actor).await?;
    Ok(LeaseOpDoc {
        api: API_VERSION,
        action: "renew".into(),
        lease: lease_doc(&l),
    })
}

/// `release`: the lease ends now (`owner` must be its owner label) and its port leaves
/// the live firewall table.
pub async fn release(
    ctx: &Ctx,
    state_dir: &Path,
    id: i64,
    owner: &str,
) -> anyhow::Result<LeaseOpDoc> {
    let store = SqliteLeases::new(crate::store::open(ctx, state_dir, false)?);
    let l = store
        .release(id, owner, ctx.clock.now(), &ctx.actor)
        .await?;
    drop(store);
    crate::fw::sync_leases(ctx, state_dir, &[], std::slice::from_ref(&l))?;
    Ok(LeaseOpDoc {
        api: API_VERSION,
        action: "release".into(),
        lease: lease_doc(&l),
    })
}

/// The store's leases (none when there is no store yet).
async fn stored_leases(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<Vec<Lease>> {
    match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => Ok(SqliteLeases::new(s).leases().await?),
        None => Ok(Vec::new()),
    }
}

/// `leases`.
pub async fn list(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<LeasesDoc> {
    Ok(LeasesDoc {
        api: API_VERSION,
        now: ctx.clock.now(),
        leases: stored_leases(ctx, state_dir)
            .await?
            .iter()
            .map(lease_doc)
            .collect(),
    })
}

/// `reclaim`: retires expired and idle leases and drains expired ones still listened
/// on, by the pools' rules (`dry_run`: says what it would do).
pub async fn reclaim(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    dry_run: bool,
) -> anyhow::Result<ReclaimDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let policy = &loaded.policy;
    let doc = |reclaimed| ReclaimDoc {
        api: API_VERSION,
        dry_run,
        reclaimed,
    };
    let Some(store) = crate::store::open_existing(ctx, state_dir)?.map(SqliteLeases::new) else {
        return Ok(doc(Vec::new()));
    };
    let inv = portwarden_os::sockets(&Query {
        states: Some(vec![SocketState::Listen, SocketState::Unconn]),
        ..Query::default()
    })
    .context("cannot read the socket table")?;
    let listening: BTreeSet<(Protocol, u16)> = inv
        .sockets
        .iter()
        .map(|s| (s.protocol, s.local_port))
        .collect();
    let now = ctx.clock.now();
    let done = store
        .reclaim(
            now,
            &ctx.actor,
            &|l: &Lease| listening.contains(&(l.protocol, l.port.get())),
            &|l: &Lease, heard| {
                let pool = l.pool.as_deref().and_then(|p| policy.pool(p));
                reclaim_decision(&l.view(), heard, pool, now)
            },
            dry_run,
        )
        .await?;
    drop(store);
    if !dry_run {
        let retired: Vec<Lease> = done
            .iter()
            .filter(|r| matches!(r.action, ReclaimAction::Retire(_)))
            .map(|r| r.lease.clone())
            .collect();
        crate::fw::sync_leases(ctx, state_dir, &[], &retired)?;
    }
    Ok(doc(done
        .iter()
        .map(|r| {
            let (action, reason) = match r.action {
                ReclaimAction::Retire(ReclaimReason::Expired) => ("retire", "expired"),
                ReclaimAction::Retire(ReclaimReason::Idle) => ("retire", "idle"),
                ReclaimAction::Drain => ("drain", "expired, still listened on"),
            };
            Reclaimed {
                lease: lease_doc(&r.lease),
                action: action.into(),
                reason: reason.into(),
            }
        })
        .collect()))
}

/// `pools`: each pool's occupation.
pub async fn pools(ctx: &Ctx, policy: Option<&Path>, state_dir: &Path) -> anyhow::Result<PoolsDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let sysctls = portwarden_os::sysctl::read_host();
    let leases = stored_leases(ctx, state_dir).await?;
    let usage = pool_usage(&loaded.policy, &lease_facts(&leases), &sysctls);
    Ok(PoolsDoc {
        api: API_VERSION,
        pools: usage
            .into_iter()
            .map(|u| portwarden_api::lease::Pool {
                name: u.name,
                range: u.range.to_string(),
                protocol: u.protocol.to_string(),
                size: u.size,
                leased: u.leased,
                free: u.free,
                utilisation: u.utilisation,
                ephemeral_overlap: u.ephemeral_overlap,
            })
            .collect(),
    })
}

/// `pools reserve`: adds every pool's range to `net.ipv4.ip_local_reserved_ports`, so the
/// kernel never hands one out as an ephemeral port; recorded in the ledger.
pub fn reserve(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    dry_run: bool,
) -> anyhow::Result<ReserveDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let current = portwarden_os::sysctl::read_host().ip_local_reserved_ports;
    let render = |v: &[portwarden_core::PortRange]| {
        v.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let before = render(&current);
    let doc = |value: String, written: bool, unchanged: bool| ReserveDoc {
        api: API_VERSION,
        sysctl: "net.ipv4.ip_local_reserved_ports".into(),
        before: before.clone(),
        value,
        written,
        unchanged,
    };
    let Some(new) = reserved_with_pools(&loaded.policy, &current) else {
        return Ok(doc(before.clone(), false, true));
    };
    let value = render(&new);
    if dry_run {
        return Ok(doc(value, false, false));
    }
    portwarden_os::sysctl::write_reserved_ports(&value)
        .context("cannot write net.ipv4.ip_local_reserved_ports (needs root or CAP_NET_ADMIN)")?;
    let mut store = crate::store::open(ctx, state_dir, true)?;
    store.record(
        ctx.clock.now(),
        Change {
            actor: ctx.actor.clone(),
            action: "sysctl.reserve".into(),
            subject: "net.ipv4.ip_local_reserved_ports".into(),
            before: Some(before.clone()),
            after: Some(value.clone()),
            reason: Some("pools reserve".into()),
        },
    )?;
    Ok(doc(value, true, false))
}
