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
