//! `portwarden bench storm` (and its hidden workers).

use std::time::Duration;

use portwarden_net::bench::storm::{ChurnPlan, HoldPlan};
use portwarden_ops::storm::{self, Mode, StormReq};

use crate::Status;
use crate::cli::{BenchStormArgs, Global};
use crate::output::{self, Printer};

pub fn run(g: &Global, a: &BenchStormArgs) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    let (host, port) = storm::parse_target(&a.target)?;
    let send = storm::unescape(&a.send)?;
    let expect = match (&a.expect, a.echo) {
        (Some(e), _) => storm::unescape(e)?,
        (None, true) => send.clone(),
        (None, false) => Vec::new(),
    };
    anyhow::ensure!(
        !a.echo || !send.is_empty(),
        "--echo expects --send's payload back: give --send"
    );
    if let Some(r) = a.rate {
        anyhow::ensure!(
            r.is_finite() && r > 0.0 && r <= 10_000_000.0,
            "--rate {r}: new connections per second, over 0 and at most 10000000"
        );
    }
    let mode = match a.hold {
        Some(n) => Mode::Hold(HoldPlan {
            connections: n,
            window: a.window,
            hold_ms: a.hold_for.get().as_millis() as u64,
        }),
        None => Mode::Churn(ChurnPlan {
            concurrency: a.concurrency,
            rate: a.rate,
            count: a.count,
            duration_ms: a.count.is_none().then(|| a.time.get().as_millis() as u64),
            threads: a.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
        }),
    };
    let timeout = a.timeout.get();
    anyhow::ensure!(
        timeout >= Duration::from_millis(1),
        "--timeout is at least 1ms"
    );
    let req = StormReq {
        host,
        port,
        sources: a
            .sources
            .as_deref()
            .map(storm::parse_sources)
            .transpose()?
            .unwrap_or_default(),
        send,
        expect,
        timeout,
        mode,
        processes: a.processes,
    };
    let loaded = portwarden_ops::policy::load(&s.ctx, s.policy())?;
    let _guard = crate::signals::catch();
    let bar = output::Progress::new(g.quiet || g.json);
    let total = match &req.mode {
        Mode::Hold(p) => Some(p.connections),
        Mode::Churn(p) => p.count,
    };
    let t0 = std::time::Instant::now();
    let doc = storm::run(&s.ctx, &loaded.policy, &req, |t| match (total, &req.mode) {
        (Some(n), _) => bar.update(t.ok + t.failed, n),
        (None, Mode::Churn(p)) => bar.update(
            t0.elapsed().as_millis() as u64,
            p.duration_ms.unwrap_or(1).max(1),
        ),
        (None, Mode::Hold(_)) => {}
    })?;
    bar.finish();
    out.doc(&doc)?;
    Ok(if doc.verdict.ok {
        Status::Ok
    } else {
        Status::Negative
    })
}

/// `bench storm-worker`: a share of a storm, as `storm::run` starts it.
pub fn worker(g: &Global) -> anyhow::Result<Status> {
    let s = super::site(g);
    let _guard = crate::signals::catch();
    storm::worker(&s.ctx, std::io::stdin().lock(), std::io::stdout())?;
    Ok(Status::Ok)
}
