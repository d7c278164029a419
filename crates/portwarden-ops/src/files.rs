//! Reading the files a use-case is given (a policy, nmap's data files): regular files
//! only, bounded, opened so that a FIFO or a terminal cannot stall or capture us.

use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A regular file's bytes, at most `limit`: opened without blocking (a FIFO with no
/// writer must not hang us) and never as a controlling terminal; anything but a regular
/// file is `InvalidInput` ("not a regular file"), more than `limit` bytes (also a file
/// that grows while it is read) `FileTooLarge`.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_large = |len: u64| {
        Error::new(
            ErrorKind::FileTooLarge,
            format!("{len} bytes, more than the {limit} read"),
        )
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(too_large(out.len() as u64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("pw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // Larger than the limit (sparse): refused before it is read.
        let big = dir.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len((32 << 20) + 1)
            .unwrap();
        let e = read_regular(&big, 32 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("more than"), "{e}");
        assert!(read_regular(Path::new("/dev/zero"), 1 << 20).is_err());
        let small = dir.join("small");
        std::fs::write(&small, b"ok").unwrap();
        assert_eq!(read_regular(&small, 2).unwrap(), b"ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
