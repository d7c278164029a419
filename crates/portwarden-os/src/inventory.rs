//! The socket inventory: every TCP and UDP socket of the host (IPv4 and IPv6) from netlink
//! sock_diag, with a `/proc/net` fallback, and owners attached on request.

use std::io;

use portwarden_core::Protocol;
use portwarden_core::facts::{Family, Socket, SocketState};

use crate::netlink::DiagSocket;
use crate::owners::{Walk, find_owners};
use crate::procnet;

/// Which sockets to ask the kernel for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Protocols to dump.
    pub protocols: Vec<Protocol>,
    /// Families to dump.
    pub families: Vec<Family>,
    /// States to keep; `None` for all. The kernel filters, so unwanted sockets are never
    /// copied out.
    pub states: Option<Vec<SocketState>>,
}

impl Default for Query {
    fn default() -> Query {
        Query {
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            families: vec![Family::Inet, Family::Inet6],
            states: None,
        }
    }
}

impl Query {
    fn kernel_mask(&self) -> u32 {
        match &self.states {
            None => u32::MAX,
            Some(states) => states
                .iter()
                .flat_map(|s| s.kernel_numbers())
                .fold(0u32, |m, &n| m | (1 << n)),
        }
    }

    fn keeps(&self, s: &Socket) -> bool {
        self.states.as_ref().is_none_or(|v| v.contains(&s.state))
    }
}

/// Where the socket list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// netlink sock_diag.
    Netlink,
    /// `/proc/net/*` text (fallback).
    ProcNet,
    /// Some tables from each.
    Mixed,
}

/// A snapshot of sockets.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The sockets.
    pub sockets: Vec<Socket>,
    /// How they were read.
    pub source: Source,
    /// Things the operator should know (fallbacks, unreadable processes).
    pub warnings: Vec<String>,
}

fn fallback_worthy(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPERM
                | libc::EACCES
                | libc::ENOENT
                | libc::EINVAL
                | libc::EPROTONOSUPPORT
                | libc::EAFNOSUPPORT
                | libc::EOPNOTSUPP
        )
    )
}

/// Reads the sockets the query asks for.
pub fn sockets(q: &Query) -> io::Result<Inventory> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut used_netlink = false;
    let mut used_proc = false;
    let mask = q.kernel_mask();
    // PORTWARDEN_FORCE_PROCNET=1 takes the fallback path on purpose (tests, and hosts
    // where netlink misbehaves).
    let forced = std::env::var_os("PORTWARDEN_FORCE_PROCNET").is_some_and(|v| v == "1");
    let opened = if forced {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    } else {
        DiagSocket::open()
    };
    let mut diag = match opened {
        Ok(d) => Some(d),
        Err(e) if fallback_worthy(&e) => {
            warnings.push(format!(
                "netlink sock_diag is refused ({e}): reading /proc/net instead, which is slower"
            ));
            None
        }
        Err(e) => return Err(e),
    };
    for &protocol in &q.protocols {
        for &family in &q.families {
            if let Some(d) = diag.as_mut() {
                let before = out.len();
                match d.dump(family, protocol, mask, &mut out) {
                    Ok(()) => {
                        used_netlink = true;
                        continue;
                    }
                    Err(e) if fallback_worthy(&e) => {
                        out.truncate(before);
                        warnings.push(format!(
                            "sock_diag has no {protocol} dump here ({e}; is the {protocol}_diag module loaded?): reading /proc/net instead"
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            match procnet::read(protocol, family) {
                Ok(v) => {
                    used_proc = true;
                    out.extend(v.into_iter().filter(|s| q.keeps(s)));
                }
                // IPv6 disabled: no table, no sockets.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    out.retain(|s| q.keeps(s));
    let source = match (used_netlink, used_proc) {
        (true, true) => Source::Mixed,
        (false, true) => Source::ProcNet,
        _ => Source::Netlink,
    };
    Ok(Inventory {
        sockets: out,
        source,
        warnings,
    })
}

/// Resolves the owners of every socket that has an inode. Sockets whose owner is not
/// found get an empty owner list: unknown, never an error.
pub fn attach_owners(inv: &mut Inventory, walk: Walk) -> io::Result<()> {
    let wanted: Vec<u64> = inv.sockets.iter().map(|s| s.inode).collect();
    let map = find_owners(&wanted, walk)?;
    let mut missing = 0usize;
    for s in &mut inv.sockets {
        let owners = map.by_inode.get(&s.inode).cloned().unwrap_or_default();
        if owners.is_empty() && s.inode != 0 {
            missing += 1;
        }
        s.owners = Some(owners);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if map.unreadable > 0 && missing > 0 {
        let how = if root {
            "ptrace access to them is denied even to root here (a security module, or a process of another user namespace)"
        } else {
            "run as root (or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH) to see them"
        };
        let (s, ps) = (
            plural(missing, "socket has", "sockets have"),
            plural(map.unreadable, "process", "processes"),
        );
        inv.warnings.push(format!(
            "{missing} {s} an unknown owner: the descriptors of {} {ps} could not be read; {how}",
            map.unreadable
        ));
    } else if missing > 0 {
        inv.warnings.push(format!(
            "{missing} {} no owner in this PID namespace (held by another namespace or the kernel)",
            plural(missing, "socket has", "sockets have")
        ));
    }
    Ok(())
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
