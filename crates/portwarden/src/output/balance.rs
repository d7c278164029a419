//! How the balancer's documents read on a terminal.

use portwarden_api::balance::{BalanceRunDoc, BalanceStatusDoc};
use portwarden_core::balance::GroupStatus;

use super::Table;
use super::printer::Render;

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn groups(gs: &[GroupStatus]) -> String {
    let mut s = String::new();
    for g in gs {
        s.push_str(&super::cell(&format!(
            "{} {}/{} {}: accepted {}, active {}, refused by source {} (rate {}), no backend {}, queued {} (timed out {}), redispatched {}, idle-closed {}, bad PROXY headers {}, local errors {}",
            g.name, g.listen, g.protocol, g.algorithm, g.accepted, g.active, g.refused_source_conn,
            g.refused_source_rate, g.no_backend, g.queued, g.queue_timeouts, g.redispatched, g.idle_closed,
            g.bad_proxy_header, g.local_errors
        )));
        s.push('\n');
        let mut t = Table::new(&[
            "BACKEND",
            "STATE",
            "ACTIVE",
            "TOTAL",
            "IN",
            "OUT",
            "FAILED",
            "CHECK",
            "LAST ERROR",
        ]);
        for b in &g.backends {
            t.row(vec![
                format!("{}{}", b.addr, if b.backup { " (backup)" } else { "" }),
                if b.up { "up" } else { "down" }.into(),
                b.active.to_string(),
                b.total.to_string(),
                bytes(b.bytes_in),
                bytes(b.bytes_out),
                format!("{}+{}", b.failed_connects, b.failed_checks),
                b.check_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
                b.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        s.push_str(&t.render());
        s.push('\n');
    }
    s
}

impl Render for BalanceStatusDoc {
    fn human(&self, _: u8) -> String {
        if self.workers.is_empty() {
            return "no balancer is running (no status files)\n".into();
        }
        let mut s = String::new();
        for w in &self.workers {
            s.push_str(&super::cell(&format!(
                "worker {} pid {}: {}",
                w.index,
                w.pid,
                if w.alive {
                    "running"
                } else {
                    "not running (stale status)"
                }
            )));
            s.push('\n');
        }
        if !self.running {
            s.push_str("no balancer is running\n");
            return s;
        }
        s.push('\n');
        s.push_str(&groups(&self.groups));
        s
    }
}

impl Render for BalanceRunDoc {
    fn human(&self, _: u8) -> String {
        format!(
            "balancer stopped after {} reload{}\n\n{}",
            self.reloads,
            if self.reloads == 1 { "" } else { "s" },
            groups(&self.groups)
        )
    }
}
