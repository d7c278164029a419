#![allow(clippy::disallowed_methods)] // the tests read the example policies
//! Unit tests of policy parsing: valid files, defaults and cross-field rules.

use super::*;

fn ok(src: &str) -> Policy {
    match Policy::parse("t.toml", src, Catalog::builtin()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn errs(src: &str) -> Vec<String> {
    match Policy::parse("t.toml", src, Catalog::builtin()) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(|l| l.to_string()).collect(),
    }
}

#[test]
fn embedded_policies_parse() {
    let b = Policy::baseline();
    assert_eq!(b.host.management.ports[0].to_string(), "22/tcp");
    assert!(b.services.is_empty());
    assert_eq!(b.compliance.ledger_retention_days, 180);
    let s = ok(STARTER_TOML);
    assert_eq!(s.services.len(), 2);
}

#[test]
fn examples_parse() {
    for name in ["mirror-01.toml", "db-replica.toml"] {
        let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).unwrap();
        ok(&src);
    }
}

#[test]
fn design_example_reads_as_documented() {
    let src = include_str!("../../../../examples/mirror-01.toml");
    let p = ok(src);
    let mysql = p.service("mysql-primary").unwrap();
    assert_eq!(mysql.fixed_ports()[0].to_string(), "3306/tcp");
    assert_eq!(mysql.tls, TlsRequirement::Required);
    assert_eq!(mysql.process.as_deref(), Some("mariadbd"));
    let rsync = p.service("rsync-mirror").unwrap();
    assert_eq!(rsync.fixed_ports()[0].to_string(), "873/tcp");
    assert_eq!(rsync.sensitivity, Sensitivity::Low);
    assert_eq!(
        p.service("build-cache").unwrap().placement,
        Placement::Pool("mirror-dynamic".into())
    );
    let pool = p.pool("mirror-dynamic").unwrap();
    assert_eq!(pool.static_band.unwrap().to_string(), "20000-20999");
    assert_eq!(pool.reclaim_idle.unwrap().to_string(), "30m");
    assert_eq!(p.balance[0].health.expect.as_deref(), Some("@RSYNCD"));
    assert_eq!(p.balance[0].algorithm, Algorithm::SourceHash);
    assert_eq!(p.transfer.unwrap().bandwidth.to_string(), "10Gbit");
    assert_eq!(p.firewall.scan_guard.unwrap().threshold, 20);
}

#[test]
fn catalog_defaults_fill_a_service() {
    let p = ok(r#"
version = 1
[[service]]
name = "files"
catalog = "nfs"
zone = "localhost"
"#);
    let s = &p.services[0];
    let ports: Vec<String> = s.fixed_ports().iter().map(|p| p.to_string()).collect();
    assert_eq!(ports, ["2049/tcp", "2049/udp"]);
    assert_eq!(s.protocols, [Protocol::Tcp, Protocol::Udp]);
    assert_eq!(s.tls, TlsRequirement::Optional);
    assert_eq!(s.sensitivity, Sensitivity::High);
}

#[test]
fn every_error_of_a_file_is_reported() {
    let e = errs(
        r#"
version = 1
[[service]]
name = "a"
port = 70000
zone = "internal"
[[service]]
name = "b"
port = 80
zone = "outer"
tsl = "none"
"#,
    );
    assert_eq!(
        e,
        [
            "t.toml:5:8: port 70000 is out of range 1-65535",
            "t.toml:10:8: `zone` must be one of `external`, `internal`, `localhost`, found `outer`",
            "t.toml:11:1: unknown key `tsl` in [[service]]",
        ]
    );
}

#[test]
fn static_band_admits_fixed_ports() {
    ok(r#"
version = 1
[[pool]]
name = "p"
range = "20000-29999"
static = "20000-20999"
[[service]]
name = "pinned"
port = 20500
zone = "localhost"
"#);
}

#[test]
fn aliases_resolve_to_canonical_names() {
    let p = ok(r#"
version = 1
[[service]]
name = "db"
catalog = "mariadb"
zone = "localhost"
"#);
    assert_eq!(p.services[0].catalog.as_deref(), Some("mysql"));
}

#[test]
fn the_starter_names_this_hosts_interfaces_and_parses_with_any_number() {
    for names in [vec![], vec!["enp3s0"], vec!["enp3s0", "wg0"]] {
        let names: Vec<String> = names.into_iter().map(String::from).collect();
        let text = starter_for(&names);
        let p = ok(&text);
        let named: Vec<&String> = [ZoneKind::External, ZoneKind::Internal]
            .iter()
            .filter_map(|k| p.zones.get(k))
            .flat_map(|z| z.interfaces.iter())
            .collect();
        assert_eq!(named, names.iter().collect::<Vec<_>>(), "{text}");
        assert!(!text.contains("eth1"), "{text}");
    }
}

#[test]
fn scan_targets_default_to_loopback_and_read_as_written() {
    let p = ok("version = 1\n");
    assert_eq!(p.scan.targets, crate::addr::AddrSet::loopback());
    assert_eq!(p.scan.max_hosts, 256);
    assert!(p.alerts.webhook.is_none());
    let p = ok("version = 1\n[scan]\ntargets = [\"10.0.0.0/24\", \"::1\"]\nmax_hosts = 16\n");
    assert!(p.scan.targets.contains("10.0.0.7".parse().unwrap()));
    assert!(!p.scan.targets.contains("127.0.0.1".parse().unwrap()));
    assert_eq!(p.scan.max_hosts, 16);
    assert_eq!(
        errs("version = 1\n[scan]\ntargets = [\"10.0.0.0/33\"]\nmax_hosts = 0\n"),
        [
            "t.toml:3:12: prefix /33 is invalid for IPv4: at most /32",
            "t.toml:4:13: `max_hosts` must be a positive whole number, found 0",
        ]
    );
}

#[test]
fn webhook_urls_parse_strictly() {
    for (src, shown, tls, host, port, path) in [
        (
            "https://hooks.example.net/pw",
            "https://hooks.example.net/pw",
            true,
            "hooks.example.net",
            443,
            "/pw",
        ),
        (
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            false,
            "127.0.0.1",
            8080,
            "/",
        ),
        (
            "https://[::1]:9443/a?b=c",
            "https://[::1]:9443/a?b=c",
            true,
            "::1",
            9443,
            "/a?b=c",
        ),
        (
            "http://Example.NET?x",
            "http://example.net/?x",
            false,
            "example.net",
            80,
            "/?x",
        ),
    ] {
        let u: WebhookUrl = src.parse().unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (tls, host, port, path),
            "{src}"
        );
        assert_eq!(u.to_string(), shown);
    }
    for bad in [
        "ftp://x/",
        "https://",
        "https://user:pw@host/",
        "https://host:0/",
        "https://host:99999/",
        "https://ho st/",
        "https://host/a b",
        "https://host/a#frag",
        "https://[::1/",
        "https://[nothex]/",
        "https://host\n/",
        "https://host;rm/",
    ] {
        assert!(bad.parse::<WebhookUrl>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn alerts_read_their_delivery_and_point_at_errors() {
    let p = ok(
        "version = 1\n[alerts]\nwebhook = \"https://a.example/h\"\nretries = 0\nqueue = 10\ntimeout = \"2s\"\nca = \"ca.pem\"\n",
    );
    let w = p.alerts.webhook.expect("webhook");
    assert_eq!((w.retries, w.queue, w.timeout.get().as_secs()), (0, 10, 2));
    assert_eq!(w.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
    let d = ok("version = 1\n[alerts]\nwebhook = \"http://127.0.0.1/\"\n")
        .alerts
        .webhook
        .expect("webhook");
    assert_eq!(
        (d.retries, d.queue, d.timeout.get().as_secs()),
        (5, 1000, 5)
    );
    let e = errs(
        "version = 1\n[alerts]\nwebhook = \"https://u:p@a/\"\nretries = 101\nqueue = 0\nwebhok = 1\n",
    );
    let at: Vec<&str> = e
        .iter()
        .map(|l| l.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        at,
        ["t.toml:3:11", "t.toml:4:11", "t.toml:5:9", "t.toml:6:1"],
        "{e:?}"
    );
    assert!(e[0].contains("credentials in a webhook URL"), "{e:?}");
    assert!(e[1].contains("`retries` must be 0-100"), "{e:?}");
    assert!(e[2].contains("`queue` must be a positive"), "{e:?}");
    assert!(e[3].contains("unknown key `webhok` in [alerts]"), "{e:?}");
    let e = errs("version = 1\n[alerts]\nretries = 3\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("there is no `webhook`"), "{e:?}");
    // One attempt is bounded (a stop waits for nothing longer), and `ca` is for HTTPS.
    let e = errs(
        "version = 1\n[alerts]\nwebhook = \"http://a/\"\ntimeout = \"100000h\"\nca = \"ca.pem\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:4:11") && e[0].contains("at most 1m"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("t.toml:5:6") && e[1].contains("the webhook is http://"),
        "{e:?}"
    );
    let w = ok("version = 1\n[alerts]\nwebhook = \"https://a/\"\ntimeout = \"60s\"\n");
    assert_eq!(
        w.alerts.webhook.expect("webhook").timeout.get().as_secs(),
        60
    );
}

#[test]
fn change_review_settings_read_and_point_at_errors() {
    let d = ok("version = 1\n");
    assert_eq!((d.change.approvals, d.change.require_approval), (1, false));
    let p = ok("version = 1\n[change]\napprovals = 2\nrequire_approval = true\n");
    assert_eq!((p.change.approvals, p.change.require_approval), (2, true));
    let e = errs("version = 1\n[change]\napprovals = 0\nrequire_approval = \"yes\"\nhooks = 1\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:13") && e[0].contains("1-10"),
        "{e:?}"
    );
    assert!(e[1].starts_with("t.toml:4:20"), "{e:?}");
    assert!(e[2].contains("unknown key `hooks` in [change]"), "{e:?}");
}

#[test]
fn change_hooks_are_absolute_argv_with_a_bounded_timeout() {
    let p = ok(
        "version = 1\n[change]\npre_apply = [\"/usr/local/bin/check\", \"--strict\"]\npost_apply = [\"/bin/true\"]\nhook_timeout = \"2m\"\n",
    );
    assert_eq!(p.change.pre_apply, ["/usr/local/bin/check", "--strict"]);
    assert_eq!(p.change.hook_timeout.get().as_secs(), 120);
    assert_eq!(ok("version = 1\n").change.hook_timeout.get().as_secs(), 60);
    let e = errs(
        "version = 1\n[change]\npre_apply = [\"deploy.sh\"]\npost_apply = []\nhook_timeout = \"2h\"\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:14") && e[0].contains("absolute path"),
        "{e:?}"
    );
    assert!(e[1].contains("empty command"), "{e:?}");
    assert!(e[2].contains("at most 1h"), "{e:?}");
}
