//! `alloc`, `renew`, `release`, `leases`, `reclaim` and `pools`: wiring the pure allocator
//! to the store and the host facts.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use portwarden_core::alloc::{
    AllocError, HostCheck, PortCheck, SplitMix, Unusable, pick, pool_usage, reclaim_decision,
    request_for, reserved_with_pools,
};
use portwarden_core::facts::SocketState;
use portwarden_core::units::HumanDuration;
use portwarden_core::{Policy, Port, Protocol};
use portwarden_os::Query;
use portwarden_store::{Change, Lease, LeaseProbe, NewLease, Store, StoreError};

use crate::cli::{AllocArgs, Global, PoolsArgs, PoolsCommand, ReclaimArgs, ReleaseArgs, RenewArgs};
use crate::{Status, output};

const DEFAULT_TTL_SECS: i64 = 86_400;

/// The lease lifetime: `--ttl`, at most the pool's `lease_ttl` (24 h outside pools),
/// else that default.
///
/// A pool the policy at hand does not know (`renew` without `--policy`) is capped by what
/// the lease recorded at allocation, `known_max`.
fn ttl_secs(
    arg: Option<HumanDuration>,
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
    let t = d;
    if d.get().is_zero() {
        bail!("invalid --ttl `{t}`: a lease must live longer than zero");
    }
    let secs = i64::try_from(d.get().as_secs()).unwrap_or(i64::MAX).max(1);
    if secs > max {
        let limit = HumanDuration(std::time::Duration::from_secs(max as u64));
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

fn store_err(e: StoreError) -> anyhow::Error {
    anyhow::Error::new(e)
}

pub fn alloc(g: &Global, a: &AllocArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let policy = &loaded.policy;
    if policy.service(&a.service).is_none() {
        let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            bail!(
                "unknown service `{}`: {} declares no services",
                a.service,
                loaded.name
            );
        }
        bail!(
            "unknown service `{}`: the policy declares {}",
            a.service,
            names.join(", ")
        );
    }
    if let Some(p) = &a.pool {
        if policy.pool(p).is_none() {
            bail!("unknown pool `{p}`");
        }
    }
    let exact = match a.port {
        None => None,
        Some(n) => Some(Port::from_i64(i64::from(n)).context("invalid --port")?),
    };
    let req = request_for(policy, &a.service, a.pool.as_deref(), exact)
        .context("service has no way to get a port")?;
    if a.count > 1 && exact.is_some() {
        bail!("--count and --port cannot be combined: one exact port is one lease");
    }
    let svc = policy.service(&a.service).context("service vanished")?;
    let pool_name = req.pool.map(|p| p.name.clone());
    let ttl = ttl_secs(a.ttl, policy, pool_name.as_deref(), None)?;
    let ttl_max = ttl_secs(None, policy, pool_name.as_deref(), None)?;
    let owner = a.owner.clone().unwrap_or_else(super::user);
    let actor = super::actor();
    let live = live_ports()?;
    let sysctls = portwarden_os::sysctl::read_host();
    let host = HostCheck {
        live: &live,
        sysctls: &sysctls,
        policy,
        allow_ephemeral: req.pool.is_some_and(|p| p.allow_ephemeral),
        service: Some(&a.service),
    };
    let mut store = super::open_store(g, true).map_err(store_err)?;
    let mut rng =
        SplitMix::new(a.seed.unwrap_or_else(|| {
            (super::now() as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x5eed
        }));
    let mut granted: Vec<Lease> = Vec::new();
    for _ in 0..a.count {
        let now = super::now();
        let r = store.allocate(now, &actor, &mut |probe| {
            let mut check = Combined {
                host: &host,
                leases: probe,
                bind_probe: !a.no_probe,
            };
            let port = pick(&req, &mut check, &mut rng)?;
            Ok(NewLease {
                scope: "local".into(),
                protocol: req.protocol,
                port,
                service: svc.name.clone(),
                pool: pool_name.clone(),
                owner: owner.clone(),
                process: svc.process.clone(),
                expires_at: now + ttl,
                ttl_max: Some(ttl_max),
            })
        });
        match r {
            Ok(l) => {
                // A row as each lease is granted (a killed `--count` run has printed
                // exactly what it got): the id is what `renew` and `release` take. With
                // -q, the port alone, for `PORT=$(portwarden -q alloc svc)`.
                let shown = if g.json {
                    Ok(())
                } else if g.quiet {
                    output::text(&format!("{}\n", l.port))
                } else if granted.is_empty() {
                    output::text(&output::alloc_header())
                        .and_then(|()| output::text(&output::alloc_row(&l)))
                } else {
                    output::text(&output::alloc_row(&l))
                };
                granted.push(l);
                if let Err(e) = shown {
                    // Nobody reads any more (a closed pipe): no further lease, but the
                    // ones granted are admitted like any other before the error stops us.
                    super::sync_leases(g, &granted, &[])?;
                    return Err(e.into());
                }
            }
            Err(StoreError::Refused(
                e @ (AllocError::Exhausted { .. } | AllocError::Busy { .. }),
            )) => {
                if g.json {
                    output::json(&granted)?;
                }
                super::sync_leases(g, &granted, &[])?;
                output::refusal(&e.to_string());
                return Ok(Status::Negative);
            }
            Err(e) => return Err(store_err(e)),
        }
    }
    if g.json {
        output::json(&granted)?;
    }
    super::sync_leases(g, &granted, &[])?;
    Ok(Status::Ok)
}

fn find_lease(store: &dyn Store, id: i64) -> anyhow::Result<Lease> {
    store
        .leases()
        .map_err(store_err)?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| store_err(StoreError::NotFound(id)))
}

pub fn renew(g: &Global, a: &RenewArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let mut store = super::open_store(g, false).map_err(store_err)?;
    let lease = find_lease(&store, a.id)?;
    let ttl = ttl_secs(a.ttl, &loaded.policy, lease.pool.as_deref(), lease.ttl_max)?;
    let now = super::now();
    let caller = a.owner.clone().unwrap_or_else(super::user);
    let l = store
        .renew(a.id, &caller, now + ttl, now, &super::actor())
        .map_err(store_err)?;
    if g.json {
        output::json(&l)?;
    } else if !g.quiet {
        output::text(&format!(
            "lease {} ({}/{}) renewed until {}\n",
            l.id,
            l.port,
            l.protocol,
            output::utc(l.expires_at)
        ))?;
    }
    Ok(Status::Ok)
}

pub fn release(g: &Global, a: &ReleaseArgs) -> anyhow::Result<Status> {
    let mut store = super::open_store(g, false).map_err(store_err)?;
    let caller = a.owner.clone().unwrap_or_else(super::user);
    let l = store
        .release(a.id, &caller, super::now(), &super::actor())
        .map_err(store_err)?;
    drop(store);
    super::sync_leases(g, &[], std::slice::from_ref(&l))?;
    if g.json {
        output::json(&l)?;
    } else if !g.quiet {
        output::text(&format!(
            "released lease {} ({}/{})\n",
            l.id, l.port, l.protocol
        ))?;
    }
    Ok(Status::Ok)
}

pub fn list(g: &Global) -> anyhow::Result<Status> {
    let leases = match super::open_store(g, false) {
        Ok(s) => s.leases().map_err(store_err)?,
        Err(StoreError::Missing(_)) => Vec::new(),
        Err(e) => return Err(store_err(e)),
    };
    if g.json {
        output::json(&leases)?;
    } else {
        output::leases(&leases, super::now())?;
    }
    Ok(Status::Ok)
}

pub fn reclaim(g: &Global, a: &ReclaimArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let policy = &loaded.policy;
    let mut store = match super::open_store(g, false) {
        Ok(s) => s,
        Err(StoreError::Missing(_)) => {
            if g.json {
                output::json(&Vec::<()>::new())?;
            } else if !g.quiet {
                output::text("no leases\n")?;
            }
            return Ok(Status::Ok);
        }
        Err(e) => return Err(store_err(e)),
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
    let now = super::now();
    let done = store
        .reclaim(
            now,
            &super::actor(),
            &|l: &Lease| listening.contains(&(l.protocol, l.port.get())),
            &|l: &Lease, heard| {
                let pool = l.pool.as_deref().and_then(|p| policy.pool(p));
                reclaim_decision(&l.view(), heard, pool, now)
            },
            a.dry_run,
        )
        .map_err(store_err)?;
    drop(store);
    if !a.dry_run {
        let retired: Vec<Lease> = done
            .iter()
            .filter(|r| matches!(r.action, portwarden_core::alloc::ReclaimAction::Retire(_)))
            .map(|r| r.lease.clone())
            .collect();
        super::sync_leases(g, &[], &retired)?;
    }
    if g.json {
        output::json(&done)?;
    } else if !g.quiet {
        output::reclaimed(&done, a.dry_run)?;
    }
    Ok(Status::Ok)
}

pub fn pools(g: &Global, a: &PoolsArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let policy = &loaded.policy;
    let sysctls = portwarden_os::sysctl::read_host();
    match &a.command {
        None => {
            let leases = match super::open_store(g, false) {
                Ok(s) => s.leases().map_err(store_err)?,
                Err(StoreError::Missing(_)) => Vec::new(),
                Err(e) => return Err(store_err(e)),
            };
            let usage = pool_usage(
                policy,
                &portwarden_ops::lease::lease_facts(&leases),
                &sysctls,
            );
            if g.json {
                output::json(&usage)?;
            } else {
                output::pools(&usage)?;
            }
            Ok(Status::Ok)
        }
        Some(PoolsCommand::Reserve { dry_run }) => {
            let current = sysctls.ip_local_reserved_ports.clone();
            let render = |v: &[portwarden_core::PortRange]| {
                v.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let doc = |value: &str, written: bool| {
                output::json(&serde_json::json!({
                    "api": portwarden_api::API_VERSION,
                    "sysctl": "net.ipv4.ip_local_reserved_ports",
                    "before": render(&current),
                    "value": value,
                    "written": written,
                }))
            };
            let Some(new) = reserved_with_pools(policy, &current) else {
                if g.json {
                    doc(&render(&current), false)?;
                } else {
                    output::text("ip_local_reserved_ports already covers every pool\n")?;
                }
                return Ok(Status::Ok);
            };
            let value = render(&new);
            if *dry_run {
                if g.json {
                    doc(&value, false)?;
                } else {
                    output::text(&format!("net.ipv4.ip_local_reserved_ports = {value}\n"))?;
                }
                return Ok(Status::Ok);
            }
            portwarden_os::sysctl::write_reserved_ports(&value).context(
                "cannot write net.ipv4.ip_local_reserved_ports (needs root or CAP_NET_ADMIN)",
            )?;
            let mut store = super::open_store(g, true).map_err(store_err)?;
            store
                .record(
                    super::now(),
                    Change {
                        actor: super::actor(),
                        action: "sysctl.reserve".into(),
                        subject: "net.ipv4.ip_local_reserved_ports".into(),
                        before: Some(render(&current)),
                        after: Some(value.clone()),
                        reason: Some("pools reserve".into()),
                    },
                )
                .map_err(store_err)?;
            if g.json {
                doc(&value, true)?;
            } else if !g.quiet {
                output::text(&format!("net.ipv4.ip_local_reserved_ports = {value}\n"))?;
            }
            Ok(Status::Ok)
        }
    }
}
