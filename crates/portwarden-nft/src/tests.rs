//! Golden rulesets and the invariants every rendering keeps.

use super::*;
use portwarden_core::Catalog;
use proptest::prelude::*;

fn golden(name: &str, text: &str) {
    portwarden_testkit::golden(env!("CARGO_MANIFEST_DIR"), name, text);
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
            ..Options::default()
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
            ..Options::default()
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
    let g = grant_commands(&[Grant {
        addr: "::ffff:10.0.0.5".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: Port::new(8080).unwrap(),
        left: std::time::Duration::from_secs(3600),
    }]);
    assert_eq!(
        g,
        "add element inet portwarden grants_v4 { 10.0.0.5 . tcp . 8080 timeout 1h }\n"
    );
    let r = revoke_commands(&[(
        "::1".parse().unwrap(),
        Protocol::Udp,
        Port::new(53).unwrap(),
    )]);
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
        let r = render(&p, &Options { ssh_peer: Some((peer_ip, port)), ..Options::default() }).unwrap();
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
            ..Options::default()
        },
    )
    .unwrap();
    golden("mirror-01.iptables", &r.v4);
    golden("mirror-01.ip6tables", &r.v6);
    assert!(r.v4.contains("-s 10.1.0.0/16 -p tcp --dport 3306"));
    assert!(r.v4.contains("--connlimit-above 50"));
    assert!(r.unsupported.iter().any(|u| u.contains("grants")));
}

#[test]
fn r_set_names_are_injective() {
    let names = [
        "a-b", "a_b", "a.b", "ab", "DB", "db", "dB", "a__b", "a_db", "x_v4",
    ];
    let ids: std::collections::BTreeSet<String> = names.iter().map(|n| ident(n)).collect();
    assert_eq!(ids.len(), names.len(), "{ids:?}");
    // With the family suffix too: `x_v4` + `_v6` never equals `x` + `_v4_v6`-like forms.
    let p = policy(
        "version = 1\n[zones]\ninternal = { interfaces = [\"eth1\"], cidrs = [\"10.0.0.0/8\"] }\n\
         [[service]]\nname = \"a-b\"\nport = 1001\nzone = \"internal\"\nallow_from = [\"10.1.0.0/16\"]\n\
         [[service]]\nname = \"a_b\"\nport = 1002\nzone = \"internal\"\nallow_from = [\"10.2.0.0/16\"]\n\
         [[service]]\nname = \"DB\"\nport = 1003\nzone = \"internal\"\nallow_from = [\"10.3.0.0/16\"]\n\
         [[service]]\nname = \"db\"\nport = 1004\nzone = \"internal\"\nallow_from = [\"10.4.0.0/16\"]\n",
    );
    let r = render(&p, &Options::default()).unwrap();
    for (n, port) in [(1u8, 1001u16), (2, 1002), (3, 1003), (4, 1004)] {
        let own: IpAddr = format!("10.{n}.0.1").parse().unwrap();
        assert!(r.admits(own, Protocol::Tcp, port), "10.{n} -> {port}");
        for (m, other) in [(1u8, 1001u16), (2, 1002), (3, 1003), (4, 1004)] {
            if m != n {
                assert!(
                    !r.admits(own, Protocol::Tcp, other),
                    "10.{n} must not reach {other}"
                );
            }
        }
    }
}

#[test]
fn r_grants_survive_apply() {
    let grants = vec![
        Grant {
            addr: "192.0.2.7".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: Port::new(8443).unwrap(),
            left: std::time::Duration::from_secs(600),
        },
        Grant {
            addr: "::ffff:192.0.2.8".parse().unwrap(),
            protocol: Protocol::Udp,
            port: Port::new(53).unwrap(),
            left: std::time::Duration::from_secs(90),
        },
    ];
    let r = render(
        &Policy::baseline(),
        &Options {
            grants,
            ..Options::default()
        },
    )
    .unwrap();
    let t = r.to_nft();
    assert!(
        t.contains("set grants_v4 { type ipv4_addr . inet_proto . inet_service; flags timeout; elements = { 192.0.2.7 . tcp . 8443 timeout 10m, 192.0.2.8 . udp . 53 timeout 90s }; }"),
        "{t}"
    );
}

#[test]
fn r_leased_ports_are_admitted() {
    let p = policy(
        "version = 1\n[[pool]]\nname = \"dyn\"\nrange = \"20000-20099\"\n\
         [[service]]\nname = \"cache\"\npool = \"dyn\"\nzone = \"external\"\nallow_from = [\"198.51.100.0/24\"]\n",
    );
    let leased = |port| LeasedPort {
        service: "cache".into(),
        protocol: Protocol::Tcp,
        port: Port::new(port).unwrap(),
    };
    let r = render(
        &p,
        &Options {
            leases: vec![leased(20007)],
            ..Options::default()
        },
    )
    .unwrap();
    assert!(r.admits("198.51.100.9".parse().unwrap(), Protocol::Tcp, 20007));
    assert!(!r.admits("198.51.100.9".parse().unwrap(), Protocol::Tcp, 20008));
    assert!(!r.admits("203.0.113.1".parse().unwrap(), Protocol::Tcp, 20007));
    let t = r.to_nft();
    assert!(
        t.contains(
            "set lease_cache { type inet_proto . inet_service; elements = { tcp . 20007 }; }"
        ),
        "{t}"
    );
    assert!(
        t.contains("ip saddr @svc_cache_v4 meta l4proto . th dport @lease_cache counter accept"),
        "{t}"
    );
    assert_eq!(
        lease_commands(&[leased(20008)], &[leased(20007)]),
        "add element inet portwarden lease_cache { tcp . 20008 }\ndelete element inet portwarden lease_cache { tcp . 20007 }\n"
    );
    // Without leases the set still exists, empty, so a later alloc can add to it.
    let t = render(&p, &Options::default()).unwrap().to_nft();
    assert!(
        t.contains("set lease_cache { type inet_proto . inet_service; }"),
        "{t}"
    );
}

/// nft's lexical structure, enough to compare two renderings: quoted strings, words and
/// punctuation, with the contents of strings and the names after `@`/`set` masked.
#[test]
fn r_rollback_snapshots_are_only_our_table() {
    let ours = "table inet portwarden {\n\tset grants_v4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags timeout\n\t}\n\tset lease_x {\n\t\ttype inet_proto . inet_service\n\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\ttcp dport 22 accept comment \"{management}; # }\"\n\t}\n}\n";
    assert_eq!(check_snapshot(ours), Ok(()));
    assert_eq!(
        listed_sets(ours).into_iter().collect::<Vec<_>>(),
        ["grants_v4", "lease_x"]
    );
    // Lines inside a quoted string are not declarations, and a declared name that our
    // renderer could not have made is not taken (it would reach `flush set` commands).
    let smuggled = "table inet portwarden {\n\tset lease_x {\n\t\ttype inet_proto . inet_service\n\t\tcomment \"x\nset lease_x;add table ip pwned;add chain ip pwned c {\n\"\n\t}\n\tset Evil;x {\n\t}\n}\n";
    assert_eq!(check_snapshot(smuggled), Ok(()));
    assert_eq!(
        listed_sets(smuggled).into_iter().collect::<Vec<_>>(),
        ["lease_x"]
    );
    for evil in [
        "table inet portwarden {\n}\ntable ip filter {\n}\n",
        "flush ruleset\ntable inet portwarden {\n}\n",
        "table inet portwarden {\n}\nflush ruleset\n",
        "table inet portwarden {\n}; delete table ip nat\n",
        "delete table ip filter; table inet portwarden {\n}\n",
        "table inet portwarden {\n include \"/etc/nftables.conf\"\n}\n",
        "define x = 1\ntable inet portwarden {\n}\n",
        "table inet portwarden {\n chain c { comment \"open }\n",
        "table inet portwarden {\n chain c {\n}\n",
        "table inet portwarden {\n}\n}\n",
        "table ip portwarden {\n}\n",
        "",
    ] {
        assert!(check_snapshot(evil).is_err(), "accepted: {evil}");
    }
}

#[test]
fn r_rollback_carries_the_stores_grants_and_leases() {
    let present: std::collections::BTreeSet<String> = ["grants_v4", "grants_v6", "lease_cache"]
        .map(String::from)
        .into();
    let grants = vec![Grant {
        addr: "::ffff:10.0.0.2".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: Port::new(9000).unwrap(),
        left: std::time::Duration::from_secs(300),
    }];
    let leases = vec![
        LeasedPort {
            service: "cache".into(),
            protocol: Protocol::Tcp,
            port: Port::new(9100).unwrap(),
        },
        // A service the snapshot's policy did not have: its set is not there.
        LeasedPort {
            service: "newer".into(),
            protocol: Protocol::Tcp,
            port: Port::new(9101).unwrap(),
        },
    ];
    let text = state_commands(&present, &grants, &leases);
    assert_eq!(
        text,
        "flush set inet portwarden grants_v4\nflush set inet portwarden grants_v6\nflush set inet portwarden lease_cache\n\
         add element inet portwarden grants_v4 { 10.0.0.2 . tcp . 9000 timeout 5m }\n\
         add element inet portwarden lease_cache { tcp . 9100 }\n"
    );
}

fn structure(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut prev = String::new();
    while let Some(c) = chars.next() {
        let tok = match c {
            '"' => {
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == '"' {
                        closed = true;
                        break;
                    }
                    assert!(d != '\n', "newline inside a string");
                }
                assert!(closed, "unterminated string");
                "STR".to_string()
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                "\n".to_string()
            }
            c if c.is_whitespace() && c != '\n' => continue,
            c if c.is_ascii_alphanumeric() || "_./-:".contains(c) => {
                let mut w = c.to_string();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || "_./-:".contains(d) {
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if prev == "@"
                    || prev == "set"
                    || w.chars().all(|c| c.is_ascii_digit() || ".:/-".contains(c))
                {
                    "NAME".to_string()
                } else {
                    w
                }
            }
            c => c.to_string(),
        };
        prev = tok.clone();
        out.push(tok);
    }
    out
}

fn arb_ident() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
}

fn arb_iface() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@-]{1,14}\\*?".prop_filter("not . or ..", |s| {
        let t = s.trim_end_matches('*');
        t != "." && t != ".."
    })
}

/// A policy with the given names, in every place a name reaches the ruleset.
fn named_policy(host: &str, svc: &[String], pool: &str, bal: &str, iface: &str) -> String {
    let mut src = format!(
        "version = 1\n[host]\nname = \"{host}\"\n[zones]\ninternal = {{ interfaces = [\"{iface}\"], cidrs = [\"10.0.0.0/8\"] }}\n\
         [[pool]]\nname = \"{pool}\"\nrange = \"30000-30999\"\n"
    );
    for (i, n) in svc.iter().enumerate() {
        if i == 0 {
            src.push_str(&format!(
                "[[service]]\nname = \"{n}\"\npool = \"{pool}\"\nzone = \"internal\"\nallow_from = [\"10.9.0.0/16\"]\n"
            ));
        } else {
            src.push_str(&format!(
                "[[service]]\nname = \"{n}\"\nport = {}\nzone = \"internal\"\nmax_conn_per_source = 5\n",
                2000 + i
            ));
        }
    }
    src.push_str(&format!(
        "[[balance]]\nname = \"{bal}\"\nlisten = \"0.0.0.0:8873\"\nbackends = [\"10.0.0.11:873\"]\nmax_conn_per_source = 7\n"
    ));
    src
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever bytes reach `quote`, the result is one string token that cannot end early.
    #[test]
    fn r_quote_is_one_token(s in any::<String>()) {
        let q = quote(&s);
        prop_assert!(q.len() <= COMMENT_MAX + 2);
        prop_assert_eq!(structure(&q), vec!["STR".to_string()]);
        let inner = &q[1..q.len() - 1];
        let bad = ['"', '\\', ';', '#', '\n', '\r', '{', '}'];
        prop_assert!(!inner.contains(bad), "{}", q);
    }

    /// No name a policy accepts changes the structure of the rendered ruleset: rendering
    /// with random names and with plain placeholder names gives the same token structure
    /// (in both nft and iptables text), and distinct names never share a set.
    #[test]
    fn r_policy_names_never_change_rule_structure(
        host in arb_ident(),
        svc in prop::collection::btree_set(arb_ident(), 2..5),
        pool in arb_ident(),
        bal in arb_ident(),
        iface in arb_iface(),
    ) {
        let svc: Vec<String> = svc.into_iter().collect();
        let placeholders: Vec<String> = (0..svc.len()).map(|i| format!("s{i}")).collect();
        let src = named_policy(&host, &svc, &pool, &bal, &iface);
        let plain = named_policy("h", &placeholders, "p", "b", "eth1");
        let p = Policy::parse("p.toml", &src, Catalog::builtin());
        let p = match p { Ok(p) => p, Err(e) => panic!("valid names refused: {e}\n{src}") };
        let q = policy(&plain);
        let leases = |names: &[String]| vec![LeasedPort { service: names[0].clone(), protocol: Protocol::Tcp, port: Port::new(30001).unwrap() }];
        let opts = |names: &[String]| Options { leases: leases(names), ..Options::default() };
        let a = render(&p, &opts(&svc)).unwrap();
        let b = render(&q, &opts(&placeholders)).unwrap();
        prop_assert_eq!(structure(&a.to_nft()), structure(&b.to_nft()));
        prop_assert_eq!(a.sets.len(), b.sets.len(), "a set was lost to a name collision");
        prop_assert_eq!(a.rules.len(), b.rules.len());
        let ia = iptables::render(&p, &opts(&svc)).unwrap();
        let ib = iptables::render(&q, &opts(&placeholders)).unwrap();
        prop_assert_eq!(structure(&ia.v4), structure(&ib.v4));
        prop_assert_eq!(structure(&ia.v6), structure(&ib.v6));
    }
}

/// Rendered rulesets against the real nft, inside a network namespace this test creates:
/// random policies (names at the edge of what the policy accepts) render to text that
/// `nft -c` accepts, and once loaded nft lists back exactly the model's sets, number of
/// rules and rules per service: no policy value added, merged or split a rule.
mod nft_roundtrip {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A namespace of the test's own (testkit's), with nft run inside it.
    struct Ns(portwarden_testkit::Netns);

    impl Ns {
        fn new() -> Option<Ns> {
            if Command::new("nft").arg("--version").output().is_err() {
                eprintln!("SKIP: nft is not installed");
                return None;
            }
            portwarden_testkit::Netns::new("nftrt").map(Ns)
        }

        fn nft(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
            let mut c = Command::new("ip")
                .args(["netns", "exec", &self.0.name, "nft"])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(t) = input {
                c.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
            }
            drop(c.stdin.take());
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn r_rendered_rulesets_load_and_list_back_as_modelled(
            names in prop::collection::btree_set("[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", 2..6),
            bal in "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
            iface in "[A-Za-z0-9_.@-]{1,14}",
            enforce in any::<bool>(),
        ) {
            prop_assume!(iface != "." && iface != "..");
            let Some(ns) = Ns::new() else { return Ok(()) };
            let names: Vec<String> = names.into_iter().collect();
            let mut src = named_policy("h", &names, &names[0], &bal, &iface);
            if !enforce {
                src.push_str("[firewall]\nmode = \"monitor\"\n");
            }
            let p = Policy::parse("p.toml", &src, Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"));
            let opts = Options {
                grants: vec![Grant {
                    addr: "::ffff:192.0.2.1".parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: Port::new(53).unwrap(),
                    left: std::time::Duration::from_secs(600),
                }],
                leases: vec![LeasedPort {
                    service: names[0].clone(),
                    protocol: Protocol::Tcp,
                    port: Port::new(30007).unwrap(),
                }],
                ..Options::default()
            };
            let model = render(&p, &opts).unwrap();
            let text = model.to_nft();
            let (ok, _, err) = ns.nft(&["-c", "-f", "-"], Some(&text));
            prop_assert!(ok, "nft -c refused it: {}\n{}", err, text);
            let (ok, _, err) = ns.nft(&["-f", "-"], Some(&text));
            prop_assert!(ok, "nft -f refused it: {}", err);
            let (ok, out, err) = ns.nft(&["-j", "list", "table", "inet", "portwarden"], None);
            prop_assert!(ok, "{}", err);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let items = v["nftables"].as_array().unwrap();
            let mut sets: Vec<String> = items
                .iter()
                .filter_map(|i| i["set"]["name"].as_str().map(String::from))
                .collect();
            sets.sort();
            let mut want: Vec<String> = model.sets.iter().map(|s| s.name.clone()).collect();
            want.sort();
            prop_assert_eq!(&sets, &want);
            // Its listing is what a rollback snapshot holds: it passes the snapshot check,
            // names the same sets, and reloads with the store's state in one transaction.
            let (ok, listing, err) = ns.nft(&["list", "table", "inet", "portwarden"], None);
            prop_assert!(ok, "{}", err);
            prop_assert_eq!(check_snapshot(&listing), Ok(()));
            prop_assert_eq!(listed_sets(&listing).into_iter().collect::<Vec<_>>(), want);
            let state = state_commands(&listed_sets(&listing), &opts.grants, &opts.leases);
            let reload = format!("table inet portwarden\ndelete table inet portwarden\n{listing}\n{state}");
            let (ok, _, err) = ns.nft(&["-f", "-"], Some(&reload));
            prop_assert!(ok, "the snapshot did not reload: {}\n{}", err, reload);
            let rules = items.iter().filter(|i| i["rule"]["chain"] == "input").count();
            prop_assert_eq!(rules, model.rules.len());
            // Each service's comment appears once per rule the model gave it.
            let comments: Vec<String> = items
                .iter()
                .filter_map(|i| i["rule"]["comment"].as_str().map(String::from))
                .collect();
            for n in &names {
                let c = format!("service {n}");
                let modelled = model.rules.iter().filter(|r| match r {
                    Rule::Accept { comment, .. } | Rule::AcceptLeased { comment, .. } => *comment == c,
                    Rule::Raw(_) => false,
                }).count();
                prop_assert_eq!(comments.iter().filter(|x| **x == c).count(), modelled, "{}", c);
            }
        }
    }
}
