//! `check` against a live host.

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
    let actions: Vec<&str> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["identity.first-seen", "identity.changed"]);
}
