//! The L4 balancer: a listener per `[[balance]]` group, each connection sent to the backend
//! core's `balance::pick` chooses and forwarded by `forward` (splice), active checks
//! (`check`) and passive ones (a failed connect counts, and the client is redispatched to
//! another backend), per-source limits, a queue when every backend is at `max_conn`, the
//! PROXY protocol both ways, UDP sessions (`udp`), hot reload that keeps the listeners and
//! every established connection, and a graceful drain on stop.
//!
//! Decisions are core's; this module holds the sockets, the counters and the timers.

pub mod check;
pub mod forward;
pub mod proxyproto;
mod udp;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portwarden_core::balance::{
    BackendStatus, Candidate, GroupStatus, Health, Maglev, NoBackend, RoundRobin, SourceLimits,
    SourceRefusal, Transition, pick,
};
use portwarden_core::policy::{Balance, BalanceProtocol, ProxyProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

pub use forward::Mode;

/// How long a fronting balancer has to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// The listen backlog.
const BACKLOG: i32 = 4096;

/// How the balancer runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `SO_REUSEPORT` on the listeners, so that several worker processes share each port.
    pub reuseport: bool,
    /// How bytes are moved.
    pub mode: Mode,
    /// Before binding with `SO_REUSEPORT`, check that nobody holds the address yet (the
    /// first worker does; the others join it): without the check a second balancer with
    /// `SO_REUSEPORT` would silently share the port.
    pub exclusive: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            reuseport: false,
            mode: Mode::Splice,
            exclusive: true,
        }
    }
}

/// A backend went up or down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The group.
    pub group: String,
    /// The backend.
    pub backend: SocketAddr,
    /// Up (true) or down.
    pub up: bool,
    /// The observation that tipped it (a check's or a connect's error, or "check passed").
    pub why: String,
}

/// Why the balancer could not start (or reload) a group.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("balance group `{group}`: cannot listen on {addr}/{proto}")]
    Bind {
        /// The group.
        group: String,
        /// Its listen address.
        addr: SocketAddr,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A node is this host's own listen address and port.
    #[error(
        "balance group `{group}`: node {node} is this host's own {listen}: connections would loop"
    )]
    Loop {
        /// The group.
        group: String,
        /// The node.
        node: SocketAddr,
        /// The group's listen address.
        listen: SocketAddr,
    },
}

impl StartError {
    fn bind(b: &Balance, source: io::Error) -> StartError {
        StartError::Bind {
            group: b.name.clone(),
            addr: b.listen,
            proto: b.protocol.as_str(),
            source,
        }
    }

    /// The address that was in use, when that is what failed.
    pub fn in_use(&self) -> Option<(SocketAddr, &'static str)> {
        match self {
            StartError::Bind {
                addr,
                proto,
                source,
                ..
            } if source.kind() == io::ErrorKind::AddrInUse => Some((*addr, proto)),
            _ => None,
        }
    }
}

struct Node {
    addr: SocketAddr,
    key: Vec<u8>,
    backup: AtomicBool,
    weight: AtomicU32,
    /// 0: no limit of its own.
    max_conn: AtomicU32,
    health: Mutex<Health>,
    up: AtomicBool,
    active: AtomicU64,
    total: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    failed_connects: AtomicU64,
    failed_checks: AtomicU64,
    /// Microseconds the last check took; `u64::MAX`: none yet.
    check_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    transitions: AtomicU64,
}

impl Node {
    fn new(b: &portwarden_core::policy::Backend, backup: bool) -> Node {
        Node {
            addr: b.addr,
            key: b.addr.to_string().into_bytes(),
            backup: AtomicBool::new(backup),
            weight: AtomicU32::new(b.weight),
            max_conn: AtomicU32::new(b.max_conn.unwrap_or(0)),
            health: Mutex::new(Health::default()),
            up: AtomicBool::new(true),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            failed_connects: AtomicU64::new(0),
            failed_checks: AtomicU64::new(0),
            check_us: AtomicU64::new(u64::MAX),
            last_error: Mutex::new(None),
            transitions: AtomicU64::new(0),
        }
    }

    fn set(&self, b: &portwarden_core::policy::Backend, backup: bool) {
        self.backup.store(backup, Ordering::Relaxed);
        self.weight.store(b.weight, Ordering::Relaxed);
        self.max_conn
            .store(b.max_conn.unwrap_or(0), Ordering::Relaxed);
    }

    fn note_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }
}

/// The nodes and the consistent-hash table over those that take traffic, replaced whole.
struct View {
    nodes: Vec<Arc<Node>>,
    table: Option<Maglev>,
}

impl View {
    fn new(nodes: Vec<Arc<Node>>) -> View {
        // The table covers the pool `pick` chooses from: the up primaries, or (none up)
        // the up backups.
        let primary_up = nodes
            .iter()
            .any(|n| n.up.load(Ordering::Relaxed) && !n.backup.load(Ordering::Relaxed));
        let entries: Vec<(&[u8], u32, usize)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.up.load(Ordering::Relaxed) && n.backup.load(Ordering::Relaxed) != primary_up
            })
            .map(|(i, n)| (n.key.as_slice(), n.weight.load(Ordering::Relaxed), i))
            .collect();
        View {
            table: Maglev::new(&entries),
            nodes,
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused_source_conn: AtomicU64,
    refused_source_rate: AtomicU64,
    no_backend: AtomicU64,
    queued: AtomicU64,
    queue_timeouts: AtomicU64,
    redispatched: AtomicU64,
    idle_closed: AtomicU64,
    bad_proxy_header: AtomicU64,
    local_errors: AtomicU64,
}

struct Group {
    name: String,
    cfg: RwLock<Arc<Balance>>,
    view: RwLock<Arc<View>>,
    rr: Mutex<RoundRobin>,
    limits: Mutex<SourceLimits>,
    /// A backend slot was freed (for the queue).
    freed: Notify,
    waiting: AtomicU64,
    c: Counters,
    active: AtomicU64,
    /// Every connection has ended.
    drained: Notify,
    epoch: Instant,
    mode: Mode,
    /// Whether the listener has `TCP_NODELAY`, which accepted sockets inherit.
    listener_nodelay: bool,
    /// Set: stop accepting. Then `hard`: cut what is left.
    stop_accept: watch::Sender<bool>,
    hard: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    checkers: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Group {
    fn cfg(&self) -> Arc<Balance> {
        self.cfg
            .read()
            .map_or_else(|e| e.into_inner().clone(), |c| c.clone())
    }

    fn view(&self) -> Arc<View> {
        self.view
            .read()
            .map_or_else(|e| e.into_inner().clone(), |v| v.clone())
    }

    fn rebuild(&self) {
        let nodes = self.view().nodes.clone();
        let v = Arc::new(View::new(nodes));
        if let Ok(mut w) = self.view.write() {
            *w = v;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One health observation of `node` (a check, or a proxied connect).
    fn observe(&self, node: &Node, ok: bool, why: &str) {
        let cfg = self.cfg();
        let t = match node.health.lock() {
            Ok(mut h) => h.observe(ok, cfg.health.fall, cfg.health.rise),
            Err(_) => None,
        };
        if !ok {
            node.note_error(why);
        }
        if let Some(t) = t {
            node.up.store(t == Transition::Up, Ordering::SeqCst);
            node.transitions.fetch_add(1, Ordering::Relaxed);
            self.rebuild();
            let _ = self.events.send(Event {
                group: self.cfg().name.clone(),
                backend: node.addr,
                up: t == Transition::Up,
                why: why.to_string(),
            });
        }
    }

    /// The backend for a new connection from `src`, its slot taken.
    fn choose(
        &self,
        cfg: &Balance,
        src: IpAddr,
        tried: &[SocketAddr],
        attempt: u32,
    ) -> Result<Arc<Node>, NoBackend> {
        let view = self.view();
        let cands: Vec<Candidate> = view
            .nodes
            .iter()
            .map(|n| {
                let own = n.max_conn.load(Ordering::Relaxed);
                Candidate {
                    up: n.up.load(Ordering::Relaxed),
                    backup: n.backup.load(Ordering::Relaxed),
                    weight: n.weight.load(Ordering::Relaxed),
                    active: n.active.load(Ordering::Relaxed).min(u64::from(u32::MAX)) as u32,
                    max_conn: if own > 0 { Some(own) } else { cfg.max_conn },
                    excluded: tried.contains(&n.addr),
                }
            })
            .collect();
        // The slot is taken under the lock, so two picks never both take a backend's last.
        let mut rr = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        let i = pick(
            cfg.algorithm,
            &cands,
            src,
            attempt,
            &mut rr,
            view.table.as_ref(),
        )?;
        let n = view.nodes[i].clone();
        n.active.fetch_add(1, Ordering::SeqCst);
        Ok(n)
    }

    fn free(&self, n: &Node) {
        n.active.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    fn status(&self) -> GroupStatus {
        let cfg = self.cfg();
        let view = self.view();
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GroupStatus {
            name: cfg.name.clone(),
            listen: cfg.listen,
            protocol: cfg.protocol.as_str().into(),
            algorithm: cfg.algorithm.as_str().into(),
            accepted: ld(&self.c.accepted),
            active: ld(&self.active),
            refused_source_conn: ld(&self.c.refused_source_conn),
            refused_source_rate: ld(&self.c.refused_source_rate),
            no_backend: ld(&self.c.no_backend),
            queued: ld(&self.c.queued),
            queue_timeouts: ld(&self.c.queue_timeouts),
            redispatched: ld(&self.c.redispatched),
            idle_closed: ld(&self.c.idle_closed),
            bad_proxy_header: ld(&self.c.bad_proxy_header),
            local_errors: ld(&self.c.local_errors),
            backends: view
                .nodes
                .iter()
                .map(|n| BackendStatus {
                    addr: n.addr,
                    backup: n.backup.load(Ordering::Relaxed),
                    weight: n.weight.load(Ordering::Relaxed),
                    up: n.up.load(Ordering::Relaxed),
                    active: ld(&n.active),
                    total: ld(&n.total),
                    bytes_in: ld(&n.bytes_in),
                    bytes_out: ld(&n.bytes_out),
                    failed_connects: ld(&n.failed_connects),
                    failed_checks: ld(&n.failed_checks),
                    check_ms: match ld(&n.check_us) {
                        u64::MAX => None,
                        us => Some(us as f64 / 1000.0),
                    },
                    last_error: n.last_error.lock().ok().and_then(|l| l.clone()),
                    transitions: ld(&n.transitions),
                })
                .collect(),
        }
    }

    /// Starts checkers for nodes that have none and stops those of nodes that left.
    fn sync_checkers(self: &Arc<Group>) {
        let view = self.view();
        let mut ck = self.checkers.lock().unwrap_or_else(|e| e.into_inner());
        ck.retain(|addr, h| {
            let keep = view.nodes.iter().any(|n| n.addr == *addr);
            if !keep {
                h.abort();
            }
            keep
        });
        for n in &view.nodes {
            ck.entry(n.addr)
                .or_insert_with(|| tokio::spawn(checker(self.clone(), n.clone())));
        }
    }

    /// Stops accepting, lets connections finish for `drain_timeout`, then cuts the rest.
    async fn stop(self: Arc<Group>) {
        let _ = self.stop_accept.send(true);
        for (_, h) in self
            .checkers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            h.abort();
        }
        self.drained_within(self.cfg().drain_timeout.get()).await;
        let _ = self.hard.send(true);
        for h in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
        // The cut connections end as their tasks see the flag: counted out before the
        // last status is read (bounded).
        self.drained_within(Duration::from_secs(1)).await;
    }

    /// Returns once no connection is open, or after `limit`.
    async fn drained_within(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Returns once a stop flag is set (or its sender is gone).
async fn set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Counts a connection (or UDP session) as open while it lives.
struct Open(Arc<Group>);

impl Open {
    fn new(g: &Arc<Group>) -> Open {
        g.active.fetch_add(1, Ordering::SeqCst);
        Open(g.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// A source's admission, released on drop.
struct Admitted(Arc<Group>, IpAddr);

impl Drop for Admitted {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        if let Ok(mut l) = self.0.limits.lock() {
            l.release(self.1, now);
        }
    }
}

fn admit(g: &Arc<Group>, src: IpAddr) -> Option<Admitted> {
    let now = g.now_ms();
    let r = g.limits.lock().map_or(Ok(()), |mut l| l.admit(src, now));
    match r {
        Ok(()) => Some(Admitted(g.clone(), src)),
        Err(SourceRefusal::Concurrent) => {
            g.c.refused_source_conn.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(SourceRefusal::Rate) => {
            g.c.refused_source_rate.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn checker(g: Arc<Group>, node: Arc<Node>) {
    loop {
        let cfg = g.cfg();
        let h = &cfg.health;
        let start = tokio::time::Instant::now();
        let r = match cfg.protocol {
            BalanceProtocol::Tcp => check::tcp(node.addr, h).await,
            // A UDP backend is checked only when the policy says what to send and expect;
            // otherwise only ICMP errors on its sessions (passive) count.
            BalanceProtocol::Udp if h.expect.is_some() => check::udp(node.addr, h).await,
            BalanceProtocol::Udp => return,
        };
        match r {
            Ok(d) => {
                node.check_us.store(d.as_micros() as u64, Ordering::Relaxed);
                g.observe(&node, true, "check passed");
            }
            // This host is out of descriptors or memory: no verdict on the backend.
            Err(check::Failure { local: true, .. }) => {
                g.c.local_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(check::Failure { why, .. }) => {
                node.failed_checks.fetch_add(1, Ordering::Relaxed);
                g.observe(&node, false, &format!("check: {why}"));
            }
        }
        tokio::time::sleep_until(start + h.interval.get()).await;
    }
}

fn set_reuseport(fd: i32) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind(addr: SocketAddr, proto: BalanceProtocol, reuseport: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (ty, p) = match proto {
        BalanceProtocol::Tcp => (Type::STREAM, Protocol::TCP),
        BalanceProtocol::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    if proto == BalanceProtocol::Tcp {
        s.set_reuse_address(true)?;
    }
    if reuseport {
        set_reuseport(s.as_raw_fd())?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if proto == BalanceProtocol::Tcp {
        s.listen(BACKLOG)?;
    }
    Ok(s)
}

/// Whether `ip` is one of this host's addresses (binding to it succeeds).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn loop_check(b: &Balance) -> Result<(), StartError> {
    for (n, _) in b.nodes() {
        if n.addr.port() != b.listen.port() {
            continue;
        }
        let own = portwarden_core::policy::reaches(n.addr, b.listen)
            || n.addr.ip().is_unspecified()
            || (b.listen.ip().is_unspecified() && is_local(n.addr.ip()));
        if own {
            return Err(StartError::Loop {
                group: b.name.clone(),
                node: n.addr,
                listen: b.listen,
            });
        }
    }
    Ok(())
}

/// Whether a connection to `node` reaches `listen` on this host: the policy's rule, plus
/// this host's other addresses behind a wildcard listener.
fn reaches_here(node: SocketAddr, listen: SocketAddr) -> bool {
    portwarden_core::policy::reaches(node, listen)
        || (node.port() == listen.port()
            && listen.ip().is_unspecified()
            && (listen.is_ipv6() || node.is_ipv4())
            && is_local(node.ip()))
}

/// Groups forwarding to each other's listeners round a cycle (through any address of
/// this host) would loop every connection until the descriptors run out.
fn cycle_check(groups: &[Balance]) -> Result<(), StartError> {
    let edges: Vec<Vec<usize>> = groups
        .iter()
        .map(|b| {
            (0..groups.len())
                .filter(|&j| {
                    let o = &groups[j];
                    o.protocol == b.protocol
                        && b.nodes().any(|(n, _)| reaches_here(n.addr, o.listen))
                })
                .collect()
        })
        .collect();
    match portwarden_core::balance::find_cycle(&edges) {
        Some(c) => {
            let first = &groups[c[0]];
            let next = &groups[c.get(1).copied().unwrap_or(c[0])];
            let node = first
                .nodes()
                .map(|(n, _)| n.addr)
                .find(|a| reaches_here(*a, next.listen))
                .unwrap_or(first.listen);
            Err(StartError::Loop {
                group: first.name.clone(),
                node,
                listen: next.listen,
            })
        }
        None => Ok(()),
    }
}

/// A bound, not yet serving, group.
struct Bound {
    cfg: Arc<Balance>,
    sock: socket2::Socket,
    nodelay: bool,
}

fn bind_group(b: &Balance, opts: &Options) -> Result<Bound, StartError> {
    loop_check(b)?;
    if opts.reuseport && opts.exclusive {
        // Without SO_REUSEPORT this bind fails if anyone holds the address, even another
        // process that set it.
        drop(bind(b.listen, b.protocol, false).map_err(|e| StartError::bind(b, e))?);
    }
    let sock = bind(b.listen, b.protocol, opts.reuseport).map_err(|e| StartError::bind(b, e))?;
    // Accepted sockets inherit it from the listener: a syscall per connection saved.
    let nodelay = b.protocol == BalanceProtocol::Tcp && b.nodelay && sock.set_nodelay(true).is_ok();
    let mut cfg = b.clone();
    // Port 0 (tests): the group's address is the one the kernel chose.
    if let Some(a) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
        cfg.listen = a;
    }
    Ok(Bound {
        cfg: Arc::new(cfg),
        sock,
        nodelay,
    })
}

fn nodes_of(b: &Balance, old: &[Arc<Node>]) -> Vec<Arc<Node>> {
    b.nodes()
        .map(|(n, backup)| match old.iter().find(|o| o.addr == n.addr) {
            Some(o) => {
                o.set(n, backup);
                o.clone()
            }
            None => Arc::new(Node::new(n, backup)),
        })
        .collect()
}

fn serve_group(
    bound: Bound,
    opts: &Options,
    events: &mpsc::UnboundedSender<Event>,
) -> io::Result<Arc<Group>> {
    let cfg = bound.cfg;
    let nodes = nodes_of(&cfg, &[]);
    let g = Arc::new(Group {
        name: cfg.name.clone(),
        limits: Mutex::new(SourceLimits::new(
            cfg.max_conn_per_source,
            cfg.max_rate_per_source,
        )),
        view: RwLock::new(Arc::new(View::new(nodes))),
        cfg: RwLock::new(cfg.clone()),
        rr: Mutex::new(RoundRobin::default()),
        freed: Notify::new(),
        waiting: AtomicU64::new(0),
        c: Counters::default(),
        active: AtomicU64::new(0),
        drained: Notify::new(),
        epoch: Instant::now(),
        mode: opts.mode,
        listener_nodelay: bound.nodelay,
        stop_accept: watch::channel(false).0,
        hard: watch::channel(false).0,
        tasks: Mutex::new(Vec::new()),
        checkers: Mutex::new(HashMap::new()),
        events: events.clone(),
    });
    let stop = g.stop_accept.subscribe();
    let task = match cfg.protocol {
        BalanceProtocol::Tcp => {
            let l = TcpListener::from_std(bound.sock.into())?;
            tokio::spawn(accept_loop(g.clone(), l, stop))
        }
        BalanceProtocol::Udp => {
            let s = tokio::net::UdpSocket::from_std(bound.sock.into())?;
            tokio::spawn(udp::serve(g.clone(), Arc::new(s), stop))
        }
    };
    g.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    g.sync_checkers();
    Ok(g)
}

async fn accept_loop(g: Arc<Group>, l: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    g.c.accepted.fetch_add(1, Ordering::Relaxed);
                    let open = Open::new(&g);
                    tokio::spawn(connection(g.clone(), s, peer, open));
                }
                // Out of descriptors (or memory): the client waits in the backlog a moment
                // instead of the loop spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            _ = set(&mut stop) => return,
        }
    }
}

async fn connection(g: Arc<Group>, client: TcpStream, peer: SocketAddr, _open: Open) {
    let mut hard = g.hard.subscribe();
    tokio::select! {
        _ = proxy(&g, client, peer) => {}
        _ = set(&mut hard) => {}
    }
}

/// Reads a fronting balancer's PROXY header; returns it and the bytes read past it (the
/// client's first bytes, for the backend). Each read waits for the client.
async fn read_proxy_header(client: &mut TcpStream) -> Option<(proxyproto::Header, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match proxyproto::parse(&buf) {
            proxyproto::Parse::Done(h, len) => return Some((h, buf.split_off(len))),
            proxyproto::Parse::Bad(_) => return None,
            proxyproto::Parse::Incomplete if buf.len() >= proxyproto::V2_MAX => return None,
            proxyproto::Parse::Incomplete => {}
        }
    }
}

async fn proxy(g: &Arc<Group>, mut client: TcpStream, peer: SocketAddr) {
    let cfg = g.cfg();
    // The address the client reached, for the PROXY protocol only (a syscall saved).
    let local = if cfg.accept_proxy || cfg.proxy_protocol.is_some() {
        client.local_addr().unwrap_or(cfg.listen)
    } else {
        cfg.listen
    };
    let mut early = Vec::new();
    let (src, dst) = if cfg.accept_proxy {
        match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut client)).await {
            Ok(Some((proxyproto::Header::Proxied { src, dst }, rest))) => {
                early = rest;
                (src, dst)
            }
            Ok(Some((proxyproto::Header::Local, rest))) => {
                early = rest;
                (peer, local)
            }
            _ => {
                g.c.bad_proxy_header.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    } else {
        (peer, local)
    };
    let Some(_admitted) = admit(g, src.ip()) else {
        return;
    };
    let Some((node, server)) = connect_some(g, &cfg, src.ip()).await else {
        return;
    };
    let _slot = Slot(g.clone(), node.clone());
    node.total.fetch_add(1, Ordering::Relaxed);
    // A reload may have changed it since the listener was bound.
    if cfg.nodelay != g.listener_nodelay {
        let _ = client.set_nodelay(cfg.nodelay);
    }
    if cfg.nodelay {
        let _ = server.set_nodelay(true);
    }
    let mut server = server;
    if let Some(v) = cfg.proxy_protocol {
        let h = match v {
            ProxyProtocol::V1 => proxyproto::v1(src, dst),
            ProxyProtocol::V2 => proxyproto::v2(src, dst),
        };
        if server.write_all(&h).await.is_err() {
            return;
        }
    }
    if !early.is_empty() {
        if server.write_all(&early).await.is_err() {
            return;
        }
        node.bytes_in
            .fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    let r = forward::both_ways(
        &client,
        &server,
        g.mode,
        &node.bytes_in,
        &node.bytes_out,
        cfg.idle_timeout.get(),
    )
    .await;
    if let Ok(false) = r {
        g.c.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A backend slot, freed on drop.
struct Slot(Arc<Group>, Arc<Node>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.free(&self.1);
    }
}

/// Connects to a backend: the one `pick` chooses, then (a failed connect, which counts
/// against the backend) another, until one answers or none is left; waits in the queue
/// while every backend is at `max_conn`.
async fn connect_some(
    g: &Arc<Group>,
    cfg: &Balance,
    src: IpAddr,
) -> Option<(Arc<Node>, TcpStream)> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0u32;
    let queue_deadline = tokio::time::Instant::now() + cfg.queue_timeout.get();
    let mut queued = false;
    loop {
        let mut chosen = g.choose(cfg, src, &tried, attempt);
        // Full: wait for a freed slot. The waiter is counted and registered before looking
        // again, so a slot freed in between wakes it; only a queued connection pays.
        let notified = g.freed.notified();
        tokio::pin!(notified);
        let mut _waiting = None;
        if let Err(NoBackend::Full) = chosen {
            _waiting = Some(Waiting::new(&g.waiting));
            notified.as_mut().enable();
            chosen = g.choose(cfg, src, &tried, attempt);
        }
        match chosen {
            Ok(node) => {
                let r =
                    tokio::time::timeout(cfg.connect_timeout.get(), TcpStream::connect(node.addr))
                        .await;
                match r {
                    Ok(Ok(s)) => return Some((node, s)),
                    Ok(Err(e)) if local_error(&e) => {
                        // Another backend would fail the same way: the client is closed,
                        // and the backend is not blamed.
                        g.free(&node);
                        g.c.local_errors.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Ok(Err(e)) => fail_connect(g, &node, &format!("connect: {e}")),
                    Err(_) => fail_connect(
                        g,
                        &node,
                        &format!("connect: no answer within {}", cfg.connect_timeout),
                    ),
                }
                tried.push(node.addr);
                attempt += 1;
                g.c.redispatched.fetch_add(1, Ordering::Relaxed);
            }
            Err(NoBackend::Down) => {
                g.c.no_backend.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(NoBackend::Full) => {
                if !queued {
                    queued = true;
                    g.c.queued.fetch_add(1, Ordering::Relaxed);
                }
                let r = tokio::time::timeout_at(queue_deadline, notified).await;
                if r.is_err() {
                    g.c.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
    }
}

/// A connection waiting in the queue, counted while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicU64) -> Waiting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An error of this host (out of descriptors, memory or ports), not of the backend.
pub(crate) fn local_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

fn fail_connect(g: &Group, node: &Node, why: &str) {
    g.free(node);
    node.failed_connects.fetch_add(1, Ordering::Relaxed);
    g.observe(node, false, why);
}

/// The running balancer: every group of the policy, reloadable.
pub struct Balancer {
    groups: Mutex<BTreeMap<String, Arc<Group>>>,
    opts: Options,
    events: mpsc::UnboundedSender<Event>,
}

impl Balancer {
    /// Binds every group's listener (all or none: on an error nothing stays bound) and
    /// starts serving. Must run inside a tokio runtime. Backend up/down changes arrive on
    /// the returned receiver.
    pub fn start(
        groups: &[Balance],
        opts: Options,
    ) -> Result<(Balancer, mpsc::UnboundedReceiver<Event>), StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let b = Balancer {
            groups: Mutex::new(BTreeMap::new()),
            opts,
            events: tx,
        };
        b.reload(groups)?;
        Ok((b, rx))
    }

    /// Applies a new set of groups: a group whose listen address and protocol stay keeps
    /// its listener, its established connections and its nodes' counters and health (new
    /// nodes, weights and limits apply to new connections); a group that moved gets a new
    /// listener first; a group that left is drained. New listeners are all bound before
    /// anything changes: an error leaves the running groups as they were.
    pub fn reload(&self, groups: &[Balance]) -> Result<(), StartError> {
        cycle_check(groups)?;
        let mut cur = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        // A group renamed on the same address and protocol is the same group.
        for b in groups {
            if cur.contains_key(&b.name) {
                continue;
            }
            let renamed = cur
                .iter()
                .find(|(name, g)| {
                    let c = g.cfg();
                    !groups.iter().any(|x| &x.name == *name)
                        && c.listen == b.listen
                        && c.protocol == b.protocol
                })
                .map(|(name, _)| name.clone());
            if let Some(old) = renamed
                && let Some(g) = cur.remove(&old)
            {
                cur.insert(b.name.clone(), g);
            }
        }
        let mut fresh = Vec::new();
        for b in groups {
            loop_check(b)?;
            let same = cur.get(&b.name).is_some_and(|g| {
                let c = g.cfg();
                c.listen == b.listen && c.protocol == b.protocol
            });
            if !same {
                // A moved group's old listener may hold the address it moves to only if
                // another group has it; binding first tells.
                fresh.push(bind_group(b, &self.opts)?);
            }
        }
        let mut next = BTreeMap::new();
        let mut fresh = fresh.into_iter();
        for b in groups {
            match cur.remove(&b.name) {
                Some(g) if g.cfg().listen == b.listen && g.cfg().protocol == b.protocol => {
                    let nodes = nodes_of(b, &g.view().nodes);
                    if let Ok(mut l) = g.limits.lock() {
                        l.max_conn = b.max_conn_per_source;
                        l.max_rate = b.max_rate_per_source;
                    }
                    if let Ok(mut c) = g.cfg.write() {
                        *c = Arc::new(b.clone());
                    }

                    if let Ok(mut v) = g.view.write() {
                        *v = Arc::new(View::new(nodes));
                    }
                    g.sync_checkers();
                    next.insert(b.name.clone(), g);
                }
                old => {
                    let Some(bound) = fresh.next() else { continue };
                    let g = serve_group(bound, &self.opts, &self.events)
                        .map_err(|e| StartError::bind(b, e))?;
                    if let Some(o) = old {
                        tokio::spawn(o.stop());
                    }
                    next.insert(b.name.clone(), g);
                }
            }
        }
        for (_, g) in std::mem::take(&mut *cur) {
            tokio::spawn(g.stop());
        }
        *cur = next;
        Ok(())
    }

    /// Every group's state and counters.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|g| g.status())
            .collect()
    }

    /// The address each group listens on (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|g| (g.name.clone(), g.cfg().listen))
            .collect()
    }

    /// Stops accepting everywhere, lets established connections finish for each group's
    /// `drain_timeout`, then closes the rest. Returns the groups' last counters.
    pub async fn stop(&self) -> Vec<GroupStatus> {
        let groups: Vec<Arc<Group>> =
            std::mem::take(&mut *self.groups.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        let mut hs = Vec::new();
        for g in &groups {
            hs.push(tokio::spawn(g.clone().stop()));
        }
        for h in hs {
            let _ = h.await;
        }
        groups.iter().map(|g| g.status()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy leaves `TCP_NODELAY` of accepted sockets to the listener: the kernel must
    /// hand it on (and not when the listener lacks it).
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for on in [true, false] {
            let l = bind("127.0.0.1:0".parse().unwrap(), BalanceProtocol::Tcp, false).unwrap();
            l.set_nodelay(on).unwrap();
            l.set_nonblocking(false).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let _c = std::net::TcpStream::connect(addr).unwrap();
            let (a, _) = l.accept().unwrap();
            assert_eq!(a.nodelay().unwrap(), on);
        }
    }
}
