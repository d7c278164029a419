//! Test helpers shared by every crate's tests (a dev-dependency only, never shipped):
//! temporary directories that remove themselves, golden files, network namespaces and
//! veth pairs the tests create themselves, and the helper scripts in `helpers/` (fake
//! and real servers, a client). Nothing here sends traffic anywhere but loopback and
//! those namespaces.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temporary directory, removed (with what is in it) when dropped; derefs to its path.
#[derive(Debug)]
pub struct Dir(tempfile::TempDir);

impl Deref for Dir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Dir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh directory `pw-{tag}-…` under the system's temporary directory.
pub fn tempdir(tag: &str) -> Dir {
    Dir(tempfile::Builder::new()
        .prefix(&format!("pw-{tag}-"))
        .tempdir()
        .expect("a temporary directory"))
}

/// Compares `text` with `tests/golden/NAME` under `manifest_dir` (the calling crate's
/// `CARGO_MANIFEST_DIR`); `UPDATE_GOLDEN=1` rewrites the file instead.
pub fn golden(manifest_dir: &str, name: &str, text: &str) {
    let path = Path::new(manifest_dir).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the golden directory");
        }
        std::fs::write(&path, text).expect("the golden file");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text, want,
        "golden {name} differs (UPDATE_GOLDEN=1 rewrites it)"
    );
}

/// A helper script of `helpers/` (`fake_servers.py`, `net_client.py`, `real_servers.py`).
pub fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helpers")
        .join(name)
}

/// Runs `ip` with these arguments: whether it succeeded.
pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace a test creates: its helper processes are killed and it is deleted
/// on drop.
pub struct Netns {
    pub name: String,
    pub children: Vec<std::process::Child>,
}

impl Netns {
    /// `pw-{tag}-{pid}`; `None`, with a visible SKIP line, when namespaces are unavailable.
    pub fn new(tag: &str) -> Option<Netns> {
        let name = format!("pw-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Netns {
                name,
                children: Vec::new(),
            })
        } else {
            eprintln!("SKIP: cannot create a network namespace (needs root and iproute2)");
            None
        }
    }

    /// Runs a command inside, without portwarden's environment.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .env_remove("PORTWARDEN_POLICY")
            .env_remove("PORTWARDEN_STATE")
            .output()
            .unwrap()
    }

    /// Runs a set-up command inside; it must succeed.
    pub fn run(&self, cmd: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd:?}");
    }

    /// Starts `helpers/fake_servers.py` inside and waits until it is ready.
    pub fn serve(&mut self, specs: &[&str]) {
        let helper = helper("fake_servers.py");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "python3",
                helper.to_str().unwrap(),
            ])
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces, `{tag}-s` and `{tag}-c`, joined by a veth pair with these addresses
/// (IPv6 ones without duplicate address detection); `None`, with a SKIP line, where
/// namespaces cannot be made.
pub fn pair(tag: &str, server: &[&str], client: &[&str]) -> Option<(Netns, Netns)> {
    let s_ns = Netns::new(&format!("{tag}-s"))?;
    let c_ns = Netns::new(&format!("{tag}-c"))?;
    let id = std::process::id() % 100_000;
    // Unique per test even when `cargo test` runs them as threads of one process.
    let (vs, vc) = (format!("p{tag}s{id}"), format!("p{tag}c{id}"));
    let (s, c) = (&s_ns.name, &c_ns.name);
    assert!(ip(&[
        "link", "add", &vs, "netns", s, "type", "veth", "peer", "name", &vc, "netns", c
    ]));
    for (ns, dev, addrs) in [(s, &vs, server), (c, &vc, client)] {
        assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
        for a in addrs {
            let mut args = vec!["-n", ns.as_str(), "addr", "add", a, "dev", dev.as_str()];
            if a.contains(':') {
                args.push("nodad");
            }
            assert!(ip(&args));
        }
        assert!(ip(&["-n", ns, "link", "set", dev, "up"]));
    }
    Some((s_ns, c_ns))
}
