//! Stopping a long operation cleanly on SIGINT, SIGTERM or SIGHUP: while a [`Guard`]
//! lives, those signals set [`STOP`] (which the use-case polls through `Ctx::stop`)
//! instead of killing the process; dropping it restores the previous dispositions.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by a signal while a [`Guard`] is held.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The dispositions replaced, put back on drop.
pub struct Guard {
    saved: Vec<(libc::c_int, libc::sighandler_t)>,
}

/// Catches the stopping signals until the guard is dropped.
pub fn catch() -> Guard {
    STOP.store(false, Ordering::Relaxed);
    let handler = on_signal as *const () as libc::sighandler_t;
    let saved = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        .map(|sig| (sig, unsafe { libc::signal(sig, handler) }))
        .collect();
    Guard { saved }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, h) in self.saved.drain(..) {
            // SAFETY: restores the disposition saved by `catch`.
            unsafe { libc::signal(sig, h) };
        }
    }
}
