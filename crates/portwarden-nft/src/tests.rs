//! Golden rulesets and the invariants every rendering keeps.

use super::*;
use portwarden_core::Catalog;
use proptest::prelude::*;

fn golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text, want,
        "golden {name} differs (UPDATE_GOLDEN=1 rewrites it)"
    );
}

fn policy(src: &str) -> Policy {
    Policy::parse("t.toml", src, Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_design_example_renders_as_its_golden() {
    let p = policy(include_str!("../../../examples/mirror-01.toml"));
    let r = render(
        &p,
        &Options {
            ssh_peer: Some(("203.0.113.5".parse().unwrap(), 22)),
            interfaces: None,
        },
    )
    .unwrap();
    golden("mirror-01.nft", &r.to_nft());
    // Management from its CIDRs, the SSH peer, rsync from anywhere, MySQL only from its net.
    assert!(r.admits("10.2.3.4".parse().unwrap(), Protocol::Tcp, 22));
    assert!(r.admits("2001:db8::9".parse().unwrap(), Protocol::Tcp, 22));
    assert!(r.admits("203.0.113.5".parse().unwrap(), Protocol::Tcp, 22));
    assert!(!r.admits("198.51.100.7".parse().unwrap(), Protocol::Tcp, 22));
    assert!(r.admits("198.51.100.7".parse().unwrap(), Protocol::Tcp, 873));
    assert!(
        !r.admits("198.51.100.7".parse().unwrap(), Protocol::Udp, 873),
        "TCP-only service gets no UDP"
    );
    assert!(!r.admits("198.51.100.7".parse().unwrap(), Protocol::Tcp, 3306));
    // MySQL is in the internal zone with explicit allow_from: admitted from 10.1/16.
    assert!(r.admits("10.1.2.3".parse().unwrap(), Protocol::Tcp, 3306));
    assert!(r.to_nft().contains("ct count over 50"));
}

#[test]
fn monitor_mode_never_drops() {
    let r = render(&Policy::baseline(), &Options::default()).unwrap();
    let t = r.to_nft();
    assert!(t.contains("policy accept;"));
    assert!(!t.contains(" drop\n") || t.contains("ct state invalid counter drop"));
    golden("baseline.nft", &t);
}

#[test]
fn unknown_zone_interfaces_are_refused() {
    let p = policy("version = 1\n[zones]\ninternal = { interfaces = [\"eth9\"] }\n");
    let e = render(
        &p,
        &Options {
            ssh_peer: None,
            interfaces: Some(vec!["lo".into(), "eth0".into()]),
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "zone `internal` names interface `eth9`, which this host does not have"
    );
}

#[test]
fn grants_render_as_set_elements() {
    let g = grant_commands(&[(
        "10.0.0.5".parse().unwrap(),
        Protocol::Tcp,
        8080,
        std::time::Duration::from_secs(3600),
    )]);
    assert_eq!(
        g,
        "add element inet portwarden grants_v4 { 10.0.0.5 . tcp . 8080 timeout 1h }\n"
    );
    let r = revoke_commands(&[("::1".parse().unwrap(), Protocol::Udp, 53)]);
    assert_eq!(
        r,
        "delete element inet portwarden grants_v6 { ::1 . udp . 53 }\n"
    );
}

fn arb_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..=223, 0u8..=255, 8u8..=16).prop_map(|(a, b, p)| {
            // Host bits zero: keep the first `p` bits of a.b.0.0.
            let v = (u32::from(a) << 24 | u32::from(b) << 16) & (u32::MAX << (32 - u32::from(p)));
            format!("{}/{p}", std::net::Ipv4Addr::from(v))
        }),
        Just("2001:db8::/32".to_string()),
        Just("0.0.0.0/0".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the policy, the management port stays reachable from the management
    /// networks and the SSH peer.
    #[test]
    fn the_management_path_is_always_admitted(
        mgmt in prop::collection::vec(arb_cidr(), 1..4),
        port in 1u16..1024,
        monitor in any::<bool>(),
        peer in (1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254),
    ) {
        let from: Vec<String> = mgmt.iter().map(|c| format!("\"{c}\"")).collect();
        let src = format!(
            "version = 1\n[host]\nmanagement = {{ ports = [\"{port}/tcp\"], from = [{}] }}\n[firewall]\nmode = \"{}\"\n[[service]]\nname = \"web\"\ncatalog = \"https\"\nzone = \"external\"\n",
            from.join(", "),
            if monitor { "monitor" } else { "enforce" }
        );
        let Ok(p) = Policy::parse("p.toml", &src, Catalog::builtin()) else { return Ok(()) };
        let peer_ip: IpAddr = format!("{}.{}.{}.{}", peer.0, peer.1, peer.2, peer.3).parse().unwrap();
        let r = render(&p, &Options { ssh_peer: Some((peer_ip, port)), interfaces: None }).unwrap();
        prop_assert!(r.admits(peer_ip, Protocol::Tcp, port));
        for c in p.host.management.from.cidrs() {
            prop_assert!(r.admits(c.addr(), Protocol::Tcp, port), "{c}");
        }
    }
}

#[test]
fn the_iptables_rendering_matches_its_golden_and_names_its_limits() {
    let p = policy(include_str!("../../../examples/mirror-01.toml"));
    let r = iptables::render(
        &p,
        &Options {
            ssh_peer: Some(("203.0.113.5".parse().unwrap(), 22)),
            interfaces: None,
        },
    )
    .unwrap();
    golden("mirror-01.iptables", &r.v4);
    golden("mirror-01.ip6tables", &r.v6);
    assert!(r.v4.contains("-s 10.1.0.0/16 -p tcp --dport 3306"));
    assert!(r.v4.contains("--connlimit-above 50"));
    assert!(r.unsupported.iter().any(|u| u.contains("grants")));
}
