//! Port health: one socket dump, counted per managed port (the policy's fixed ports and
//! the store's leases): listening, established connections, accept queue and backlog.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context as _;
use portwarden_api::API_VERSION;
use portwarden_api::health::{PortHealth, PortsDoc};
use portwarden_core::Protocol;
use portwarden_core::facts::SocketState;

use crate::Ctx;

/// Fixed ranges longer than this are not sampled port by port.
const RANGE_SAMPLED: u32 = 64;

/// Samples every managed port now.
pub fn sample(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<PortsDoc> {
    let loaded = crate::policy::load(ctx, None)?;
    let leases = match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => s.leases()?,
        None => Vec::new(),
    };
    // (protocol, port) → (service, source), the policy's first.
    let mut managed: BTreeMap<(Protocol, u16), (String, &'static str)> = BTreeMap::new();
    for svc in &loaded.policy.services {
        for spec in svc.fixed_ports() {
            if spec.range.len() > RANGE_SAMPLED {
                continue;
            }
            for p in spec.range.start().get()..=spec.range.end().get() {
                managed
                    .entry((spec.protocol, p))
                    .or_insert((svc.name.clone(), "service"));
            }
        }
    }
    for l in &leases {
        managed
            .entry((l.protocol, l.port.get()))
            .or_insert((l.service.clone(), "lease"));
    }
    let inv = portwarden_os::sockets(&portwarden_os::Query {
        states: Some(vec![
            SocketState::Listen,
            SocketState::Unconn,
            SocketState::Established,
        ]),
        ..portwarden_os::Query::default()
    })
    .context("cannot read the socket table")?;
    #[derive(Default)]
    struct Seen {
        listening: bool,
        established: u64,
        queue: u64,
        backlog: u64,
    }
    let mut seen: HashMap<(Protocol, u16), Seen> = HashMap::new();
    for s in &inv.sockets {
        let key = (s.protocol, s.local_port);
        if !managed.contains_key(&key) {
            continue;
        }
        let e = seen.entry(key).or_default();
        match s.state {
            SocketState::Listen | SocketState::Unconn => {
                e.listening = true;
                if s.state == SocketState::Listen {
                    e.queue += u64::from(s.recv_q);
                    e.backlog += u64::from(s.send_q);
                }
            }
            _ => e.established += 1,
        }
    }
    let ports = managed
        .into_iter()
        .map(|((protocol, port), (service, source))| {
            let s = seen.remove(&(protocol, port)).unwrap_or_default();
            PortHealth {
                service,
                source: source.into(),
                protocol: protocol.to_string(),
                port,
                listening: s.listening,
                established: s.established,
                accept_queue: s.queue,
                backlog: s.backlog,
            }
        })
        .collect();
    Ok(PortsDoc {
        api: API_VERSION,
        at: ctx.clock.now(),
        ports,
    })
}
