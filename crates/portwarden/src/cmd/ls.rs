//! `portwarden ls` and `portwarden who`: the socket inventory with owners.

use anyhow::{Context, bail};
use portwarden_core::Protocol;
use portwarden_core::facts::{Family, SocketFilter, SocketState, summarize};
use portwarden_os::{Query, Walk};

use crate::cli::{Global, LsArgs, WhoArgs};
use crate::{Status, output};

/// Turns the flags into a validated filter and the kernel query that serves it.
fn plan(a: &LsArgs) -> anyhow::Result<(SocketFilter, Query, bool)> {
    let mut f = SocketFilter::default();
    if a.tcp && !a.udp {
        f.protocols = vec![Protocol::Tcp];
    } else if a.udp && !a.tcp {
        f.protocols = vec![Protocol::Udp];
    }
    if a.ipv4 {
        f.families = vec![Family::Inet];
    } else if a.ipv6 {
        f.families = vec![Family::Inet6];
    }
    for s in &a.state {
        match SocketState::parse(s) {
            Some(st) => f.states.push(st),
            None => bail!(
                "unknown socket state `{s}`: use one of {}",
                SocketState::ALL
                    .map(|s| s.as_str().to_ascii_lowercase())
                    .join(", ")
            ),
        }
    }
    if a.listen {
        if f.states.is_empty() {
            f.states = vec![SocketState::Listen, SocketState::Unconn];
        } else {
            f.states.retain(|s| s.is_listening());
            if f.states.is_empty() {
                bail!("--listen with --state selects nothing: listeners are LISTEN or UNCONN");
            }
        }
    }
    if let Some(p) = &a.port {
        f.ports = Some(*p);
    }
    f.pid = a.pid;
    f.process = a.process.clone();
    let q = Query {
        protocols: if f.protocols.is_empty() {
            Protocol::ALL.to_vec()
        } else {
            f.protocols.clone()
        },
        families: if f.families.is_empty() {
            vec![Family::Inet, Family::Inet6]
        } else {
            f.families.clone()
        },
        states: (!f.states.is_empty()).then(|| f.states.clone()),
    };
    let owners = a.processes || f.needs_owners();
    Ok((f, q, owners))
}

pub fn ls(g: &Global, a: &LsArgs) -> anyhow::Result<Status> {
    let (filter, query, owners) = plan(a)?;
    let t0 = std::time::Instant::now();
    let mut inv = portwarden_os::sockets(&query).context("cannot read the socket table")?;
    output::verbose(
        g.verbose,
        &format!(
            "read {} sockets via {:?} in {} µs",
            inv.sockets.len(),
            inv.source,
            t0.elapsed().as_micros()
        ),
    );
    if owners {
        let t1 = std::time::Instant::now();
        portwarden_os::attach_owners(&mut inv, Walk::FirstOwner)
            .context("cannot read process descriptors")?;
        output::verbose(
            g.verbose,
            &format!("resolved owners in {} µs", t1.elapsed().as_micros()),
        );
    }
    inv.sockets.retain(|s| filter.matches(s));
    for w in &inv.warnings {
        output::warn(g.quiet, w);
    }
    if a.summary {
        let rows = summarize(&inv.sockets);
        if g.json {
            output::json(&rows)?;
        } else {
            output::port_summary(&rows, owners)?;
        }
    } else if g.json {
        output::json(&inv.sockets)?;
    } else {
        output::sockets(&inv.sockets, owners)?;
    }
    Ok(Status::Ok)
}

/// `PORT` (both protocols) or `PORT/PROTO`.
pub fn who(g: &Global, a: &WhoArgs) -> anyhow::Result<Status> {
    let (port, protocols) = (a.port.port, a.port.protocols.clone());
    let query = Query {
        protocols: protocols.clone(),
        ..Query::default()
    };
    let mut inv = portwarden_os::sockets(&query).context("cannot read the socket table")?;
    inv.sockets.retain(|s| s.local_port == port.get());
    if !inv.sockets.is_empty() {
        portwarden_os::attach_owners(&mut inv, Walk::AllOwners)
            .context("cannot read process descriptors")?;
    }
    for w in &inv.warnings {
        output::warn(g.quiet, w);
    }
    if g.json {
        output::json(&serde_json::json!({
            "port": port,
            "protocols": protocols,
            "sockets": inv.sockets,
        }))?;
    } else if inv.sockets.is_empty() {
        if !g.quiet {
            let p: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
            output::text(&format!("nothing holds port {port} ({})\n", p.join(", ")))?;
        }
    } else if !g.quiet {
        output::who(&inv.sockets)?;
    }
    Ok(if inv.sockets.is_empty() {
        Status::Negative
    } else {
        Status::Ok
    })
}
