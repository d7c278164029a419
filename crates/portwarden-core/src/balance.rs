//! The balancer's decisions, as pure functions over plain values: which backend a new
//! connection goes to (`pick`, with the consistent-hash table `Maglev` and the smooth
//! weighted round-robin `RoundRobin`), when a backend is up or down (`Health`, the
//! fall/rise hysteresis) and whether a source may open one more connection
//! (`SourceLimits`). The proxy in `portwarden-net` carries them out.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::policy::Algorithm;

/// Size of the Maglev lookup table: a prime, so every skip visits every slot; large enough
/// that N ≤ 100 backends get their share within about 1 %.
pub const MAGLEV_SIZE: usize = 65_537;

/// A stable 64-bit hash (FNV-1a, then a murmur3 finaliser): the same on every host and
/// every build, so every worker process and every restart maps a source the same way.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bytes of an address that a source hash reads (an IPv4-mapped IPv6 address hashes as
/// its IPv4 address).
fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => a.octets().to_vec(),
        },
    }
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016) over the backends that can take
/// traffic: each slot names a backend, each backend fills slots in its own permutation in
/// turn (a weight-w backend takes w turns per round). Removing one of N backends moves only
/// the sources that hashed to it, plus a few percent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// The table over `nodes`: (stable key, weight, index the lookup returns). Keys name
    /// the backend (its address), so a backend keeps its slots when others come and go.
    /// `None` when there are no nodes.
    pub fn new(nodes: &[(&[u8], u32, usize)]) -> Option<Maglev> {
        Maglev::with_size(nodes, MAGLEV_SIZE)
    }

    /// [`Maglev::new`] with a table of `m` slots (a prime).
    pub fn with_size(nodes: &[(&[u8], u32, usize)], m: usize) -> Option<Maglev> {
        if nodes.is_empty() || m < 2 {
            return None;
        }
        let m64 = m as u64;
        let perm: Vec<(u64, u64)> = nodes
            .iter()
            .map(|(key, _, _)| (hash64(key, 1) % m64, hash64(key, 2) % (m64 - 1) + 1))
            .collect();
        let mut next = vec![0u64; nodes.len()];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        let max_w = nodes.iter().map(|n| n.1.max(1)).max().unwrap_or(1);
        'fill: loop {
            // A round: every node gets `weight` turns, spread over `max_w` passes so that
            // heavy nodes do not take their turns in one burst.
            for pass in 0..max_w {
                for (i, (_, w, idx)) in nodes.iter().enumerate() {
                    if (*w).max(1) <= pass {
                        continue;
                    }
                    let (offset, skip) = perm[i];
                    loop {
                        let c = ((offset + next[i] * skip) % m64) as usize;
                        next[i] += 1;
                        if table[c] == u32::MAX {
                            table[c] = *idx as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Some(Maglev { table })
    }

    /// The node a key maps to.
    pub fn lookup(&self, key: u64) -> usize {
        self.table[(key % self.table.len() as u64) as usize] as usize
    }

    /// The node the `attempt`-th try for `src` maps to (attempt 0 is the source's own
    /// node; later attempts rehash, for a redispatch after a failed connect).
    pub fn lookup_source(&self, src: IpAddr, attempt: u32) -> usize {
        self.lookup(hash64(&addr_bytes(src), 3 + u64::from(attempt)))
    }
}

/// A cycle in a directed graph given as adjacency lists (groups forwarding to each other's
/// listeners), as the nodes on it in order; `None` when there is none.
pub fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    fn visit(
        i: usize,
        edges: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for &j in &edges[i] {
            if mark[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                return Some(path[from..].to_vec());
            }
            if mark[j] == 0
                && let Some(c) = visit(j, edges, mark, path)
            {
                return Some(c);
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    // 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; edges.len()];
    for i in 0..edges.len() {
        if mark[i] == 0
            && let Some(c) = visit(i, edges, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// What `pick` knows of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Health says it is up.
    pub up: bool,
    /// A backup: used only when no primary is up.
    pub backup: bool,
    /// Relative share.
    pub weight: u32,
    /// Connections it holds now.
    pub active: u32,
    /// The most it may hold.
    pub max_conn: Option<u32>,
    /// Already tried for this connection (a failed connect): not again.
    pub excluded: bool,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.max_conn.is_none_or(|m| self.active < m)
    }
}

/// Why no backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every backend is down or was tried: the connection fails.
    Down,
    /// Backends are up but all at `max_conn`: the connection waits in the queue.
    Full,
}

/// Smooth weighted round-robin (as nginx does it): each pick adds every eligible node's
/// weight to its credit, takes the node with most credit and charges it the total. Over
/// any window a node gets its share, interleaved (weights 5,1,1 give a a b a c a a).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundRobin {
    credit: Vec<i64>,
}

impl RoundRobin {
    fn next(&mut self, c: &[Candidate], eligible: &[usize]) -> usize {
        if self.credit.len() != c.len() {
            self.credit = vec![0; c.len()];
        }
        let total: i64 = eligible
            .iter()
            .map(|&i| i64::from(c[i].weight.max(1)))
            .sum();
        let mut best = eligible[0];
        for &i in eligible {
            self.credit[i] += i64::from(c[i].weight.max(1));
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        self.credit[best] -= total;
        best
    }
}

/// The backend a new connection from `src` goes to.
///
/// Primaries that are up and not excluded are the candidates; only when none is up do the
/// backups become candidates. Among candidates with room: `round-robin` takes turns by
/// weight, `least-conn` the fewest connections per weight (ties: the round-robin turn),
/// `source-hash` the source's Maglev node (`table` is built over the up candidates; a full
/// or excluded node gives way to the next rehash, then to the first node with room).
pub fn pick(
    algorithm: Algorithm,
    c: &[Candidate],
    src: IpAddr,
    attempt: u32,
    rr: &mut RoundRobin,
    table: Option<&Maglev>,
) -> Result<usize, NoBackend> {
    let usable = |backup: bool| -> Vec<usize> {
        (0..c.len())
            .filter(|&i| c[i].up && c[i].backup == backup && !c[i].excluded)
            .collect()
    };
    let any_primary_up = c.iter().any(|x| x.up && !x.backup);
    let pool = if any_primary_up {
        usable(false)
    } else {
        usable(true)
    };
    let pool = if pool.is_empty() && any_primary_up {
        // Every up primary was tried: the backups are the last resort.
        usable(true)
    } else {
        pool
    };
    if pool.is_empty() {
        return Err(NoBackend::Down);
    }
    let room: Vec<usize> = pool.iter().copied().filter(|&i| c[i].has_room()).collect();
    if room.is_empty() {
        return Err(NoBackend::Full);
    }
    match algorithm {
        Algorithm::RoundRobin => Ok(rr.next(c, &room)),
        Algorithm::LeastConn => {
            let load = |i: usize| (u64::from(c[i].active), u64::from(c[i].weight.max(1)));
            let min = room
                .iter()
                .map(|&i| load(i))
                .min_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))
                .unwrap_or((0, 1));
            let least: Vec<usize> = room
                .iter()
                .copied()
                .filter(|&i| load(i).0 * min.1 == min.0 * load(i).1)
                .collect();
            Ok(rr.next(c, &least))
        }
        Algorithm::SourceHash => {
            if let Some(t) = table {
                for k in 0..8 {
                    let i = t.lookup_source(src, attempt + k);
                    if room.contains(&i) {
                        return Ok(i);
                    }
                }
            }
            let h = hash64(&addr_bytes(src), 0);
            Ok(room[(h % room.len() as u64) as usize])
        }
    }
}

/// A health state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `rise` successes in a row.
    Up,
    /// `fall` failures in a row.
    Down,
}

/// One backend's health: up or down, and the run of results that points the other way.
/// A backend starts up (traffic flows at once; the first `fall` failures take it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Takes new connections.
    pub up: bool,
    /// Consecutive results against the current state.
    pub streak: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            up: true,
            streak: 0,
        }
    }
}

impl Health {
    /// Records one observation (an active check, or a proxied connect: a failure counts as
    /// a failed check). Returns the transition it caused.
    pub fn observe(&mut self, ok: bool, fall: u32, rise: u32) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if self.up { fall } else { rise };
        if self.streak >= need.max(1) {
            self.up = ok;
            self.streak = 0;
            Some(if ok { Transition::Up } else { Transition::Down })
        } else {
            None
        }
    }
}

/// Why a source's connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// It holds `max_conn_per_source` already.
    Concurrent,
    /// It opened `max_rate_per_source` in the last second.
    Rate,
}

#[derive(Debug, Clone, Copy)]
struct SourceState {
    active: u32,
    /// Token bucket in thousandths of a connection.
    tokens_milli: u64,
    at_ms: u64,
}

/// Per-source limits: concurrent connections and a token bucket of new connections per
/// second (a burst of one second's worth). Sources with nothing open and a full bucket
/// are forgotten, so the map holds only live sources.
#[derive(Debug, Clone, Default)]
pub struct SourceLimits {
    /// Concurrent connections per source.
    pub max_conn: Option<u32>,
    /// New connections per second per source.
    pub max_rate: Option<u32>,
    sources: HashMap<IpAddr, SourceState>,
    sweep_at: usize,
}

impl SourceLimits {
    /// Limits as the policy sets them.
    pub fn new(max_conn: Option<u32>, max_rate: Option<u32>) -> SourceLimits {
        SourceLimits {
            max_conn,
            max_rate,
            sources: HashMap::new(),
            sweep_at: 1024,
        }
    }

    /// A new connection from `src` at `now_ms` (a monotonic clock): admitted (and counted
    /// until `release`) or refused.
    pub fn admit(&mut self, src: IpAddr, now_ms: u64) -> Result<(), SourceRefusal> {
        // Counted even without limits, so that a limit a reload adds sees what is open.
        let cap = self.max_rate.map(|r| u64::from(r) * 1000);
        let s = self.sources.entry(src).or_insert(SourceState {
            active: 0,
            tokens_milli: cap.unwrap_or(0),
            at_ms: now_ms,
        });
        if let Some(cap) = cap {
            let rate = cap / 1000;
            let dt = now_ms.saturating_sub(s.at_ms);
            s.tokens_milli = (s.tokens_milli + dt * rate).min(cap);
            s.at_ms = now_ms;
        }
        if let Some(m) = self.max_conn
            && s.active >= m
        {
            return Err(SourceRefusal::Concurrent);
        }
        if cap.is_some() {
            if s.tokens_milli < 1000 {
                return Err(SourceRefusal::Rate);
            }
            s.tokens_milli -= 1000;
        }
        s.active += 1;
        Ok(())
    }

    /// A connection `admit` let in has ended.
    pub fn release(&mut self, src: IpAddr, now_ms: u64) {
        let cap = self.max_rate.map_or(0, |r| u64::from(r) * 1000);
        let idle = |s: &SourceState| {
            s.active == 0 && s.tokens_milli + now_ms.saturating_sub(s.at_ms) * (cap / 1000) >= cap
        };
        if let Some(s) = self.sources.get_mut(&src) {
            s.active = s.active.saturating_sub(1);
            if idle(s) {
                self.sources.remove(&src);
            }
        }
        // Sources whose bucket refilled after their last release: swept when the map has
        // doubled since the last sweep, so a release costs O(1) amortised.
        if self.sources.len() >= self.sweep_at {
            self.sources.retain(|_, s| !idle(s));
            self.sweep_at = (self.sources.len() * 2).max(1024);
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Connections `src` holds now.
    pub fn active(&self, src: IpAddr) -> u32 {
        self.sources.get(&src).map_or(0, |s| s.active)
    }
}

/// One backend as the running balancer sees it (`balance status`, metrics).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackendStatus {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// A backup node.
    pub backup: bool,
    /// Relative share.
    pub weight: u32,
    /// Health says it is up.
    pub up: bool,
    /// Connections (TCP) or sessions (UDP) open now.
    pub active: u64,
    /// Connections sent to it since start.
    pub total: u64,
    /// Bytes from clients to it.
    pub bytes_in: u64,
    /// Bytes from it to clients.
    pub bytes_out: u64,
    /// Proxied connects that failed (each redispatched).
    pub failed_connects: u64,
    /// Active checks that failed.
    pub failed_checks: u64,
    /// How long the last active check took, in milliseconds.
    pub check_ms: Option<f64>,
    /// Why the last failed check or connect failed.
    pub last_error: Option<String>,
    /// Up/down changes since start.
    pub transitions: u64,
}

/// One balance group as the running balancer sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// The address it listens on.
    pub listen: std::net::SocketAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `round-robin`, `least-conn` or `source-hash`.
    pub algorithm: String,
    /// Connections (or sessions) accepted.
    pub accepted: u64,
    /// Open now.
    pub active: u64,
    /// Refused: the source held `max_conn_per_source`.
    pub refused_source_conn: u64,
    /// Refused: the source exceeded `max_rate_per_source`.
    pub refused_source_rate: u64,
    /// Closed: no backend up.
    pub no_backend: u64,
    /// Waited in the queue (every backend at `max_conn`).
    pub queued: u64,
    /// Gave up waiting in the queue.
    pub queue_timeouts: u64,
    /// Sent to another backend after a failed connect.
    pub redispatched: u64,
    /// Closed after `idle_timeout` without a byte.
    pub idle_closed: u64,
    /// A fronting balancer's PROXY header was missing or malformed.
    pub bad_proxy_header: u64,
    /// Closed, or a check skipped, because this host ran out of descriptors, memory or
    /// ports (not counted against any backend).
    pub local_errors: u64,
    /// The nodes, primaries first.
    pub backends: Vec<BackendStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn up(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                up: true,
                backup: false,
                weight: 1,
                active: 0,
                max_conn: None,
                excluded: false,
            };
            n
        ]
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn table_over(keys: &[String], m: usize) -> Maglev {
        let nodes: Vec<(&[u8], u32, usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_bytes(), 1, i))
            .collect();
        Maglev::with_size(&nodes, m).unwrap()
    }

    #[test]
    fn round_robin_takes_turns_by_weight_interleaved() {
        let mut c = up(3);
        c[0].weight = 5;
        let mut rr = RoundRobin::default();
        let seq: Vec<usize> = (0..7)
            .map(|_| pick(Algorithm::RoundRobin, &c, ip(1), 0, &mut rr, None).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[pick(Algorithm::RoundRobin, &c, ip(1), 0, &mut rr, None).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn the_table_of_choices() {
        // (description, candidates (up, backup, active, max, excluded), algorithm, expected)
        type Row = (
            &'static str,
            Vec<(bool, bool, u32, Option<u32>, bool)>,
            Algorithm,
            Result<usize, NoBackend>,
        );
        let rows: Vec<Row> = vec![
            (
                "least-conn takes the idlest",
                vec![
                    (true, false, 5, None, false),
                    (true, false, 2, None, false),
                    (true, false, 9, None, false),
                ],
                Algorithm::LeastConn,
                Ok(1),
            ),
            (
                "a down primary is skipped",
                vec![
                    (false, false, 0, None, false),
                    (true, false, 7, None, false),
                ],
                Algorithm::LeastConn,
                Ok(1),
            ),
            (
                "backups wait while a primary is up",
                vec![(true, false, 50, None, false), (true, true, 0, None, false)],
                Algorithm::LeastConn,
                Ok(0),
            ),
            (
                "all primaries down: the backup",
                vec![
                    (false, false, 0, None, false),
                    (false, false, 0, None, false),
                    (true, true, 0, None, false),
                ],
                Algorithm::RoundRobin,
                Ok(2),
            ),
            (
                "everything down",
                vec![
                    (false, false, 0, None, false),
                    (false, true, 0, None, false),
                ],
                Algorithm::RoundRobin,
                Err(NoBackend::Down),
            ),
            (
                "every primary full: queue, not the backup",
                vec![
                    (true, false, 3, Some(3), false),
                    (true, true, 0, None, false),
                ],
                Algorithm::RoundRobin,
                Err(NoBackend::Full),
            ),
            (
                "the full one gives way",
                vec![
                    (true, false, 3, Some(3), false),
                    (true, false, 8, Some(10), false),
                ],
                Algorithm::LeastConn,
                Ok(1),
            ),
            (
                "every primary tried: the backup",
                vec![(true, false, 0, None, true), (true, true, 0, None, false)],
                Algorithm::SourceHash,
                Ok(1),
            ),
            (
                "everything tried",
                vec![(true, false, 0, None, true), (true, false, 0, None, true)],
                Algorithm::SourceHash,
                Err(NoBackend::Down),
            ),
        ];
        for (what, spec, alg, want) in rows {
            let c: Vec<Candidate> = spec
                .iter()
                .map(|&(up, backup, active, max_conn, excluded)| Candidate {
                    up,
                    backup,
                    weight: 1,
                    active,
                    max_conn,
                    excluded,
                })
                .collect();
            let got = pick(alg, &c, ip(7), 0, &mut RoundRobin::default(), None);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn source_hash_is_sticky_and_spreads() {
        let keys: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:873")).collect();
        let t = table_over(&keys, MAGLEV_SIZE);
        let c = up(4);
        let mut counts = [0u32; 4];
        for s in 0..20_000 {
            let a = pick(
                Algorithm::SourceHash,
                &c,
                ip(s),
                0,
                &mut RoundRobin::default(),
                Some(&t),
            )
            .unwrap();
            let b = pick(
                Algorithm::SourceHash,
                &c,
                ip(s),
                0,
                &mut RoundRobin::default(),
                Some(&t),
            )
            .unwrap();
            assert_eq!(a, b);
            counts[a] += 1;
        }
        for n in counts {
            assert!((4_000..6_000).contains(&n), "{counts:?}");
        }
        // A redispatch (the source's node excluded) goes elsewhere.
        let mut c2 = c.clone();
        let first = t.lookup_source(ip(5), 0);
        c2[first].excluded = true;
        let again = pick(
            Algorithm::SourceHash,
            &c2,
            ip(5),
            1,
            &mut RoundRobin::default(),
            Some(&t),
        )
        .unwrap();
        assert_ne!(again, first);
    }

    #[test]
    fn maglev_weights_give_shares() {
        let keys = ["a", "b", "c"];
        let nodes: Vec<(&[u8], u32, usize)> = vec![
            (keys[0].as_bytes(), 3, 0),
            (keys[1].as_bytes(), 1, 1),
            (keys[2].as_bytes(), 1, 2),
        ];
        let t = Maglev::new(&nodes).unwrap();
        let mut counts = [0usize; 3];
        for slot in &t.table {
            counts[*slot as usize] += 1;
        }
        let share = counts[0] as f64 / MAGLEV_SIZE as f64;
        assert!((0.58..0.62).contains(&share), "{counts:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Removing one of N backends remaps at most 1/N + 5 % of sources.
        #[test]
        fn removing_one_of_n_remaps_about_one_nth(n in 2usize..12, gone in 0usize..12, salt in 0u32..1000) {
            let gone = gone % n;
            let keys: Vec<String> = (0..n).map(|i| format!("10.{salt}.0.{i}:873")).collect();
            let before = table_over(&keys, MAGLEV_SIZE);
            let rest: Vec<String> = keys.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, k)| k.clone()).collect();
            let after = table_over(&rest, MAGLEV_SIZE);
            let sources = 5_000u32;
            let mut moved = 0;
            for s in 0..sources {
                let a = &keys[before.lookup_source(ip(s * 7 + salt), 0)];
                let b = &rest[after.lookup_source(ip(s * 7 + salt), 0)];
                if a != b {
                    moved += 1;
                }
            }
            let frac = f64::from(moved) / f64::from(sources);
            prop_assert!(frac <= 1.0 / n as f64 + 0.05, "n={} moved {:.3}", n, frac);
        }
    }

    #[test]
    fn health_needs_fall_then_rise_in_a_row() {
        let mut h = Health::default();
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None, "a success resets the run");
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(Transition::Down));
        assert!(!h.up);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!((h.observe(true, 2, 3), h.observe(true, 2, 3)), (None, None));
        assert_eq!(h.observe(true, 2, 3), Some(Transition::Up));
        assert!(h.up);
    }

    #[test]
    fn per_source_limits_hold_three_of_five() {
        let mut l = SourceLimits::new(Some(3), None);
        let a = ip(1);
        let got: Vec<bool> = (0..5).map(|_| l.admit(a, 0).is_ok()).collect();
        assert_eq!(got, vec![true, true, true, false, false]);
        assert!(l.admit(ip(2), 0).is_ok(), "another source is not limited");
        l.release(a, 1);
        assert!(l.admit(a, 1).is_ok());
        for _ in 0..3 {
            l.release(a, 2);
        }
        l.release(ip(2), 2);
        assert_eq!(l.tracked(), 0, "idle sources are forgotten");
    }

    #[test]
    fn a_limit_added_later_counts_what_is_already_open() {
        let mut l = SourceLimits::new(None, None);
        let a = ip(1);
        for _ in 0..20 {
            assert!(l.admit(a, 0).is_ok());
        }
        l.max_conn = Some(5);
        assert_eq!(l.admit(a, 0), Err(SourceRefusal::Concurrent));
        for _ in 0..16 {
            l.release(a, 0);
        }
        assert_eq!(l.active(a), 4);
        assert!(l.admit(a, 0).is_ok());
        assert_eq!(l.admit(a, 0), Err(SourceRefusal::Concurrent));
    }

    #[test]
    fn cycles_are_found() {
        assert_eq!(find_cycle(&[vec![1], vec![2], vec![]]), None);
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0]]),
            Some(vec![0, 1, 2])
        );
        assert_eq!(find_cycle(&[vec![], vec![2], vec![1]]), Some(vec![1, 2]));
        assert_eq!(find_cycle(&[vec![0]]), Some(vec![0]));
        assert_eq!(
            find_cycle(&[vec![1, 2], vec![2], vec![]]),
            None,
            "a diamond is no cycle"
        );
    }

    #[test]
    fn which_listener_a_node_reaches() {
        use crate::policy::reaches;
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(reaches(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(
            reaches(a("127.0.0.1:80"), a("[::]:80")),
            "[::] is dual stack"
        );
        assert!(reaches(a("[::1]:80"), a("[::]:80")));
        assert!(
            !reaches(a("[::1]:80"), a("0.0.0.0:80")),
            "0.0.0.0 is IPv4 only"
        );
        assert!(reaches(a("[::ffff:127.0.0.1]:80"), a("127.0.0.1:80")));
        assert!(!reaches(a("127.0.0.1:81"), a("0.0.0.0:80")));
        assert!(
            !reaches(a("10.0.0.1:80"), a("0.0.0.0:80")),
            "another host, as far as the policy knows"
        );
    }

    #[test]
    fn per_source_rate_is_a_token_bucket() {
        let mut l = SourceLimits::new(None, Some(10));
        let a = ip(1);
        let ok = (0..15).filter(|_| l.admit(a, 1_000).is_ok()).count();
        assert_eq!(ok, 10, "a burst of one second's worth");
        assert_eq!(l.admit(a, 1_050), Err(SourceRefusal::Rate));
        assert!(l.admit(a, 1_100).is_ok(), "100 ms refills one");
        for _ in 0..11 {
            l.release(a, 5_000);
        }
        assert_eq!(l.tracked(), 0, "refilled and idle: forgotten");
    }
}
