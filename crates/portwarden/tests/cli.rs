//! CLI integration tests: spawn the built binary, assert on `--json` output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

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

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pw-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_runs_against_the_baseline() {
    let o = run(&["check", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["policy"], "the built-in baseline policy");
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
    assert!(String::from_utf8_lossy(&o.stdout).contains(".TH portwarden"));
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
