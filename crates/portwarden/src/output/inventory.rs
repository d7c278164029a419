//! How the inventory documents read on a terminal: `ls` like `ss`, `who` folded by
//! owner.

use std::fmt::Write as _;

use portwarden_api::inventory::{SocketsDoc, SummaryDoc, WhoDoc};
use portwarden_core::facts::{PortSummary, Socket, SocketState};

use super::printer::Render;
use super::{Table, cell};

fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    let p = if port == 0 {
        "*".to_string()
    } else {
        port.to_string()
    };
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{p}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
    }
}

fn owners_cell(s: &Socket) -> String {
    match s.owners.as_deref() {
        None | Some([]) => "-".to_string(),
        Some(o) => o
            .iter()
            .map(|o| format!("{}/{}", cell(&o.comm), o.pid))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The socket table, like `ss -tanu` (`-p` adds the process column).
fn sockets(socks: &[Socket], with_owners: bool) -> String {
    let locals: Vec<String> = socks
        .iter()
        .map(|s| endpoint(s.local_addr, s.local_port))
        .collect();
    let peers: Vec<String> = socks
        .iter()
        .map(|s| endpoint(s.remote_addr, s.remote_port))
        .collect();
    let wl = locals.iter().map(String::len).max().unwrap_or(0).max(5);
    let wp = peers.iter().map(String::len).max().unwrap_or(0).max(4);
    let mut w = String::with_capacity(64 * (socks.len() + 1));
    let _ = write!(
        w,
        "{:<5} {:<10} {:>6} {:>6} {:<wl$} {:<wp$}",
        "NETID", "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER"
    );
    if with_owners {
        w.push_str(" PROCESS");
    }
    w.push('\n');
    for (i, s) in socks.iter().enumerate() {
        let _ = write!(
            w,
            "{:<5} {:<10} {:>6} {:>6} {:<wl$} {:<wp$}",
            s.protocol.as_str(),
            s.state.as_str(),
            s.recv_q,
            s.send_q,
            locals[i],
            peers[i]
        );
        if with_owners {
            let _ = write!(w, " {}", owners_cell(s));
        }
        w.push('\n');
    }
    w
}

/// One row per listening port with its connections per state.
fn port_summary(rows: &[PortSummary], with_owners: bool) -> String {
    let mut t = Table::new(&[
        "PORT",
        "PROTO",
        "ADDRESSES",
        "BACKLOG",
        "ESTAB",
        "SYN-RECV",
        "TIME-WAIT",
        "CLOSE-WAIT",
        "OTHER",
        "PROCESS",
    ]);
    for r in rows {
        let count = |st: SocketState| r.states.get(&st).copied().unwrap_or(0);
        let named = [
            SocketState::Established,
            SocketState::SynRecv,
            SocketState::TimeWait,
            SocketState::CloseWait,
        ];
        let other: u32 = r
            .states
            .iter()
            .filter(|(k, _)| !named.contains(k))
            .map(|(_, v)| v)
            .sum();
        let backlog = if r.protocol == portwarden_core::Protocol::Tcp {
            format!("{}/{}", r.accept_queue, r.backlog)
        } else {
            "-".to_string()
        };
        let procs = if !with_owners || r.owners.is_empty() {
            "-".to_string()
        } else {
            r.owners
                .iter()
                .map(|(pid, c)| format!("{c}/{pid}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        t.row(vec![
            r.port.to_string(),
            r.protocol.to_string(),
            r.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            backlog,
            count(SocketState::Established).to_string(),
            count(SocketState::SynRecv).to_string(),
            count(SocketState::TimeWait).to_string(),
            count(SocketState::CloseWait).to_string(),
            other.to_string(),
            procs,
        ]);
    }
    t.render()
}

/// The holders of one port, one row per (protocol, state, local address, owner) with a
/// count, so thousands of accepted connections fold into one line.
fn who(socks: &[Socket]) -> String {
    use std::collections::BTreeMap;
    /// (protocol, state, local, pid, uid, comm, exe)
    type Key = (String, String, String, u32, String, String, String);
    let mut rows: BTreeMap<Key, u32> = BTreeMap::new();
    for s in socks {
        let local = endpoint(s.local_addr, s.local_port);
        let owners = s.owners.clone().unwrap_or_default();
        if owners.is_empty() {
            *rows
                .entry((
                    s.protocol.to_string(),
                    s.state.to_string(),
                    local,
                    0,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ))
                .or_default() += 1;
            continue;
        }
        for o in owners {
            *rows
                .entry((
                    s.protocol.to_string(),
                    s.state.to_string(),
                    local.clone(),
                    o.pid,
                    o.uid.to_string(),
                    o.comm.clone(),
                    o.exe.clone().unwrap_or_else(|| "-".into()),
                ))
                .or_default() += 1;
        }
    }
    let mut t = Table::new(&[
        "PROTO", "STATE", "LOCAL", "COUNT", "PID", "UID", "PROCESS", "EXE",
    ]);
    for ((proto, state, local, pid, uid, comm, exe), n) in rows {
        t.row(vec![
            proto,
            state,
            local,
            n.to_string(),
            if pid == 0 {
                "-".into()
            } else {
                pid.to_string()
            },
            uid,
            comm,
            exe,
        ]);
    }
    t.render()
}

impl Render for SocketsDoc {
    fn human(&self, _: u8) -> String {
        sockets(&self.sockets, self.owners)
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for SummaryDoc {
    fn human(&self, _: u8) -> String {
        port_summary(&self.ports, self.owners)
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for WhoDoc {
    fn human(&self, _: u8) -> String {
        if self.sockets.is_empty() {
            let p: Vec<&str> = self.protocols.iter().map(|p| p.as_str()).collect();
            return format!("nothing holds port {} ({})\n", self.port, p.join(", "));
        }
        who(&self.sockets)
    }
}
