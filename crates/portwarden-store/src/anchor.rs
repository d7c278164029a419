//! The head anchor: a small file beside the database holding the last ledger sequence
//! number and hash that were committed. A hash chain shows edits but not truncation; the
//! anchor is what a truncated, emptied or re-created database cannot match. Written
//! atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive
//! `flock`, and only ever forward.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File name of the anchor inside the state directory.
pub const ANCHOR_FILE: &str = "portwarden.head";
const LOCK_FILE: &str = "portwarden.head.lock";
const MAGIC: &str = "portwarden ledger head v1";

/// What the anchor says: the chain reached `seq` with `hash` (seq 0: initialised, empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Sequence number.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// The anchor of the store in `dir`.
#[derive(Debug, Clone)]
pub struct Anchor {
    dir: PathBuf,
}

struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open for as long as `self.0` lives.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Anchor {
    /// The anchor beside the database in `dir`.
    pub fn new(dir: &Path) -> Anchor {
        Anchor {
            dir: dir.to_path_buf(),
        }
    }

    /// The anchor file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ANCHOR_FILE)
    }

    /// Whether the anchor file exists (the store was initialised here).
    pub fn exists(&self) -> bool {
        self.path().symlink_metadata().is_ok()
    }

    fn lock(&self) -> io::Result<Lock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK_FILE))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Lock(f))
    }

    /// Reads the anchor; `Ok(None)` when there is none, an error when it is unreadable
    /// or not an anchor.
    pub fn read(&self) -> io::Result<Option<Head>> {
        let mut text = String::new();
        match File::open(self.path()) {
            Ok(f) => {
                f.take(4096).read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a ledger head anchor", self.path().display()),
            )
        };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad());
        }
        let (seq, hash) = lines
            .next()
            .and_then(|l| l.split_once(' '))
            .ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if seq < 0 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Some(Head {
            seq,
            hash: hash.to_string(),
        }))
    }

    /// Moves the anchor forward to `head` (never back: a slower writer that read an older
    /// head leaves a newer anchor alone). `head()` is read under the lock.
    pub fn advance(&self, head: impl FnOnce() -> io::Result<Head>) -> io::Result<()> {
        let _lock = self.lock()?;
        let head = head()?;
        if let Some(old) = self.read()? {
            if old.seq >= head.seq {
                return Ok(());
            }
        }
        self.write(&head)
    }

    /// Replaces the anchor with `head` unconditionally (first initialisation).
    pub fn reset(&self, head: &Head) -> io::Result<()> {
        let _lock = self.lock()?;
        self.write(head)
    }

    fn write(&self, head: &Head) -> io::Result<()> {
        let tmp = self
            .dir
            .join(format!(".{ANCHOR_FILE}.tmp-{}", std::process::id()));
        let r = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{MAGIC}\n{} {}", head.seq, head.hash)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            File::open(&self.dir)?.sync_all()
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}
