//! CLI integration tests: spawn the built binary, assert on `--json` output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use portwarden_testkit::{Netns, tempdir};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portwarden"));
    c.env_remove("PORTWARDEN_POLICY")
        .env_remove("PORTWARDEN_STATE");
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn portwarden")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_runs_against_the_baseline() {
    let o = run(&["check", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["policy"], "the built-in baseline policy");
    // Exit 1 exactly when a finding at medium or above exists (the default --fail-on):
    // this host's own listeners decide which.
    let worth_fixing = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| matches!(f["severity"].as_str(), Some("medium" | "high" | "critical")));
    assert_eq!(code(&o), i32::from(worth_fixing), "{}", stderr(&o));
    let o = run(&["check", "--fail-on", "critical", "-q"]);
    let critical = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["severity"] == "critical");
    assert_eq!(code(&o), i32::from(critical), "{}", stderr(&o));
    let ids: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"management-open-to-all"), "{ids:?}");
    // --fail-on low turns the low finding into a negative answer.
    let o = run(&["check", "--fail-on", "low", "-q"]);
    assert_eq!(code(&o), 1);
    assert!(o.stdout.is_empty());
}

#[test]
fn check_exits_1_on_high_findings() {
    let dir = tempdir("high");
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        "version = 1\n[[service]]\nname = \"db\"\ncatalog = \"redis\"\nzone = \"external\"\nmax_conn_per_source = 5\n",
    )
    .unwrap();
    let o = run(&["--policy", p.to_str().unwrap(), "check", "--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let high: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "high")
        .collect();
    assert!(high.iter().any(|f| f["id"] == "high-risk-exposed"), "{v}");
}

#[test]
fn check_stops_on_an_invalid_policy() {
    let p = root().join("tests/data/bad-policies/01-port-out-of-range.toml");
    let o = run(&["--policy", p.to_str().unwrap(), "check"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(":5:8: port 70000 is out of range 1-65535"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn policy_check_accepts_examples_and_the_starter() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let dir = tempdir("starter");
    let p = dir.join("policy.toml");
    let o = run(&["policy", "init", "-o", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn every_bad_policy_exits_2_with_its_diagnostic() {
    let dir = root().join("tests/data/bad-policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let first = src
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# expect: ")
            .split(" ;; ")
            .next()
            .unwrap()
            .trim_end_matches('*')
            .to_string();
        let o = run(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{}", path.display());
        let want = format!("{}:{first}", path.display());
        assert!(
            stderr(&o).contains(&want),
            "{}: want {want}\n{}",
            path.display(),
            stderr(&o)
        );
        // The caret snippet follows the location line.
        assert!(stderr(&o).contains(" | "), "{}", stderr(&o));
        n += 1;
    }
    assert!(n >= 30);
}

#[test]
fn policy_check_json_lists_every_error() {
    let p = root().join("tests/data/bad-policies/37-many-errors.toml");
    let o = run(&["policy", "check", "--json", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["valid"], false);
    assert_eq!(v[0]["errors"].as_array().unwrap().len(), 4);
    assert_eq!(v[0]["errors"][0]["line"], 5);
    assert_eq!(v[0]["errors"][0]["col"], 8);
}

#[test]
fn policy_init_never_clobbers_without_force() {
    let dir = tempdir("init");
    let p = dir.join("policy.toml");
    std::fs::write(&p, "# mine\n").unwrap();
    let o = run(&["policy", "init", "-o", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("already exists: pass --force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "# mine\n");
    let o = run(&["policy", "init", "-o", p.to_str().unwrap(), "--force"]);
    assert_eq!(code(&o), 0);
    assert!(
        std::fs::read_to_string(&p)
            .unwrap()
            .starts_with("# portwarden policy")
    );
    // To stdout, the starter is printed whole.
    let o = run(&["policy", "init"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("version = 1"));
}

#[test]
fn catalog_lists_and_shows() {
    let o = run(&["catalog", "--json"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().len() >= 60);
    let o = run(&["catalog", "mariadb", "--json"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "mysql");
    assert_eq!(v["tls"], "in-protocol");
    assert_eq!(v["ports"][0], "3306/tcp");
    let o = run(&["catalog", "postgress"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("did you mean `postgres`?"),
        "{}",
        stderr(&o)
    );
}

/// Durations, ports and addresses are parsed with the flags: a bad one is a usage error
/// (exit 2, one line) before anything runs, so not even the state directory is made.
#[test]
fn r_bad_flag_values_are_usage_errors_before_anything_runs() {
    let dir = tempdir("flags");
    let state = dir.join("state");
    for args in [
        &["alloc", "svc", "--ttl", "bogus"][..],
        &["renew", "1", "--ttl", "3x"],
        &["log", "--since", "5q"],
        &["grant", "22", "--from", "1.2.3", "--for", "1h"],
        &["grant", "22", "--from", "10.0.0.1", "--for", "forever"],
        &["grant", "22/sctp", "--from", "10.0.0.1", "--for", "1h"],
        &["revoke", "70000", "--from", "10.0.0.1"],
        &["fw", "apply", "--confirm-within", "soon"],
        &["scan", "127.0.0.1", "--exclude-ports", "0"],
        &["ls", "--port", "9-1"],
        &["who", "0"],
        &["who", "22/"],
        &["grant", "22", "--from", "0.0.0.0", "--for", "1h"],
        &["grant", "22", "--from", "ff02::1", "--for", "1h"],
    ] {
        let o = bin()
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with("portwarden: error: invalid value"),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            !state.exists(),
            "{args:?} ran before its flags were checked"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["check", "--fail-on", "severe"],
        &["policy", "check"],
        &["frobnicate"],
        &["completions", "tcsh"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}");
    }
    let o = run(&["--policy", "/nonexistent/p.toml", "check"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read policy /nonexistent/p.toml"));
}

#[test]
fn completions_and_man_render() {
    let o = run(&["completions", "bash"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("portwarden"));
    let o = run(&["man"]);
    assert_eq!(code(&o), 0);
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH portwarden"));
    // The sections a man page has, and no reference to a page that does not exist.
    for section in [
        ".SH COMMANDS",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    assert!(!page.contains("portwarden\\-check(1)"), "{page}");
}

/// `--json` prints a JSON document on every command that has one, never text.
#[test]
fn r_json_means_json() {
    let dir = tempdir("json");
    let state = dir.join("state");
    for args in [
        &["report"][..],
        &["fw", "plan"],
        &["fw", "plan", "--format", "iptables"],
        &["log", "prune", "--dry-run"],
        &["pools", "reserve", "--dry-run"],
    ] {
        let o = bin()
            .arg("--state-dir")
            .arg(&state)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(code(&o) < 2, "{args:?}: {}", stderr(&o));
        let v: Result<Value, _> = serde_json::from_slice(&o.stdout);
        assert!(
            v.is_ok(),
            "{args:?}: not JSON: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // `log head` and `log verify` give the head in the same shape.
    let policy = dir.join("p.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[pool]]\nname = \"p\"\nrange = \"20000-20099\"\n[[service]]\nname = \"s\"\npool = \"p\"\nzone = \"localhost\"\n",
    )
    .unwrap();
    let pw = |args: &[&str]| {
        bin()
            .arg("--state-dir")
            .arg(&state)
            .arg("--policy")
            .arg(&policy)
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(code(&pw(&["alloc", "s", "--no-probe"])), 0);
    let head: Value = serde_json::from_slice(&pw(&["--json", "log", "head"]).stdout).unwrap();
    let verify: Value = serde_json::from_slice(&pw(&["--json", "log", "verify"]).stdout).unwrap();
    assert_eq!(head["seq"], 1, "{head}");
    assert_eq!(verify["head"], head, "{verify}");
}

#[test]
fn broken_pipe_exits_0_quietly() {
    let mut child = bin()
        .args(["catalog"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the child writes: its first write meets EPIPE.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn examples_dir_exists() {
    assert!(Path::new(&root().join("examples/mirror-01.toml")).exists());
}

mod inventory {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn json_of(args: &[&str]) -> (i32, Value) {
        let o = run(args);
        let v = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&o)));
        (code(&o), v)
    }

    #[test]
    fn ls_json_reports_our_sockets_with_pids_and_states() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lp = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", lp)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let cp = c.local_addr().unwrap().port();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up = u.local_addr().unwrap().port();
        let me = std::process::id().to_string();

        let (status, v) = json_of(&["ls", "--json", "--pid", &me]);
        assert_eq!(status, 0);
        let got: BTreeSet<(String, String, u64, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["local_addr"].as_str().unwrap().starts_with("127."))
            .map(|s| {
                (
                    s["protocol"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                    s["local_port"].as_u64().unwrap(),
                    s["remote_port"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, u64, u64)> = [
            ("tcp", "listen", lp, 0),
            ("tcp", "established", cp, lp),
            ("tcp", "established", lp, cp),
            ("udp", "unconn", up, 0),
        ]
        .into_iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), u64::from(c), u64::from(d)))
        .collect();
        assert_eq!(got, want);
        for s in v.as_array().unwrap() {
            let pids: Vec<u64> = s["owners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["pid"].as_u64().unwrap())
                .collect();
            assert!(pids.contains(&u64::from(std::process::id())), "{s}");
        }

        // Listeners only, TCP only, by port.
        let port = lp.to_string();
        let (_, v) = json_of(&["ls", "--json", "-l", "-t", "--port", &port]);
        let states: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["listen"]);

        // Summary: the listener's row counts its one accepted connection.
        let (_, v) = json_of(&["ls", "--json", "--summary", "--port", &port]);
        assert_eq!(v[0]["port"], lp);
        assert_eq!(v[0]["states"]["established"], 1);
        drop((l, c, u));
    }

    #[test]
    fn who_finds_the_listener_owner_and_exits_1_on_a_free_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        let (status, v) = json_of(&["who", &format!("{port}/tcp"), "--json"]);
        assert_eq!(status, 0);
        let owners = &v["sockets"][0]["owners"];
        assert_eq!(owners[0]["pid"], std::process::id());
        let o = run(&["who", &port]);
        assert_eq!(code(&o), 0);
        assert!(String::from_utf8_lossy(&o.stdout).contains("LISTEN"));

        // A port we held and released is free (nothing else binds loopback ports here).
        let free = {
            let t = TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap().port()
        };
        let o = run(&["who", &format!("{free}/tcp")]);
        assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
        drop(l);
    }

    #[test]
    fn r3_bad_inventory_input_exits_2_with_one_message() {
        for (args, msg) in [
            (&["who", "0"][..], "port 0 is out of range 1-65535"),
            (&["who", "70000"], "port 70000 is out of range 1-65535"),
            (&["who", "80/sctp"], "unknown protocol `sctp`"),
            (&["ls", "--port", "5-3"], "range 5-3 is reversed"),
            (
                &["ls", "--state", "sleepy"],
                "unknown socket state `sleepy`",
            ),
        ] {
            let o = run(args);
            assert_eq!(code(&o), 2, "{args:?}");
            let e = stderr(&o);
            assert!(e.contains(msg), "{args:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{args:?}: one message: {e}");
        }
    }

    #[test]
    fn ls_into_a_closed_pipe_exits_0_quietly() {
        let _l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut child = bin()
            .args(["ls", "-p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(!e.contains("error"), "{e}");
    }
}

mod leases {
    use super::*;
    use std::collections::{BTreeSet, HashSet};
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    const POLICY: &str = r#"
version = 1
[[pool]]
name = "bulk"
range = "1100-19999"
lease_ttl = "1h"
[[pool]]
name = "tiny"
range = "21000-21002"
[[service]]
name = "bulk"
pool = "bulk"
zone = "localhost"
process = "definitely-not-running"
[[service]]
name = "small"
pool = "tiny"
zone = "localhost"
"#;

    struct Env {
        dir: portwarden_testkit::Dir,
        policy: String,
        state: String,
    }

    fn env(tag: &str) -> Env {
        let dir = tempdir(tag);
        let p = dir.join("policy.toml");
        std::fs::write(&p, POLICY).unwrap();
        Env {
            policy: p.display().to_string(),
            state: dir.join("state").display().to_string(),
            dir,
        }
    }

    impl Env {
        fn cmd(&self, args: &[&str]) -> Command {
            let mut c = bin();
            c.args(["--policy", &self.policy, "--state-dir", &self.state]);
            c.args(args);
            c.env("USER", "alice");
            c
        }
        fn run(&self, args: &[&str]) -> Output {
            self.cmd(args).output().unwrap()
        }
        fn json(&self, args: &[&str]) -> Value {
            let o = self.run(args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            serde_json::from_slice(&o.stdout).unwrap()
        }
        fn db(&self) -> PathBuf {
            PathBuf::from(&self.state).join("portwarden.db")
        }
    }

    #[test]
    fn r_lease_durations_and_counts_are_bounded() {
        let e = env("bounds");
        let o = e.run(&["alloc", "bulk", "--ttl", "2h"]);
        assert_eq!(code(&o), 2);
        assert!(
            stderr(&o).contains("pool `bulk` leases for at most 1h"),
            "{}",
            stderr(&o)
        );
        let o = e.run(&["alloc", "bulk", "--ttl", "99999999999999999999d"]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains("too large"), "{}", stderr(&o));
        let o = e.run(&["alloc", "bulk", "--count", "0"]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(
            !std::path::Path::new(&e.state)
                .join("portwarden.db")
                .exists(),
            "nothing stored"
        );
        let v = e.json(&["alloc", "bulk", "--ttl", "30m", "--json", "--no-probe"]);
        let id = v[0]["id"].as_i64().unwrap().to_string();
        let o = e.run(&["renew", &id, "--ttl", "61m"]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains("at most 1h"), "{}", stderr(&o));
        assert_eq!(
            e.json(&["leases", "--json"])[0]["expires_at"],
            v[0]["expires_at"]
        );
    }

    #[test]
    fn r_first_allocs_race_on_a_fresh_state_dir() {
        for round in 0..10 {
            let e = env(&format!("first{round}"));
            let kids: Vec<_> = (0..8)
                .map(|_| {
                    e.cmd(&["alloc", "bulk", "--no-probe", "--json"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for k in kids {
                let o = k.wait_with_output().unwrap();
                assert_eq!(code(&o), 0, "round {round}: {}", stderr(&o));
            }
            assert_eq!(e.json(&["leases", "--json"]).as_array().unwrap().len(), 8);
            let _ = std::fs::remove_dir_all(&e.dir);
        }
    }

    #[test]
    fn r_read_only_media_reads_work_and_writes_say_so_once() {
        let e = env("ro");
        e.json(&["alloc", "small", "--json", "--no-probe"]);
        let exe = env!("CARGO_BIN_EXE_portwarden");
        let ro = |args: &str| {
            Command::new("unshare")
                .args([
                    "-m",
                    "sh",
                    "-c",
                    &format!(
                        "mount --bind {s} {s} && mount -o remount,ro,bind {s} {s} && exec {exe} --policy {p} --state-dir {s} {args}",
                        s = e.state,
                        p = e.policy
                    ),
                ])
                .env("USER", "alice")
                .output()
                .unwrap()
        };
        let probe = ro("leases --json");
        if stderr(&probe).contains("mount") || stderr(&probe).contains("unshare") {
            eprintln!(
                "SKIP: cannot make a read-only mount here: {}",
                stderr(&probe)
            );
            return;
        }
        assert_eq!(code(&probe), 0, "{}", stderr(&probe));
        let v: Value = serde_json::from_slice(&probe.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        let o = ro("log verify");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = ro("alloc small --no-probe");
        assert_eq!(code(&o), 2);
        let err = stderr(&o);
        assert!(err.contains("is read-only"), "{err}");
        assert_eq!(err.matches("unable to open").count(), 0, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn alloc_renew_release_and_the_ledger() {
        let e = env("life");
        let v = e.json(&["alloc", "small", "--json", "--seed", "1"]);
        let id = v[0]["id"].as_i64().unwrap().to_string();
        let port = v[0]["port"].as_u64().unwrap();
        assert!((21000..=21002).contains(&port));
        assert_eq!(v[0]["owner"], "alice");
        // Someone else may not renew or release it.
        let o = e.run(&["release", &id, "--owner", "mallory"]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains("belongs to `alice`"), "{}", stderr(&o));
        let o = e.run(&["renew", &id, "--owner", "mallory"]);
        assert_eq!(code(&o), 2);
        assert_eq!(e.json(&["leases", "--json"]).as_array().unwrap().len(), 1);
        let o = e.run(&["renew", &id, "--ttl", "2h"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = e.run(&["release", &id]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = e.run(&["release", &id]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains(&format!("no lease with id {id}")));
        let log = e.json(&["log", "--json"]);
        let actions: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["lease.alloc", "lease.renew", "lease.release"]);
        let o = e.run(&["log", "verify"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
        let head = String::from_utf8_lossy(&e.run(&["log", "head"]).stdout).into_owned();
        assert!(head.starts_with("3:"), "{head}");
        // What `log head` prints is what `--expect-head` takes.
        let o = e.run(&["log", "verify", "--expect-head", head.trim()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let export =
            String::from_utf8_lossy(&e.run(&["log", "export", "--format", "jsonl"]).stdout)
                .into_owned();
        assert_eq!(export.lines().count(), 3);
    }

    #[test]
    fn an_exhausted_pool_exits_1_and_writes_nothing() {
        let e = env("exhaust");
        let o = e.run(&["alloc", "small", "--count", "3"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let before = std::fs::read(e.db()).unwrap().len();
        let log_before = e.json(&["log", "--json"]).as_array().unwrap().len();
        let o = e.run(&["alloc", "small"]);
        assert_eq!(code(&o), 1);
        let msg = stderr(&o);
        assert!(
            msg.contains("pool `tiny` is exhausted") && msg.contains("3 ports"),
            "{msg}"
        );
        assert_eq!(
            e.json(&["log", "--json"]).as_array().unwrap().len(),
            log_before
        );
        assert_eq!(e.json(&["leases", "--json"]).as_array().unwrap().len(), 3);
        let _ = before;
    }

    #[test]
    fn bad_lease_input_exits_2() {
        let e = env("bad");
        for args in [
            &["alloc", "nope"][..],
            &["alloc", "small", "--pool", "nope"],
            &["alloc", "small", "--ttl", "0s"],
            &["alloc", "small", "--port", "0"],
            &["release", "999"],
            &["renew", "999"],
        ] {
            let o = e.run(args);
            assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
            assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
        }
    }

    #[test]
    fn corrupt_or_foreign_store_exits_2_untouched() {
        let e = env("corrupt");
        std::fs::create_dir_all(&e.state).unwrap();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(e.db(), &junk).unwrap();
        for args in [&["alloc", "small"][..], &["leases"], &["log", "verify"]] {
            let o = e.run(args);
            assert_eq!(code(&o), 2, "{args:?}");
            assert!(
                stderr(&o).contains("not a usable database"),
                "{}",
                stderr(&o)
            );
        }
        assert_eq!(std::fs::read(e.db()).unwrap(), junk);
    }

    #[test]
    fn log_verify_names_the_tampered_record() {
        let e = env("tamper");
        let o = e.run(&["alloc", "bulk", "--count", "5", "--no-probe"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let status = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                 c.execute('DROP TRIGGER ledger_no_update'); \
                 c.execute(\"UPDATE ledger SET subject='1/tcp' WHERE seq=3\"); c.commit()",
                e.db().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let o = e.run(&["log", "verify"]);
        assert_eq!(code(&o), 1);
        assert!(String::from_utf8_lossy(&o.stdout).contains("broken at seq 3"));
        let o = e.run(&["check", "--json", "--fail-on", "critical"]);
        assert_eq!(code(&o), 1, "a broken ledger is a critical finding");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == "ledger-broken")
        );
    }

    #[test]
    fn eight_processes_allocate_without_duplicates() {
        let e = env("contention");
        // Create the store first so the writers race on allocations, not on creation.
        assert_eq!(code(&e.run(&["alloc", "small"])), 0);
        let children: Vec<_> = (0..8)
            .map(|i| {
                e.cmd(&[
                    "alloc",
                    "bulk",
                    "--count",
                    "2000",
                    "--owner",
                    &format!("w{i}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let mut printed = Vec::new();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            printed.extend(
                // `ID PORT PROTO …` rows after one header line.
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()),
            );
        }
        assert_eq!(printed.len(), 16_000);
        let unique: HashSet<u16> = printed.iter().copied().collect();
        assert_eq!(unique.len(), 16_000, "a port was granted twice");
        let leases = e.json(&["leases", "--json"]);
        assert_eq!(leases.as_array().unwrap().len(), 16_001);
        let o = e.run(&["log", "verify"]);
        assert_eq!(code(&o), 0);
    }

    #[test]
    fn killed_allocators_leave_a_consistent_store() {
        let e = env("crash");
        assert_eq!(code(&e.run(&["alloc", "small"])), 0);
        let mut printed: Vec<u16> = Vec::new();
        let mut seed: u64 = 0x9e37_79b9;
        for _round in 0..3 {
            let mut kids: Vec<_> = (0..4)
                .map(|_| {
                    e.cmd(&["alloc", "bulk", "--count", "100000", "--no-probe"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let readers: Vec<_> = kids
                .iter_mut()
                .map(|k| {
                    let out = k.stdout.take().unwrap();
                    std::thread::spawn(move || {
                        BufReader::new(out)
                            .lines()
                            .map_while(Result::ok)
                            // `ID PORT PROTO …` rows after a header.
                            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u16>().ok())
                            .collect::<Vec<u16>>()
                    })
                })
                .collect();
            for k in &mut kids {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let wait = Duration::from_millis(50 + seed % 250);
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                k.kill().unwrap(); // SIGKILL, by the PID we started
                k.wait().unwrap();
            }
            for r in readers {
                printed.extend(r.join().unwrap());
            }
        }
        assert!(!printed.is_empty());
        let o = e.run(&["log", "verify"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
        let leases = e.json(&["leases", "--json"]);
        let leased: Vec<u64> = leases
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["port"].as_u64().unwrap())
            .collect();
        let set: BTreeSet<u64> = leased.iter().copied().collect();
        assert_eq!(set.len(), leased.len(), "duplicate leases");
        for p in &printed {
            assert!(
                set.contains(&u64::from(*p)),
                "port {p} was printed as granted but is not leased"
            );
        }
        let _ = &e.dir;
    }

    #[test]
    fn check_reports_lease_rules() {
        let e = env("rules");
        let o = e.run(&["alloc", "small", "--count", "3"]);
        assert_eq!(code(&o), 0);
        let v = e.json(&["check", "--json", "--fail-on", "critical"]);
        let ids: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"pool-utilisation"), "{ids:?}");
        // A short lease expires and is reported until reclaim retires it.
        let o = e.run(&["alloc", "bulk", "--ttl", "1s", "--no-probe"]);
        assert_eq!(code(&o), 0);
        std::thread::sleep(Duration::from_millis(2100));
        let v = e.json(&["check", "--json", "--fail-on", "critical"]);
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == "expired-lease"),
            "{v}"
        );
        let r = e.json(&["reclaim", "--dry-run", "--json"]);
        assert_eq!(r.as_array().unwrap().len(), 1);
        assert_eq!(e.json(&["leases", "--json"]).as_array().unwrap().len(), 4);
        let r = e.json(&["reclaim", "--json"]);
        assert_eq!(r[0]["action"]["retire"], "expired");
        assert_eq!(e.json(&["leases", "--json"]).as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_lease_held_by_a_foreign_process_is_a_finding() {
        let e = env("hijack");
        // Lease a port for `bulk` (which expects another executable), then listen on it
        // ourselves: the test binary is the wrong owner.
        let v = e.json(&["alloc", "bulk", "--json"]);
        let port = v[0]["port"].as_u64().unwrap() as u16;
        let _l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let v = e.json(&["check", "--json", "--fail-on", "critical"]);
        let f: Vec<&Value> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["id"] == "lease-held-by-other")
            .collect();
        assert_eq!(f.len(), 1, "{v}");
        assert!(
            f[0]["evidence"]
                .as_str()
                .unwrap()
                .contains(&std::process::id().to_string())
        );
    }
}

mod netns {
    use super::*;

    #[test]
    fn pools_reserve_writes_the_namespace_sysctl_keeping_what_is_there() {
        let Some(ns) = Netns::new("reserve") else {
            return;
        };
        let dir = tempdir("reserve");
        let p = dir.join("p.toml");
        std::fs::write(
            &p,
            "version = 1\n[[pool]]\nname = \"a\"\nrange = \"40000-40999\"\n[[pool]]\nname = \"b\"\nrange = \"41000-41099\"\n",
        )
        .unwrap();
        let o = ns.exec(&[
            "sh",
            "-c",
            "echo 8080 > /proc/sys/net/ipv4/ip_local_reserved_ports",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let b = env!("CARGO_BIN_EXE_portwarden");
        let state = dir.join("state");
        let args = |extra: &[&'static str]| {
            let mut v = vec![
                b.to_string(),
                "--policy".into(),
                p.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
                "pools".into(),
                "reserve".into(),
            ];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let dry = args(&["--dry-run"]);
        let o = ns.exec(&dry.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("8080,40000-41099"));
        let read = || {
            String::from_utf8_lossy(
                &ns.exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])
                    .stdout,
            )
            .trim()
            .to_string()
        };
        assert_eq!(read(), "8080", "dry run writes nothing");
        let real = args(&[]);
        let o = ns.exec(&real.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(read(), "8080,40000-41099");
        // The host's own setting is untouched.
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
        assert!(!host.contains("40000-41099"));
        // The change is in the ledger.
        let o = bin()
            .args(["--state-dir", state.to_str().unwrap(), "log", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v[0]["action"], "sysctl.reserve");
        assert_eq!(v[0]["before"], "8080");
    }
}

#[test]
fn r3_proc_net_fallback_reports_the_same_sockets_with_a_warning() {
    use std::net::TcpListener;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let me = std::process::id().to_string();
    let netlink = run(&["ls", "--json", "--pid", &me]);
    let fallback = bin()
        .args(["ls", "--json", "--pid", &me])
        .env("PORTWARDEN_FORCE_PROCNET", "1")
        .output()
        .unwrap();
    assert_eq!(code(&fallback), 0);
    assert!(
        stderr(&fallback).contains("reading /proc/net instead"),
        "{}",
        stderr(&fallback)
    );
    let key = |o: &Output| {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut k: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}:{}",
                    s["protocol"], s["state"], s["local_addr"], s["local_port"]
                )
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&netlink), key(&fallback));
    assert!(
        key(&fallback)
            .iter()
            .any(|k| k.ends_with(&format!(":{port}")))
    );
}

#[test]
fn r2_policy_init_from_host_drafts_a_policy_that_manages_every_listener() {
    let Some(mut ns) = Netns::new("draft") else {
        return;
    };
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &[
            "ip", "link", "add", "pd0", "type", "veth", "peer", "name", "pd1",
        ],
        &["ip", "addr", "add", "10.204.0.1/24", "dev", "pd0"],
        &["ip", "link", "set", "pd0", "up"],
    ] {
        ns.run(cmd);
    }
    ns.serve(&[
        "mysql-ssl@10.204.0.1:3306",
        "http@0.0.0.0:8080",
        "udpecho@10.204.0.1:5353",
    ]);
    let dir = tempdir("draft");
    let draft = dir.join("draft.toml");
    let pw = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_portwarden")])
            .args(["--state-dir", dir.join("s").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let o = pw(&[
        "policy",
        "init",
        "--from-host",
        "-o",
        draft.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = std::fs::read_to_string(&draft).unwrap();
    assert!(
        text.contains("name = \"mysql\"")
            && text.contains("port = 8080")
            && text.contains("port = 5353"),
        "{text}"
    );
    assert_eq!(code(&pw(&["policy", "check", draft.to_str().unwrap()])), 0);
    let o = pw(&[
        "--policy",
        draft.to_str().unwrap(),
        "check",
        "--json",
        "--fail-on",
        "critical",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let unmanaged: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "unmanaged-listener")
        .collect();
    assert!(unmanaged.is_empty(), "{unmanaged:?}");
    // Drafting again refuses to clobber the file.
    assert_eq!(
        code(&pw(&[
            "policy",
            "init",
            "--from-host",
            "-o",
            draft.to_str().unwrap()
        ])),
        2
    );
}

mod check_host {
    use super::*;

    const POLICY: &str = r#"
version = 1
[host]
management = { ports = ["22/tcp"], from = ["10.0.0.0/8"] }
[zones]
internal = { cidrs = ["10.203.0.0/24"] }
[[service]]
name = "db"
catalog = "mysql"
zone = "internal"
tls = "required"
process = "mariadbd"
[[service]]
name = "pg"
catalog = "postgresql"
zone = "internal"
tls = "optional"
process = "python3"
[[service]]
name = "mirror"
catalog = "rsync"
zone = "internal"
[[service]]
name = "web"
catalog = "http"
port = 8080
zone = "localhost"
"#;

    /// Golden JSON of (id, severity, subject), updated with UPDATE_GOLDEN=1.
    fn golden(name: &str, got: &Value) {
        let text = serde_json::to_string_pretty(got).unwrap() + "\n";
        portwarden_testkit::golden(env!("CARGO_MANIFEST_DIR"), name, &text);
    }

    #[test]
    fn r4_check_judges_real_listeners_in_a_namespace() {
        let Some(mut ns) = Netns::new("check") else {
            return;
        };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        // No IPv6 link-local addresses appearing at random moments.
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        // A veth pair with both ends inside the namespace gives it a non-loopback address.
        ns.run(&[
            "ip", "link", "add", "pw0", "type", "veth", "peer", "name", "pw1",
        ]);
        ns.run(&["ip", "addr", "add", "10.203.0.1/24", "dev", "pw0"]);
        ns.run(&["ip", "link", "set", "pw0", "up"]);
        // pw1 is the "outside": an address outside the internal zone.
        ns.run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "pw1"]);
        ns.run(&["ip", "link", "set", "pw1", "up"]);
        ns.serve(&[
            "mysql-ssl@10.203.0.1:3306",
            "pg-n@10.203.0.1:5432",
            "udp@10.203.0.1:5432",
            "banner@0.0.0.0:23",
            "http@127.0.0.1:8080",
        ]);

        let dir = tempdir("checkns");
        let p = dir.join("policy.toml");
        std::fs::write(&p, POLICY).unwrap();
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_portwarden")])
            .args([
                "--policy",
                p.to_str().unwrap(),
                "--state-dir",
                dir.join("s").to_str().unwrap(),
            ])
            .args(["check", "--json"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 1, "high findings exit 1: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut rows: Vec<Value> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["id"] != "tcp-settings" && f["id"] != "other-firewall-manager")
            .map(|f| serde_json::json!({"id": f["id"], "severity": f["severity"], "subject": f["subject"]}))
            .collect();
        rows.sort_by_key(|r| r.to_string());
        golden("check-netns.json", &Value::Array(rows));
        // The hijack names the foreign executable.
        let hijack = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "listener-identity-changed")
            .unwrap();
        assert!(
            hijack["evidence"].as_str().unwrap().contains("python3"),
            "{hijack}"
        );
        assert!(v["exposure_total"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn r4_identity_change_between_checks_is_a_finding_and_in_the_ledger() {
    use std::io::{BufRead, BufReader};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempdir("identity");
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!("version = 1\n[[service]]\nname = \"svc\"\nport = {port}\nzone = \"localhost\"\n"),
    )
    .unwrap();
    let state = dir.join("state");
    let check = || {
        bin()
            .args([
                "--policy",
                p.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ])
            .args(["check", "--json", "--fail-on", "critical"])
            .output()
            .unwrap()
    };
    let ids = |o: &Output| -> Vec<String> {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect()
    };
    // First check: the test binary owns the port; recorded, no change.
    let o = check();
    assert!(
        !ids(&o).contains(&"listener-identity-changed".to_string()),
        "{:?}",
        ids(&o)
    );
    drop(l);
    // Another executable takes the port over.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
             s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True); time.sleep(30)",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let o = check();
    let _ = py.kill();
    let _ = py.wait();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "listener-identity-changed")
        .unwrap_or_else(|| panic!("no identity change in {v}"));
    assert!(f["evidence"].as_str().unwrap().contains("python"), "{f}");
    let o = bin()
        .args(["--state-dir", state.to_str().unwrap(), "log", "--json"])
        .output()
        .unwrap();
    let log: Value = serde_json::from_slice(&o.stdout).unwrap();
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["identity.first-seen", "identity.changed"]);
}

mod scan {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;

    /// TCP listeners on 0.0.0.0/[::] or `addr` per `ss`: what a scan of `addr` may also see.
    fn other_listeners(addr: &str) -> BTreeSet<u16> {
        let o = Command::new("ss").args(["-tlnH"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
            .filter(|local| {
                local.starts_with("0.0.0.0:")
                    || local.starts_with("*:")
                    || local.starts_with("[::]:")
                    || local.starts_with(&format!("{addr}:"))
            })
            .filter_map(|local| local.rsplit(':').next().and_then(|p| p.parse().ok()))
            .collect()
    }

    /// Listeners on `addr`: every third sends a banner, the rest stay silent.
    fn listeners(addr: &str, n: usize) -> (Vec<TcpListener>, BTreeSet<u16>) {
        let mut ls = Vec::new();
        let mut ports = BTreeSet::new();
        for i in 0..n {
            let l = TcpListener::bind((addr, 0)).unwrap();
            ports.insert(l.local_addr().unwrap().port());
            if i % 3 == 0 {
                let c = l.try_clone().unwrap();
                std::thread::spawn(move || {
                    for mut s in c.incoming().take(64).flatten() {
                        let _ = s.write_all(b"SSH-2.0-fake\r\n");
                    }
                });
            }
            ls.push(l);
        }
        (ls, ports)
    }

    fn open_ports(o: &Output) -> BTreeSet<u16> {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "open")
            .map(|p| p["port"].as_u64().unwrap() as u16)
            .collect()
    }

    #[test]
    fn r5_full_range_scan_finds_exactly_the_listeners() {
        // 127.0.0.5: other tests' listeners live on 127.0.0.1; wildcard ones are allowed.
        let (_ls, mine) = listeners("127.0.0.5", 40);
        for round in 0..3 {
            let before = other_listeners("127.0.0.5");
            let o = run(&["scan", "127.0.0.5", "-p-", "--json"]);
            let after = other_listeners("127.0.0.5");
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            let found = open_ports(&o);
            let missed: Vec<&u16> = mine.difference(&found).collect();
            assert!(missed.is_empty(), "round {round}: missed {missed:?}");
            let extra: Vec<&u16> = found
                .difference(&mine)
                .filter(|p| !before.contains(p) && !after.contains(p))
                .collect();
            assert!(
                extra.is_empty(),
                "round {round}: phantom or false open ports {extra:?}"
            );
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["ports_scanned"], 65535);
        }
    }

    #[test]
    fn r5_ipv6_loopback_self_connects_are_never_open() {
        if TcpListener::bind("[::1]:0").is_err() {
            eprintln!("SKIP: no IPv6 loopback");
            return;
        }
        let l = TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let o = run(&["scan", "::1", "-p", "32768-60999", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let found = open_ports(&o);
        let others: BTreeSet<u16> = Command::new("ss")
            .args(["-tlnH"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        l.split_whitespace()
                            .nth(3)
                            .and_then(|a| a.rsplit(':').next()?.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for p in &found {
            assert!(
                *p == port || others.contains(p),
                "port {p} reported open but nothing listens ({v})"
            );
        }
        if (32768..=60999).contains(&port) {
            assert!(found.contains(&port));
        }
    }

    /// With nmap's database (installed by .ci/run): its hard match names the service over
    /// the built-in guess (a `220` greeting is not always SMTP), the TLS question is asked
    /// in that service's protocol, and a port that closes at once is `tcpwrapped`.
    #[test]
    fn r_nmaps_hard_match_names_the_service_over_a_guess() {
        let serve = |greeting: &'static [u8]| {
            let l = TcpListener::bind("127.0.0.8:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                for s in l.incoming().take(200) {
                    let Ok(mut s) = s else { continue };
                    std::thread::spawn(move || {
                        let _ = s.write_all(greeting);
                        if !greeting.is_empty() {
                            std::thread::sleep(std::time::Duration::from_millis(300));
                        }
                    });
                }
            });
            port
        };
        let ftp = serve(b"220-FileZilla Server version 0.9.60 beta\r\n");
        let wrapped = serve(b"");
        let o = run(&[
            "scan",
            "127.0.0.8",
            "-p",
            &format!("{ftp},{wrapped}"),
            "-sV",
            "--json",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let find = |port: u16| {
            v["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["port"] == port)
                .unwrap()
                .clone()
        };
        let f = find(ftp);
        assert_eq!(f["service"], "ftp", "{f}");
        assert!(f["product"].as_str().unwrap().contains("FileZilla"), "{f}");
        let w = find(wrapped);
        assert_eq!(w["service"], "tcpwrapped", "{w}");
    }

    /// A probe database that cannot be used is a warning; the built-in probes carry on
    /// and the exit code is the scan's. A file with bad lines names each by
    /// file:line:col, and its good lines still match.
    #[test]
    fn r_unusable_probe_databases_warn_and_fall_back() {
        let l = TcpListener::bind("127.0.0.7:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        std::thread::spawn(move || {
            for s in l.incoming().take(64) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                });
            }
        });
        let dir = tempdir("probesdb");
        let scan = |db: &str| {
            let o = run(&[
                "scan",
                "127.0.0.7",
                "-p",
                &port,
                "-sV",
                "--json",
                "--probes-db",
                db,
            ]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            (o, v)
        };
        let missing = dir.join("missing");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        for (db, says) in [
            (
                missing.display().to_string(),
                "cannot read the probes database",
            ),
            (dir.display().to_string(), "cannot read the probes database"),
            (empty.display().to_string(), "no usable probes"),
        ] {
            let (o, v) = scan(&db);
            assert_eq!(code(&o), 0, "{db}: {}", stderr(&o));
            assert!(stderr(&o).contains(says), "{db}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("using the built-in probes"),
                "{}",
                stderr(&o)
            );
            assert_eq!(v["ports"][0]["service"], "ssh", "{db}: {v}");
            assert_eq!(v["ports"][0]["product"], "OpenSSH", "{db}: {v}");
        }
        let bad = dir.join("bad");
        std::fs::write(
            &bad,
            "Probe TCP NULL q||\nmatch x m|(unclosed| p/x/\nmatch ssh m|^SSH-([\\d.]+)-OpenSSH_(\\S+)| p/TestSSH/ v/$2/\nmatch broken m|unclosed\nwhat is this\n",
        )
        .unwrap();
        let (o, v) = scan(bad.to_str().unwrap());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("2 lines of the probes database skipped")
                && err.contains(&format!("{}:4:14:", bad.display())),
            "{err}"
        );
        // A pattern PCRE2 refuses is named too, once it was needed.
        assert!(
            err.contains("1 pattern of the probes database refused by PCRE2")
                && err.contains(&format!("{}:2:", bad.display())),
            "{err}"
        );
        // The good line matched: the database's product, over the built-in one.
        assert_eq!(v["ports"][0]["product"], "TestSSH", "{v}");
        assert_eq!(v["ports"][0]["version"], "9.2p1", "{v}");
    }

    #[test]
    fn r5_service_detection_names_fake_servers() {
        let addr = "127.0.0.6";
        let mut specs: Vec<(u16, &str)> = Vec::new();
        let serve = |reply: &'static [u8], wait_first: bool| -> u16 {
            let l = TcpListener::bind((addr, 0)).unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                for s in l.incoming().take(32) {
                    let Ok(mut s) = s else { continue };
                    std::thread::spawn(move || {
                        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                            .ok();
                        if wait_first {
                            let mut b = [0u8; 256];
                            if !matches!(s.read(&mut b), Ok(n) if n > 0) {
                                return;
                            }
                            if reply == b"N" && !b.starts_with(&[0, 0, 0, 8, 4, 210, 22, 47]) {
                                return;
                            }
                            if reply.starts_with(b"+PONG") && !b.starts_with(b"PING") {
                                return;
                            }
                            if reply.starts_with(b"HTTP") && !b.starts_with(b"HEAD") {
                                return;
                            }
                        }
                        let _ = s.write_all(reply);
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    });
                }
            });
            port
        };
        specs.push((serve(b"SSH-2.0-OpenSSH_9.2\r\n", false), "ssh"));
        specs.push((
            serve(b"HTTP/1.0 200 OK\r\nServer: nginx/1.22.1\r\n\r\n", true),
            "http",
        ));
        specs.push((serve(b"+PONG\r\n", true), "redis"));
        specs.push((serve(b"N", true), "postgresql"));
        let silent = TcpListener::bind((addr, 0)).unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let list: Vec<String> = specs
            .iter()
            .map(|(p, _)| p.to_string())
            .chain([silent_port.to_string()])
            .collect();
        let t0 = std::time::Instant::now();
        let o = run(&["scan", addr, "-s", "-p", &list.join(","), "--json"]);
        let took = t0.elapsed();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        for (port, name) in &specs {
            let p = v["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["port"] == *port)
                .unwrap();
            assert_eq!(p["service"], *name, "{p}");
            assert_eq!(p["method"], "probed");
            // Product and version where the service names them (nmap -sV's fields).
            let want = match *name {
                "ssh" => Some(("OpenSSH", Some("9.2"))),
                "http" => Some(("nginx", Some("1.22.1"))),
                "redis" => Some(("Redis key-value store", None)),
                "postgresql" => Some(("PostgreSQL DB", None)),
                _ => None,
            };
            if let Some((product, version)) = want {
                assert_eq!(p["product"], product, "{p}");
                assert_eq!(p["version"].as_str(), version, "{p}");
            }
        }
        let s = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == silent_port)
            .unwrap();
        assert_eq!(s["state"], "open");
        assert!(
            took < std::time::Duration::from_secs(3),
            "service detection took {took:?}"
        );
        drop(silent);
    }

    #[test]
    fn r5_diff_grepable_and_xml() {
        let dir = tempdir("scandiff");
        let (_a, first) = listeners("127.0.0.7", 2);
        let list = |extra: &BTreeSet<u16>| -> String {
            first
                .iter()
                .chain(extra)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let old = dir.join("old.json");
        let o = run(&["scan", "127.0.0.7", "-p", &list(&BTreeSet::new()), "--json"]);
        std::fs::write(&old, &o.stdout).unwrap();
        let (_b, more) = listeners("127.0.0.7", 1);
        let g = dir.join("scan.gnmap");
        let x = dir.join("scan.xml");
        let o = run(&[
            "scan",
            "127.0.0.7",
            "-p",
            &list(&more),
            "--diff",
            old.to_str().unwrap(),
            "-oG",
            g.to_str().unwrap(),
            "-oX",
            x.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let added = *more.iter().next().unwrap();
        assert!(out.contains(&format!("+ 127.0.0.7 {added}/tcp")), "{out}");
        let grep = std::fs::read_to_string(&g).unwrap();
        assert!(grep.contains(&format!("{added}/open/tcp//")), "{grep}");
        let xml = std::fs::read_to_string(&x).unwrap();
        assert!(xml.contains(&format!("portid=\"{added}\"")), "{xml}");
        // Well-formed, as tools that read nmap XML need.
        let st = Command::new("python3")
            .args(["-c", "import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); assert r.tag=='nmaprun'; print(len(r.findall('.//port')))", x.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "3");
    }

    #[test]
    fn r5_bad_scan_input_exits_2() {
        for (args, msg) in [
            (
                &["scan", "127.0.0.1", "-p", "0"][..],
                "port 0 is out of range",
            ),
            (
                &["scan", "127.0.0.1", "-p", "70000"],
                "port 70000 is out of range",
            ),
            (&["scan", "127.0.0.1", "-p", "10-5"], "reversed"),
            (&["scan", "10.0.0.0/8"], "more than --max-hosts 256"),
            (
                &["scan", "127.0.0.1", "--timeout", "soon"],
                "invalid value 'soon' for '--timeout <DURATION>'",
            ),
        ] {
            let o = run(args);
            assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
            assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        }
        // Nothing open: a negative answer.
        let free = {
            let t = TcpListener::bind("127.0.0.8:0").unwrap();
            t.local_addr().unwrap().port()
        };
        let o = run(&["scan", "127.0.0.8", "-p", &free.to_string()]);
        assert_eq!(code(&o), 1);
    }
}

#[test]
fn r5_udp_scan_tells_open_from_closed() {
    use std::net::UdpSocket;
    let srv = UdpSocket::bind("127.0.0.9:0").unwrap();
    let open = srv.local_addr().unwrap().port();
    let closed = {
        let t = UdpSocket::bind("127.0.0.9:0").unwrap();
        t.local_addr().unwrap().port()
    };
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        for _ in 0..8 {
            if let Ok((_, from)) = srv.recv_from(&mut b) {
                let _ = srv.send_to(b"pong", from);
            }
        }
    });
    let o = run(&[
        "scan",
        "127.0.0.9",
        "-u",
        "-p",
        &format!("{open},{closed}"),
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ports = v["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{v}");
    assert_eq!(ports[0]["port"], open);
    assert_eq!(ports[0]["state"], "open");
    assert_eq!(v["closed"], 1);
}

#[test]
fn r5_a_tiny_descriptor_limit_is_back_pressure_not_a_panic() {
    use std::os::unix::process::CommandExt;
    let l = std::net::TcpListener::bind("127.0.0.10:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = bin();
    c.args(["scan", "127.0.0.10", "-p", "1-20000", "--json"]);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let open: Vec<u64> = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    if port <= 20000 {
        assert!(open.contains(&u64::from(port)), "{v}");
    }
    assert_eq!(v["ports_scanned"], 20000);
}

mod firewall {
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
            let p = self.dir.join("policy.toml");
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
        let actions: Vec<&str> = v
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
        std::thread::sleep(Duration::from_secs(3));
        assert!(lab.client(&["connect", "10.99.0.2", "10.99.0.1", "9000"]));

        // A ruleset nft refuses is never applied; the rules stay as they were.
        let applied = lab.table();
        let fake = lab.dir.join("fake-nft");
        std::fs::write(&fake, "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -c ] && { echo 'Error: syntax error' >&2; exit 1; }; done\nexec nft \"$@\"\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
        v.as_array()
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
        assert_eq!(v[0]["port"], 9100);
        let id = v[0]["id"].as_i64().unwrap().to_string();
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
        let id = v[0]["id"].as_i64().unwrap().to_string();
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
}

#[test]
fn verbose_says_what_is_done_and_quiet_says_nothing() {
    let o = run(&["ls", "-v", "--port", "1"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("sockets via Netlink"), "{}", stderr(&o));
    let o = run(&["check", "-q"]);
    assert!(o.stdout.is_empty());
    let o = run(&["check", "-q", "-v"]);
    assert_eq!(code(&o), 2, "-q and -v conflict");
}

#[test]
fn r5_progress_bar_only_on_a_terminal() {
    // `script` gives the scan a pseudo-terminal; a pipe gets no progress bar.
    let exe = env!("CARGO_BIN_EXE_portwarden");
    let cmd = format!("{exe} scan 127.0.0.11 -p 1-20000");
    let Ok(o) = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
    else {
        eprintln!("SKIP: script(1) is not installed");
        return;
    };
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains("100% 20000/20000"), "{tty}");
    let piped = run(&["scan", "127.0.0.11", "-p", "1-20000"]);
    assert!(!stderr(&piped).contains('%'), "{}", stderr(&piped));
}

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
