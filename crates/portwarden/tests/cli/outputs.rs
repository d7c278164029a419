//! `-o FILE` outputs, size limits and sanitised output.

use super::*;

/// Scans one open loopback port, writing an nmap format to `out` (`-oX` or `-oG`).
fn scan_to(flag: &str, out: &Path, extra: &[&str]) -> Output {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let mut args = vec![
        "scan",
        "127.0.0.1",
        "-p",
        &port,
        flag,
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn r_output_file_keeps_device() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempdir("o-dev");
    let null = dir.join("null");
    let made = Command::new("mknod")
        .args([null.to_str().unwrap(), "c", "1", "3"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: cannot mknod a character device (needs root)");
        return;
    }
    let o = scan_to("-oX", &null, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["report", "--format", "csv", "-o", null.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let m = std::fs::symlink_metadata(&null).unwrap();
    assert!(m.file_type().is_char_device(), "{m:?}");

    // A FIFO is opened and written, not replaced: the reader gets the report.
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = scan_to("-oG", &fifo, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = reader.join().unwrap();
    assert!(got.starts_with("# portwarden"), "{got}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // A regular file is replaced whole and keeps its permission bits.
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("scan.xml");
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = scan_to("-oX", &file, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("<?xml"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    // A directory is an error; nothing is left beside it.
    let o = scan_to("-oX", &dir, &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r_output_symlink_refused() {
    let dir = tempdir("o-link");
    let target = dir.join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.join("out.xml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for o in [
        scan_to("-oX", &link, &[]),
        run(&["report", "-o", link.to_str().unwrap()]),
        run(&["policy", "init", "-o", link.to_str().unwrap()]),
    ] {
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // --force replaces the link itself, never its target.
    let o = scan_to("-oX", &link, &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert!(std::fs::read_to_string(&link).unwrap().starts_with("<?xml"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r_output_dash_is_stdout() {
    let dir = tempdir("o-dash");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let o = bin()
        .current_dir(&dir)
        .args(["scan", "127.0.0.1", "-p", &port, "-q", "-oG", "-"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("# portwarden"), "{out}");
    assert!(!dir.join("-").exists(), "a file named - was created");
    let o = bin()
        .current_dir(&dir)
        .args(["policy", "init", "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("version = 1"));
    assert!(!dir.join("-").exists());
    // `/dev/stdout` is stdout (a link, written through, never replaced).
    let o = bin()
        .current_dir(&dir)
        .args(["scan", "127.0.0.1", "-p", &port, "-q", "-oX", "/dev/stdout"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("<?xml"));
    assert!(
        std::fs::symlink_metadata("/dev/stdout")
            .unwrap()
            .is_symlink()
    );
    // Another link to a device or FIFO is refused like any link.
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = dir.join("out.lnk");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let o = run(&["report", "-o", link.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r_policy_size_limit() {
    let dir = tempdir("p-limit");
    // Just over 16 MiB of valid TOML (a comment), then a FIFO and a zero device: each
    // is refused with one line naming the file, none is read without bound.
    let big = dir.join("big.toml");
    let mut text = String::from("version = 1\n#");
    text.push_str(&"x".repeat(16 << 20));
    std::fs::write(&big, text).unwrap();
    let fifo = dir.join("fifo.toml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let zero = dir.join("zero");
    let dev = Command::new("mknod")
        .args([zero.to_str().unwrap(), "c", "1", "5"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cases = vec![
        (big.clone(), "larger than the 16 MiB limit"),
        (fifo, "not a regular file"),
    ];
    if dev {
        cases.push((zero, "not a regular file"));
    } else {
        eprintln!("SKIP: cannot mknod /dev/zero's twin (needs root); the FIFO case still runs");
    }
    for (path, why) in cases {
        for args in [
            vec!["policy", "check", path.to_str().unwrap()],
            vec!["--policy", path.to_str().unwrap(), "check"],
        ] {
            let o = run(&args);
            assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
            let err = stderr(&o);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(path.to_str().unwrap()) && err.contains(why),
                "{err}"
            );
        }
    }
    // Exactly at the limit is still read.
    let mut text = String::from("version = 1\n#");
    text.push_str(&"x".repeat((16 << 20) - text.len() - 1));
    text.push('\n');
    std::fs::write(&big, &text).unwrap();
    assert_eq!(text.len(), 16 << 20);
    let o = run(&["policy", "check", big.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r_output_sanitised() {
    // A process whose name carries terminal escapes (names in /proc are chosen by
    // whoever runs the process) holds a loopback port.
    let script = "import ctypes,socket,sys\n\
        ctypes.CDLL(None).prctl(15, b'ev\\x1b[2J\\x07il', 0, 0, 0)\n\
        s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n\
        print(s.getsockname()[1], flush=True); sys.stdin.read()\n";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIP: python3 is not installed");
        return;
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().to_string();
    let outputs = [
        run(&["who", &port]),
        run(&["ls", "-p", "--port", &port]),
        run(&["ls", "--summary", "-p", "--port", &port]),
    ];
    let _ = child.kill();
    let _ = child.wait();
    for o in &outputs {
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("ev\\x1b[2J\\x07il"), "{out}");
        assert!(!out.contains(['\x1b', '\x07']), "{out:?}");
    }
    // Errors and diagnostics: a quoted key may hold any character.
    let dir = tempdir("sanitise");
    let p = dir.join("p.toml");
    std::fs::write(&p, "version = 1\n\"\\u001b]0;pwned\\u0007\" = 1\n").unwrap();
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("\\x1b]0;pwned\\x07"), "{err}");
    assert!(!err.contains(['\x1b', '\x07']), "{err:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r_hostile_banners_cannot_break_the_outputs() {
    use std::io::Write;
    // An SSH-looking banner with control, format and XML-forbidden characters, and an
    // HTTP server whose Server header is markup.
    let ssh = std::net::TcpListener::bind("127.0.0.12:0").unwrap();
    let http = std::net::TcpListener::bind("127.0.0.12:0").unwrap();
    let ports = format!(
        "{},{}",
        ssh.local_addr().unwrap().port(),
        http.local_addr().unwrap().port()
    );
    for (l, reply) in [
        (
            ssh,
            "SSH-2.0-Op\u{1}en\u{202e}SSH_9.6 \u{fffe}x\u{1b}]0;pwned\u{7}\r\n".as_bytes(),
        ),
        (
            http,
            b"HTTP/1.1 200 OK\r\nServer: <x a=\"&\">/1 \"q\"\r\n\r\n".as_slice(),
        ),
    ] {
        std::thread::spawn(move || {
            for s in l.incoming().take(40) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let _ = s.write_all(reply);
                    // Real time: a fake server holding its connection open while the scanner reads.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                });
            }
        });
    }
    let o = run(&["scan", "127.0.0.12", "-sV", "-p", &ports, "-oX", "-", "-q"]);
    assert!(code(&o) < 2, "{}", stderr(&o));
    let xml = String::from_utf8(o.stdout).unwrap();
    for bad in ['\u{1}', '\u{1b}', '\u{7}', '\u{202e}', '\u{fffe}'] {
        assert!(!xml.contains(bad), "{bad:?} reached the XML: {xml}");
    }
    assert!(xml.contains("product=\"OpenSSH\""), "{xml}");
    assert!(xml.contains("&lt;x"), "{xml}");
    assert!(!xml.contains("<x a="), "{xml}");
    let o = run(&["scan", "127.0.0.12", "-sV", "-p", &ports]);
    let table = String::from_utf8_lossy(&o.stdout);
    for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(
            !table.contains(bad),
            "{bad:?} reached the terminal: {table}"
        );
    }
}
