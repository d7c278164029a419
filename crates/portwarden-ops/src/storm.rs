//! `portwarden bench storm`: the net engine's churn or hold, spread over worker processes
//! when one process's descriptors are not enough (each worker is this executable, told
//! its share on stdin, reporting progress and its result as JSON lines on stdout), with
//! the local server's memory and a verdict against the policy's `max_conn`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use portwarden_api::API_VERSION;
use portwarden_api::bench::{
    BenchStormDoc, ChurnFigures, HoldFigures, Latency, ServerMemory, StormErrors, StormVerdict,
};
use portwarden_core::histogram::Histogram;
use portwarden_core::policy::{Placement, Policy};
use portwarden_net::bench::storm::{
    self, ChurnPlan, ChurnReport, Errors, HoldPlan, HoldReport, Phase, Progress, Target,
};
use serde::{Deserialize, Serialize};

use crate::Ctx;

/// Descriptors a process keeps for itself beyond its connections.
const RESERVE: u64 = 100;
/// The most worker processes a storm starts.
pub const MAX_PROCESSES: u32 = 64;

/// What a storm does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Mode {
    /// Connect, exchange, close, over and over.
    Churn(ChurnPlan),
    /// Open connections and keep them.
    Hold(HoldPlan),
}

impl Mode {
    /// Descriptors the storm needs at most, all processes together.
    fn descriptors(&self) -> u64 {
        match self {
            Mode::Churn(p) => u64::from(p.concurrency),
            Mode::Hold(p) => p.connections,
        }
    }

    /// Worker `i` of `n`'s share.
    fn share(&self, i: u32, n: u32) -> Mode {
        let part =
            |total: u64| total / u64::from(n) + u64::from(u64::from(i) < total % u64::from(n));
        match self {
            Mode::Churn(p) => Mode::Churn(ChurnPlan {
                concurrency: part(u64::from(p.concurrency)) as u32,
                rate: p.rate.map(|r| r / f64::from(n)),
                count: p.count.map(part),
                ..p.clone()
            }),
            Mode::Hold(p) => Mode::Hold(HoldPlan {
                connections: part(p.connections),
                ..p.clone()
            }),
        }
    }
}

/// A storm as asked.
#[derive(Debug, Clone)]
pub struct StormReq {
    /// The target as given.
    pub host: String,
    pub port: u16,
    pub sources: Vec<IpAddr>,
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
    pub timeout: Duration,
    pub mode: Mode,
    /// Worker processes (none: one, and a storm that needs more is refused saying how
    /// many).
    pub processes: Option<u32>,
}

/// A worker's share, on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    pub target: Target,
    pub mode: Mode,
}

/// What a worker says on stdout, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Progress { ok: u64, failed: u64, phase: u8 },
    Churn(ChurnReport),
    Hold(HoldReport),
    Error(String),
}

/// `HOST:PORT`, `[V6]:PORT` or `V6ADDR:PORT` split.
pub fn parse_target(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("`{s}`: give HOST:PORT ([::1]:PORT for IPv6)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("`{s}`: the port is 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "`{s}`: the host is missing");
    Ok((host.to_string(), port))
}

/// `A,B,C` or `FIRST-LAST` (IPv4, at most 256 addresses).
pub fn parse_sources(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let bad = |why: &str| anyhow::anyhow!("--sources {s}: {why}");
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
            a.trim()
                .parse()
                .map_err(|_| bad("a range is of IPv4 addresses"))?,
            b.trim()
                .parse()
                .map_err(|_| bad("a range is of IPv4 addresses"))?,
        );
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a >= 256 {
            return Err(bad("a range goes up, by at most 256 addresses"));
        }
        return Ok((a..=b).map(|n| IpAddr::V4(n.into())).collect());
    }
    s.split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| bad(&format!("`{a}` is not an address")))
        })
        .collect()
}

/// `\r`, `\n`, `\t`, `\0`, `\\`, `\xNN` turned into their bytes.
pub fn unescape(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        out.push(match it.next() {
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'x') => {
                let h: Vec<u8> = it.by_ref().take(2).collect();
                std::str::from_utf8(&h)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .with_context(|| format!("`{s}`: \\x takes two hex digits"))?
            }
            other => anyhow::bail!(
                "`{s}`: unknown escape \\{} (\\r \\n \\t \\0 \\\\ \\xNN)",
                other.map_or(String::new(), |c| (c as char).to_string())
            ),
        });
    }
    Ok(out)
}

fn rlimit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Raises this process's descriptor limit to its hard limit.
pub fn raise_nofile() {
    let (_, hard) = rlimit();
    let r = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
}

fn read_u64s(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The target's address: the host resolved.
pub fn resolve(req: &StormReq) -> anyhow::Result<SocketAddr> {
    crate::bench::resolve(&req.host, req.port)
}

/// Checks the storm against this machine's limits before anything runs, and says how
/// many processes it takes.
pub fn processes(req: &StormReq, dst: SocketAddr) -> anyhow::Result<u32> {
    let need = req.mode.descriptors();
    anyhow::ensure!(need > 0, "a storm needs at least one connection");
    let (_, hard) = rlimit();
    let per = hard.saturating_sub(RESERVE).max(1);
    let least = need.div_ceil(per);
    let what = match &req.mode {
        Mode::Hold(p) => format!("--hold {}", p.connections),
        Mode::Churn(p) => format!("--concurrency {}", p.concurrency),
    };
    anyhow::ensure!(
        least <= u64::from(MAX_PROCESSES),
        "{what} needs {least} processes of {per} descriptors each (this machine's limit is {hard} per process); at most {MAX_PROCESSES}"
    );
    let n = match req.processes {
        Some(n) => {
            anyhow::ensure!(
                (1..=MAX_PROCESSES).contains(&n),
                "--processes must be 1 to {MAX_PROCESSES}, found {n}"
            );
            anyhow::ensure!(
                u64::from(n) >= least,
                "{what} needs {least} processes of {per} descriptors each (this machine's limit is {hard} per process): give --processes {least}"
            );
            n
        }
        None => {
            anyhow::ensure!(
                least == 1,
                "{what} needs {least} processes of {per} descriptors each (this machine's limit is {hard} per process): give --processes {least}"
            );
            1
        }
    };
    // The whole machine's table: ours, and the server's ends if it is here.
    let nr = read_u64s("/proc/sys/fs/file-nr");
    if let (Some(used), Some(max)) = (nr.first(), nr.get(2)) {
        let ends = if is_local(dst.ip()) { 2 } else { 1 };
        let free = max.saturating_sub(*used);
        anyhow::ensure!(
            need * ends <= free,
            "{what} needs {} descriptors and the system has {free} free (fs.file-max {max})",
            need * ends
        );
    }
    // Source ports: one destination takes at most the ephemeral range from each source.
    if let Mode::Hold(p) = &req.mode {
        let range = read_u64s("/proc/sys/net/ipv4/ip_local_port_range");
        if let [lo, hi] = range[..] {
            let ports = hi.saturating_sub(lo) + 1;
            let sources = req.sources.len().max(1) as u64;
            let want = p.connections.div_ceil(ports);
            anyhow::ensure!(
                p.connections <= ports * sources,
                "{what} needs {want} source addresses: one source has {ports} ports towards {dst} (ip_local_port_range {lo}-{hi}); give --sources 127.0.0.1-127.0.0.{want} on loopback"
            );
        }
    }
    Ok(n)
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn target(req: &StormReq, dst: SocketAddr) -> Target {
    Target {
        dst,
        sources: req.sources.clone(),
        send: req.send.clone(),
        expect: req.expect.clone(),
        timeout_ms: req.timeout.as_millis() as u64,
    }
}

/// Where a run is, all processes together.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// Every process is holding (or done).
    pub holding: bool,
}

/// Runs a worker's share (the hidden `bench storm-worker`): the job read from `input`,
/// progress and the result written to `output` (its stdin and stdout).
pub fn worker(
    ctx: &Ctx,
    input: impl std::io::Read,
    output: impl Write + Send,
) -> anyhow::Result<()> {
    raise_nofile();
    let job: Job = serde_json::from_reader(input).context("a storm job")?;
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let out = Mutex::new(output);
    let say = |l: &Line| {
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = serde_json::to_writer(&mut *o, l);
        let _ = writeln!(o);
        let _ = o.flush();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                say(&Line::Progress {
                    ok: progress.ok.load(Ordering::Relaxed),
                    failed: progress.failed.load(Ordering::Relaxed),
                    phase: progress.phase.load(Ordering::Relaxed),
                });
                // Real time: progress ten times a second.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let line = match &job.mode {
            Mode::Churn(p) => storm::churn(&job.target, p, &progress, ctx.stop).map(Line::Churn),
            Mode::Hold(p) => storm::hold(&job.target, p, &progress, ctx.stop).map(Line::Hold),
        };
        done.store(true, Ordering::Relaxed);
        say(&line.unwrap_or_else(|e| Line::Error(e.to_string())));
    });
    Ok(())
}

enum Report {
    Churn(ChurnReport),
    Hold(HoldReport),
}

/// Runs the storm; `on_progress(tally)` about ten times a second.
pub fn run(
    ctx: &Ctx,
    policy: &Policy,
    req: &StormReq,
    mut on_progress: impl FnMut(Tally),
) -> anyhow::Result<BenchStormDoc> {
    let dst = resolve(req)?;
    let n = processes(req, dst)?;
    // A target that takes no connection at all is a wrong target (exit 2), not a result.
    std::net::TcpStream::connect_timeout(&dst, req.timeout)
        .with_context(|| format!("cannot reach {dst}"))?;
    let t = target(req, dst);
    let server = listener(dst);
    if let Some((pid, comm)) = &server {
        let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
        if let Some(l) = limit.filter(|l| *l < req.mode.descriptors()) {
            ctx.notes.warn(&format!(
                "the server, {comm} (pid {pid}), may open at most {l} descriptors: fewer than the {} connections asked for",
                req.mode.descriptors()
            ));
        }
    }
    let rss_before = server.as_ref().map(|s| rss_kib(s.0));
    let mut rss_during = None;
    let report = if n == 1 {
        raise_nofile();
        let progress = Progress::default();
        let stop = ctx.stop;
        std::thread::scope(|s| {
            let h = s.spawn(|| match &req.mode {
                Mode::Churn(p) => storm::churn(&t, p, &progress, stop).map(Report::Churn),
                Mode::Hold(p) => storm::hold(&t, p, &progress, stop).map(Report::Hold),
            });
            while !h.is_finished() {
                let holding = progress.phase() != Phase::Opening;
                if holding && rss_during.is_none() && matches!(req.mode, Mode::Hold(_)) {
                    rss_during = server.as_ref().map(|s| rss_kib(s.0));
                }
                on_progress(Tally {
                    ok: progress.ok.load(Ordering::Relaxed),
                    failed: progress.failed.load(Ordering::Relaxed),
                    holding,
                });
                // Real time: progress ten times a second.
                std::thread::sleep(Duration::from_millis(100));
            }
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the storm panicked")))
        })?
    } else {
        spread(ctx, req, &t, n, &server, &mut rss_during, &mut on_progress)?
    };
    if rss_during.is_none() {
        rss_during = server.as_ref().map(|s| rss_kib(s.0));
    }
    Ok(document(
        policy,
        req,
        dst,
        n,
        report,
        server.zip(rss_before.zip(rss_during)),
    ))
}

/// Runs the storm in `n` worker processes and adds up what they did.
fn spread(
    ctx: &Ctx,
    req: &StormReq,
    t: &Target,
    n: u32,
    server: &Option<(u32, String)>,
    rss_during: &mut Option<u64>,
    on_progress: &mut impl FnMut(Tally),
) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let tallies = Arc::new(Mutex::new(vec![(0u64, 0u64, 0u8); n as usize]));
    let results: Arc<Mutex<Vec<Result<Report, String>>>> = Arc::default();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for i in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "storm-worker"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches nothing else: a worker dies with
        // the process that started it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start storm worker {i}"))?;
        let job = Job {
            target: t.clone(),
            mode: req.mode.share(i, n),
        };
        if let Some(mut stdin) = child.stdin.take() {
            serde_json::to_writer(&mut stdin, &job)?;
        }
        let stdout = child.stdout.take().context("a worker's stdout")?;
        let (tallies, results) = (tallies.clone(), results.clone());
        readers.push(std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Progress { ok, failed, phase }) => {
                        tallies.lock().unwrap_or_else(|e| e.into_inner())[i as usize] =
                            (ok, failed, phase);
                    }
                    Ok(Line::Churn(r)) => last = Some(Ok(Report::Churn(r))),
                    Ok(Line::Hold(r)) => last = Some(Ok(Report::Hold(r))),
                    Ok(Line::Error(e)) => last = Some(Err(e)),
                    Err(e) => last = Some(Err(format!("worker {i} said {line:?}: {e}"))),
                }
            }
            let r = last.unwrap_or_else(|| Err(format!("worker {i} ended without a result")));
            results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        }));
        children.push(child);
    }
    let mut stopped = false;
    while readers.iter().any(|r| !r.is_finished()) {
        if ctx.stop.load(Ordering::Relaxed) && !stopped {
            for c in &children {
                // SAFETY: kill has no memory preconditions; the pid is our own child's.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
            stopped = true;
        }
        let ts = tallies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let holding = ts.iter().all(|t| t.2 >= Phase::Holding as u8);
        if holding && rss_during.is_none() && matches!(req.mode, Mode::Hold(_)) {
            *rss_during = server.as_ref().map(|s| rss_kib(s.0));
        }
        on_progress(Tally {
            ok: ts.iter().map(|t| t.0).sum(),
            failed: ts.iter().map(|t| t.1).sum(),
            holding,
        });
        // Real time: progress ten times a second.
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in readers {
        let _ = r.join();
    }
    for mut c in children {
        let _ = c.wait();
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out: Option<Report> = None;
    for r in results {
        let r = r.map_err(|e| anyhow::anyhow!("a storm worker failed: {e}"))?;
        out = Some(match (out, r) {
            (None, r) => r,
            (Some(Report::Churn(mut a)), Report::Churn(b)) => {
                a.merge(&b);
                Report::Churn(a)
            }
            (Some(Report::Hold(mut a)), Report::Hold(b)) => {
                a.merge(&b);
                Report::Hold(a)
            }
            _ => anyhow::bail!("storm workers ran different storms"),
        });
    }
    out.context("no storm worker reported")
}

/// The process listening on `dst`, when it is on this host: (pid, command).
fn listener(dst: SocketAddr) -> Option<(u32, String)> {
    if !is_local(dst.ip()) {
        return None;
    }
    let query = portwarden_os::Query {
        protocols: vec![portwarden_core::Protocol::Tcp],
        states: Some(vec![portwarden_core::facts::SocketState::Listen]),
        ..portwarden_os::Query::default()
    };
    let mut inv = portwarden_os::sockets(&query).ok()?;
    inv.sockets.retain(|s| {
        s.local_port == dst.port() && (s.local_addr == dst.ip() || s.local_addr.is_unspecified())
    });
    portwarden_os::attach_owners(&mut inv, portwarden_os::Walk::AllOwners).ok()?;
    let me = std::process::id();
    inv.sockets
        .iter()
        .flat_map(|s| s.owners.iter().flatten())
        .find(|o| o.pid != me)
        .map(|o| (o.pid, o.comm.clone()))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn latency(h: &Histogram) -> Latency {
    Latency {
        count: h.count(),
        min: h.min(),
        mean: h.mean(),
        p50: h.quantile(0.5),
        p90: h.quantile(0.9),
        p99: h.quantile(0.99),
        p999: h.quantile(0.999),
        max: h.max(),
    }
}

fn errors(e: &Errors) -> StormErrors {
    StormErrors {
        total: e.total(),
        refused: e.refused,
        reset: e.reset,
        timeout: e.timeout,
        addr_not_avail: e.addr_not_avail,
        no_descriptors: e.no_descriptors,
        closed_early: e.closed_early,
        mismatch: e.mismatch,
        other: e.other,
    }
}

/// The policy's service on `port` with its `max_conn`.
fn service_on(policy: &Policy, port: u16) -> Option<(String, Option<u32>)> {
    policy.services.iter().find_map(|s| match &s.placement {
        Placement::Fixed(ports)
            if ports.iter().any(|p| {
                p.protocol == portwarden_core::Protocol::Tcp
                    && (p.range.start().get()..=p.range.end().get()).contains(&port)
            }) =>
        {
            Some((s.name.clone(), s.max_conn))
        }
        _ => None,
    })
}

fn document(
    policy: &Policy,
    req: &StormReq,
    dst: SocketAddr,
    processes: u32,
    report: Report,
    server: Option<((u32, String), (u64, u64))>,
) -> BenchStormDoc {
    let svc = service_on(policy, dst.port());
    let (service, max_conn) = match &svc {
        Some((n, m)) => (Some(n.clone()), *m),
        None => (None, None),
    };
    let (mode, churn, hold, errs) = match report {
        Report::Churn(r) => {
            let Mode::Churn(p) = &req.mode else {
                unreachable!("a churn report is of a churn")
            };
            let fig = ChurnFigures {
                concurrency: p.concurrency,
                rate: p.rate,
                completed: r.completed,
                seconds: r.seconds,
                conn_per_second: r.completed as f64 / r.seconds.max(1e-9),
                late: r.late,
                latency_us: latency(&r.latency_us),
            };
            ("churn", Some(fig), None, r.errors)
        }
        Report::Hold(r) => {
            let Mode::Hold(p) = &req.mode else {
                unreachable!("a hold report is of a hold")
            };
            let fig = HoldFigures {
                requested: p.connections,
                attempted: r.attempted,
                established: r.established,
                establish_seconds: r.establish_seconds,
                held_seconds: r.held_seconds,
                closed_by_peer: r.closed_by_peer,
                released: r.released,
                connect_us: latency(&r.connect_us),
            };
            ("hold", None, Some(fig), r.errors)
        }
    };
    let failed = errs.total();
    let held = hold.as_ref().map(|h| h.established - h.closed_by_peer);
    let (ok, reason) = verdict(failed, held, service.as_deref(), max_conn);
    BenchStormDoc {
        api: API_VERSION,
        host: req.host.clone(),
        port: req.port,
        addr: dst.to_string(),
        sources: req.sources.iter().map(|s| s.to_string()).collect(),
        mode: mode.into(),
        processes,
        churn,
        hold,
        errors: errors(&errs),
        server: server.map(|((pid, command), (before, during))| ServerMemory {
            pid,
            command,
            rss_kib_before: before,
            rss_kib_during: during,
        }),
        verdict: StormVerdict {
            service,
            max_conn,
            failed,
            held,
            reason,
            ok,
        },
    }
}

/// Failures fail; a hold below the service's `max_conn` proves nothing about it.
fn verdict(
    failed: u64,
    held: Option<u64>,
    service: Option<&str>,
    max_conn: Option<u32>,
) -> (bool, String) {
    if failed > 0 {
        return (false, format!("{failed} connections failed"));
    }
    match (held, service, max_conn) {
        (Some(h), Some(s), Some(m)) if h >= u64::from(m) => {
            (true, format!("{s} held {h} connections, max_conn {m}"))
        }
        (Some(h), Some(s), Some(m)) => (
            false,
            format!("{s} held {h} connections, below its max_conn {m} (hold at least {m})"),
        ),
        (Some(h), _, _) => (true, format!("held {h} connections, none failed")),
        (None, _, _) => (true, "no connection failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_whole() {
        let m = Mode::Hold(HoldPlan {
            connections: 10_001,
            window: 256,
            hold_ms: 0,
        });
        let total: u64 = (0..3)
            .map(|i| match m.share(i, 3) {
                Mode::Hold(p) => p.connections,
                Mode::Churn(_) => unreachable!(),
            })
            .sum();
        assert_eq!(total, 10_001);
    }

    #[test]
    fn targets_sources_and_escapes() {
        assert_eq!(parse_target("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(
            parse_target("localhost:873").unwrap(),
            ("localhost".into(), 873)
        );
        assert!(parse_target("host").is_err() && parse_target("h:0").is_err());
        assert!(parse_target(":80").is_err() && parse_target("h:99999").is_err());
        assert_eq!(parse_sources("127.0.0.1-127.0.0.4").unwrap().len(), 4);
        assert_eq!(parse_sources("127.0.0.1,::1").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_sources("127.0.0.0-127.0.2.0").is_err());
        assert!(parse_sources("nope").is_err());
        assert_eq!(unescape(r"PING\r\n\x00\\").unwrap(), b"PING\r\n\0\\");
        assert!(unescape(r"\q").is_err() && unescape(r"\x4").is_err());
    }

    #[test]
    fn verdicts() {
        assert!(!verdict(1, Some(5), None, None).0);
        assert!(verdict(0, Some(100), Some("rsync"), Some(100)).0);
        let (ok, why) = verdict(0, Some(99), Some("rsync"), Some(100));
        assert!(!ok && why.contains("below its max_conn 100"), "{why}");
        assert!(verdict(0, None, Some("rsync"), Some(100)).0);
    }
}
