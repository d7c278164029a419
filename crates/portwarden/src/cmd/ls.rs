//! `portwarden ls` and `portwarden who` (the use-cases are `portwarden_ops::inventory`).

use portwarden_ops::inventory::{self, LsReq};

use crate::Status;
use crate::cli::{Global, LsArgs, WhoArgs};
use crate::output::Printer;

pub fn ls(g: &Global, a: &LsArgs) -> anyhow::Result<Status> {
    let req = LsReq {
        tcp: a.tcp,
        udp: a.udp,
        ipv4: a.ipv4,
        ipv6: a.ipv6,
        listen: a.listen,
        states: a.state.clone(),
        port: a.port,
        pid: a.pid,
        process: a.process.clone(),
        processes: a.processes,
    };
    let (ctx, out) = (super::ctx(g), Printer::stdout(g));
    if a.summary {
        out.doc(&inventory::summary(&ctx, &req)?)?;
    } else {
        out.doc(&inventory::ls(&ctx, &req)?)?;
    }
    Ok(Status::Ok)
}

/// `PORT` (both protocols) or `PORT/PROTO`: exit 1 when nothing holds it.
pub fn who(g: &Global, a: &WhoArgs) -> anyhow::Result<Status> {
    let d = inventory::who(&super::ctx(g), a.port.port, &a.port.protocols)?;
    Printer::stdout(g).doc(&d)?;
    Ok(if d.sockets.is_empty() {
        Status::Negative
    } else {
        Status::Ok
    })
}
