//! The `scan` use-case: targets and ports like nmap, host discovery, the SYN, connect and
//! UDP engines, service and TLS detection (the built-in probes and nmap's database), and
//! the diff against an earlier scan. Returns the [`ScanDoc`]; printing is the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portwarden_api::scan::{Diff, ScanDoc, ScannedPort};
use portwarden_core::catalog::TlsStyle;
use portwarden_core::targets::{Target, expand, parse_ports, parse_target, top_ports};
use portwarden_core::{Catalog, Port, Protocol};
use portwarden_net::scan::{PortState, ScanConfig, scan_udp};

use crate::Ctx;

/// What to scan and how: the flags of `portwarden scan`, parsed.
#[derive(Debug, Clone, Default)]
pub struct ScanRequest {
    /// Addresses, CIDR blocks and names.
    pub targets: Vec<String>,
    /// `-p` (a port spec), or `None` for the `top` most common ports (1,000 by default).
    pub ports: Option<String>,
    pub top: Option<usize>,
    pub exclude_ports: Option<String>,
    pub udp: bool,
    /// `-sS` asked for (an error without the privilege), or `-sT`.
    pub syn: bool,
    pub connect: bool,
    /// `-Pn`: no host discovery.
    pub no_ping: bool,
    pub rate: Option<u32>,
    /// `-sV`, and nmap's probe database for it (`None`: the distribution's, when
    /// installed; `"none"`: the built-in probes only).
    pub service: bool,
    pub probes_db: Option<std::path::PathBuf>,
    /// The longest a probe waits (`--timeout`).
    pub timeout: Duration,
    pub retries: u32,
    pub max_hosts: u64,
    /// An earlier scan to diff against (`--diff`).
    pub old: Option<ScanDoc>,
    /// The command line, for the document.
    pub args: String,
}

/// Resolves targets to addresses, refusing oversized blocks and unknown names.
fn resolve(targets: &[String], max_hosts: u64) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for t in targets {
        match parse_target(t) {
            Target::Addr(a) => out.push(a),
            Target::Block(c) => out.extend(expand(c, max_hosts)?),
            Target::Name(n) => {
                let addrs: Vec<IpAddr> = (n.as_str(), 0)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve `{n}`"))?
                    .map(|a| a.ip())
                    .collect();
                // Like nmap: the first address of a name (prefer IPv4).
                let pick = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
                match pick {
                    Some(a) => out.push(*a),
                    None => bail!("cannot resolve `{n}`: no addresses"),
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|a| seen.insert(*a));
    if out.len() as u64 > max_hosts {
        bail!("{} targets, more than --max-hosts {max_hosts}", out.len());
    }
    Ok(out)
}

/// The highest `--rate`, probes per second.
pub const RATE_MAX: u32 = portwarden_net::syn::RATE_MAX;

/// A scan the policy's `[scan]` does not allow the daemon to run.
#[derive(Debug)]
pub struct NotPermitted(pub String);

impl std::fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPermitted {}

/// The addresses a scan asked of the daemon covers, when the policy's `[scan]` allows
/// every one of them (`targets`, at most `max_hosts`); else [`NotPermitted`]. Names are
/// resolved once, here: the scan is then run on these addresses, so a name that
/// resolves elsewhere later is not scanned.
pub fn permitted(ctx: &Ctx, targets: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let p = crate::policy::load(ctx, None)?;
    let allowed = &p.policy.scan;
    if targets.is_empty() {
        bail!("no targets to scan");
    }
    // A block is checked whole before it is expanded: 10.0.0.0/8 is refused as what it
    // is, not by its size.
    let mut count: u128 = 0;
    for t in targets {
        count += match parse_target(t) {
            Target::Block(c) => {
                if !allowed.targets.cidrs().iter().any(|a| a.covers(c)) {
                    return Err(NotPermitted(format!(
                        "{c} is not within the policy's [scan] targets ({})",
                        shown(&allowed.targets)
                    ))
                    .into());
                }
                let bits = if c.is_ipv4() { 32 } else { 128 } - u32::from(c.prefix());
                1u128.checked_shl(bits).unwrap_or(u128::MAX)
            }
            _ => 1,
        };
    }
    if count > u128::from(allowed.max_hosts) {
        return Err(NotPermitted(format!(
            "the targets cover {count} addresses, more than the policy's [scan] max_hosts {}",
            allowed.max_hosts
        ))
        .into());
    }
    let addrs = resolve(targets, u64::from(allowed.max_hosts))?;
    if let Some(a) = addrs.iter().find(|a| !allowed.targets.contains(**a)) {
        return Err(NotPermitted(format!(
            "{a} is not within the policy's [scan] targets ({})",
            shown(&allowed.targets)
        ))
        .into());
    }
    Ok(addrs)
}

fn shown(set: &portwarden_core::addr::AddrSet) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.cidrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where nmap's port frequencies are installed (Debian's `nmap` package).
pub const NMAP_SERVICES: &str = "/usr/share/nmap/nmap-services";

/// The `n` most common ports: nmap's own ranking (its `nmap-services` frequencies) when
/// installed, so `--top N` is nmap's `--top-ports N`; else the catalog's ports in order.
fn top(ctx: &Ctx, protocol: Protocol, n: usize) -> std::collections::BTreeSet<u16> {
    let path = std::path::Path::new(NMAP_SERVICES);
    if let Ok(bytes) = crate::files::read_regular(path, 16 << 20) {
        let ranked = portwarden_core::targets::top_ports_from_services(
            &String::from_utf8_lossy(&bytes),
            protocol,
            n,
        );
        if !ranked.is_empty() {
            ctx.notes.verbose(&format!(
                "top {n} ports by nmap's frequencies ({NMAP_SERVICES})"
            ));
            return ranked;
        }
    }
    let ports = top_ports(Catalog::builtin(), protocol, n);
    ctx.notes.verbose(&format!(
        "top {n} ports from the catalog ({} {protocol} ports there)",
        top_ports(Catalog::builtin(), protocol, usize::MAX).len()
    ));
    ports
}

/// Runs `fut` until it is done, or `stop` is set (checked every 50 ms): `None` when
/// stopped.
async fn until_stopped<T>(
    stop: &'static std::sync::atomic::AtomicBool,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let watch = async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        v = fut => Some(v),
        () = watch => None,
    }
}

/// Runs the scan. Stops early, with `interrupted` set, when `ctx.stop` is set (SIGINT).
pub async fn run(ctx: &Ctx, a: &ScanRequest) -> anyhow::Result<ScanDoc> {
    let protocol = if a.udp { Protocol::Udp } else { Protocol::Tcp };
    let mut ports = match (&a.ports, a.top) {
        (Some(spec), _) => parse_ports(spec)?,
        (None, n) => top(ctx, protocol, n.unwrap_or(1000)),
    };
    if let Some(ex) = &a.exclude_ports {
        for p in parse_ports(ex)? {
            ports.remove(&p);
        }
    }
    if ports.is_empty() {
        bail!(if a.exclude_ports.is_some() {
            "no ports left to scan after --exclude-ports"
        } else {
            "no ports to scan (--top 0?)"
        });
    }
    if a.timeout.is_zero() {
        bail!("invalid --timeout: must be above zero");
    }
    let hosts = resolve(&a.targets, a.max_hosts)?;
    let ports: Vec<u16> = ports.into_iter().collect();
    let db = if a.service && protocol == Protocol::Tcp {
        probes_db(ctx, a.probes_db.as_deref())
    } else {
        None
    };
    if let Some(r) = a.rate {
        if r == 0 || r > portwarden_net::syn::RATE_MAX {
            bail!(
                "invalid --rate {r}: between 1 and {} probes per second",
                portwarden_net::syn::RATE_MAX
            );
        }
    }
    let mut cfg = ScanConfig {
        protocol,
        retries: a.retries,
        rate: a.rate,
        ..ScanConfig::default()
    };
    cfg.max_timeout = a.timeout;
    cfg.initial_timeout = cfg.initial_timeout.min(cfg.max_timeout);
    cfg.min_timeout = cfg.min_timeout.min(cfg.max_timeout);

    let started = ctx.clock.now();
    let t0 = Instant::now();
    let progress = ctx.progress.clone();
    let mut hosts_down = Vec::new();
    let stop = ctx.stop;
    let outcome = match protocol {
        Protocol::Tcp => match tcp_engine(ctx, a, &hosts)? {
            Some(syn) => {
                // The SYN engine and the connect engine run threads of their own.
                let (c, hosts2, ports2, cfg2) =
                    (ctx.clone(), hosts.clone(), ports.clone(), cfg.clone());
                let no_ping = a.no_ping;
                let (o, down) = tokio::task::spawn_blocking(move || {
                    let up = if no_ping {
                        hosts2.clone()
                    } else {
                        discover(&c, &syn, &hosts2, &cfg2)
                    };
                    let down: Vec<IpAddr> =
                        hosts2.iter().filter(|h| !up.contains(h)).copied().collect();
                    // Stopped during discovery: nothing more is sent.
                    let up = if stop.load(Ordering::Relaxed) {
                        Vec::new()
                    } else {
                        up
                    };
                    let mut o = syn_scan(&c, &syn, &up, &ports2, &cfg2, progress, true);
                    o.interrupted |= stop.load(Ordering::Relaxed);
                    (o, down)
                })
                .await
                .context("the SYN scan stopped")?;
                hosts_down = down;
                o
            }
            None => {
                // Unprivileged, or asked for: discovery by connecting to 80 and 443, as
                // nmap does without raw sockets (loopback is always there).
                let wanted = !a.no_ping && hosts.iter().any(|h| !h.is_loopback());
                let (c, hosts2, ports2, cfg2) =
                    (ctx.clone(), hosts.clone(), ports.clone(), cfg.clone());
                let job = tokio::task::spawn_blocking(move || {
                    let up = if wanted {
                        discover_by_connect(&c, &hosts2, &cfg2)
                    } else {
                        hosts2.clone()
                    };
                    let down: Vec<IpAddr> =
                        hosts2.iter().filter(|h| !up.contains(h)).copied().collect();
                    // Stopped during discovery: nothing more is sent.
                    let o = portwarden_net::connect::scan_tcp(&up, &ports2, &cfg2, progress, stop);
                    (o, down)
                });
                // The engine stops itself (within a tenth of a second) when `stop` is set.
                let (o, down) = job.await.context("the connect scan stopped")?;
                hosts_down = down;
                o
            }
        },
        // The engine stops itself when `stop` is set, keeping what it settled.
        Protocol::Udp => scan_udp(&hosts, &ports, &cfg, progress, stop).await,
    };
    ctx.notes.progress_done();
    if outcome.interrupted {
        ctx.notes
            .warn("interrupted: the ports not yet settled are left out of what follows");
    }

    ctx.notes.verbose(&format!(
        "{} probes, srtt {} µs, {} self-connects discarded, {} descriptor shortages",
        outcome.probes, outcome.srtt_us, outcome.self_connects, outcome.emfile
    ));
    let catalog = Catalog::builtin();
    let mut found: Vec<ScannedPort> = outcome
        .ports
        .iter()
        .map(|p| ScannedPort {
            addr: p.addr,
            port: p.port,
            protocol: p.protocol.to_string(),
            state: p.state.as_str().to_string(),
            service: Port::new(p.port)
                .and_then(|port| catalog.by_port(port, p.protocol))
                .map(|e| e.name.clone()),
            method: "table".into(),
            tls: None,
            banner: None,
            cert_subject: None,
            cert_expires: None,
            cert_names: Vec::new(),
            product: None,
            version: None,
            extrainfo: None,
            hostname: None,
            ostype: None,
            devicetype: None,
            cpe: Vec::new(),
        })
        .collect();
    let mut stopped_detecting = false;
    if a.service && protocol == Protocol::Tcp && !outcome.interrupted {
        stopped_detecting = until_stopped(stop, detect(ctx, &outcome.ports, &mut found, db))
            .await
            .is_none();
        if stopped_detecting {
            ctx.notes
                .warn("interrupted: service detection stopped; ports are named by number");
        }
    }
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    let mut doc = ScanDoc {
        api: portwarden_api::API_VERSION,
        args: a.args.clone(),
        protocol: protocol.to_string(),
        started,
        elapsed_ms,
        hosts: hosts
            .iter()
            .filter(|h| !hosts_down.contains(h))
            .copied()
            .collect(),
        hosts_down,
        ports_scanned: ports.len(),
        ports: found,
        closed: outcome.closed,
        probes: outcome.probes,
        self_connects: outcome.self_connects,
        interrupted: outcome.interrupted || stopped_detecting,
        diff: None,
    };
    if let Some(old) = &a.old {
        doc.diff = Some(diff(old, &doc));
    }
    Ok(doc)
}

/// The TCP engine: the SYN scan (`Some`) when asked for, or by default as root for
/// targets off loopback (like nmap); the connect scan otherwise, and as the fallback when
/// raw sockets are refused (said with --verbose). An explicit `--syn` without the
/// privilege is an error naming it.
fn tcp_engine(
    ctx: &Ctx,
    a: &ScanRequest,
    hosts: &[IpAddr],
) -> anyhow::Result<Option<portwarden_net::syn::SynScanner>> {
    use portwarden_net::syn::{SynError, SynScanner};
    if a.connect {
        return Ok(None);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wanted = a.syn || (root && !hosts.iter().any(|h| h.is_loopback()));
    if !wanted {
        return Ok(None);
    }
    match SynScanner::new(hosts) {
        Ok(s) => Ok(Some(s)),
        Err(e @ SynError::Privilege) if !a.syn => {
            ctx.notes.verbose(&format!("{e}; using the connect scan"));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Host discovery, like nmap's as root: an ICMP echo request, and a SYN to 80 and 443
/// (any answer, even a RST, means the host is there); one retransmission. The hosts that
/// answer, in the order given.
fn discover(
    ctx: &Ctx,
    syn: &portwarden_net::syn::SynScanner,
    hosts: &[IpAddr],
    cfg: &ScanConfig,
) -> Vec<IpAddr> {
    syn.ping(hosts);
    let probe = ScanConfig {
        retries: 1,
        initial_window: (hosts.len() * 2).clamp(32, cfg.max_window),
        ..cfg.clone()
    };
    // Without suppressing RSTs: a host whose SYN-ACK our kernel does not reset keeps a
    // half-open connection for the same four-tuple the scan then probes.
    let d = syn_scan(
        ctx,
        syn,
        hosts,
        &[80, 443],
        &probe,
        Arc::new(|_, _| {}),
        false,
    );
    answered(ctx, hosts, &d)
}

/// Host discovery without raw sockets: a connection to 80 and 443 of each host (an
/// accepted or a refused connection both mean the host is there); one retransmission.
fn discover_by_connect(ctx: &Ctx, hosts: &[IpAddr], cfg: &ScanConfig) -> Vec<IpAddr> {
    let probe = ScanConfig {
        retries: 1,
        ..cfg.clone()
    };
    let d =
        portwarden_net::connect::scan_tcp(hosts, &[80, 443], &probe, Arc::new(|_, _| {}), ctx.stop);
    answered(ctx, hosts, &d)
}

/// The hosts that answered a discovery round, in the order given: an echo, an open port,
/// or a RST (counted, not listed: fewer filtered answers than the two probes).
fn answered(ctx: &Ctx, hosts: &[IpAddr], d: &portwarden_net::scan::ScanOutcome) -> Vec<IpAddr> {
    let mut up: BTreeSet<IpAddr> = d.echoed.iter().copied().collect();
    up.extend(
        d.ports
            .iter()
            .filter(|p| p.state == PortState::Open)
            .map(|p| p.addr),
    );
    for h in hosts {
        let silent = d
            .ports
            .iter()
            .filter(|p| p.addr == *h && p.state == PortState::Filtered)
            .count();
        if silent < 2 {
            up.insert(*h);
        }
    }
    let up: Vec<IpAddr> = hosts.iter().filter(|h| up.contains(h)).copied().collect();
    ctx.notes.verbose(&format!(
        "host discovery: {} of {} up (-Pn scans them all)",
        up.len(),
        hosts.len()
    ));
    up
}

/// Removes the RST-suppressing table when the scan ends, however it ends (a panic,
/// SIGINT, SIGTERM or SIGHUP included; SIGKILL leaves it, and the next scan removes it).
struct RstGuard(Option<u16>);

impl Drop for RstGuard {
    fn drop(&mut self) {
        if let Some(port) = self.0 {
            drop_scan_table(port);
        }
    }
}

fn drop_scan_table(port: u16) {
    let _ = portwarden_os::nft::apply(&format!(
        "table {t}\ndelete table {t}\n",
        t = portwarden_nft::scan_table(port)
    ));
}

/// Removes the tables of scans that are gone (killed): a table's port that can be bound
/// again is held by no scan.
fn drop_stale_scan_tables() {
    let Ok(tables) = portwarden_os::nft::tables() else {
        return;
    };
    for (family, name) in tables {
        let Some(port) = name
            .strip_prefix(portwarden_nft::SCAN_TABLE_PREFIX)
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        if family == "inet" && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            drop_scan_table(port);
        }
    }
}

/// Runs the SYN scan with the kernel's RSTs from its source port dropped for its
/// duration; `ctx.stop` (set by the caller's SIGINT handler) ends it cleanly.
fn syn_scan(
    ctx: &Ctx,
    syn: &portwarden_net::syn::SynScanner,
    hosts: &[IpAddr],
    ports: &[u16],
    cfg: &ScanConfig,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    suppress_rsts: bool,
) -> portwarden_net::scan::ScanOutcome {
    let sport = syn.source_port();
    drop_stale_scan_tables();
    let guard = RstGuard(if !suppress_rsts {
        None
    } else {
        match portwarden_os::nft::apply(&portwarden_nft::scan_rst_rule(sport)) {
            Ok(()) => Some(sport),
            Err(e) => {
                ctx.notes.verbose(&format!(
                    "the kernel's RSTs are not suppressed ({e}); targets see them"
                ));
                None
            }
        }
    });
    ctx.notes
        .verbose(&format!("SYN scan from source port {sport}"));
    let out = syn.run(hosts, ports, cfg, progress, ctx.stop);
    drop(guard);
    out
}

/// nmap's probe database for `-sV`: the file given, or the distribution's when installed;
/// `none` for the built-in probes only. A file that cannot be used is a warning, and the
/// built-in probes carry on alone.
fn probes_db(
    ctx: &Ctx,
    path: Option<&std::path::Path>,
) -> Option<Arc<portwarden_net::probedb::ProbeDb>> {
    use portwarden_net::probedb::ProbeDb;
    let path = match path {
        Some(p) if p.as_os_str() == "none" => return None,
        Some(p) => p.to_path_buf(),
        None => ProbeDb::default_path()?,
    };
    let loaded = crate::files::read_regular(&path, portwarden_net::probedb::MAX_DB_BYTES)
        .map_err(|e| format!("cannot read the probes database {}: {e}", path.display()))
        .and_then(|bytes| ProbeDb::from_bytes(&path, &bytes).map_err(|e| e.to_string()));
    match loaded {
        Ok(db) => {
            if let Some(first) = db.skipped.first() {
                ctx.notes.warn(&format!(
                    "{} line{} of the probes database skipped; the first: {first}",
                    db.skipped.len(),
                    if db.skipped.len() == 1 { "" } else { "s" }
                ));
                for line in db.skipped.iter().take(100) {
                    ctx.notes.verbose(&format!("skipped {line}"));
                }
            }
            let (probes, matches) = db.counts();
            ctx.notes.verbose(&format!(
                "probes database {}: {probes} probes, {matches} match lines",
                path.display()
            ));
            Some(Arc::new(db))
        }
        Err(e) => {
            ctx.notes.warn(&format!("{e}; using the built-in probes"));
            None
        }
    }
}

/// Service and TLS detection on open TCP ports: the likely probe for each port, all at
/// once, with short timeouts.
async fn detect(
    ctx: &Ctx,
    open: &[portwarden_net::scan::PortResult],
    found: &mut [ScannedPort],
    db: Option<Arc<portwarden_net::probedb::ProbeDb>>,
) {
    let catalog = Catalog::builtin();
    let jobs: Vec<(usize, SocketAddr, portwarden_net::ProbeKind)> = open
        .iter()
        .enumerate()
        .filter(|(_, p)| p.state == PortState::Open)
        // The database's `Exclude` (printers, which print what they are sent): nothing
        // is sent there, by either set of probes, as with nmap.
        .filter(|(_, p)| !db.as_ref().is_some_and(|db| db.excluded(p.port)))
        .map(|(i, p)| {
            let entry = Port::new(p.port).and_then(|port| catalog.by_port(port, Protocol::Tcp));
            let kind = portwarden_net::probe::kind_for(
                entry.map(|e| e.name.as_str()),
                entry.is_some_and(|e| e.tls == TlsStyle::Implicit),
            );
            (i, SocketAddr::new(p.addr, p.port), kind)
        })
        .collect();
    // Each port may take a dozen connections at once: bounded by the descriptor
    // limit, so a low limit slows detection instead of losing results.
    let per_port = 6 + portwarden_net::probedb::PER_PORT;
    let limit =
        (portwarden_net::scan::raise_nofile().saturating_sub(64) as usize / per_port).clamp(1, 512);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
    let results = {
        let mut set = tokio::task::JoinSet::new();
        for (i, addr, kind) in jobs {
            let gate = gate.clone();
            let db = db.clone();
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let t = portwarden_net::probe::PROBE_TIMEOUT;
                // The likely question for the port first; when it does not identify the
                // service (or the port is unknown), every question at once.
                let builtin = async {
                    let r = if kind == portwarden_net::ProbeKind::Banner {
                        portwarden_net::probe::identify(addr, t).await
                    } else {
                        let r = portwarden_net::probe(addr, kind, t).await;
                        if r.identified.is_some() || r.tls == portwarden_net::TlsVerdict::Required {
                            r
                        } else {
                            portwarden_net::probe::identify(addr, t).await
                        }
                    };
                    let (cert, https) = if r.tls == portwarden_net::TlsVerdict::Required {
                        portwarden_net::cert::inside_tls(addr, t * 2).await
                    } else {
                        (None, None)
                    };
                    // HTTP inside the TLS session: `https`, with its Server header.
                    let r = match https {
                        Some(head) => portwarden_net::ProbeResult {
                            identified: Some("https".into()),
                            banner: Some(portwarden_net::probe::sanitize(head.as_bytes())),
                            product: portwarden_net::fingerprint::http(&head),
                            ..r
                        },
                        None => r,
                    };
                    (r, cert)
                };
                // nmap's database at the same time, and again inside TLS where the port
                // turns out to require it.
                let plain = async {
                    match &db {
                        Some(db) => db.clone().identify(addr, false, t).await,
                        None => None,
                    }
                };
                let ((r, cert), plain) = tokio::join!(builtin, plain);
                let hit = match db {
                    Some(db) if r.tls == portwarden_net::TlsVerdict::Required => {
                        db.identify(addr, true, t).await.or(plain)
                    }
                    _ => plain,
                };
                // nmap's database names another service than the built-in probes did:
                // the TLS question is asked again in that service's own protocol
                // (`ssl/…` is a TLS tunnel).
                let mut tls = r.tls;
                if let Some(h) = hit.as_ref().filter(|h| !h.soft) {
                    let (name, ssl) = nmap_name(&h.service);
                    if r.identified
                        .as_deref()
                        .is_none_or(|o| !same_service(o, name))
                    {
                        use portwarden_net::{ProbeKind, TlsVerdict};
                        let k = portwarden_net::probe::kind_for(Some(name), false);
                        tls = if ssl {
                            TlsVerdict::Required
                        } else if matches!(k, ProbeKind::Banner | ProbeKind::Tls) {
                            if tls == TlsVerdict::Required {
                                tls
                            } else {
                                TlsVerdict::Unknown
                            }
                        } else {
                            portwarden_net::probe(addr, k, t).await.tls
                        };
                    }
                }
                (i, (r, cert, hit, tls))
            });
        }
        let mut out = BTreeMap::new();
        // A task that panicked loses its own port's result, not the others'.
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined {
                out.insert(i, r);
            }
        }
        out
    };
    for (i, (r, cert, hit, tls)) in results {
        let f = &mut found[i];
        if let Some(c) = cert {
            f.cert_subject = Some(c.subject);
            f.cert_names = c.names;
            f.cert_expires = Some(portwarden_core::time::utc(c.not_after));
        }
        if let Some(id) = r.identified {
            f.service = Some(id);
            f.method = "probed".into();
        } else if r.tls == portwarden_net::TlsVerdict::Required {
            f.service = Some(match f.service.as_deref() {
                Some("https") | None => "tls".into(),
                Some(other) => format!("{other} (tls)"),
            });
            f.method = "probed".into();
        } else if r.stalled {
            f.banner = Some("(silent)".into());
        }
        if f.banner.is_none() {
            f.banner = r.banner;
        }
        if let Some(p) = r.product {
            f.product = Some(p.product);
            f.version = p.version;
            f.extrainfo = p.extrainfo;
        }
        if let Some(h) = hit {
            ctx.notes.verbose(&format!(
                "{}: {} {} by nmap's database, probe {}, line {}",
                SocketAddr::new(f.addr, f.port),
                h.service,
                if h.soft { "soft-matched" } else { "matched" },
                h.probe,
                h.line
            ));
            merge_hit(f, h);
        }
        let tls = serde_json::to_value(tls)
            .ok()
            .and_then(|v| v.as_str().map(String::from));
        f.tls = tls.filter(|t| t != "unknown");
    }
    // Patterns are compiled when first needed: those PCRE2 refused never matched.
    let refused = db.map(|db| db.refused()).unwrap_or_default();
    if let Some(first) = refused.first() {
        ctx.notes.warn(&format!(
            "{} pattern{} of the probes database refused by PCRE2 (never matched); the first: {first}",
            refused.len(),
            if refused.len() == 1 { "" } else { "s" }
        ));
    }
}

/// What nmap's database says, over what the built-in probes found: the built-in name
/// stays where a built-in probe recognised the service (it also judged TLS), the
/// database's otherwise; a hard match's fields, and a soft match's that names a product,
/// are nmap's own.
fn merge_hit(f: &mut ScannedPort, h: portwarden_net::probedb::Hit) {
    let (name, _) = nmap_name(&h.service);
    let ours = f.service.as_deref().filter(|_| f.method == "probed");
    // A hard match names the service unless the built-in probes found the same one
    // (`https` for nmap's `http` in a tunnel); a soft one only where they found none.
    let take = match ours {
        None => true,
        Some(o) => !h.soft && !same_service(o, name),
    };
    if take {
        f.service = Some(name.to_string());
        f.method = "probed".into();
    }
    if f.banner.as_deref() == Some("(silent)") {
        f.banner = None;
    }
    // A soft match may still name the product (`PostgreSQL DB`, `9.6.0 or later`); a
    // hard match is nmap's verdict as it stands (rsync: no product, a protocol version).
    if h.soft && h.product.is_none() {
        return;
    }
    // Where nmap names the same product without a version, the built-in probe's version
    // stays (Redis's `INFO`).
    let version = match (&h.version, f.product == h.product) {
        (None, true) => f.version.take(),
        _ => h.version,
    };
    f.product = h.product;
    f.version = version;
    f.extrainfo = h.extrainfo;
    f.hostname = h.hostname;
    f.ostype = h.ostype;
    f.devicetype = h.devicetype;
    f.cpe = h.cpe;
}

/// nmap's service name without its `ssl/` tunnel prefix, and whether it had one.
fn nmap_name(service: &str) -> (&str, bool) {
    match service.strip_prefix("ssl/") {
        Some(n) => (n, true),
        None => (service, false),
    }
}

/// Whether a built-in name (`https`, `imap (tls)`, `tls`) is the service nmap names.
fn same_service(ours: &str, nmap: &str) -> bool {
    let ours = ours.strip_suffix(" (tls)").unwrap_or(ours);
    ours == nmap || matches!((ours, nmap), ("https", "http") | ("tls", "ssl"))
}

fn key(p: &ScannedPort) -> (IpAddr, u16, String) {
    (p.addr, p.port, p.protocol.clone())
}

/// Open ports added and removed since an earlier scan.
fn diff(old: &ScanDoc, new: &ScanDoc) -> Diff {
    let open = |d: &ScanDoc| -> BTreeMap<(IpAddr, u16, String), ScannedPort> {
        d.ports
            .iter()
            .filter(|p| p.state == "open")
            .map(|p| (key(p), p.clone()))
            .collect()
    };
    let (a, b) = (open(old), open(new));
    Diff {
        added: b
            .iter()
            .filter(|(k, _)| !a.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect(),
        removed: a
            .iter()
            .filter(|(k, _)| !b.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect(),
    }
}
