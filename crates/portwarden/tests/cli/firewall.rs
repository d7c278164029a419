//! `fw`, `grant`, `revoke`: in namespaces with real nftables.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

/// Two namespaces joined by a veth pair: the server (10.99.0.1, fd99::1) and a client
/// with two addresses (10.99.0.2 and .3, fd99::2). Removed on drop.
struct Lab {
    server: Netns,
    client: Netns,
    dir: portwarden_testkit::Dir,
}

fn helper(name: &str) -> String {
    portwarden_testkit::helper(name).display().to_string()
}

impl Lab {
    fn new(tag: &str) -> Option<Lab> {
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("SKIP: nft is not installed");
            return None;
        }
        let (server, client) = portwarden_testkit::pair(
            tag,
            &["10.99.0.1/24", "fd99::1/64"],
            &["10.99.0.2/24", "10.99.0.3/24", "fd99::2/64"],
        )?;
        Some(Lab {
            server,
            client,
            dir: tempdir(&format!("fw-{tag}")),
        })
    }

    fn serve(&mut self, specs: &[&str]) {
        self.server.serve(specs);
    }

    /// A lab with a listener on 9000 and [`POLICY`] applied (no commit-confirm).
    fn applied_9000(tag: &str) -> Option<Lab> {
        let mut lab = Lab::new(tag)?;
        lab.serve(&["hold@10.99.0.1:9000"]);
        assert_eq!(
            code(&lab.pw(POLICY, &["fw", "apply", "--confirm-within", "0"])),
            0
        );
        Some(lab)
    }

    fn client(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client.name,
                "python3",
                &helper("net_client.py"),
            ])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn pw(&self, policy: &str, args: &[&str]) -> Output {
        self.pw_in("policy.toml", policy, args, &[])
    }

    /// portwarden in the server namespace on `policy` (written to `file`), with `env`.
    fn pw_in(&self, file: &str, policy: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let p = self.dir.join(file);
        std::fs::write(&p, policy).unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server.name,
                env!("CARGO_BIN_EXE_portwarden"),
            ])
            .args([
                "--policy",
                p.to_str().unwrap(),
                "--state-dir",
                self.dir.join("state").to_str().unwrap(),
            ])
            .args(args)
            .env_remove("SSH_CONNECTION")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Runs portwarden in the server namespace with the built-in baseline policy.
    fn pw_bare(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server.name,
                env!("CARGO_BIN_EXE_portwarden"),
                "--state-dir",
                self.dir.join("state").to_str().unwrap(),
            ])
            .args(args)
            .env_remove("SSH_CONNECTION")
            .output()
            .unwrap()
    }

    /// The live table, counters left out (traffic changes them).
    fn table(&self) -> String {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server.name,
                "nft",
                "list",
                "table",
                "inet",
                "portwarden",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .split("counter packets ")
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part.to_string()
                } else {
                    // Drop "N bytes M" after each "counter packets".
                    part.splitn(4, ' ').nth(3).unwrap_or("").to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("counter ")
    }
}

/// The checks both renderings must pass: allowed port from an allowed source, the
/// same port from another source, an undeclared port, UDP to a TCP-only service,
/// IPv6 across the veth.
fn assert_whitelist(lab: &Lab) {
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "873"]));
    assert!(lab.client(&["connect", "10.99.0.3", "10.99.0.1", "873"]));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "3306"]));
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "3306"]));
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    assert!(!lab.client(&["udp", "10.99.0.2", "10.99.0.1", "873"]));
    assert!(lab.client(&["connect", "fd99::2", "fd99::1", "873"]));
}

/// How many of 4 connections from one source port 4000 admits.
fn admitted_of_four(lab: &Lab) -> String {
    let mut hold = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.name,
            "python3",
            &helper("net_client.py"),
            "hold",
            "10.99.0.2",
            "10.99.0.1",
            "4000",
            "4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(hold.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // Another source still gets in while the first is at its limit.
    let other = lab.client(&["connect", "10.99.0.3", "10.99.0.1", "4000"]);
    drop(hold.stdin.take());
    let _ = hold.wait();
    assert!(other, "another source was refused");
    line.trim().to_string()
}

/// POLICY plus a service that opens 9000 to everyone.
fn opening_9000() -> String {
    format!(
        "{POLICY}\n[[service]]\nname = \"extra\"\nport = 9000\nzone = \"external\"\nallow_from = [\"0.0.0.0/0\"]\n"
    )
}

const POLICY: &str = r#"
version = 1
[host]
management = { ports = ["22/tcp"], from = ["10.99.0.2/32"] }
[[service]]
name = "mirror"
catalog = "rsync"
zone = "external"
allow_from = ["0.0.0.0/0", "::/0"]
[[service]]
name = "db"
catalog = "mysql"
zone = "external"
allow_from = ["10.99.0.2/32"]
tls = "required"
[[service]]
name = "limited"
port = 4000
zone = "external"
allow_from = ["0.0.0.0/0"]
max_conn_per_source = 3
"#;

#[test]
fn r7_whitelist_limits_grants_and_ipv6_in_namespaces() {
    let Some(mut lab) = Lab::new("wl") else {
        return;
    };
    lab.serve(&[
        "hold@10.99.0.1:873",
        "hold@[fd99::1]:873",
        "udpecho@10.99.0.1:873",
        "hold@10.99.0.1:3306",
        "hold@10.99.0.1:4000",
        "hold@10.99.0.1:9000",
        "hold@10.99.0.1:22",
    ]);
    // Before the firewall everything answers.
    assert!(lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]));
    assert!(lab.client(&["udp", "10.99.0.2", "10.99.0.1", "873"]));

    let o = lab.pw(POLICY, &["fw", "apply", "--confirm-within", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lab.table().contains("chain input"));
    assert_whitelist(&lab);
    // Management only from its source.
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "22"]));
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "22"]));
    // Per-source connection limit: 3 admitted, the 4th refused.
    assert_eq!(admitted_of_four(&lab), "3", "max_conn_per_source = 3");

    // A grant opens 9000 to one source, and closes by itself.
    let o = lab.pw(
        POLICY,
        &["grant", "9000/tcp", "--from", "10.99.0.2", "--for", "2s"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]));
    let until = Instant::now() + Duration::from_secs(6);
    let mut closed = false;
    while Instant::now() < until {
        // Real time: polling, bounded, for the kernel's timeout on the grant's set element.
        std::thread::sleep(Duration::from_millis(500));
        if !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the grant did not expire");
    // Nothing pending: confirm and rollback say so.
    assert_eq!(code(&lab.pw(POLICY, &["fw", "confirm"])), 1);
    assert_eq!(code(&lab.pw(POLICY, &["fw", "rollback"])), 1);
    let log = lab.pw(POLICY, &["log", "--json"]);
    let v: Value = serde_json::from_slice(&log.stdout).unwrap();
    let actions: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"fw.apply") && actions.contains(&"fw.grant"),
        "{actions:?}"
    );
}

#[test]
fn r7_unconfirmed_applies_roll_back_and_confirmed_ones_stay() {
    let Some(mut lab) = Lab::new("cc") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:873", "hold@10.99.0.1:9000"]);
    let first = POLICY;
    let second = opening_9000();
    assert_eq!(
        code(&lab.pw(first, &["fw", "apply", "--confirm-within", "0"])),
        0
    );
    let before = lab.table();
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));

    // Unconfirmed: the applying command has exited; the detached watcher rolls back.
    let o = lab.pw(&second, &["fw", "apply", "--confirm-within", "2s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    // A second apply while one is pending is refused.
    assert_eq!(code(&lab.pw(&second, &["fw", "apply"])), 2);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until && lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]) {
        // Real time: polling, bounded, for the rollback watcher process at its deadline.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "not rolled back"
    );
    assert_eq!(lab.table(), before, "the previous table is back");

    // Confirmed: stays past the deadline.
    assert_eq!(
        code(&lab.pw(&second, &["fw", "apply", "--confirm-within", "2s"])),
        0
    );
    let o = lab.pw(&second, &["fw", "confirm"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Real time: past the deadline a confirmed apply no longer has (the watcher must not act).
    std::thread::sleep(Duration::from_secs(3));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));

    // A ruleset nft refuses is never applied; the rules stay as they were.
    let applied = lab.table();
    let fake = lab.dir.join("fake-nft");
    std::fs::write(&fake, "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -c ] && { echo 'Error: syntax error' >&2; exit 1; }; done\nexec nft \"$@\"\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let p = lab.dir.join("policy.toml");
    std::fs::write(&p, first).unwrap();
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server.name,
            env!("CARGO_BIN_EXE_portwarden"),
        ])
        .args([
            "--policy",
            p.to_str().unwrap(),
            "--state-dir",
            lab.dir.join("state").to_str().unwrap(),
            "fw",
            "apply",
            "--confirm-within",
            "0",
        ])
        .env("PORTWARDEN_NFT", &fake)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("failed `nft -c`"), "{}", stderr(&o));
    assert_eq!(lab.table(), applied);
    // A zone naming a missing interface cannot be rendered: exit 2, nothing applied.
    let o = lab.pw(
        &format!("{first}\n[zones]\ninternal = {{ interfaces = [\"nope0\"] }}\n"),
        &["fw", "apply", "--confirm-within", "0"],
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("nope0"), "{}", stderr(&o));
    assert_eq!(lab.table(), applied);
}
#[test]
fn r7_the_iptables_rendering_passes_the_same_subset() {
    if Command::new("iptables-restore")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: iptables is not installed");
        return;
    }
    let Some(mut lab) = Lab::new("ipt") else {
        return;
    };
    lab.serve(&[
        "hold@10.99.0.1:873",
        "hold@[fd99::1]:873",
        "udpecho@10.99.0.1:873",
        "hold@10.99.0.1:3306",
        "hold@10.99.0.1:4000",
        "hold@10.99.0.1:9000",
    ]);
    // The rendering loads with iptables-restore's own checker.
    let o = lab.pw(POLICY, &["fw", "plan", "--format", "iptables"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("iptables cannot express: grants"),
        "{}",
        stderr(&o)
    );
    // Applied through portwarden, with the iptables backend.
    let o = lab.pw(
        POLICY,
        &[
            "fw",
            "apply",
            "--backend",
            "iptables",
            "--confirm-within",
            "0",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_whitelist(&lab);
    assert_eq!(admitted_of_four(&lab), "3");
    let o = lab.pw(POLICY, &["fw", "status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backend"], "iptables");
    assert_eq!(v["table"], true);
    // Commit-confirm works the same: an unconfirmed apply that opens 9000 rolls back.
    let second = opening_9000();
    let o = lab.pw(
        &second,
        &[
            "fw",
            "apply",
            "--backend",
            "iptables",
            "--confirm-within",
            "2s",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("confirm before"),
        "the iptables backend prints the same deadline notice"
    );
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until && lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]) {
        // Real time: polling, bounded, for the rollback watcher process at its deadline.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "not rolled back"
    );
    assert_whitelist(&lab);
}

#[test]
fn r7_a_pending_apply_whose_watcher_died_rolls_back_on_the_next_start() {
    let Some(lab) = Lab::applied_9000("rc") else {
        return;
    };
    let before = lab.table();
    let second = opening_9000();
    let o = lab.pw(
        &second,
        &["fw", "apply", "--confirm-within", "1s", "--json"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let pid = v["watcher_pid"].as_u64().unwrap() as i32;
    // Kill the watcher we started (as a reboot would), by its PID.
    // SAFETY: kill(2) on a PID this test's command started and reported.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Real time: past the killed watcher's deadline, so the next command must re-arm it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "still applied: nobody rolled back yet"
    );
    // The next command that opens the store (any, not only the firewall's) re-arms
    // a watcher, which rolls back (late, and says so).
    let o = lab.pw(&second, &["leases"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("had died and its deadline passed"),
        "{}",
        stderr(&o)
    );
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until && lab.table() != before {
        // Real time: polling, bounded, for the re-armed watcher's rollback.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    assert_eq!(lab.table(), before);
    let log = String::from_utf8_lossy(&lab.pw(&second, &["log", "--json"]).stdout).to_string();
    assert!(log.contains("fw.watcher-rearmed"), "{log}");
    assert!(log.contains("after it (its watcher had died)"), "{log}");
}

/// The ledger's actions, oldest first.
fn actions(lab: &Lab) -> Vec<String> {
    let o = lab.pw(POLICY, &["log", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

/// Polls (bounded) until `f` holds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return true;
        }
        // Real time: polling, bounded, for what a real process or the kernel does.
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

#[test]
fn r_watcher_rolls_back_at_its_deadline_with_no_other_command() {
    let Some(lab) = Lab::applied_9000("wd") else {
        return;
    };
    let before = lab.table();
    let second = opening_9000();
    let o = lab.pw(&second, &["fw", "apply", "--confirm-within", "2s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("confirm before"));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    // No portwarden command runs now: only the watcher can roll back.
    assert!(eventually(10, || lab.table() == before), "not rolled back");
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    let acts = actions(&lab);
    assert_eq!(
        acts.last().map(String::as_str),
        Some("fw.rollback"),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| a == "fw.watcher-rearmed"), "{acts:?}");

    // Confirm and rollback stop the watcher they belong to.
    for verb in ["confirm", "rollback"] {
        let o = lab.pw(
            &second,
            &["fw", "apply", "--confirm-within", "1h", "--json"],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let pid = v["watcher_pid"].as_u64().unwrap();
        let o = lab.pw(&second, &["fw", verb]);
        assert_eq!(code(&o), 0, "{verb}: {}", stderr(&o));
        assert!(
            eventually(5, || !std::path::Path::new(&format!("/proc/{pid}/cmdline"))
                .exists()
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .is_empty()),
            "the watcher survived `fw {verb}`"
        );
        if verb == "confirm" {
            assert_eq!(
                code(&lab.pw(POLICY, &["fw", "apply", "--confirm-within", "0"])),
                0
            );
        }
    }
    // The window has a sane maximum.
    let o = lab.pw(POLICY, &["fw", "apply", "--confirm-within", "25h"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("at most 1d"), "{}", stderr(&o));
}

#[test]
fn r_grants_survive_apply() {
    let Some(lab) = Lab::applied_9000("gs") else {
        return;
    };
    let o = lab.pw(
        POLICY,
        &[
            "grant",
            "9000/tcp",
            "--from",
            "::ffff:10.99.0.2",
            "--for",
            "5m",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]));
    // A new apply (another policy, even) keeps who is granted.
    let second =
        format!("{POLICY}\n[[service]]\nname = \"web\"\nport = 8080\nzone = \"external\"\n");
    let o = lab.pw(&second, &["fw", "apply", "--confirm-within", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "the grant was lost"
    );
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]));
    // Revoked, it stays revoked across the next apply.
    assert_eq!(
        code(&lab.pw(POLICY, &["revoke", "9000/tcp", "--from", "10.99.0.2"])),
        0
    );
    assert_eq!(
        code(&lab.pw(POLICY, &["fw", "apply", "--confirm-within", "0"])),
        0
    );
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
    // Bad input: a grant beyond the maximum, and a file with bad lines, change nothing.
    let o = lab.pw(
        POLICY,
        &["grant", "9000", "--from", "10.99.0.2", "--for", "400d"],
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("at most 365d"), "{}", stderr(&o));
    let f = lab.dir.join("grants.txt");
    std::fs::write(
        &f,
        "9000 10.99.0.2 1h\n9000 nonsense 1h\n# fine\n70000 10.99.0.3 1h\n9000 10.99.0.3\n",
    )
    .unwrap();
    let o = lab.pw(POLICY, &["grant", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    for line in [":2:", ":4:", ":5:"] {
        assert!(
            e.contains(&format!("grants.txt{line}")),
            "{line} not reported: {e}"
        );
    }
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "line 1 was applied"
    );
}

#[test]
fn r_leased_pool_ports_are_admitted_at_once() {
    let Some(mut lab) = Lab::new("lp") else {
        return;
    };
    let policy = format!(
        "{POLICY}\n[[pool]]\nname = \"dyn\"\nrange = \"9100-9100\"\n[[service]]\nname = \"cache\"\npool = \"dyn\"\nzone = \"external\"\nallow_from = [\"10.99.0.2/32\"]\n"
    );
    assert_eq!(
        code(&lab.pw(&policy, &["fw", "apply", "--confirm-within", "0"])),
        0
    );
    let o = lab.pw(&policy, &["alloc", "cache", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["leases"][0]["port"], 9100);
    let id = v["leases"][0]["id"].as_i64().unwrap().to_string();
    lab.serve(&["hold@10.99.0.1:9100"]);
    assert!(
        lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]),
        "the lease was not admitted"
    );
    assert!(!lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9100"]));
    // A full apply keeps the lease admitted.
    assert_eq!(
        code(&lab.pw(&policy, &["fw", "apply", "--confirm-within", "0"])),
        0
    );
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]));
    let o = lab.pw(&policy, &["release", &id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]),
        "still admitted after release"
    );
    let acts = actions(&lab);
    assert!(acts.iter().any(|a| a == "fw.lease-admit"), "{acts:?}");
    assert!(acts.iter().any(|a| a == "fw.lease-unadmit"), "{acts:?}");
}

#[test]
fn r_rollback_keeps_the_stores_grants_and_leases() {
    let Some(mut lab) = Lab::new("rs") else {
        return;
    };
    let policy = format!(
        "{POLICY}\n[[pool]]\nname = \"dyn\"\nrange = \"9100-9101\"\nlease_ttl = \"1h\"\n[[service]]\nname = \"cache\"\npool = \"dyn\"\nzone = \"external\"\nallow_from = [\"10.99.0.2/32\"]\n"
    );
    lab.serve(&["hold@10.99.0.1:9000"]);
    assert_eq!(
        code(&lab.pw(&policy, &["fw", "apply", "--confirm-within", "0"])),
        0
    );
    let o = lab.pw(
        &policy,
        &["alloc", "cache", "--port", "9100", "--no-probe", "--json"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["leases"][0]["id"].as_i64().unwrap().to_string();
    lab.serve(&["hold@10.99.0.1:9100"]);
    let o = lab.pw(
        &policy,
        &["grant", "9000", "--from", "10.99.0.3", "--for", "5m"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]));
    assert!(lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]));
    // A pending apply; meanwhile the lease is released and the grant revoked (both
    // without --policy), and another source granted.
    let second =
        format!("{policy}\n[[service]]\nname = \"web\"\nport = 8080\nzone = \"external\"\n");
    let o = lab.pw(&second, &["fw", "apply", "--confirm-within", "1h"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Renewing past the pool's lease_ttl is refused without the policy at hand too.
    let o = lab.pw_bare(&["renew", &id, "--ttl", "2h"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("at most 1h"), "{}", stderr(&o));
    let o = lab.pw_bare(&["release", &id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]),
        "release without --policy left the port admitted"
    );
    let o = lab.pw_bare(&["revoke", "9000", "--from", "10.99.0.3"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = lab.pw_bare(&["grant", "9000", "--from", "10.99.0.2", "--for", "5m"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = lab.pw(&second, &["fw", "rollback"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9100"]),
        "the rollback re-admitted a released lease"
    );
    assert!(
        !lab.client(&["connect", "10.99.0.3", "10.99.0.1", "9000"]),
        "the rollback re-admitted a revoked grant"
    );
    assert!(
        lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "the rollback lost a grant made while the apply was pending"
    );
}

/// A zone interface the host lacks: `fw plan` warns and shows the ruleset, `fw apply`
/// refuses (nothing loaded) unless `--allow-missing-interface`.
#[test]
fn r_a_missing_interface_is_a_warning_for_plan_and_opt_in_for_apply() {
    let Some(lab) = Lab::new("mi") else {
        return;
    };
    let policy = "version = 1\n[zones]\ninternal = { interfaces = [\"eth9\"], cidrs = [\"10.0.0.0/8\"] }\n[[service]]\nname = \"db\"\ncatalog = \"mysql\"\nzone = \"internal\"\n";
    let o = lab.pw(policy, &["fw", "plan"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("interface `eth9`"), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("table inet portwarden"));
    let o = lab.pw(policy, &["fw", "apply", "--confirm-within", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--allow-missing-interface"),
        "{}",
        stderr(&o)
    );
    let listed = lab
        .server
        .exec(&["nft", "list", "table", "inet", "portwarden"]);
    assert!(!listed.status.success(), "nothing was loaded");
    let o = lab.pw(
        policy,
        &[
            "fw",
            "apply",
            "--confirm-within",
            "0",
            "--allow-missing-interface",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let listed = lab
        .server
        .exec(&["nft", "list", "table", "inet", "portwarden"]);
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("eth9"));
}

#[test]
fn r_revoke_on_a_store_that_refuses_writes_changes_nothing() {
    let Some(lab) = Lab::applied_9000("rv") else {
        return;
    };
    let o = lab.pw(
        POLICY,
        &["grant", "9000", "--from", "10.99.0.2", "--for", "5m"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The anchor gone: the store refuses writes until `log verify --repair`.
    std::fs::remove_file(lab.dir.join("state/portwarden.head")).unwrap();
    let o = lab.pw(POLICY, &["revoke", "9000", "--from", "10.99.0.2"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was revoked"), "{}", stderr(&o));
    assert!(
        lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]),
        "the kernel lost a grant the store still holds"
    );
    let o = lab.pw(POLICY, &["log", "verify", "--repair"]);
    assert!(stderr(&o).contains("adopted"), "{}", stderr(&o));
    let o = lab.pw(POLICY, &["revoke", "9000", "--from", "10.99.0.2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));
}

#[test]
fn r_filtered_ports_are_reported_filtered_with_bounded_retransmissions() {
    let Some(mut lab) = Lab::new("sf") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    let st = Command::new("ip")
            .args(["netns", "exec", &lab.server.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(
                    b"table inet t { chain i { type filter hook input priority 0; policy drop; ct state established,related accept; tcp dport 9000 accept; }; }\n",
                )?;
                c.wait()
            })
            .unwrap();
    assert!(st.success());
    let o = lab.client.exec(&[
        env!("CARGO_BIN_EXE_portwarden"),
        "scan",
        "10.99.0.1",
        "-Pn",
        "-p",
        "8800-9199",
        "--json",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ports = v["ports"].as_array().unwrap();
    let state = |s: &str| ports.iter().filter(|p| p["state"] == s).count();
    assert_eq!(state("open"), 1, "{v}");
    assert_eq!(state("filtered"), 399, "{v}");
    assert_eq!(v["closed"], 0);
    // A host that never answered a retransmission gets one per port, not --retries.
    let probes = v["probes"].as_u64().unwrap();
    assert!(probes <= 400 + 399, "{probes} probes for 400 ports");
}

/// The server namespace drops everything but 9000 (open) and 9001 (closed: it RSTs).
fn drop_all_but_two(lab: &Lab) {
    let mut c = Command::new("ip")
        .args(["netns", "exec", &lab.server.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
            .take()
            .unwrap()
            .write_all(b"table inet t { chain i { type filter hook input priority 0; policy drop; ct state established,related accept; meta l4proto ipv6-icmp accept; tcp dport { 9000, 9001 } accept; }; }\n")
            .unwrap();
    assert!(c.wait().unwrap().success());
}

fn scan_tables(lab: &Lab) -> String {
    String::from_utf8_lossy(&lab.client.exec(&["nft", "list", "tables"]).stdout).to_string()
}

#[test]
fn r_syn_scan_tells_open_closed_and_filtered_and_cleans_up() {
    let Some(mut lab) = Lab::new("ss") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    drop_all_but_two(&lab);
    for engine in ["--syn", "--connect"] {
        let o = lab.client.exec(&[
            env!("CARGO_BIN_EXE_portwarden"),
            "scan",
            "10.99.0.1",
            "-Pn",
            "-p",
            "8800-9199",
            engine,
            "--json",
            "-q",
        ]);
        assert_eq!(code(&o), 0, "{engine}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let ports = v["ports"].as_array().unwrap();
        let of = |s: &str| -> Vec<u64> {
            ports
                .iter()
                .filter(|p| p["state"] == s)
                .map(|p| p["port"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(of("open"), [9000], "{engine}: {v}");
        assert_eq!(v["closed"], 1, "{engine}: {v}");
        assert_eq!(of("filtered").len(), 398, "{engine}");
        assert!(v["probes"].as_u64().unwrap() <= 400 + 398, "{engine}");
        assert!(
            !scan_tables(&lab).contains("portwarden_scan"),
            "{engine} left its table"
        );
    }
    // IPv6 too (ICMPv6 is let through for neighbour discovery).
    for engine in ["--syn", "--connect"] {
        let o = lab.client.exec(&[
            env!("CARGO_BIN_EXE_portwarden"),
            "scan",
            "fd99::1",
            "-Pn",
            "-p",
            "8990-9010",
            engine,
            "--json",
            "-q",
        ]);
        // Nothing listens on IPv6: 9000 and 9001 answer RST, the rest is dropped.
        assert_eq!(code(&o), 1, "{engine}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["closed"], 2, "{engine}: {v}");
        assert_eq!(v["ports"].as_array().unwrap().len(), 19, "{engine}: {v}");
    }
    // Bad input.
    for bad in [["--rate", "0"], ["--rate", "1000001"]] {
        let o = lab.client.exec(&[
            env!("CARGO_BIN_EXE_portwarden"),
            "scan",
            "10.99.0.1",
            "-Pn",
            "-p",
            "9000",
            bad[0],
            bad[1],
        ]);
        assert_eq!(code(&o), 2, "{bad:?}");
        assert!(stderr(&o).contains("invalid --rate"), "{}", stderr(&o));
    }
}

#[test]
fn r_host_discovery_reports_silent_hosts_down_and_scans_the_rest() {
    let Some(mut lab) = Lab::new("hd") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    // The SYN scan's discovery (ICMP echo, SYN to 80 and 443), and the connect scan's
    // (a connection to 80 and 443, as without raw sockets).
    let scan = |target: &str, engine: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            env!("CARGO_BIN_EXE_portwarden"),
            "scan",
            target,
            "-p",
            "9000",
            engine,
            "--json",
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = lab.client.exec(&args);
        assert!(code(&o) < 2, "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for engine in ["--syn", "--connect"] {
        let v = scan("10.99.0.0/28", engine, &[]);
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        let (up, down) = (list("hosts"), list("hosts_down"));
        assert!(up.contains(&"10.99.0.1".to_string()), "{engine}: {v}");
        assert!(down.contains(&"10.99.0.9".to_string()), "{engine}: {v}");
        assert_eq!(up.len() + down.len(), 16, "{engine}: {v}");
        let open: Vec<&Value> = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "open")
            .collect();
        assert_eq!(open.len(), 1, "{engine}: {v}");
        assert_eq!(open[0]["addr"], "10.99.0.1");
    }
    // A host behind a DROP firewall answers no discovery probe: down, unless -Pn.
    drop_all_but_two(&lab);
    for engine in ["--syn", "--connect"] {
        let v = scan("10.99.0.1", engine, &[]);
        assert_eq!(
            v["hosts_down"],
            serde_json::json!(["10.99.0.1"]),
            "{engine}: {v}"
        );
        let v = scan("10.99.0.1", engine, &["-Pn"]);
        assert!(v.get("hosts_down").is_none(), "{engine}: {v}");
        assert_eq!(v["ports"][0]["state"], "open", "{engine}: {v}");
    }
    // Over IPv6 the same firewall lets ICMPv6 through: an echo reply is enough.
    let v = scan("fd99::1", "--syn", &[]);
    assert!(v.get("hosts_down").is_none(), "{v}");
    assert_eq!(v["hosts"], serde_json::json!(["fd99::1"]), "{v}");
}

#[test]
fn r_a_syn_scan_of_this_host_reports_its_own_source_port_closed() {
    let Some(ns) = Netns::new("self") else {
        return;
    };
    ns.run(&["ip", "link", "set", "lo", "up"]);
    let o = ns.exec(&[
        env!("CARGO_BIN_EXE_portwarden"),
        "scan",
        "127.0.0.1",
        "-p-",
        "--syn",
        "-Pn",
        "--json",
        "-q",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Nothing listens in the fresh namespace: every port closed, none "filtered" by
    // our own RST suppression.
    assert_eq!(v["closed"], 65535, "{}", stderr(&o));
    assert_eq!(v["ports"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn r_an_interrupted_syn_scan_removes_its_table() {
    let Some(lab) = Lab::new("si") else {
        return;
    };
    drop_all_but_two(&lab);
    // A scan of 10.99.0.1 (behind the DROP firewall) from the client, stopped by `sig`
    // once `ready` holds: its exit code and stderr. The signal goes to the scanner
    // itself (ip netns exec execs it: the PID is ours).
    let interrupt = |engine: &[&str], ready: &dyn Fn() -> bool, sig: i32| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.client.name])
            .args([
                env!("CARGO_BIN_EXE_portwarden"),
                "scan",
                "10.99.0.1",
                "-Pn",
                "-p-",
            ])
            .args(engine)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(eventually(5, ready), "{engine:?}: never ready to interrupt");
        // SAFETY: kill(2) on the PID of the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let until = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "{engine:?} did not stop on {sig}");
            // Real time: polling, bounded, for the scan process to stop on its signal.
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status.code(), err)
    };
    for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGTERM, "TERM")] {
        // 65535 ports at 500 probes/s would take minutes: stopped after a moment.
        let (code, err) = interrupt(
            &["--syn", "--rate", "500"],
            &|| scan_tables(&lab).contains("portwarden_scan"),
            sig,
        );
        assert_eq!(code, Some(2), "SIG{name}: {err}");
        assert!(err.contains("interrupted"), "{err}");
        assert!(
            !scan_tables(&lab).contains("portwarden_scan"),
            "SIG{name} left the table"
        );
    }
    // The connect scan stops on a signal too (all 65535 filtered ports take about
    // 12 s; stopped, it ends within a few hundred milliseconds).
    let started = Instant::now();
    let (code, err) = interrupt(
        &["--connect"],
        &|| started.elapsed() > Duration::from_millis(500),
        libc::SIGINT,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("interrupted"), "{err}");
}

#[test]
fn r_syn_scan_without_cap_net_raw_says_so() {
    let Some(lab) = Lab::new("sp") else {
        return;
    };
    // A copy of the binary anyone may run, run as nobody.
    let dir = tempdir("syn-priv");
    let bin = dir.join("portwarden");
    std::fs::copy(env!("CARGO_BIN_EXE_portwarden"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [&*dir, bin.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = lab.client.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        bin.to_str().unwrap(),
        "scan",
        "10.99.0.1",
        "-Pn",
        "-p",
        "9000",
        "--syn",
    ]);
    if stderr(&o).contains("setpriv") {
        eprintln!("SKIP: {}", stderr(&o));
        return;
    }
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("CAP_NET_RAW") && e.contains("-sT"), "{e}");
}

#[test]
fn r_rollback_refuses_a_swapped_snapshot() {
    let Some(lab) = Lab::applied_9000("sh") else {
        return;
    };
    let o = lab.pw(POLICY, &["fw", "apply", "--confirm-within", "1h"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Whoever can write the store swaps the snapshot for an open-everything table.
    let db = lab.dir.join("state/portwarden.db");
    let evil = "table inet portwarden {\n chain input { type filter hook input priority filter; policy accept; }\n}\n";
    let st = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('UPDATE fw_txn SET snapshot=? WHERE state=\"pending\"', (sys.argv[2],)); c.commit()",
                db.to_str().unwrap(),
                evil,
            ])
            .status()
            .unwrap();
    assert!(st.success());
    let o = lab.pw(POLICY, &["fw", "rollback"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("does not match the SHA-256"), "{out}");
    assert_eq!(
        lab.table(),
        "",
        "our table is removed, the swapped one never loaded"
    );
}

/// Every firewall document, as `--json` prints it in a namespace with real nftables,
/// validates against its schema.
#[test]
fn r_firewall_json_documents_match_their_schemas() {
    let Some(lab) = Lab::new("fwjs") else {
        return;
    };
    let pw = |args: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = lab.pw(POLICY, &a);
        assert!(code(&o) < 2, "{args:?}: {}", stderr(&o));
        o
    };
    assert_schema("fw-status", &pw(&["fw", "status"]).stdout);
    assert_schema("fw-diff", &pw(&["fw", "diff"]).stdout);
    let a = assert_schema(
        "fw-apply",
        &pw(&["fw", "apply", "--confirm-within", "1h"]).stdout,
    );
    assert!(a["deadline"].is_i64() && a["watcher_pid"].is_u64(), "{a}");
    let s = assert_schema("fw-status", &pw(&["fw", "status"]).stdout);
    assert_eq!(s["last"]["state"], "pending");
    let c = assert_schema("fw-txn", &pw(&["fw", "confirm"]).stdout);
    assert_eq!(
        (c["action"].as_str(), c["done"].as_bool()),
        (Some("confirm"), Some(true))
    );
    // Nothing pending: the refusal is a document too, and exit 1.
    let o = pw(&["fw", "confirm"]);
    assert_eq!(code(&o), 1);
    assert_eq!(assert_schema("fw-txn", &o.stdout)["done"], false);
    let g = pw(&["grant", "873", "--from", "10.99.0.3", "--for", "5m"]);
    assert_eq!(assert_schema("grant", &g.stdout)["granted"][0]["port"], 873);
    let r = pw(&["revoke", "873", "--from", "10.99.0.3"]);
    assert_eq!(
        assert_schema("revoke", &r.stdout)["revoked"][0]["addr"],
        "10.99.0.3"
    );
    // Again: the grant is gone, and the message says which, not nft's ENOENT.
    let again = lab.pw(POLICY, &["revoke", "873", "--from", "10.99.0.3"]);
    assert_eq!(code(&again), 2);
    assert!(
        stderr(&again).contains("no grant for 873/tcp from 10.99.0.3"),
        "{}",
        stderr(&again)
    );
    assert_schema("fw-diff", &pw(&["fw", "diff"]).stdout);
    assert_schema(
        "fw-apply",
        &pw(&["fw", "apply", "--confirm-within", "1h"]).stdout,
    );
    let r = assert_schema("fw-txn", &pw(&["fw", "rollback"]).stdout);
    assert_eq!(r["action"], "rollback");
    assert!(r["detail"].as_str().unwrap().contains("restored"), "{r}");
}

#[test]
fn r_policy_versions_follow_applies_and_rollbacks() {
    let Some(mut lab) = Lab::new("pv") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    let json = |policy: &str, args: &[&str], schema: &str| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = lab.pw(policy, &a);
        assert!(code(&o) < 2, "{args:?}: {}", stderr(&o));
        assert_schema(schema, &o.stdout)
    };
    let a = json(
        POLICY,
        &["fw", "apply", "--confirm-within", "0"],
        "fw-apply",
    );
    let second = opening_9000();
    let b = json(
        &second,
        &["fw", "apply", "--confirm-within", "0"],
        "fw-apply",
    );
    let (va, vb) = (
        a["version"].as_str().unwrap().to_string(),
        b["version"].as_str().unwrap().to_string(),
    );
    assert_ne!(va, vb);
    let h = json(&second, &["policy", "history"], "policy-history");
    assert_eq!(h["current"], vb.as_str(), "{h:#}");
    assert_eq!(h["adoptions"].as_array().unwrap().len(), 2, "{h:#}");
    assert_eq!(h["adoptions"][0]["how"], "fw apply");
    assert!(h["adoptions"][0]["txn"].is_i64(), "{h:#}");

    // The text comes back as it was applied.
    let o = lab.pw(&second, &["policy", "show", &va[..8]]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), POLICY);

    // From the first to the one in force: the service added, and its firewall rule.
    let o = lab.pw(&second, &["--json", "policy", "diff", &va[..8], "current"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let d = assert_schema("policy-diff", &o.stdout);
    let changes: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [("added".to_string(), "services[extra]".to_string())],
        "{d:#}"
    );
    assert!(
        d["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("+ ") && l.as_str().unwrap().contains("9000")),
        "{d:#}"
    );
    let same = lab.pw(&second, &["policy", "diff", "current", &vb]);
    assert_eq!(code(&same), 0, "{}", stderr(&same));
    assert!(String::from_utf8_lossy(&same.stdout).contains("are the same policy"));

    // An unconfirmed apply rolled back is not the version in force.
    let third = format!("{second}\n# a comment only\n");
    let c = json(
        &third,
        &["fw", "apply", "--confirm-within", "1h"],
        "fw-apply",
    );
    let h = json(&third, &["policy", "history"], "policy-history");
    assert_eq!(h["current"], c["version"], "{h:#}");
    let o = lab.pw(&third, &["fw", "rollback"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let h = json(&third, &["policy", "history"], "policy-history");
    assert_eq!(h["current"], vb.as_str(), "{h:#}");
    assert_eq!(h["adoptions"][2]["txn_state"], "rolled-back", "{h:#}");
    assert_eq!(h["adoptions"][2]["in_force"], false, "{h:#}");

    // Exported to git: a commit per adoption, by its actor, with its reason; again, only
    // what is new; and a revision of it proposed back round-trips to the same version.
    let repo = lab.dir.join("repo");
    let ex = json(
        &third,
        &["policy", "history", "--export-git", repo.to_str().unwrap()],
        "policy-history",
    );
    assert_eq!(ex["exported"], 3, "{ex:#}");
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let log = git(&["log", "--format=%s|%an"]);
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.lines().all(|l| l.starts_with("fw apply of ")), "{log}");
    assert_eq!(git(&["show", "HEAD~2:policy.toml"]), POLICY);
    assert!(
        git(&["log", "-1", "--format=%B"])
            .contains(&format!("Version: {}", c["version"].as_str().unwrap()))
    );
    let again = json(
        &third,
        &["policy", "history", "--export-git", repo.to_str().unwrap()],
        "policy-history",
    );
    assert_eq!(again["exported"], 0, "{again:#}");
    let spec = format!("{}@HEAD~2", repo.display());
    let r = json(
        &third,
        &[
            "change",
            "request",
            "--from-git",
            &spec,
            "--reason",
            "back to a",
        ],
        "change",
    );
    assert_eq!(r["version"], va.as_str(), "{r:#}");
    assert!(r["source"].as_str().unwrap().starts_with("git "), "{r:#}");

    // Bad versions: exit 2, said plainly.
    for (bad, why) in [
        ("abc", "at least 6 hex digits"),
        ("zzzzzzzz", "at least 6 hex digits"),
        ("000000", "no policy version 000000"),
    ] {
        let o = lab.pw(&third, &["policy", "show", bad]);
        assert_eq!(code(&o), 2, "{bad}");
        assert!(stderr(&o).contains(why), "{bad}: {}", stderr(&o));
    }
    // The ledger holds every adoption, and still verifies.
    assert_eq!(
        actions(&lab)
            .iter()
            .filter(|a| a.as_str() == "policy.adopt")
            .count(),
        3
    );
    assert_eq!(code(&lab.pw(&third, &["log", "verify"])), 0);
}

impl Lab {
    /// `pw` as `sudo` from `who` (the ledger's actor), with `env` set.
    fn pw_as(&self, who: &str, policy: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut env = env.to_vec();
        env.insert(0, ("SUDO_USER", who));
        self.pw_in(&format!("policy-{who}.toml"), policy, args, &env)
    }
}

#[test]
fn r_a_change_is_requested_approved_by_another_applied_and_rolled_back() {
    let Some(mut lab) = Lab::new("chg") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    let open9000 = || lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]);
    let o = lab.pw_as(
        "alice",
        POLICY,
        &["--json", "fw", "apply", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first: Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = first["version"].as_str().unwrap().to_string();
    assert!(!open9000());

    // A change that drops the management path, or the SSH peer it comes from (management
    // from 10.99.0.2 only, a session from 10.99.0.3), is refused at request time with
    // what it would lock out; nothing is recorded.
    let moved = POLICY.replace("from = [\"10.99.0.2/32\"]", "from = [\"10.98.0.0/16\"]");
    assert_ne!(moved, POLICY);
    let o = lab.pw_as(
        "alice",
        &moved,
        &["change", "request", "--reason", "r"],
        &[],
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("port 22/tcp from 10.99.0.2/32"),
        "{}",
        stderr(&o)
    );
    let o = lab.pw_as(
        "alice",
        &opening_9000(),
        &["change", "request", "--reason", "r"],
        &[("SSH_CONNECTION", "10.99.0.3 50000 10.99.0.1 22")],
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("current SSH peer 10.99.0.3"),
        "{}",
        stderr(&o)
    );

    // Requested: the pre-flight shows the new service and the rule it opens.
    let o = lab.pw_as(
        "alice",
        &opening_9000(),
        &[
            "--json",
            "change",
            "request",
            "--reason",
            "open 9000 to the mirrors",
            "--ticket",
            "OPS-1",
        ],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = assert_schema("change", &o.stdout);
    assert_eq!(
        (c["id"].as_i64(), c["state"].as_str()),
        (Some(1), Some("requested")),
        "{c:#}"
    );
    assert_eq!(c["base"], first.as_str());
    let pre = &c["preflight"];
    assert_eq!(
        pre["diff"]["changes"][0]["path"], "services[extra]",
        "{pre:#}"
    );
    assert!(
        pre["diff"]["rules"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .starts_with("+ ")
            && l.as_str().unwrap().contains("9000")),
        "{pre:#}"
    );
    assert_eq!(pre["nft_check"], "ok");

    // Her own approval is refused (exit 2, on the record); another actor's is taken.
    let o = lab.pw_as("alice", POLICY, &["change", "approve", "1"], &[]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("another actor must review it"),
        "{}",
        stderr(&o)
    );
    let o = lab.pw_as("bob", POLICY, &["--json", "change", "approve", "1"], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = assert_schema("change", &o.stdout);
    assert_eq!(c["state"], "approved");

    // Applied: the new source's connection succeeds.
    let o = lab.pw_as(
        "bob",
        POLICY,
        &["--json", "change", "apply", "1", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(assert_schema("change", &o.stdout)["state"], "applied");
    assert!(open9000(), "the change did not open 9000");
    // Back to the first policy would leave the listener on 9000 unmanaged: it says so.
    let o = lab.pw_as(
        "alice",
        POLICY,
        &["--json", "change", "request", "--reason", "undo"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = assert_schema("change", &o.stdout);
    assert!(
        c["preflight"]["unmanaged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().unwrap().contains("9000")),
        "{c:#}"
    );
    let o = lab.pw_as("bob", POLICY, &["--json", "change", "list"], &[]);
    assert_eq!(
        assert_schema("changes", &o.stdout)["changes"][0]["state"],
        "applied"
    );

    // Rolled back to the first version: blocked again.
    let o = lab.pw_as(
        "bob",
        POLICY,
        &[
            "change",
            "rollback",
            "--to",
            &first[..10],
            "--confirm-within",
            "0",
        ],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!open9000(), "the rollback left 9000 open");
    let o = lab.pw_as("bob", POLICY, &["--json", "change", "show", "1"], &[]);
    assert_eq!(assert_schema("change", &o.stdout)["state"], "rolled-back");

    // The ledger holds every step, with versions and actors, and verifies.
    let o = lab.pw_as("bob", POLICY, &["log", "--json"], &[]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps: Vec<(String, String)> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["subject"] == "change:1")
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let actions: Vec<&str> = steps.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "change.request",
            "change.refused",
            "change.approve",
            "change.apply",
            "change.loaded",
            "change.rollback"
        ],
        "{steps:?}"
    );
    assert!(
        steps[0].1.contains("sudo from alice") && steps[2].1.contains("sudo from bob"),
        "{steps:?}"
    );
    assert_eq!(code(&lab.pw_as("bob", POLICY, &["log", "verify"], &[])), 0);

    // Once the policy in force requires approval, `fw apply` of an unapproved one is
    // exit 2 and names the change to request; nothing is applied.
    let strict = format!("{POLICY}\n[change]\nrequire_approval = true\n");
    let o = lab.pw_as(
        "alice",
        &strict,
        &["fw", "apply", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("change request --policy"),
        "{}",
        stderr(&o)
    );
    let o = lab.pw_as(
        "alice",
        &strict,
        &["--json", "change", "request", "--reason", "lock it"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"], 3);
    // Applying it unapproved is refused by the state machine.
    let o = lab.pw_as(
        "alice",
        POLICY,
        &["change", "apply", "3", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("requires approval"), "{}", stderr(&o));
    assert_eq!(
        code(&lab.pw_as("bob", POLICY, &["change", "approve", "3"], &[])),
        0
    );
    let o = lab.pw_as(
        "alice",
        POLICY,
        &["change", "apply", "3", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = lab.pw_as(
        "alice",
        &opening_9000(),
        &["fw", "apply", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!open9000());
    // A daemon run on the loose policy adopts it, but does not lower the bar: fw apply of
    // it is still refused, and it is no rollback target.
    let loose = lab.dir.join("loose.toml");
    let loose_text = format!("{}\n# served\n", opening_9000());
    std::fs::write(&loose, &loose_text).unwrap();
    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server.name,
            env!("CARGO_BIN_EXE_portwarden"),
        ])
        .args(["--policy", loose.to_str().unwrap()])
        .args(["--state-dir", lab.dir.join("state").to_str().unwrap()])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = eventually(20, || {
        let o = lab.pw_as("bob", POLICY, &["--json", "policy", "history"], &[]);
        let h: Value = serde_json::from_slice(&o.stdout).unwrap();
        h["adoptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["how"] == "serve")
    });
    // SAFETY: kill(2) of the daemon this test spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert!(served, "the daemon never adopted its policy");
    let o = lab.pw_as(
        "mallory",
        &loose_text,
        &["fw", "apply", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = lab.pw_as("bob", POLICY, &["--json", "policy", "history"], &[]);
    let h: Value = serde_json::from_slice(&o.stdout).unwrap();
    let served = h["adoptions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|a| a["how"] == "serve")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let o = lab.pw_as(
        "mallory",
        POLICY,
        &[
            "change",
            "rollback",
            "--to",
            &served,
            "--confirm-within",
            "0",
        ],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("never applied and confirmed"),
        "{}",
        stderr(&o)
    );
    assert!(!open9000());

    // A request made against another version than the one in force is stale.
    let o = lab.pw_as(
        "alice",
        &opening_9000(),
        &["change", "request", "--reason", "again"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = lab.pw_as(
        "alice",
        &format!("{strict}\n# other\n"),
        &["change", "request", "--reason", "other"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        code(&lab.pw_as("bob", POLICY, &["change", "approve", "5"], &[])),
        0
    );
    assert_eq!(
        code(&lab.pw_as(
            "alice",
            POLICY,
            &["change", "apply", "5", "--confirm-within", "0"],
            &[]
        )),
        0
    );
    let o = lab.pw_as("bob", POLICY, &["change", "approve", "4"], &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("is stale"), "{}", stderr(&o));
    let o = lab.pw_as("bob", POLICY, &["--json", "change", "show", "4"], &[]);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["state"],
        "expired"
    );
}

#[test]
fn r_change_hooks_abort_roll_back_and_are_killed_when_they_hang() {
    let Some(mut lab) = Lab::new("hook") else {
        return;
    };
    lab.serve(&["hold@10.99.0.1:9000"]);
    let open9000 = || lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]);
    let o = lab.pw_as(
        "alice",
        POLICY,
        &["fw", "apply", "--confirm-within", "0"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = lab.dir.join("hook-out");
    let with_hooks = |hooks: &str| format!("{}\n[change]\n{hooks}\n", opening_9000());
    let sh = |script: &str| format!("[\"/bin/sh\", \"-c\", {script:?}]");
    let state = |id: &str| {
        let o = lab.pw_as("alice", POLICY, &["--json", "change", "show", id], &[]);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let request = |policy: &str| {
        let o = lab.pw_as(
            "alice",
            policy,
            &["--json", "change", "request", "--reason", "hooks"],
            &[],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"].to_string()
    };
    let apply = |id: &str, extra: &[&str]| {
        let mut a = vec!["change", "apply", id, "--confirm-within", "0"];
        a.extend_from_slice(extra);
        lab.pw_as("alice", POLICY, &a, &[])
    };

    // A failing pre-apply hook aborts: nothing applied, the request is back to requested.
    let p = with_hooks(&format!(
        "pre_apply = {}",
        sh(&format!(
            "echo \"$PORTWARDEN_PHASE $PORTWARDEN_CHANGE_ID\" > {}; exit 3",
            out.display()
        ))
    ));
    let id = request(&p);
    let o = apply(&id, &[]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("pre_apply hook exited 3"),
        "{}",
        stderr(&o)
    );
    assert!(!open9000());
    assert_eq!(state(&id), "requested");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("pre-apply {id}\n")
    );

    // A hook that hangs is killed at its timeout, and has failed.
    let id = request(&with_hooks(
        "pre_apply = [\"/bin/sleep\", \"30\"]\nhook_timeout = \"1s\"",
    ));
    let t0 = Instant::now();
    let o = apply(&id, &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("ran past its 1s"), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(!open9000());

    // A failing post-apply hook rolls the change back (it saw the diff and the txn).
    let p = with_hooks(&format!(
        "post_apply = {}",
        sh(&format!(
            "printf '%s\\n%s' \"$PORTWARDEN_TXN\" \"$PORTWARDEN_DIFF\" > {}; exit 1",
            out.display()
        ))
    ));
    let id = request(&p);
    let o = apply(&id, &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("rolled back"), "{}", stderr(&o));
    assert!(!open9000(), "still open after the rollback");
    assert_eq!(state(&id), "rolled-back");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(seen.contains("port = 9000"), "{seen}");

    // With --keep-on-hook-failure it stays, and the failure is on the record.
    let id = request(&format!("{p}\n# keep\n"));
    let o = apply(&id, &["--keep-on-hook-failure"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(open9000());
    assert_eq!(state(&id), "applied");
    assert!(actions(&lab).iter().any(|a| a == "change.hook-failed"));
    assert_eq!(code(&lab.pw_as("bob", POLICY, &["log", "verify"], &[])), 0);
}
