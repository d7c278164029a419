//! `portwarden bench`: throughput tests over the iperf3 control protocol (so our server
//! takes `iperf3 -c` and our client tests against `iperf3 -s`), each stream on a thread
//! of its own.

pub mod client;
pub mod iperf;
pub mod server;
pub mod storm;
pub mod stream;
pub mod udp;

use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Applies a test's socket options to a stream: buffer sizes (`-w`), congestion control
/// (`-C`), `TCP_NODELAY`. Refused options are left at the kernel's default; the results
/// say which congestion control was used.
pub fn tune(s: &TcpStream, window: Option<u32>, congestion: Option<&str>, nodelay: bool) {
    let r = socket2::SockRef::from(s);
    if let Some(w) = window {
        let _ = r.set_send_buffer_size(w as usize);
        let _ = r.set_recv_buffer_size(w as usize);
    }
    if let Some(cc) = congestion {
        let _ = set_congestion(s, cc);
    }
    if nodelay {
        let _ = s.set_nodelay(true);
    }
}

/// Sets `TCP_CONGESTION`.
pub fn set_congestion(s: &TcpStream, cc: &str) -> std::io::Result<()> {
    // SAFETY: setsockopt with a buffer of the length given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether this kernel lets us use congestion control `cc` (tried on a fresh socket).
pub fn check_congestion(cc: &str) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // SAFETY: setsockopt with a buffer of the length given, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The congestion control a socket uses.
pub fn congestion(s: &TcpStream) -> Option<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    let b = &buf[..(len as usize).min(buf.len())];
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Some(String::from_utf8_lossy(&b[..end]).into_owned())
}
