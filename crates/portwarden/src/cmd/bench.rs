//! `portwarden bench server` and `portwarden bench client`.

use std::time::Duration;

use portwarden_net::bench::client::ClientOptions;
use portwarden_net::bench::server::ServerOptions;
use portwarden_ops::bench::{self, ClientReq, ServerReq};

use crate::Status;
use crate::cli::{BenchClientArgs, BenchCommand, BenchServerArgs, Global};
use crate::output::{self, Printer};

pub fn run(g: &Global, c: &BenchCommand) -> anyhow::Result<Status> {
    match c {
        BenchCommand::Server(a) => server(g, a),
        BenchCommand::Client(a) => client(g, a),
        BenchCommand::Storm(a) => super::storm::run(g, a),
        BenchCommand::StormWorker => super::storm::worker(g),
    }
}

fn server(g: &Global, a: &BenchServerArgs) -> anyhow::Result<Status> {
    let s = super::site(g);
    let req = ServerReq {
        bind: std::net::SocketAddr::new(a.bind, a.port),
        opts: ServerOptions {
            max_tests: a.max_tests as usize,
            max_duration: a.max_duration.get(),
            max_bytes: a.max_bytes.map(|b| b.0),
            idle_timeout: a.idle_timeout.get(),
            one_off: a.one_off,
        },
    };
    let _guard = crate::signals::catch();
    let quiet = g.quiet;
    bench::server(
        &s.ctx,
        &req,
        move |e| output::bench::event(quiet, e),
        |addr| output::bench::listening(quiet, addr),
    )?;
    Ok(Status::Ok)
}

fn client(g: &Global, a: &BenchClientArgs) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    anyhow::ensure!(
        a.interval >= 0.0 && a.interval <= 3600.0,
        "-i {}: seconds from 0 (none) to 3600",
        a.interval
    );
    let transfer = portwarden_ops::policy::load(&s.ctx, s.policy())?
        .policy
        .transfer;
    let sat = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let req = ClientReq {
        opts: ClientOptions {
            parallel: a.parallel,
            duration: Duration::from_secs(u64::from(a.time)),
            bytes: a.bytes.map(|b| b.0),
            reverse: a.reverse,
            bidir: a.bidir,
            zerocopy: a.zerocopy,
            window: a.window.map(|w| sat(w.0)),
            len: a
                .length
                .map_or(if a.udp { 1460 } else { 128 << 10 }, |l| sat(l.0)),
            udp: a.udp,
            rate: a.bitrate,
            congestion: a.congestion.clone(),
            interval: Duration::from_secs_f64(a.interval),
            nodelay: a.no_delay,
            ..ClientOptions::default()
        },
        host: a.host.clone(),
        port: a.port,
        transfer,
        fail_below: a.fail_below,
    };
    let live = !out.json() && !g.quiet;
    let doc = bench::client(&s.ctx, &req, |iv| {
        if live {
            output::bench::interval(iv);
        }
    })?;
    out.doc(&doc)?;
    Ok(if doc.verdict.ok {
        Status::Ok
    } else {
        Status::Negative
    })
}
