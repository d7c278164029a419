//! The host key: 32 random bytes in a root-only file beside the database. The store is
//! not trusted to make root load a ruleset (a database can be restored from a backup,
//! copied from another host or edited), so what the rollback loads must carry a MAC made
//! with this key, which never enters the database. Its presence also says that this
//! state directory was used by a version that requires the head anchor.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// File name of the key inside the state directory.
pub const KEY_FILE: &str = "portwarden.key";
const LEN: usize = 32;

/// The host key.
#[derive(Clone)]
pub struct HostKey([u8; LEN]);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey(..)")
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

impl HostKey {
    /// Whether the state directory has a key.
    pub fn exists(dir: &Path) -> bool {
        path(dir).symlink_metadata().is_ok()
    }

    /// Reads the key; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> io::Result<Option<HostKey>> {
        let f = match File::open(path(dir)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut b = Vec::new();
        f.take(LEN as u64 + 1).read_to_end(&mut b)?;
        let k: [u8; LEN] = b.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a portwarden host key", path(dir).display()),
            )
        })?;
        Ok(Some(HostKey(k)))
    }

    /// Reads the key, creating it first when there is none. Creation is atomic: the key
    /// is written and synced under a temporary name, then linked into place (a racing
    /// creator's key wins and is read back).
    pub fn load_or_create(dir: &Path) -> io::Result<HostKey> {
        if let Some(k) = Self::load(dir)? {
            return Ok(k);
        }
        let mut k = [0u8; LEN];
        let mut got = 0;
        while got < LEN {
            // SAFETY: getrandom writes at most the given length into the buffer.
            let n = unsafe { libc::getrandom(k[got..].as_mut_ptr().cast(), LEN - got, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            got += n as usize;
        }
        // Unique per creator, threads of one process included.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{KEY_FILE}.tmp-{}-{n}", std::process::id()));
        let r = (|| {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&k)?;
            f.sync_all()?;
            match std::fs::hard_link(&tmp, path(dir)) {
                Ok(()) => File::open(dir)?.sync_all(),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        r?;
        Self::load(dir)?.ok_or_else(|| io::Error::other("the host key vanished"))
    }

    /// HMAC-SHA-256 of `msg` under the key, hex.
    pub fn mac(&self, msg: &[u8]) -> String {
        let mut block = [0u8; 64];
        block[..LEN].copy_from_slice(&self.0);
        let pad = |x: u8| block.map(|b| b ^ x);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        crate::ledger::hex(&outer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_1() {
        // RFC 4231 test case 1 uses a 20-byte key; ours is 32 bytes zero-padded to the
        // block the same way, so a 32-byte key of 0x0b×20 then zeros gives case 1's MAC.
        let mut k = [0u8; LEN];
        k[..20].copy_from_slice(&[0x0b; 20]);
        assert_eq!(
            HostKey(k).mac(b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
