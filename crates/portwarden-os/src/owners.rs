//! Socket inode → owning processes, from `/proc/*/fd`. Walks processes in parallel and,
//! when asked, stops as soon as every wanted inode has an owner.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use portwarden_core::facts::Owner;

/// How far to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Stop once each wanted inode has one owner (fast; `ls -p`).
    FirstOwner,
    /// Read every process, to list every holder of each socket (`who`).
    AllOwners,
}

/// The result of an owner walk.
#[derive(Debug, Default)]
pub struct OwnerMap {
    /// Owners by socket inode.
    pub by_inode: HashMap<u64, Vec<Owner>>,
    /// Processes whose descriptors we were not allowed to read.
    pub unreadable: usize,
    /// Processes read.
    pub scanned: usize,
}

/// A socket inode from a `/proc/PID/fd/N` link text: `socket:[12345]`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(b"socket:[")?;
    let digits = rest.strip_suffix(b"]")?;
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Numeric entries of `/proc`, ascending.
fn pids() -> io::Result<Vec<u32>> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Reads the socket descriptors of one process, calling `hit(fd, inode)` for each.
/// Returns `Err` with the OS error when the fd directory cannot be opened.
fn each_socket_fd(pid: u32, mut hit: impl FnMut(u32, u64) -> bool) -> io::Result<()> {
    let path = format!("/proc/{pid}/fd\0");
    // SAFETY: `path` is NUL-terminated; the descriptor is closed by closedir below.
    let dfd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Fast path: on Linux 6.2+ the size of /proc/PID/fd is the number of open
    // descriptors, so they can be read by number without listing the directory (procfs
    // builds a dentry per entry when listing). Sparse tables fall back to the listing.
    // SAFETY: zeroed stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dfd` is valid; `st` is writable.
    let count = if unsafe { libc::fstat(dfd, &mut st) } == 0 {
        st.st_size.max(0) as u64
    } else {
        0
    };
    if count > 0 {
        match by_number(dfd, count, &mut hit) {
            Walked::Done => {
                // SAFETY: `dfd` is ours and closed once.
                unsafe { libc::close(dfd) };
                return Ok(());
            }
            Walked::Denied(e) => {
                // SAFETY: as above.
                unsafe { libc::close(dfd) };
                return Err(e);
            }
            Walked::Sparse => {} // list the directory instead
        }
    }
    // SAFETY: `dfd` is a valid directory descriptor; fdopendir takes ownership of it.
    let dir = unsafe { libc::fdopendir(dfd) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(dfd) };
        return Err(e);
    }
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `dir` is a valid DIR* until closedir.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes.first().is_none_or(|b| !b.is_ascii_digit()) {
            continue;
        }
        // SAFETY: `dfd` stays valid while `dir` is open; `buf` is writable for its length.
        let n = unsafe { libc::readlinkat(dfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::PermissionDenied {
                // The directory lists, but links may not be read (ptrace access denied):
                // the whole process is unreadable.
                // SAFETY: `dir` came from fdopendir and is closed once.
                unsafe { libc::closedir(dir) };
                return Err(e);
            }
            continue;
        }
        if let Some(inode) = socket_inode(&buf[..n as usize]) {
            let fd = std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if !hit(fd, inode) {
                break;
            }
        }
    }
    // SAFETY: `dir` came from fdopendir and is closed once.
    unsafe { libc::closedir(dir) };
    Ok(())
}

enum Walked {
    Done,
    Denied(io::Error),
    Sparse,
}

/// Reads descriptors 0, 1, 2, … until `count` were found (or `hit` says stop).
fn by_number(dfd: libc::c_int, count: u64, hit: &mut impl FnMut(u32, u64) -> bool) -> Walked {
    let mut found = 0u64;
    let limit = count.saturating_mul(4) + 1024;
    let mut name = [0u8; 16];
    let mut buf = [0u8; 64];
    let mut fd: u64 = 0;
    while found < count {
        if fd > limit {
            return Walked::Sparse;
        }
        // Decimal digits of `fd`, NUL-terminated.
        let mut digits = [0u8; 12];
        let mut n = fd;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            name[i] = digits[len - 1 - i];
        }
        name[len] = 0;
        // SAFETY: `name` is NUL-terminated; `buf` is writable for its length.
        let r = unsafe {
            libc::readlinkat(
                dfd,
                name.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if r > 0 {
            found += 1;
            if let Some(inode) = socket_inode(&buf[..r as usize]) {
                if !hit(fd as u32, inode) {
                    return Walked::Done;
                }
            }
        } else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::PermissionDenied {
                return Walked::Denied(e);
            }
        }
        fd += 1;
    }
    Walked::Done
}

/// Facts about one process, read only for processes that own a wanted socket.
fn describe(pid: u32, fd: u32) -> Owner {
    let base = format!("/proc/{pid}");
    let comm = std::fs::read_to_string(format!("{base}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let exe = std::fs::read_link(format!("{base}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(format!("{base}/cmdline")).ok().map(|b| {
        b.split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let uid = std::fs::read_to_string(format!("{base}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next().and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX);
    Owner {
        pid,
        fd,
        comm,
        exe,
        cmdline: cmdline.filter(|c| !c.is_empty()),
        uid,
    }
}

/// Finds the processes holding the given socket inodes.
pub fn find_owners(wanted: &[u64], walk: Walk) -> io::Result<OwnerMap> {
    let mut sorted: Vec<u64> = wanted.iter().copied().filter(|&i| i != 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return Ok(OwnerMap::default());
    }
    let pids = pids()?;
    let found: Vec<AtomicBool> = sorted.iter().map(|_| AtomicBool::new(false)).collect();
    let remaining = AtomicUsize::new(sorted.len());
    let next = AtomicUsize::new(0);
    let unreadable = AtomicUsize::new(0);
    let scanned = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);

    let hits: Vec<(u64, u32, u32)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut local = Vec::new();
                    loop {
                        if walk == Walk::FirstOwner && remaining.load(Ordering::Relaxed) == 0 {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&pid) = pids.get(i) else { break };
                        let r = each_socket_fd(pid, |fd, inode| {
                            if let Ok(k) = sorted.binary_search(&inode) {
                                local.push((inode, pid, fd));
                                if !found[k].swap(true, Ordering::Relaxed)
                                    && remaining.fetch_sub(1, Ordering::Relaxed) == 1
                                    && walk == Walk::FirstOwner
                                {
                                    return false;
                                }
                            }
                            true
                        });
                        match r {
                            Ok(()) => {
                                scanned.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                                unreadable.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {} // the process exited meanwhile
                        }
                    }
                    local
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });

    let mut described: HashMap<u32, Owner> = HashMap::new();
    let mut by_inode: HashMap<u64, Vec<Owner>> = HashMap::new();
    for (inode, pid, fd) in hits {
        let base = described
            .entry(pid)
            .or_insert_with(|| describe(pid, fd))
            .clone();
        by_inode
            .entry(inode)
            .or_default()
            .push(Owner { fd, ..base });
    }
    for v in by_inode.values_mut() {
        v.sort();
        v.dedup_by_key(|o| (o.pid, o.fd));
    }
    Ok(OwnerMap {
        by_inode,
        unreadable: unreadable.into_inner(),
        scanned: scanned.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
    }

    #[test]
    fn a_sparse_descriptor_table_falls_back_to_listing() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Park the socket far beyond the by-number scan's reach.
        let high = 9000;
        // SAFETY: dup2 onto an unused descriptor number of this test process.
        assert_eq!(unsafe { libc::dup2(l.as_raw_fd(), high) }, high);
        let mut seen = Vec::new();
        each_socket_fd(std::process::id(), |fd, _| {
            seen.push(fd);
            true
        })
        .unwrap();
        // SAFETY: closing the descriptor this test created.
        unsafe { libc::close(high) };
        assert!(seen.contains(&(high as u32)), "{seen:?}");
        assert!(seen.contains(&(l.as_raw_fd() as u32)));
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let socks = crate::inventory::sockets(&crate::inventory::Query::default())
            .unwrap()
            .sockets;
        let me = socks
            .iter()
            .find(|s| s.local_port == port && s.state.is_listening())
            .expect("our listener is in the dump");
        let map = find_owners(&[me.inode], Walk::FirstOwner).unwrap();
        let owners = &map.by_inode[&me.inode];
        assert_eq!(owners[0].pid, std::process::id());
        assert!(owners[0].exe.is_some());
    }
}
