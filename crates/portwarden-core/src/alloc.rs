//! Port allocation and lease lifecycle decisions. Pure: the caller passes `now`, a seed,
//! and a lookup that says whether a port is free (not leased, not live, not ephemeral).

use std::fmt;

use serde::Serialize;

use crate::facts::Sysctls;
use crate::policy::{Placement, Policy, Pool};
use crate::port::{Port, PortRange, Protocol};

/// A deterministic pseudo-random source (splitmix64) so picks are reproducible in tests.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
}

/// Why a port cannot be used, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unusable {
    /// Another lease holds it.
    Leased,
    /// Something listens or is bound there now.
    Live,
    /// It lies in the kernel's ephemeral range and is not reserved.
    Ephemeral,
    /// Another service of the policy owns it as a fixed port.
    Claimed,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unusable::Leased => "already leased",
            Unusable::Live => "in use on this host",
            Unusable::Ephemeral => "inside the kernel's ephemeral port range",
            Unusable::Claimed => "a fixed port of another service",
        })
    }
}

/// What the allocator needs to know about one candidate port.
pub trait PortCheck {
    /// `None` when the port may be leased, else why not.
    fn check(&mut self, protocol: Protocol, port: Port) -> Option<Unusable>;
}

/// The facts-based part of a check: live sockets, the ephemeral range, the policy's fixed
/// ports. Combine with a lease lookup from the store.
pub struct HostCheck<'a> {
    /// Ports live on the host, per protocol.
    pub live: &'a std::collections::BTreeSet<(Protocol, u16)>,
    /// Kernel settings (ephemeral range, reserved ports).
    pub sysctls: &'a Sysctls,
    /// The policy, for other services' fixed ports.
    pub policy: &'a Policy,
    /// Whether ephemeral ports may be used (the pool's `allow_ephemeral`).
    pub allow_ephemeral: bool,
    /// The service being allocated (its own fixed ports do not count as claimed).
    pub service: Option<&'a str>,
}

impl HostCheck<'_> {
    /// Checks a port against the host facts.
    pub fn check(&self, protocol: Protocol, port: Port) -> Option<Unusable> {
        if self.live.contains(&(protocol, port.get())) {
            return Some(Unusable::Live);
        }
        if !self.allow_ephemeral && self.sysctls.is_ephemeral(port) {
            return Some(Unusable::Ephemeral);
        }
        let claimed = self.policy.services.iter().any(|s| {
            Some(s.name.as_str()) != self.service
                && s.fixed_ports()
                    .iter()
                    .any(|p| p.protocol == protocol && p.range.contains(port))
        });
        claimed.then_some(Unusable::Claimed)
    }
}

/// What to allocate.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The service's standard port, tried first.
    pub standard: Option<Port>,
    /// The pool to pick from when the standard port is not available.
    pub pool: Option<&'a Pool>,
    /// A specific port the operator asked for.
    pub exact: Option<Port>,
    /// Protocol of the lease.
    pub protocol: Protocol,
}

/// Why nothing could be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every port of the pool is unusable.
    #[error(
        "pool `{pool}` is exhausted: none of its {size} ports is free ({leased} leased, {other} in use, ephemeral or claimed)"
    )]
    Exhausted {
        /// Pool name.
        pool: String,
        /// Number of ports in it.
        size: u32,
        /// Ports held by leases.
        leased: u32,
        /// Ports unusable for other reasons.
        other: u32,
    },
    /// The requested port cannot be used.
    #[error("port {port}/{protocol} is {why}")]
    Busy {
        /// The port.
        port: Port,
        /// Its protocol.
        protocol: Protocol,
        /// Why.
        why: Unusable,
    },
    /// The requested port lies outside the pool.
    #[error("port {port} is outside pool `{pool}` ({range})")]
    OutsidePool {
        /// The port.
        port: Port,
        /// Pool name.
        pool: String,
        /// Pool range.
        range: PortRange,
    },
    /// Nothing to allocate from.
    #[error("service has no standard port free and no pool to allocate from")]
    NoSource,
}

/// Picks a port: the exact one if asked; else the standard port when usable; else the
/// pool's dynamic band from a random start, scanning every port once (Nomad's way), then
/// its static band (Kubernetes' split).
pub fn pick(
    req: &Request<'_>,
    check: &mut dyn PortCheck,
    rng: &mut SplitMix,
) -> Result<Port, AllocError> {
    if let Some(port) = req.exact {
        if let Some(pool) = req.pool {
            if !pool.range.contains(port) {
                return Err(AllocError::OutsidePool {
                    port,
                    pool: pool.name.clone(),
                    range: pool.range,
                });
            }
        }
        return match check.check(req.protocol, port) {
            None => Ok(port),
            Some(why) => Err(AllocError::Busy {
                port,
                protocol: req.protocol,
                why,
            }),
        };
    }
    if let Some(p) = req.standard {
        if check.check(req.protocol, p).is_none() {
            return Ok(p);
        }
    }
    let Some(pool) = req.pool else {
        return match req.standard {
            Some(port) => Err(AllocError::Busy {
                port,
                protocol: req.protocol,
                why: check.check(req.protocol, port).unwrap_or(Unusable::Leased),
            }),
            None => Err(AllocError::NoSource),
        };
    };
    let (mut leased, mut other) = (0u32, 0u32);
    for band in bands(pool) {
        let n = band.len();
        let start = rng.below(n);
        for i in 0..n {
            let off = (start + i) % n;
            let Some(port) = Port::new((u32::from(band.start().get()) + off) as u16) else {
                continue;
            };
            match check.check(req.protocol, port) {
                None => return Ok(port),
                Some(Unusable::Leased) => leased += 1,
                Some(_) => other += 1,
            }
        }
    }
    Err(AllocError::Exhausted {
        pool: pool.name.clone(),
        size: pool.range.len(),
        leased,
        other,
    })
}

/// The dynamic band(s) first, then the static band.
fn bands(pool: &Pool) -> Vec<PortRange> {
    let r = pool.range;
    match pool.static_band {
        None => vec![r],
        Some(s) => {
            let mut v = Vec::new();
            if s.start() > r.start() {
                if let (Some(a), Some(b)) = (Some(r.start()), Port::new(s.start().get() - 1)) {
                    v.extend(PortRange::new(a, b));
                }
            }
            if s.end() < r.end() {
                if let Some(a) = Port::new(s.end().get() + 1) {
                    v.extend(PortRange::new(a, r.end()));
                }
            }
            v.push(s);
            v
        }
    }
}

/// Where a service's lease comes from: its standard port and its pool.
pub fn request_for<'a>(
    policy: &'a Policy,
    service: &str,
    pool: Option<&str>,
    exact: Option<Port>,
) -> Option<Request<'a>> {
    let svc = policy.service(service)?;
    let pool = match pool {
        Some(p) => Some(policy.pool(p)?),
        None => match &svc.placement {
            Placement::Pool(p) => policy.pool(p),
            Placement::Fixed(_) => None,
        },
    };
    let (standard, protocol) = match &svc.placement {
        Placement::Fixed(specs) => (
            specs.first().map(|s| s.range.start()),
            specs.first().map_or(Protocol::Tcp, |s| s.protocol),
        ),
        Placement::Pool(_) => {
            let cat = svc
                .catalog
                .as_deref()
                .and_then(|c| crate::catalog::Catalog::builtin().get(c));
            let protocol = pool.map_or(Protocol::Tcp, |p| p.protocol);
            let std = cat.and_then(|c| {
                c.ports
                    .iter()
                    .find(|s| s.protocol == protocol && s.range.len() == 1)
                    .map(|s| s.range.start())
            });
            (std, protocol)
        }
    };
    Some(Request {
        standard,
        pool,
        exact,
        protocol,
    })
}

/// A lease's place in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum LeaseState {
    /// Allocated, not yet seen listening.
    Planned,
    /// Seen listening.
    Active,
    /// Expired or released while something still listens: kept until it stops.
    Draining,
}

impl LeaseState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<LeaseState> {
        match s {
            "planned" => Some(LeaseState::Planned),
            "active" => Some(LeaseState::Active),
            "draining" => Some(LeaseState::Draining),
            _ => None,
        }
    }
}

/// The parts of a lease the lifecycle rules read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    /// Lease id.
    pub id: i64,
    /// Pool it came from, if any.
    pub pool: Option<String>,
    /// State.
    pub state: LeaseState,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// When a listener was last seen on its port.
    pub last_seen_listening: Option<i64>,
    /// Consecutive observations without a listener.
    pub missed: u32,
}

/// Observations without a listener after which an idle lease may go (Kubernetes frees
/// a leaked port only after 3 sightings).
pub const MISSED_BEFORE_RECLAIM: u32 = 3;

/// The lease after one inventory observation.
pub fn observe(l: &LeaseView, listening: bool, now: i64) -> LeaseView {
    let mut n = l.clone();
    if listening {
        n.last_seen_listening = Some(now);
        n.missed = 0;
        if n.state == LeaseState::Planned {
            n.state = LeaseState::Active;
        }
    } else {
        n.missed = n.missed.saturating_add(1);
    }
    n
}

/// Why a lease goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReclaimReason {
    /// Past its expiry, nothing listening.
    Expired,
    /// No listener for the pool's `reclaim_idle` and enough observations.
    Idle,
}

/// What reclaim does with one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReclaimAction {
    /// Delete the lease: the port is free again.
    Retire(ReclaimReason),
    /// Expired but still listened on: mark draining, retire once it stops.
    Drain,
}

/// Decides reclaim for one (already observed) lease; `listening` is the latest sighting.
pub fn reclaim_decision(
    l: &LeaseView,
    listening: bool,
    pool: Option<&Pool>,
    now: i64,
) -> Option<ReclaimAction> {
    let expired = l.expires_at <= now;
    if expired {
        return Some(if listening {
            if l.state == LeaseState::Draining {
                return None;
            }
            ReclaimAction::Drain
        } else {
            ReclaimAction::Retire(ReclaimReason::Expired)
        });
    }
    if l.state == LeaseState::Draining && !listening {
        return Some(ReclaimAction::Retire(ReclaimReason::Expired));
    }
    let idle_for = pool.and_then(|p| p.reclaim_idle)?;
    let since = l.last_seen_listening.unwrap_or(l.created_at);
    let idle = now.saturating_sub(since) >= idle_for.get().as_secs() as i64;
    (!listening && idle && l.missed >= MISSED_BEFORE_RECLAIM)
        .then_some(ReclaimAction::Retire(ReclaimReason::Idle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use std::collections::{BTreeSet, HashSet};

    fn policy() -> Policy {
        Policy::parse(
            "t.toml",
            r#"
version = 1
[[pool]]
name = "p"
range = "20000-20009"
static = "20000-20001"
lease_ttl = "1h"
reclaim_idle = "30m"
[[service]]
name = "cache"
pool = "p"
zone = "localhost"
[[service]]
name = "mirror"
catalog = "rsync"
pool = "p"
zone = "localhost"
[[service]]
name = "web"
port = 20001
zone = "localhost"
"#,
            Catalog::builtin(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    struct Fake {
        leased: HashSet<u16>,
        live: HashSet<u16>,
    }

    impl PortCheck for Fake {
        fn check(&mut self, _: Protocol, p: Port) -> Option<Unusable> {
            if self.leased.contains(&p.get()) {
                Some(Unusable::Leased)
            } else if self.live.contains(&p.get()) {
                Some(Unusable::Live)
            } else {
                None
            }
        }
    }

    #[test]
    fn dynamic_band_first_then_static_then_exhausted() {
        let p = policy();
        let req = request_for(&p, "cache", None, None).unwrap();
        let mut f = Fake {
            leased: HashSet::new(),
            live: HashSet::new(),
        };
        let mut rng = SplitMix::new(7);
        let mut got = Vec::new();
        for _ in 0..10 {
            let port = pick(&req, &mut f, &mut rng).unwrap();
            f.leased.insert(port.get());
            got.push(port.get());
        }
        // The 8 dynamic ports come before the 2 static ones.
        assert!(got[..8].iter().all(|&p| p >= 20002), "{got:?}");
        assert!(got[8..].iter().all(|&p| p <= 20001), "{got:?}");
        let all: BTreeSet<u16> = got.iter().copied().collect();
        assert_eq!(all.len(), 10);
        assert_eq!(
            pick(&req, &mut f, &mut rng),
            Err(AllocError::Exhausted {
                pool: "p".into(),
                size: 10,
                leased: 10,
                other: 0
            })
        );
    }

    #[test]
    fn standard_port_first_and_deterministic_under_a_seed() {
        let p = policy();
        let req = request_for(&p, "mirror", None, None).unwrap();
        assert_eq!(req.standard.unwrap().get(), 873);
        let mut f = Fake {
            leased: HashSet::new(),
            live: HashSet::new(),
        };
        assert_eq!(
            pick(&req, &mut f, &mut SplitMix::new(1)).unwrap().get(),
            873
        );
        f.live.insert(873);
        let a = pick(&req, &mut f, &mut SplitMix::new(42)).unwrap();
        let b = pick(&req, &mut f, &mut SplitMix::new(42)).unwrap();
        assert_eq!(a, b);
        assert!((20000..=20009).contains(&a.get()));
    }

    #[test]
    fn host_check_refuses_live_ephemeral_and_claimed_ports() {
        let p = policy();
        let live: BTreeSet<(Protocol, u16)> = [(Protocol::Tcp, 20003)].into();
        let sysctls = Sysctls {
            ip_local_port_range: Some("20008-20009".parse().unwrap()),
            ip_local_reserved_ports: vec!["20009".parse().unwrap()],
            ..Sysctls::default()
        };
        let hc = HostCheck {
            live: &live,
            sysctls: &sysctls,
            policy: &p,
            allow_ephemeral: false,
            service: Some("cache"),
        };
        let port = |n| Port::new(n).unwrap();
        assert_eq!(hc.check(Protocol::Tcp, port(20003)), Some(Unusable::Live));
        assert_eq!(hc.check(Protocol::Udp, port(20003)), None);
        assert_eq!(
            hc.check(Protocol::Tcp, port(20008)),
            Some(Unusable::Ephemeral)
        );
        assert_eq!(
            hc.check(Protocol::Tcp, port(20009)),
            None,
            "reserved ports are not ephemeral"
        );
        assert_eq!(
            hc.check(Protocol::Tcp, port(20001)),
            Some(Unusable::Claimed)
        );
    }

    #[test]
    fn exact_ports_are_checked() {
        let p = policy();
        let mut f = Fake {
            leased: [20004].into(),
            live: HashSet::new(),
        };
        let req = request_for(&p, "cache", None, Port::new(20004)).unwrap();
        assert!(matches!(
            pick(&req, &mut f, &mut SplitMix::new(0)),
            Err(AllocError::Busy {
                why: Unusable::Leased,
                ..
            })
        ));
        let req = request_for(&p, "cache", None, Port::new(30000)).unwrap();
        assert!(matches!(
            pick(&req, &mut f, &mut SplitMix::new(0)),
            Err(AllocError::OutsidePool { .. })
        ));
    }

    #[test]
    fn lifecycle_and_reclaim() {
        let p = policy();
        let pool = p.pool("p");
        let l = LeaseView {
            id: 1,
            pool: Some("p".into()),
            state: LeaseState::Planned,
            created_at: 0,
            expires_at: 3600,
            last_seen_listening: None,
            missed: 0,
        };
        let seen = observe(&l, true, 10);
        assert_eq!(seen.state, LeaseState::Active);
        assert_eq!(seen.last_seen_listening, Some(10));
        // Idle: needs both the time and three misses.
        let mut idle = seen.clone();
        for t in [100, 200] {
            idle = observe(&idle, false, t);
        }
        assert_eq!(
            reclaim_decision(&idle, false, pool, 1900),
            None,
            "two misses are not enough"
        );
        idle = observe(&idle, false, 1900);
        assert_eq!(
            reclaim_decision(&idle, false, pool, 1900),
            Some(ReclaimAction::Retire(ReclaimReason::Idle))
        );
        assert_eq!(
            reclaim_decision(&idle, false, pool, 1000),
            None,
            "not idle for 30m yet"
        );
        // Expired: retired when silent, drained while something listens.
        assert_eq!(
            reclaim_decision(&seen, false, pool, 3600),
            Some(ReclaimAction::Retire(ReclaimReason::Expired))
        );
        assert_eq!(
            reclaim_decision(&seen, true, pool, 3600),
            Some(ReclaimAction::Drain)
        );
        let draining = LeaseView {
            state: LeaseState::Draining,
            ..seen
        };
        assert_eq!(reclaim_decision(&draining, true, pool, 4000), None);
        assert_eq!(
            reclaim_decision(&draining, false, pool, 4000),
            Some(ReclaimAction::Retire(ReclaimReason::Expired))
        );
    }
}

/// A lease as the rules see it (the store's type lives in an adapter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseFact {
    /// Lease id.
    pub id: i64,
    /// Port.
    pub port: Port,
    /// Protocol.
    pub protocol: Protocol,
    /// Service.
    pub service: String,
    /// Pool.
    pub pool: Option<String>,
    /// Owner.
    pub owner: String,
    /// Executable expected to listen.
    pub process: Option<String>,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

/// One pool's occupation: the `pools` row and the utilisation rule's input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolUsage {
    /// Pool name.
    pub name: String,
    /// Range.
    pub range: PortRange,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports in the pool.
    pub size: u32,
    /// Ports leased.
    pub leased: u32,
    /// Ports neither leased nor otherwise unusable.
    pub free: u32,
    /// leased / size.
    pub utilisation: f64,
    /// Ports inside the kernel's ephemeral range and not reserved.
    pub ephemeral_overlap: u32,
}

/// Counts each pool's leased, free and ephemeral-overlapping ports.
pub fn pool_usage(policy: &Policy, leases: &[LeaseFact], sysctls: &Sysctls) -> Vec<PoolUsage> {
    policy
        .pools
        .iter()
        .map(|p| {
            let leased = leases
                .iter()
                .filter(|l| l.protocol == p.protocol && p.range.contains(l.port))
                .count() as u32;
            let ephemeral = p
                .range
                .iter()
                .filter(|&port| sysctls.is_ephemeral(port))
                .count() as u32;
            let unusable_eph = if p.allow_ephemeral { 0 } else { ephemeral };
            let size = p.range.len();
            PoolUsage {
                name: p.name.clone(),
                range: p.range,
                protocol: p.protocol,
                size,
                leased,
                free: size.saturating_sub(leased).saturating_sub(unusable_eph),
                utilisation: f64::from(leased) / f64::from(size),
                ephemeral_overlap: ephemeral,
            }
        })
        .collect()
}

/// `ip_local_reserved_ports` with every pool range added, keeping what is there; ranges
/// merged and sorted. `None` when nothing would change.
pub fn reserved_with_pools(policy: &Policy, current: &[PortRange]) -> Option<Vec<PortRange>> {
    let mut all: Vec<(u16, u16)> = current
        .iter()
        .chain(policy.pools.iter().map(|p| &p.range))
        .map(|r| (r.start().get(), r.end().get()))
        .collect();
    all.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in all {
        match merged.last_mut() {
            Some((_, e)) if u32::from(a) <= u32::from(*e) + 1 => *e = (*e).max(b),
            _ => merged.push((a, b)),
        }
    }
    let out: Vec<PortRange> = merged
        .into_iter()
        .filter_map(|(a, b)| PortRange::new(Port::new(a)?, Port::new(b)?))
        .collect();
    let mut cur = current.to_vec();
    cur.sort();
    (out != cur).then_some(out)
}

#[cfg(test)]
mod usage_tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn usage_and_reservation() {
        let p = Policy::parse(
            "t.toml",
            "version = 1\n[[pool]]\nname = \"a\"\nrange = \"32000-32999\"\n[[pool]]\nname = \"b\"\nrange = \"40000-40009\"\n",
            Catalog::builtin(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sys = Sysctls {
            ip_local_port_range: Some("32768-60999".parse().unwrap()),
            ip_local_reserved_ports: vec!["40000-40004".parse().unwrap()],
            ..Sysctls::default()
        };
        let l = |port| LeaseFact {
            id: 1,
            port: Port::new(port).unwrap(),
            protocol: Protocol::Tcp,
            service: "s".into(),
            pool: Some("b".into()),
            owner: "o".into(),
            process: None,
            expires_at: 0,
        };
        let u = pool_usage(&p, &[l(40001), l(40002)], &sys);
        assert_eq!(u[0].ephemeral_overlap, 232);
        assert_eq!(u[0].free, 768);
        assert_eq!((u[1].leased, u[1].ephemeral_overlap, u[1].free), (2, 5, 3));
        assert!((u[1].utilisation - 0.2).abs() < 1e-9);
        let r = reserved_with_pools(&p, &sys.ip_local_reserved_ports).unwrap();
        let s: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(s, ["32000-32999", "40000-40009"]);
        let again = reserved_with_pools(&p, &r);
        assert_eq!(again, None);
    }
}
