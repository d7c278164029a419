//! How `portwarden bench` reads on a terminal: the server's events as they happen, the
//! client's intervals as they end, then its summary (iperf3's layout).

use std::io::Write;
use std::net::SocketAddr;

use portwarden_api::bench::{BenchClientDoc, BenchStormDoc, Interval, Latency, Sum};
use portwarden_net::bench::server::ServerEvent;

use super::printer::Render;

/// Bits per second in the largest unit that keeps a number above one.
pub fn rate(bps: f64) -> String {
    match bps {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.2} Kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn line(s: &Sum, what: &str, extra: &str) -> String {
    format!(
        "{:>6.2}-{:<6.2} s  {:>10}  {:>14}  {what}{extra}",
        s.start,
        s.end,
        size(s.bytes),
        rate(s.bits_per_second)
    )
}

/// The server is listening.
pub fn listening(quiet: bool, addr: SocketAddr) {
    super::note(quiet, &format!("bench server listening on {addr}"));
}

/// One of the server's events, on stderr.
pub fn event(quiet: bool, e: &ServerEvent) {
    match e {
        ServerEvent::Started {
            peer,
            streams,
            direction,
        } => super::note(
            quiet,
            &format!("test from {peer}: {streams} stream(s), {direction}"),
        ),
        ServerEvent::Finished {
            peer,
            received,
            sent,
            seconds,
            error,
        } => {
            let way = |what: &str, n: u64| {
                format!(
                    ", {what} {} ({})",
                    size(n),
                    rate(n as f64 * 8.0 / seconds.max(1e-9))
                )
            };
            let mut msg = format!("test from {peer} ended after {seconds:.2} s");
            if *received > 0 || *sent == 0 {
                msg.push_str(&way("received", *received));
            }
            if *sent > 0 {
                msg.push_str(&way("sent", *sent));
            }
            match error {
                Some(why) => super::warn(quiet, &format!("{msg}; {why}")),
                None => super::note(quiet, &msg),
            }
        }
        ServerEvent::Refused { peer, why } => {
            super::warn(quiet, &format!("refused a test from {peer}: {why}"))
        }
    }
}

/// An interval as it ends, on stdout (not with --json).
pub fn interval(iv: &Interval) {
    let mut extra = String::new();
    if let Some(r) = iv.sum.retransmits {
        extra.push_str(&format!("  retr {r}"));
    }
    let cwnd: Vec<String> = iv
        .streams
        .iter()
        .filter_map(|s| s.snd_cwnd.map(size))
        .collect();
    if cwnd.len() == 1 {
        extra.push_str(&format!("  cwnd {}", cwnd[0]));
    }
    let mut text = line(
        &iv.sum,
        if iv.sum.sender { "sent" } else { "received" },
        &extra,
    );
    if let Some(r) = &iv.sum_bidir_reverse {
        text.push('\n');
        text.push_str(&line(r, "received (reverse)", ""));
    }
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

impl Render for BenchClientDoc {
    fn human(&self, _: u8) -> String {
        let e = &self.end;
        let mut s = format!(
            "{} stream(s) to {}:{}\n",
            self.start.test_start.num_streams,
            super::cell(&self.start.connecting_to.host),
            self.start.connecting_to.port
        );
        let retr = e
            .sum_sent
            .retransmits
            .map_or(String::new(), |r| format!("  retr {r}"));
        s.push_str(&line(&e.sum_sent, "sender", &retr));
        s.push('\n');
        s.push_str(&line(&e.sum_received, "receiver", ""));
        s.push('\n');
        if let (Some(a), Some(b)) = (&e.sum_sent_bidir_reverse, &e.sum_received_bidir_reverse) {
            s.push_str(&line(a, "sender (reverse)", ""));
            s.push('\n');
            s.push_str(&line(b, "receiver (reverse)", ""));
            s.push('\n');
        }
        if let (Some(j), Some(l), Some(p)) = (
            e.sum_received.jitter_ms,
            e.sum_received.lost_packets,
            e.sum_received.packets,
        ) {
            s.push_str(&format!(
                "UDP: jitter {j:.3} ms, lost {l}/{p} datagrams ({:.2} %), {} out of order\n",
                e.sum_received.lost_percent.unwrap_or(0.0),
                e.sum_received.out_of_order.unwrap_or(0)
            ));
        }
        let c = &e.cpu_utilization_percent;
        s.push_str(&format!(
            "CPU: here {:.1} % ({:.1} user, {:.1} system), server {:.1} %\n",
            c.host_total, c.host_user, c.host_system, c.remote_total
        ));
        let v = &self.verdict;
        if let (Some(l), Some(f)) = (v.link_bits_per_second, v.fraction_of_link) {
            s.push_str(&format!(
                "{:.0} % of the policy's {} link\n",
                f * 100.0,
                rate(l as f64)
            ));
        }
        if let Some(t) = v.threshold_bits_per_second {
            s.push_str(&format!(
                "{}: {} against --fail-below {}\n",
                if v.ok { "ok" } else { "BELOW" },
                rate(v.measured_bits_per_second),
                rate(t)
            ));
        }
        s
    }
}

fn us(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000 => format!("{:.1} ms", v as f64 / 1000.0),
        Some(v) => format!("{v} us"),
    }
}

fn latency(l: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.p999),
        us(l.max)
    )
}

impl Render for BenchStormDoc {
    fn human(&self, _: u8) -> String {
        let mut s = format!(
            "{} to {} ({}) in {} process(es)\n",
            self.mode,
            super::cell(&self.host),
            self.addr,
            self.processes
        );
        if let Some(c) = &self.churn {
            let lp = c.rate.map_or(String::from("closed loop"), |r| {
                format!("open loop at {r}/s")
            });
            s.push_str(&format!(
                "{} connections in {:.2} s: {:.0} conn/s, {} in flight, {lp}\n",
                c.completed, c.seconds, c.conn_per_second, c.concurrency
            ));
            s.push_str(&format!("latency  {}\n", latency(&c.latency_us)));
            if c.late > 0 {
                s.push_str(&format!("{} started late (every slot busy)\n", c.late));
            }
        }
        if let Some(h) = &self.hold {
            s.push_str(&format!(
                "{} of {} established in {:.2} s, held {:.1} s, {} closed by the server, {} released\n",
                h.established, h.requested, h.establish_seconds, h.held_seconds, h.closed_by_peer, h.released
            ));
            s.push_str(&format!("connect  {}\n", latency(&h.connect_us)));
        }
        let e = &self.errors;
        if e.total > 0 {
            let kinds = [
                ("refused", e.refused),
                ("reset", e.reset),
                ("timeout", e.timeout),
                ("source ports exhausted", e.addr_not_avail),
                ("out of descriptors", e.no_descriptors),
                ("closed early", e.closed_early),
                ("wrong answer", e.mismatch),
                ("other", e.other),
            ];
            let parts: Vec<String> = kinds
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            s.push_str(&format!("{} failed: {}\n", e.total, parts.join(", ")));
        }
        if let Some(m) = &self.server {
            s.push_str(&format!(
                "server {} (pid {}): {} KiB resident before, {} KiB during\n",
                super::cell(&m.command),
                m.pid,
                m.rss_kib_before,
                m.rss_kib_during
            ));
        }
        let v = &self.verdict;
        s.push_str(&format!(
            "{}: {}\n",
            if v.ok { "ok" } else { "FAILED" },
            super::cell(&v.reason)
        ));
        s
    }
}
