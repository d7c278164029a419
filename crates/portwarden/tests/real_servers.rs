//! `scan -sV` against Debian's real servers (OpenSSH, nginx with a self-signed
//! certificate, Redis, MariaDB, PostgreSQL with TLS, rsync, vsftpd with TLS), started by
//! portwarden-testkit's `helpers/real_servers.py` on random ports of a non-loopback address in a
//! namespace of the test's own, and scanned from a second namespace over a veth pair.
//! `.ci/run` installs the servers, nmap and ndiff.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const SERVER: &str = "10.96.0.1";

/// The servers, running in the lab's server namespace until drop.
struct Lab {
    /// Held for its drop: the namespaces go with the lab.
    _server: portwarden_testkit::Netns,
    client: portwarden_testkit::Netns,
    helper: Option<Child>,
    ports: serde_json::Map<String, Value>,
    dir: portwarden_testkit::Dir,
}

impl Lab {
    fn new(tag: &str) -> Option<Lab> {
        let (server, client) = portwarden_testkit::pair(tag, &["10.96.0.1/24"], &["10.96.0.2/24"])?;
        let dir = portwarden_testkit::tempdir(&format!("real-{tag}"));
        let script = portwarden_testkit::helper("real_servers.py");
        let mut helper = Command::new("ip")
            .args(["netns", "exec", &server.name, "python3"])
            .arg(&script)
            .arg(&*dir)
            .arg(SERVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(helper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("the helper said {line:?}: {e}"));
        let mut lab = Lab {
            _server: server,
            client,
            helper: Some(helper),
            ports: serde_json::Map::new(),
            dir,
        };
        assert!(
            v["error"].is_null(),
            "a server did not start: {} (logs in {})",
            v["error"],
            lab.dir.display()
        );
        let missing = v["missing"].as_array().unwrap();
        assert!(
            missing.is_empty(),
            "not installed: {missing:?} (.ci/run installs openssh-server nginx-light \
             redis-server mariadb-server postgresql rsync vsftpd)"
        );
        lab.ports = v["ports"].as_object().unwrap().clone();
        Some(lab)
    }

    fn port(&self, name: &str) -> u16 {
        self.ports[name].as_u64().unwrap() as u16
    }

    fn port_list(&self) -> String {
        let v: Vec<String> = self.ports.values().map(|p| p.to_string()).collect();
        v.join(",")
    }

    /// Runs a command in the client namespace.
    fn client(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name])
            .args(args)
            .env_remove("PORTWARDEN_POLICY")
            .env_remove("PORTWARDEN_STATE")
            .output()
            .unwrap()
    }

    /// `portwarden scan -sV --json` of every server, with `extra` arguments.
    fn scan(&self, extra: &[&str]) -> Vec<Value> {
        let ports = self.port_list();
        let mut args = vec![
            env!("CARGO_BIN_EXE_portwarden"),
            "--json",
            "scan",
            SERVER,
            "-p",
            &ports,
            "-sV",
        ];
        args.extend_from_slice(extra);
        let o = self.client(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ports"].as_array().unwrap().clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Closing its stdin stops the helper, which stops every server it started.
        if let Some(mut h) = self.helper.take() {
            drop(h.stdin.take());
            let _ = h.wait();
        }
    }
}

fn find(ports: &[Value], port: u16) -> &Value {
    ports
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("port {port} not in {ports:?}"))
}

fn field<'a>(p: &'a Value, k: &str) -> &'a str {
    p[k].as_str().unwrap_or("")
}

/// What each server must be identified as, with either set of probes.
fn assert_identified(lab: &Lab, ports: &[Value], with_db: bool) {
    let ctx = if with_db {
        "with nmap's database"
    } else {
        "with the built-in probes"
    };
    let check = |name: &str, service: &str, product: &str, tls: &str| {
        let p = find(ports, lab.port(name));
        assert_eq!(field(p, "service"), service, "{name} {ctx}: {p}");
        assert!(
            field(p, "product").contains(product),
            "{name} {ctx}: product {product:?} expected: {p}"
        );
        assert_eq!(field(p, "tls"), tls, "{name} {ctx}: {p}");
        p
    };
    let ssh = check("ssh", "ssh", "OpenSSH", "native");
    assert!(field(ssh, "version").starts_with(char::is_numeric), "{ssh}");
    assert_eq!(field(ssh, "extrainfo"), "protocol 2.0", "{ssh}");
    // An SSH server on PostgreSQL's port is SSH.
    check("ssh_on_5432", "ssh", "OpenSSH", "native");
    let https = check("nginx_https", "https", "nginx", "required");
    assert!(field(https, "version").starts_with('1'), "{https}");
    assert!(
        field(https, "cert_subject").contains("mirror.test"),
        "{https}"
    );
    let http = check("nginx_http", "http", "nginx", "none");
    assert!(field(http, "version").starts_with('1'), "{http}");
    // Redis gives its version before AUTH when it has no password.
    let redis = check("redis", "redis", "Redis", "none");
    if !with_db {
        assert!(
            field(redis, "version").starts_with(char::is_numeric),
            "{redis}"
        );
    }
    // In protected mode it says `-DENIED`: still Redis (nmap calls it unknown).
    check("redis_protected", "redis", "Redis", "none");
    // MariaDB's greeting: its version, and no CLIENT_SSL (no certificate configured).
    let db = check("mariadb", "mysql", "M", "none");
    assert!(
        format!("{} {}", field(db, "product"), field(db, "version")).contains("MariaDB")
            || field(db, "product") == "MariaDB",
        "{db}"
    );
    assert!(field(db, "version").contains("10."), "{db}");
    // PostgreSQL with ssl=on answers SSLRequest with `S`.
    check("postgres", "postgresql", "PostgreSQL DB", "offered");
    let rsync = check("rsync", "rsync", "", "none");
    assert!(
        field(rsync, "extrainfo").starts_with("protocol version 3"),
        "{rsync}"
    );
    // vsftpd with ssl_enable lists AUTH TLS in FEAT.
    let ftp = check("vsftpd", "ftp", "vsftpd", "offered");
    assert!(field(ftp, "version").starts_with('3'), "{ftp}");
}

#[test]
fn r_real_servers_are_identified_with_product_version_and_tls() {
    let Some(lab) = Lab::new("rsv") else {
        return;
    };
    let db = portwarden_db_present();
    assert!(
        db,
        "nmap's nmap-service-probes is installed (.ci/run installs nmap)"
    );
    let with = lab.scan(&[]);
    assert_identified(&lab, &with, true);
    let without = lab.scan(&["--probes-db", "none"]);
    assert_identified(&lab, &without, false);
    // The same services, named the same way, as nmap -sV on the same ports: ndiff shows
    // no port of ours but the protected-mode Redis (nmap: `unknown`), and none where we
    // say less than nmap (Redis's version, from INFO, is more than nmap says).
    let ours = lab.dir.join("ours.xml");
    let theirs = lab.dir.join("nmap.xml");
    let ports = lab.port_list();
    let o = lab.client(&[
        env!("CARGO_BIN_EXE_portwarden"),
        "scan",
        SERVER,
        "-p",
        &ports,
        "-sV",
        "-oX",
        ours.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = lab.client(&[
        "nmap",
        "-sV",
        "-Pn",
        "-p",
        &ports,
        "-oX",
        theirs.to_str().unwrap(),
        SERVER,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("ndiff")
        .arg(&theirs)
        .arg(&ours)
        .output()
        .expect("ndiff is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&o.stdout);
    let protected = lab.port("redis_protected").to_string();
    let lines = |sign: char| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(sign) && l.contains("/tcp"))
            .filter(|l| !l[1..].starts_with(&format!("{protected}/tcp")))
            .map(|l| l[1..].split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (theirs, ours) = (lines('-'), lines('+'));
    for t in &theirs {
        assert!(
            ours.iter().any(|o| o.starts_with(t.as_str())),
            "nmap says `{t}`, we do not:\n{text}"
        );
    }
    assert_eq!(theirs.len(), ours.len(), "ndiff nmap ours:\n{text}");
}

fn portwarden_db_present() -> bool {
    [
        "/usr/share/nmap/nmap-service-probes",
        "/usr/local/share/nmap/nmap-service-probes",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}
