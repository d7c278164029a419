//! `portwarden balance` and `portwarden balance status`.

use portwarden_ops::balance::{self, Control, RunReq};

use crate::Status;
use crate::cli::{BalanceArgs, BalanceCommand, Global};
use crate::output::Printer;

pub fn run(g: &Global, a: &BalanceArgs) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    if let Some(BalanceCommand::Status) = a.command {
        let d = balance::status(&s.ctx, &s.dir)?;
        out.doc(&d)?;
        let serving = d.running && d.groups.iter().all(|g| g.backends.iter().any(|b| b.up));
        return Ok(if serving {
            Status::Ok
        } else {
            Status::Negative
        });
    }
    let req = RunReq {
        groups: a.groups.clone(),
        workers: a.workers,
        worker_index: a.worker_index,
        copy: a.copy,
    };
    let rt = super::runtime()?;
    let doc = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                let c = tokio::select! {
                    _ = term.recv() => Control::Stop,
                    _ = int.recv() => Control::Stop,
                    _ = hup.recv() => Control::Reload,
                };
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        balance::run(&s.ctx, &s.dir, s.policy(), &req, rx).await
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    out.doc(&doc?)?;
    Ok(Status::Ok)
}
