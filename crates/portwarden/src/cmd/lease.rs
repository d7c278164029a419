//! `alloc`, `renew`, `release`, `leases`, `reclaim` and `pools` (the use-cases are
//! `portwarden_ops::lease`).

use portwarden_ops::lease::{self, AllocReq};

use crate::Status;
use crate::cli::{AllocArgs, Global, PoolsArgs, PoolsCommand, ReclaimArgs, ReleaseArgs, RenewArgs};
use crate::output::lease::{alloc_header, alloc_row};
use crate::output::{self, Printer};

pub fn alloc(g: &Global, a: &AllocArgs) -> anyhow::Result<Status> {
    let req = AllocReq {
        service: a.service.clone(),
        pool: a.pool.clone(),
        port: a.port.and_then(portwarden_core::Port::new),
        count: a.count,
        ttl: a.ttl.map(|t| t.get()),
        owner: a.owner.clone().unwrap_or_else(super::user),
        seed: a.seed,
        bind_probe: !a.no_probe,
    };
    let out = Printer::stdout(g);
    // A row as each lease is granted (a killed `--count` run has printed exactly what it
    // got): the id is what `renew` and `release` take. With -q, the port alone.
    let mut first = true;
    let mut row = |l: &portwarden_api::lease::Lease| {
        let text = if g.json {
            String::new()
        } else if g.quiet {
            format!("{}\n", l.port)
        } else if std::mem::take(&mut first) {
            alloc_header() + &alloc_row(l)
        } else {
            alloc_row(l)
        };
        out.text(&text)
    };
    let d = lease::alloc(
        &super::ctx(g),
        g.policy.as_deref(),
        &super::state_dir(g),
        &req,
        &mut row,
    )?;
    if g.json {
        out.doc(&d)?;
    }
    match &d.refused {
        Some(why) => {
            output::refusal(why);
            Ok(Status::Negative)
        }
        None => Ok(Status::Ok),
    }
}

pub fn renew(g: &Global, a: &RenewArgs) -> anyhow::Result<Status> {
    let owner = a.owner.clone().unwrap_or_else(super::user);
    let ttl = a.ttl.map(|t| t.get());
    let d = lease::renew(
        &super::ctx(g),
        g.policy.as_deref(),
        &super::state_dir(g),
        a.id,
        ttl,
        &owner,
    )?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn release(g: &Global, a: &ReleaseArgs) -> anyhow::Result<Status> {
    let owner = a.owner.clone().unwrap_or_else(super::user);
    let d = lease::release(&super::ctx(g), &super::state_dir(g), a.id, &owner)?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn list(g: &Global) -> anyhow::Result<Status> {
    Printer::stdout(g).doc(&lease::list(&super::ctx(g), &super::state_dir(g))?)?;
    Ok(Status::Ok)
}

pub fn reclaim(g: &Global, a: &ReclaimArgs) -> anyhow::Result<Status> {
    let d = lease::reclaim(
        &super::ctx(g),
        g.policy.as_deref(),
        &super::state_dir(g),
        a.dry_run,
    )?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn pools(g: &Global, a: &PoolsArgs) -> anyhow::Result<Status> {
    let (ctx, policy, dir) = (super::ctx(g), g.policy.as_deref(), super::state_dir(g));
    let out = Printer::stdout(g);
    match &a.command {
        None => out.doc(&lease::pools(&ctx, policy, &dir)?)?,
        Some(PoolsCommand::Reserve { dry_run }) => {
            out.doc(&lease::reserve(&ctx, policy, &dir, *dry_run)?)?
        }
    }
    Ok(Status::Ok)
}
