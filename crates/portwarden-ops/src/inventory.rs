//! `ls` and `who`: the kernel's socket table (netlink, `/proc/net` as the fallback) with
//! owning processes, filtered.

use anyhow::{Context, bail};
use portwarden_api::API_VERSION;
use portwarden_api::inventory::{SocketsDoc, SummaryDoc, WhoDoc};
use portwarden_core::facts::{Family, SocketFilter, SocketState, summarize};
use portwarden_core::{Port, PortRange, Protocol};
use portwarden_os::{Query, Walk};

use crate::Ctx;

/// What `ls` is asked.
#[derive(Debug, Clone, Default)]
pub struct LsReq {
    pub tcp: bool,
    pub udp: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Listeners only (LISTEN, UNCONN).
    pub listen: bool,
    pub states: Vec<SocketState>,
    pub port: Option<PortRange>,
    pub pid: Option<u32>,
    /// A process name (comm).
    pub process: Option<String>,
    /// Resolve owning processes.
    pub processes: bool,
}

/// The filter, the kernel query that serves it, and whether owners are needed.
fn plan(a: &LsReq) -> anyhow::Result<(SocketFilter, Query, bool)> {
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
    f.states = a.states.clone();
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
    f.ports = a.port;
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

/// The matching sockets, with owners when asked or filtered on.
fn read(ctx: &Ctx, a: &LsReq) -> anyhow::Result<(Vec<portwarden_core::facts::Socket>, bool)> {
    let (filter, query, owners) = plan(a)?;
    let t0 = std::time::Instant::now();
    let mut inv = portwarden_os::sockets(&query).context("cannot read the socket table")?;
    ctx.notes.verbose(&format!(
        "read {} sockets via {:?} in {} µs",
        inv.sockets.len(),
        inv.source,
        t0.elapsed().as_micros()
    ));
    if owners {
        let t1 = std::time::Instant::now();
        portwarden_os::attach_owners(&mut inv, Walk::FirstOwner)
            .context("cannot read process descriptors")?;
        ctx.notes.verbose(&format!(
            "resolved owners in {} µs",
            t1.elapsed().as_micros()
        ));
    }
    inv.sockets.retain(|s| filter.matches(s));
    for w in &inv.warnings {
        ctx.notes.warn(w);
    }
    Ok((inv.sockets, owners))
}

/// `ls`.
pub fn ls(ctx: &Ctx, a: &LsReq) -> anyhow::Result<SocketsDoc> {
    let (sockets, owners) = read(ctx, a)?;
    Ok(SocketsDoc {
        api: API_VERSION,
        owners,
        sockets,
    })
}

/// `ls --summary`.
pub fn summary(ctx: &Ctx, a: &LsReq) -> anyhow::Result<SummaryDoc> {
    let (sockets, owners) = read(ctx, a)?;
    Ok(SummaryDoc {
        api: API_VERSION,
        owners,
        ports: summarize(&sockets),
    })
}

/// `who`: every socket on `port` (of `protocols`) with all its owning processes.
pub fn who(ctx: &Ctx, port: Port, protocols: &[Protocol]) -> anyhow::Result<WhoDoc> {
    let query = Query {
        protocols: protocols.to_vec(),
        ..Query::default()
    };
    let mut inv = portwarden_os::sockets(&query).context("cannot read the socket table")?;
    inv.sockets.retain(|s| s.local_port == port.get());
    if !inv.sockets.is_empty() {
        portwarden_os::attach_owners(&mut inv, Walk::AllOwners)
            .context("cannot read process descriptors")?;
    }
    for w in &inv.warnings {
        ctx.notes.warn(w);
    }
    Ok(WhoDoc {
        api: API_VERSION,
        port: port.get(),
        protocols: protocols.to_vec(),
        sockets: inv.sockets,
    })
}
