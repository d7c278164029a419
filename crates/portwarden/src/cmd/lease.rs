//! `alloc`, `renew`, `release`, `leases`, `reclaim` and `pools` (the use-cases are
//! `portwarden_ops::lease`).

use portwarden_ops::lease::{self, AllocReq};
use portwarden_os::identity::user;

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
        owner: a.owner.clone().unwrap_or_else(user),
        seed: a.seed,
        bind_probe: !a.no_probe,
    };
    let (s, out) = (super::site(g), Printer::stdout(g));
    // A row as each lease is granted (a killed `--count` run has printed exactly what it
    // got): the id is what `renew` and `release` take. With -q, the port alone.
    let mut first = true;
    let mut row = |l: &portwarden_api::lease::Lease| match (g.json, g.quiet) {
        (true, _) => Ok(()),
        (_, true) => out.text(&format!("{}\n", l.port)),
        _ if std::mem::take(&mut first) => out.text(&(alloc_header() + &alloc_row(l))),
        _ => out.text(&alloc_row(l)),
    };
    let d = super::block_on(lease::alloc(&s.ctx, s.policy(), &s.dir, &req, &mut row))?;
    if g.json {
        out.doc(&d)?;
    }
    let Some(why) = &d.refused else {
        return Ok(Status::Ok);
    };
    output::refusal(why);
    Ok(Status::Negative)
}

pub fn renew(g: &Global, a: &RenewArgs) -> anyhow::Result<Status> {
    let (s, owner) = (super::site(g), a.owner.clone().unwrap_or_else(user));
    let ttl = a.ttl.map(|t| t.get());
    let d = super::block_on(lease::renew(&s.ctx, s.policy(), &s.dir, a.id, ttl, &owner))?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn release(g: &Global, a: &ReleaseArgs) -> anyhow::Result<Status> {
    let (s, owner) = (super::site(g), a.owner.clone().unwrap_or_else(user));
    let d = super::block_on(lease::release(&s.ctx, &s.dir, a.id, &owner))?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn list(g: &Global) -> anyhow::Result<Status> {
    let s = super::site(g);
    Printer::stdout(g).doc(&super::block_on(lease::list(&s.ctx, &s.dir))?)?;
    Ok(Status::Ok)
}

pub fn reclaim(g: &Global, a: &ReclaimArgs) -> anyhow::Result<Status> {
    let s = super::site(g);
    let d = super::block_on(lease::reclaim(&s.ctx, s.policy(), &s.dir, a.dry_run))?;
    Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn pools(g: &Global, a: &PoolsArgs) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    match &a.command {
        None => out.doc(&super::block_on(lease::pools(&s.ctx, s.policy(), &s.dir))?)?,
        Some(PoolsCommand::Reserve { dry_run }) => {
            out.doc(&lease::reserve(&s.ctx, s.policy(), &s.dir, *dry_run)?)?
        }
    }
    Ok(Status::Ok)
}
