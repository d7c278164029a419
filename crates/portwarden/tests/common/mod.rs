//! Helpers shared by the integration tests: network namespaces the tests create
//! themselves, and veth pairs between them. Nothing here reaches another address.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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

    /// Starts `tests/helpers/fake_servers.py` inside and waits until it is ready.
    pub fn serve(&mut self, specs: &[&str]) {
        let helper =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/fake_servers.py");
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
