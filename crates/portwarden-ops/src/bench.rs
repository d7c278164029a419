//! `portwarden bench server` and `bench client`: the net engine's test, as a document in
//! iperf3's `-J` shape, with a verdict against the policy's `[transfer]` link.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use portwarden_api::API_VERSION;
use portwarden_api::bench::{
    BenchClientDoc, ConnectingTo, Cpu, End, EndStream, Interval, Start, StreamFigures, Sum,
    TestStart, Verdict,
};
use portwarden_core::policy::Transfer;
use portwarden_net::bench::client::{self, ClientError, ClientOptions, Outcome};
use portwarden_net::bench::server::{Server, ServerEvent, ServerOptions};

use crate::Ctx;

/// Where a client's verdict fails the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailBelow {
    /// A fraction of the policy's `[transfer] bandwidth`.
    Fraction(f64),
    /// Bits per second.
    Rate(u64),
}

/// A client run.
#[derive(Debug, Clone)]
pub struct ClientReq {
    /// The test (its `server` is set from `host` and `port`).
    pub opts: ClientOptions,
    /// The host name or address as given (shown in `start.connecting_to`).
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The policy's link, if it has `[transfer]`.
    pub transfer: Option<Transfer>,
    /// Exit 1 below this.
    pub fail_below: Option<FailBelow>,
}

/// The server's address: `host` resolved (the first address; IPv4 first).
pub fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

fn super_header() -> u32 {
    portwarden_net::bench::udp::HEADER as u32
}

/// Checks a request before anything runs (exit 2 on a bad one).
pub fn check_request(req: &ClientReq) -> anyhow::Result<()> {
    let o = &req.opts;
    let iv = o.interval.as_secs_f64();
    anyhow::ensure!(iv <= 3600.0, "-i {iv}: seconds from 0 (none) to 3600");
    anyhow::ensure!(
        (1..=16 << 20).contains(&o.len),
        "-l {}: from 1 byte to 16 MiB",
        o.len
    );
    if let Some(w) = o.window {
        anyhow::ensure!(w >= 1024, "-w {w}: from 1 KiB to 4 GiB");
    }
    anyhow::ensure!(o.bytes != Some(0), "-n 0: a test moves at least one byte");
    if o.udp {
        anyhow::ensure!(
            (super_header()..=65_507).contains(&o.len),
            "-l {}: a UDP datagram is {} to 65507 bytes",
            o.len,
            super_header()
        );
        if let (Some(r), Some(t)) = (o.rate, req.transfer) {
            let link = t.bandwidth.bits_per_sec();
            let total = r.saturating_mul(u64::from(o.parallel));
            anyhow::ensure!(
                total <= link,
                "-b {r} x {} streams is above the policy's [transfer] bandwidth ({link} bit/s): UDP would only measure the drops",
                o.parallel
            );
        }
    } else {
        anyhow::ensure!(o.rate.is_none(), "-b is for UDP tests (-u)");
    }
    if let Some(cc) = &req.opts.congestion {
        portwarden_net::bench::check_congestion(cc).map_err(|e| {
            let avail =
                std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                    .unwrap_or_default();
            anyhow::anyhow!(
                "-C {cc}: {e} (this kernel offers: {}; root may load others)",
                avail.trim()
            )
        })?;
    }
    if let Some(FailBelow::Fraction(f)) = req.fail_below {
        anyhow::ensure!(
            req.transfer.is_some(),
            "--fail-below {f} is a fraction of the policy's [transfer] bandwidth, and the policy has no [transfer]; give a rate instead (--fail-below 5Gbit)"
        );
    }
    Ok(())
}

/// Runs the test; `on_interval` sees each interval's document as it ends.
pub fn client(
    _ctx: &Ctx,
    req: &ClientReq,
    mut on_interval: impl FnMut(&Interval),
) -> anyhow::Result<BenchClientDoc> {
    check_request(req)?;
    let mut opts = req.opts.clone();
    opts.server = resolve(&req.host, req.port)?;
    let o = &opts;
    let bidir = o.bidir;
    let mut intervals = Vec::new();
    let outcome = client::run(o, |iv| {
        let d = interval_doc(iv, bidir);
        on_interval(&d);
        intervals.push(d);
    })
    .map_err(|e| match e {
        ClientError::Connect { .. } => anyhow::anyhow!("{e}"),
        e => anyhow::anyhow!("the test against {} failed: {e}", o.server),
    })?;
    Ok(document(req, o, &outcome, intervals))
}

fn bps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    }
}

fn sum(streams: &[&StreamFigures], sender: bool) -> Sum {
    let start = streams.iter().map(|s| s.start).fold(f64::MAX, f64::min);
    let end = streams.iter().map(|s| s.end).fold(0.0, f64::max);
    let start = if start == f64::MAX { 0.0 } else { start };
    let bytes = streams.iter().map(|s| s.bytes).sum();
    let retr: Vec<i64> = streams.iter().filter_map(|s| s.retransmits).collect();
    Sum {
        start,
        end,
        seconds: end - start,
        bytes,
        bits_per_second: bps(bytes, end - start),
        retransmits: (!retr.is_empty()).then(|| retr.iter().filter(|r| **r >= 0).sum()),
        sender,
        jitter_ms: None,
        lost_packets: None,
        packets: None,
        lost_percent: None,
        out_of_order: None,
    }
}

/// The receiver's UDP figures over `streams`, added to `s`.
fn with_udp(mut s: Sum, streams: &[&client::StreamTotal]) -> Sum {
    let u: Vec<client::UdpTotal> = streams.iter().filter_map(|t| t.udp).collect();
    if u.is_empty() {
        return s;
    }
    let packets: u64 = u.iter().map(|u| u.packets).sum();
    let lost: i64 = u.iter().map(|u| u.lost).sum();
    s.jitter_ms = Some(1000.0 * u.iter().map(|u| u.jitter).sum::<f64>() / u.len() as f64);
    s.lost_packets = Some(lost);
    s.packets = Some(packets);
    s.lost_percent = Some(if packets > 0 {
        100.0 * lost as f64 / packets as f64
    } else {
        0.0
    });
    s.out_of_order = Some(u.iter().map(|u| u.out_of_order).sum());
    s
}

fn interval_doc(iv: &client::Interval, bidir: bool) -> Interval {
    let secs = iv.end - iv.start;
    let streams: Vec<StreamFigures> = iv
        .streams
        .iter()
        .map(|s| StreamFigures {
            socket: s.id,
            start: iv.start,
            end: iv.end,
            seconds: secs,
            bytes: s.bytes,
            bits_per_second: bps(s.bytes, secs),
            retransmits: s.retransmits.map(|r| r as i64),
            snd_cwnd: s.info.map(|i| i.snd_cwnd),
            rtt: s.info.map(|i| i.rtt_us),
            rttvar: s.info.map(|i| i.rttvar_us),
            max_snd_cwnd: None,
            max_rtt: None,
            min_rtt: None,
            mean_rtt: None,
            sender: s.sender,
        })
        .collect();
    // Bidir: `sum` is client → server (our sending streams), the other the reverse.
    let (fwd, rev): (Vec<&StreamFigures>, Vec<&StreamFigures>) = if bidir {
        streams.iter().partition(|s| s.sender)
    } else {
        (streams.iter().collect(), Vec::new())
    };
    let sender = fwd.first().is_some_and(|s| s.sender);
    Interval {
        sum: sum(&fwd, sender),
        sum_bidir_reverse: bidir.then(|| sum(&rev, false)),
        streams,
    }
}

fn document(
    req: &ClientReq,
    opts: &ClientOptions,
    o: &Outcome,
    intervals: Vec<Interval>,
) -> BenchClientDoc {
    let side = |t: &client::StreamTotal, sending: bool| {
        let (bytes, secs) = if sending {
            (t.sent, t.sender_seconds)
        } else {
            (t.received, t.receiver_seconds)
        };
        let ours = sending == t.client_sends;
        StreamFigures {
            socket: t.id,
            start: 0.0,
            end: secs,
            seconds: secs,
            bytes,
            bits_per_second: bps(bytes, secs),
            retransmits: (sending && !opts.udp).then_some(t.retransmits),
            snd_cwnd: None,
            rtt: None,
            rttvar: None,
            max_snd_cwnd: (sending && ours).then_some(t.max_snd_cwnd),
            max_rtt: (sending && ours).then(|| t.rtt_us.map(|r| r.1)).flatten(),
            min_rtt: (sending && ours).then(|| t.rtt_us.map(|r| r.0)).flatten(),
            mean_rtt: (sending && ours).then(|| t.rtt_us.map(|r| r.2)).flatten(),
            sender: t.client_sends,
        }
    };
    let streams: Vec<EndStream> = o
        .streams
        .iter()
        .map(|t| EndStream {
            sender: side(t, true),
            receiver: side(t, false),
        })
        .collect();
    // The test's direction: the client's sending streams, or (reversed) the server's.
    let forward = |e: &&EndStream| {
        if opts.bidir { e.sender.sender } else { true }
    };
    let fwd: Vec<&EndStream> = streams.iter().filter(forward).collect();
    let rev: Vec<&EndStream> = streams.iter().filter(|e| !forward(e)).collect();
    let sums = |es: &[&EndStream]| {
        let s: Vec<&StreamFigures> = es.iter().map(|e| &e.sender).collect();
        let r: Vec<&StreamFigures> = es.iter().map(|e| &e.receiver).collect();
        let sender = es.first().is_some_and(|e| e.sender.sender);
        let mut received = sum(&r, sender);
        received.retransmits = None;
        (sum(&s, sender), received)
    };
    let (sum_sent, sum_received) = sums(&fwd);
    let fwd_totals: Vec<&client::StreamTotal> = o
        .streams
        .iter()
        .filter(|t| !opts.bidir || t.client_sends)
        .collect();
    let sum_received = with_udp(sum_received, &fwd_totals);
    let mut sum_sent = sum_sent;
    if opts.udp {
        sum_sent.packets = Some(
            fwd_totals
                .iter()
                .filter_map(|t| t.udp)
                .map(|u| u.sent_packets)
                .sum(),
        );
    }
    let reverse = opts.bidir.then(|| sums(&rev));
    let measured = match &reverse {
        Some((_, r)) => sum_received.bits_per_second.min(r.bits_per_second),
        None => sum_received.bits_per_second,
    };
    let link = req.transfer.map(|t| t.bandwidth.bits_per_sec());
    let threshold = match req.fail_below {
        Some(FailBelow::Rate(r)) => Some(r as f64),
        Some(FailBelow::Fraction(f)) => link.map(|l| f * l as f64),
        None => None,
    };
    let (ccl, ccr) = o.congestion.clone();
    let client_sends = o.streams.iter().any(|t| t.client_sends);
    BenchClientDoc {
        api: API_VERSION,
        start: Start {
            version: format!("portwarden {}", env!("CARGO_PKG_VERSION")),
            connecting_to: ConnectingTo {
                host: req.host.clone(),
                port: opts.server.port(),
            },
            cookie: o.cookie.clone(),
            test_start: TestStart {
                protocol: if opts.udp { "UDP" } else { "TCP" }.into(),
                num_streams: opts.parallel,
                blksize: opts.len,
                omit: 0,
                duration: if opts.bytes.is_some() {
                    0
                } else {
                    opts.duration.as_secs()
                },
                bytes: opts.bytes.unwrap_or(0),
                blocks: 0,
                reverse: u8::from(opts.reverse && !opts.bidir),
                bidir: u8::from(opts.bidir),
                tos: 0,
            },
        },
        intervals,
        end: End {
            streams,
            sum: opts.udp.then(|| sum_received.clone()),
            sum_sent,
            sum_received,
            sum_sent_bidir_reverse: reverse.as_ref().map(|r| r.0.clone()),
            sum_received_bidir_reverse: reverse.map(|r| r.1),
            cpu_utilization_percent: Cpu {
                host_total: o.cpu_local.0,
                host_user: o.cpu_local.1,
                host_system: o.cpu_local.2,
                remote_total: o.cpu_remote.0,
                remote_user: o.cpu_remote.1,
                remote_system: o.cpu_remote.2,
            },
            sender_tcp_congestion: if client_sends {
                ccl.clone()
            } else {
                ccr.clone()
            },
            receiver_tcp_congestion: if client_sends { ccr } else { ccl },
        },
        verdict: Verdict {
            measured_bits_per_second: measured,
            link_bits_per_second: link,
            fraction_of_link: link.map(|l| measured / l as f64),
            threshold_bits_per_second: threshold,
            ok: threshold.is_none_or(|t| measured >= t),
        },
    }
}

/// A server to run.
#[derive(Debug, Clone)]
pub struct ServerReq {
    /// Where it listens.
    pub bind: SocketAddr,
    /// Its limits.
    pub opts: ServerOptions,
}

/// Serves until `ctx.stop` is set (or, one-off, one test ended); each event goes to
/// `on_event` as it happens. Returns the number of tests that ran.
pub fn server(
    ctx: &Ctx,
    req: &ServerReq,
    on_event: impl Fn(&ServerEvent) + Send + Sync + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<u64> {
    let s = Server::bind(req.bind, req.opts.clone())
        .with_context(|| format!("cannot listen on {}", req.bind))?;
    on_ready(s.local_addr()?);
    let stop = s.stop_flag();
    let flag = ctx.stop;
    let watcher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                if flag.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::SeqCst);
                }
                // Real time: the signal handler's flag, looked at five times a second.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    });
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    let r = s.run(move |e| {
        if matches!(e, ServerEvent::Finished { .. }) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        on_event(&e);
    });
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    r.context("the server failed")?;
    Ok(count.load(Ordering::Relaxed))
}
