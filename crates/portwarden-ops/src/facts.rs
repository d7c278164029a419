//! Gathers the host facts `check` and `report` judge: listeners with owners and
//! identities, probes, interfaces, sysctls, overflow counters, firewall state, leases.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use portwarden_core::catalog::TlsStyle;
use portwarden_core::facts::SocketState;
use portwarden_core::hostcheck::{HostFacts, Listener, ProbeFact, catalog_for};
use portwarden_core::{Catalog, Policy, Protocol};
use portwarden_net::ProbeKind;
use portwarden_os::{Query, Walk};

use portwarden_net::probe::PROBE_TIMEOUT;

use crate::Ctx;

/// Where to connect for a listener: its own address, or loopback for a wildcard bind.
fn probe_addr(addr: IpAddr, port: u16) -> SocketAddr {
    let ip = match addr {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}

/// Gathers everything; warnings go to `ctx.notes`. The socket walk is blocking work,
/// the probes run on the caller's runtime.
pub async fn gather(
    ctx: &Ctx,
    policy: &Policy,
    leased: BTreeSet<(Protocol, u16)>,
) -> anyhow::Result<HostFacts> {
    let before = portwarden_os::host::listen_overflows();
    let mut inv = portwarden_os::sockets(&Query {
        states: Some(vec![SocketState::Listen, SocketState::Unconn]),
        ..Query::default()
    })
    .context("cannot read the socket table")?;
    // Unconnected UDP sockets bound to port 0 are not listeners.
    inv.sockets.retain(|s| s.local_port != 0);
    portwarden_os::attach_owners(&mut inv, Walk::AllOwners)
        .context("cannot read process descriptors")?;
    for w in &inv.warnings {
        ctx.notes.warn(w);
    }
    let mut ids = portwarden_os::host::Identities::default();
    let mut listeners: Vec<Listener> = inv
        .sockets
        .into_iter()
        .map(|socket| {
            let identities = socket
                .owners
                .iter()
                .flatten()
                .filter_map(|o| ids.of(o.pid, o.exe.as_deref(), o.uid))
                .collect();
            Listener {
                socket,
                identities,
                probe: None,
            }
        })
        .collect();

    // One probe per TCP port, all at once.
    let catalog = Catalog::builtin();
    let mut targets: Vec<(usize, SocketAddr, ProbeKind)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let s = &l.socket;
        if s.protocol != Protocol::Tcp || !seen.insert(s.local_port) {
            continue;
        }
        let entry = catalog_for(catalog, policy, l);
        let kind = portwarden_net::probe::kind_for(
            entry.map(|e| e.name.as_str()),
            entry.is_some_and(|e| e.tls == TlsStyle::Implicit),
        );
        targets.push((i, probe_addr(s.local_addr, s.local_port), kind));
    }
    let results = {
        let mut set = tokio::task::JoinSet::new();
        for (i, addr, kind) in targets {
            set.spawn(async move { (i, portwarden_net::probe(addr, kind, PROBE_TIMEOUT).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    };
    for (i, r) in results {
        let fact = ProbeFact {
            identified: r.identified,
            tls: r.tls,
            stalled: r.stalled,
            banner: r.banner,
        };
        let port = listeners[i].socket.local_port;
        for l in listeners
            .iter_mut()
            .filter(|l| l.socket.protocol == Protocol::Tcp && l.socket.local_port == port)
        {
            l.probe = Some(fact.clone());
        }
    }
    let after = portwarden_os::host::listen_overflows();
    Ok(HostFacts {
        listeners,
        interfaces: portwarden_os::host::interfaces(),
        sysctls: portwarden_os::sysctl::read_host(),
        overflows: before.zip(after),
        firewall: portwarden_os::host::firewall(),
        leased,
    })
}
