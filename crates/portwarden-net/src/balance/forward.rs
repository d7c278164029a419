//! Moving a proxied connection's bytes: `splice(2)` socket → pipe → socket in each
//! direction (no copy through user space), or a 256 KiB buffer where splice is refused.
//! Pipes and buffers are taken from a pool only while bytes flow, so an idle connection
//! holds its two sockets and nothing else (10,000 idle connections are 20,000 descriptors,
//! not 60,000).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The size a pipe is raised to (`F_SETPIPE_SZ`; the kernel's default is 64 KiB).
pub const PIPE_SIZE: i32 = 1 << 20;
/// A splice this large is part of a bulk transfer.
const BULK: usize = 64 * 1024;
/// The copy fallback's buffer.
pub const COPY_BUF: usize = 256 * 1024;
/// Idle pipes (and buffers) kept for reuse; more are closed (freed).
const POOL_MAX: usize = 256;

/// A pipe: its read and write ends.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are ours alone.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per splice; refused (a user's pipe quota) is harmless.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { r, w })
    }
}

static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static BUFS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());
static SMALL_BUFS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// The buffer small messages are copied through in splice mode: a read that fills it
/// starts splicing (a bulk transfer), a splice burst smaller than it goes back to copying
/// (HAProxy's splice-auto does the like): for a 32-byte echo, recv and send are cheaper
/// than two splices and a pipe.
const SMALL_BUF: usize = 16 * 1024;

fn take_pipe() -> io::Result<Pipe> {
    let p = PIPES.lock().map(|mut v| v.pop()).unwrap_or(None);
    match p {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

fn put_pipe(p: Pipe) {
    if let Ok(mut v) = PIPES.lock()
        && v.len() < POOL_MAX
    {
        v.push(p);
    }
}

fn take_buf(size: usize) -> Box<[u8]> {
    let pool = if size == SMALL_BUF {
        &SMALL_BUFS
    } else {
        &BUFS
    };
    pool.lock()
        .map(|mut v| v.pop())
        .unwrap_or(None)
        .unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
}

fn put_buf(b: Box<[u8]>) {
    let pool = if b.len() == SMALL_BUF {
        &SMALL_BUFS
    } else {
        &BUFS
    };
    if let Ok(mut v) = pool.lock()
        && v.len() < POOL_MAX
    {
        v.push(b);
    }
}

/// Pipes held idle in the pool now (for tests: a finished transfer gives its pipe back).
pub fn pooled_pipes() -> usize {
    PIPES.lock().map_or(0, |v| v.len())
}

fn splice(from: RawFd, to: RawFd, len: usize, more: bool) -> io::Result<usize> {
    let flags =
        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: splice between two descriptors we hold, no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How a connection's bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `splice(2)` through a pipe, falling back to copying when the kernel refuses.
    Splice,
    /// Through a user-space buffer.
    Copy,
}

/// The monotonic milliseconds activity is stamped with.
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity as of now.
    pub fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.epoch.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

/// Moves bytes from `from` to `to` until `from` ends (then half-closes `to`: the other
/// direction goes on) or either fails. Counts what it moved into `moved`. `ended` is
/// shared by the two directions: the one that ends last leaves the FIN to `close`.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mode: Mode,
    moved: &AtomicU64,
    act: &Activity,
    ended: &AtomicBool,
) -> io::Result<()> {
    let mut mode = mode;
    // Splice mode: copying small bursts, splicing once a read fills the small buffer.
    let mut bulk = false;
    loop {
        from.readable().await?;
        let eof = match mode {
            Mode::Splice if bulk => match splice_burst(from, to, moved, act).await {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    mode = Mode::Copy;
                    continue;
                }
                Ok((eof, total)) => {
                    bulk = total >= SMALL_BUF;
                    eof
                }
                Err(e) => return Err(e),
            },
            Mode::Splice => {
                let (eof, full) = copy_burst(from, to, moved, act, SMALL_BUF).await?;
                bulk = full;
                eof
            }
            Mode::Copy => copy_burst(from, to, moved, act, COPY_BUF).await?.0,
        };
        if eof {
            // The other direction goes on: the peer sees our FIN after every byte. If it
            // has ended already, both sockets are closed next, and the close sends the FIN
            // (every byte from `to` was read, so it is not a reset): a syscall saved.
            if !ended.swap(true, Ordering::Relaxed) {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            return Ok(());
        }
    }
}

/// Splices while `from` has bytes; returns whether it reached the end, and how much it
/// moved. The pipe is taken for the burst only and is empty when given back.
async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    moved: &AtomicU64,
    act: &Activity,
) -> io::Result<(bool, usize)> {
    let pipe = take_pipe()?;
    let mut total = 0;
    let r = async {
        loop {
            let n = match from.try_io(Interest::READABLE, || {
                splice(
                    from.as_raw_fd(),
                    pipe.w.as_raw_fd(),
                    PIPE_SIZE as usize,
                    false,
                )
            }) {
                Ok(0) => return Ok((true, total)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, total)),
                Err(e) => return Err(e),
            };
            total += n;
            // A bulk burst (a full 64 KiB or more): more follows, so the kernel may fill
            // whole segments (SPLICE_F_MORE, as MSG_MORE); a small one goes out at once.
            let more = n >= BULK;
            let mut left = n;
            while left > 0 {
                match to.try_io(Interest::WRITABLE, || {
                    splice(pipe.r.as_raw_fd(), to.as_raw_fd(), left, more)
                }) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            moved.fetch_add(n as u64, Ordering::Relaxed);
            act.touch();
        }
    }
    .await;
    // A pipe with bytes left in it (the far side failed mid-burst) is not reused.
    if r.is_ok() {
        put_pipe(pipe);
    }
    r
}

/// Copies while `from` has bytes through a pooled buffer of `size`; returns whether it
/// reached the end, and whether a small buffer filled (a bulk transfer, for splice).
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    moved: &AtomicU64,
    act: &Activity,
    size: usize,
) -> io::Result<(bool, bool)> {
    let mut buf = take_buf(size);
    let r = async {
        loop {
            let n = match from.try_read(&mut buf) {
                Ok(0) => return Ok((true, false)),
                Ok(n) if n < size => {
                    // A short read emptied the socket: its readiness is cleared now, with
                    // nothing awaited since the read, instead of by a read that fails with
                    // EAGAIN (tokio's own poll_read does the same). Bytes arriving later
                    // raise a new edge.
                    let _ = from.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                    n
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                match to.try_write(&buf[off..n]) {
                    Ok(m) => off += m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            moved.fetch_add(n as u64, Ordering::Relaxed);
            act.touch();
            // Full: more is waiting, in bulk (splice mode takes it from here).
            if n == size && size == SMALL_BUF {
                return Ok((false, true));
            }
        }
    }
    .await;
    put_buf(buf);
    r
}

/// Both directions of a proxied connection, until both have ended, either fails, or
/// nothing has moved for `idle`. Returns `Ok(false)` on the idle timeout.
pub async fn both_ways(
    client: &TcpStream,
    server: &TcpStream,
    mode: Mode,
    up: &AtomicU64,
    down: &AtomicU64,
    idle: Duration,
) -> io::Result<bool> {
    let act = Activity::new();
    act.touch();
    let ended = AtomicBool::new(false);
    let pump = async {
        tokio::try_join!(
            one_way(client, server, mode, up, &act, &ended),
            one_way(server, client, mode, down, &act, &ended)
        )
    };
    tokio::select! {
        r = pump => r.map(|_| true),
        _ = act.idle_for(idle) => Ok(false),
    }
}
