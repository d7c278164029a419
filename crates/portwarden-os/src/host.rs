//! Further host facts for `check`: executable identities, interface addresses, listen
//! queue overflow counters and which firewall managers are active.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;

use portwarden_core::facts::{ExeIdentity, FirewallFacts, Interface};
use sha2::{Digest, Sha256};

/// Largest executable hashed; bigger ones get no digest rather than a slow check.
const MAX_HASH_BYTES: u64 = 256 << 20;

/// Hashes executables, each path once.
#[derive(Default)]
pub struct Identities {
    cache: HashMap<String, Option<String>>,
}

impl Identities {
    /// The identity of the process's executable (path, SHA-256, owner uid of the process).
    pub fn of(&mut self, pid: u32, exe: Option<&str>, uid: u32) -> Option<ExeIdentity> {
        let path = exe?.to_string();
        let sha256 = self
            .cache
            .entry(path.clone())
            .or_insert_with(|| hash_exe(pid))
            .clone();
        Some(ExeIdentity { path, sha256, uid })
    }
}

/// SHA-256 of `/proc/PID/exe` (the running image, even if the file was replaced).
fn hash_exe(pid: u32) -> Option<String> {
    let f = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    if f.metadata().ok()?.len() > MAX_HASH_BYTES {
        return None;
    }
    let mut h = Sha256::new();
    let mut r = std::io::BufReader::with_capacity(1 << 16, f);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Interfaces and their addresses (getifaddrs).
pub fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; entries stay valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and at least a sockaddr; we read the family, then
        // reinterpret as the matching sockaddr type.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sa.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        let entry = match out.iter_mut().position(|i| i.name == name) {
            Some(i) => &mut out[i],
            None => {
                out.push(Interface {
                    name: name.clone(),
                    addrs: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        if let Some(a) = addr {
            entry.addrs.push(a);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// `TcpExt: ListenOverflows` and `ListenDrops` from `/proc/net/netstat`.
pub fn listen_overflows() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse_netstat(&text)
}

/// Parses the TcpExt header/value line pair.
pub fn parse_netstat(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines();
    while let Some(h) = lines.next() {
        let v = lines.next()?;
        if !h.starts_with("TcpExt:") {
            continue;
        }
        let names: Vec<&str> = h.split_whitespace().collect();
        let vals: Vec<&str> = v.split_whitespace().collect();
        let get = |k: &str| {
            names
                .iter()
                .position(|n| *n == k)
                .and_then(|i| vals.get(i)?.parse().ok())
        };
        return Some((get("ListenOverflows")?, get("ListenDrops")?));
    }
    None
}

fn process_running(comm: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    && std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == comm)
            })
        })
        .unwrap_or(false)
}

/// Our nftables table and the other firewall managers on the host.
pub fn firewall() -> FirewallFacts {
    let table = std::process::Command::new("nft")
        .args(["-j", "list", "table", "inet", "portwarden"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()
        .map(|s| s.success());
    let ufw = std::fs::read_to_string("/etc/ufw/ufw.conf")
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "ENABLED=yes"));
    let mut managers = Vec::new();
    if process_running("firewalld") {
        managers.push("firewalld".to_string());
    }
    if ufw {
        managers.push("ufw".to_string());
    }
    if process_running("dockerd") {
        managers.push("docker".to_string());
    }
    FirewallFacts {
        our_table: table,
        managers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs_parse() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 15\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_netstat(t), Some((12, 15)));
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn loopback_interface_is_listed() {
        let i = interfaces();
        assert!(
            i.iter()
                .any(|i| i.name == "lo" && i.addrs.iter().any(|a| a.is_loopback()))
        );
    }

    #[test]
    fn our_own_executable_hashes() {
        let mut ids = Identities::default();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let id = ids.of(std::process::id(), exe.to_str(), 0).unwrap();
        assert_eq!(id.sha256.as_ref().map(String::len), Some(64));
    }
}
