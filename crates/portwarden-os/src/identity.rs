//! Who runs us: the name a lease is labelled with by default, and the acting identity the
//! ledger records (from the password database, not the environment).

/// The invoking user's name, the default `--owner` label of a lease.
pub fn user() -> String {
    for k in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            let v = portwarden_core::diag::strip_unsafe(&v, 64);
            if !v.is_empty() {
                return v;
            }
        }
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    // Without the environment (cron, systemd, `env -i`), the same name it usually has.
    user_name(uid).unwrap_or_else(|| format!("uid:{uid}"))
}

/// Who acts, for the ledger: the real user's name from the password database (not the
/// environment, which anyone sets) and uid, and the `sudo` caller when there is one:
/// `root (uid 0, sudo from alice)`. `--owner` is only a label on a lease; this is who did it.
pub fn actor() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let name = user_name(uid);
    let sudo = std::env::var("SUDO_USER")
        .ok()
        .filter(|s| !s.is_empty() && uid == 0)
        .map(|s| {
            format!(
                ", sudo from {}",
                portwarden_core::diag::strip_unsafe(&s, 64)
            )
        })
        .unwrap_or_default();
    match name {
        Some(n) => format!("{n} (uid {uid}{sudo})"),
        None => format!("uid {uid}{sudo}"),
    }
}

/// The password database's name for `uid`.
pub fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r writes at most
    // `buf.len()` bytes into `buf` and sets `result` to null or to `pw`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above; every pointer is valid for the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: pw_name points at a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}
