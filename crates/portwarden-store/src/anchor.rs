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
/// The anchor's lock file.
pub const LOCK_FILE: &str = "portwarden.head.lock";
const MAGIC: &str = "portwarden ledger head v1";

/// What the anchor says: the chain reached `seq` with `hash` (seq 0: initialised, empty),
/// and portwarden's own retention deleted the records through `pruned` (`None`: an anchor
/// written before it kept this; not checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Sequence number.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// The last record retention may have deleted.
    pub pruned: Option<i64>,
}

/// The anchor of the store in `dir`.
#[derive(Debug, Clone)]
pub struct Anchor {
    dir: PathBuf,
}

/// The anchor's exclusive lock, held while it is read and written.
pub struct Lock(File);

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

    /// Takes the anchor's lock: whoever initialises a store holds it from before its
    /// schema commits until its anchor is written, so an opener that finds no anchor
    /// waits for it instead of taking its absence for damage.
    pub fn lock(&self) -> io::Result<Lock> {
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
        let pruned = match lines.next() {
            None => None,
            Some(l) => {
                let n: i64 = l
                    .strip_prefix("pruned ")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?;
                if n < 0 {
                    return Err(bad());
                }
                Some(n)
            }
        };
        Ok(Some(Head {
            seq,
            hash: hash.to_string(),
            pruned,
        }))
    }

    /// Moves the anchor forward to `head` (never back: a slower writer that read an older
    /// head leaves a newer anchor alone), keeping what it says was pruned. `head()` is
    /// read under the lock.
    pub fn advance(&self, head: impl FnOnce() -> io::Result<Head>) -> io::Result<()> {
        let _lock = self.lock()?;
        let mut head = head()?;
        if let Some(old) = self.read()? {
            if old.seq >= head.seq {
                return Ok(());
            }
            head.pruned = head.pruned.max(old.pruned);
        }
        self.write(&head)
    }

    /// Lets retention delete the records through `through`, before it does: the anchor
    /// says so first, so a crash between the two leaves a chain the anchor accounts for.
    /// A chain that starts later than the anchor allows was cut by someone else.
    pub fn allow_pruned(&self, through: i64) -> io::Result<()> {
        let _lock = self.lock()?;
        let Some(mut head) = self.read()? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing", self.path().display()),
            ));
        };
        head.pruned = head.pruned.max(Some(through));
        self.write(&head)
    }

    /// Replaces the anchor with `head` unconditionally (first initialisation), under a
    /// lock the caller holds.
    pub fn reset(&self, _held: &Lock, head: &Head) -> io::Result<()> {
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
            if let Some(p) = head.pruned {
                writeln!(f, "pruned {p}")?;
            }
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
