//! `alloc`, `renew`, `release`, `leases`, `reclaim`, `pools`.

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
    let id = v["leases"][0]["id"].as_i64().unwrap().to_string();
    let o = e.run(&["renew", &id, "--ttl", "61m"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("at most 1h"), "{}", stderr(&o));
    assert_eq!(
        e.json(&["leases", "--json"])["leases"][0]["expires_at"],
        v["leases"][0]["expires_at"]
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
        assert_eq!(
            e.json(&["leases", "--json"])["leases"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
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
    assert_eq!(v["leases"].as_array().unwrap().len(), 1);
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
    let id = v["leases"][0]["id"].as_i64().unwrap().to_string();
    let port = v["leases"][0]["port"].as_u64().unwrap();
    assert!((21000..=21002).contains(&port));
    assert_eq!(v["leases"][0]["owner"], "alice");
    // Someone else may not renew or release it.
    let o = e.run(&["release", &id, "--owner", "mallory"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("belongs to `alice`"), "{}", stderr(&o));
    let o = e.run(&["renew", &id, "--owner", "mallory"]);
    assert_eq!(code(&o), 2);
    assert_eq!(
        e.json(&["leases", "--json"])["leases"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let o = e.run(&["renew", &id, "--ttl", "2h"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = e.run(&["release", &id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = e.run(&["release", &id]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains(&format!("no lease with id {id}")));
    let log = e.json(&["log", "--json"]);
    let actions: Vec<&str> = log["records"]
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
    let export = String::from_utf8_lossy(&e.run(&["log", "export", "--format", "jsonl"]).stdout)
        .into_owned();
    assert_eq!(export.lines().count(), 3);
}

#[test]
fn an_exhausted_pool_exits_1_and_writes_nothing() {
    let e = env("exhaust");
    let o = e.run(&["alloc", "small", "--count", "3"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let before = std::fs::read(e.db()).unwrap().len();
    let log_before = e.json(&["log", "--json"])["records"]
        .as_array()
        .unwrap()
        .len();
    let o = e.run(&["alloc", "small"]);
    assert_eq!(code(&o), 1);
    let msg = stderr(&o);
    assert!(
        msg.contains("pool `tiny` is exhausted") && msg.contains("3 ports"),
        "{msg}"
    );
    assert_eq!(
        e.json(&["log", "--json"])["records"]
            .as_array()
            .unwrap()
            .len(),
        log_before
    );
    assert_eq!(
        e.json(&["leases", "--json"])["leases"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
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
    let leases = e.json(&["leases", "--json"])["leases"].clone();
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
                // Real time: a random pause before the kill -9, so it lands mid-operation.
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
    let leases = e.json(&["leases", "--json"])["leases"].clone();
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
    // Expiry, its finding and reclaim run on a manual clock: the ops crate's
    // tests/clock.rs.
}

#[test]
fn a_lease_held_by_a_foreign_process_is_a_finding() {
    let e = env("hijack");
    // Lease a port for `bulk` (which expects another executable), then listen on it
    // ourselves: the test binary is the wrong owner.
    let v = e.json(&["alloc", "bulk", "--json"]);
    let port = v["leases"][0]["port"].as_u64().unwrap() as u16;
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
