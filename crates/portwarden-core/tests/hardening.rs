//! Issue 10 hardening: control characters in policy strings, and the cross-field rules
//! checked against their pairwise definitions on random policies.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests read their fixtures

use portwarden_core::{Catalog, Policy};

fn errors(src: &str) -> Vec<String> {
    match Policy::parse("f.toml", src, Catalog::builtin()) {
        Ok(_) => vec!["<accepted>".to_string()],
        Err(e) => e
            .errors
            .iter()
            .map(|l| format!("{}:{}: {}", l.line, l.col, l.message))
            .collect(),
    }
}

/// Item 14: a control character in any string value is refused where it is.
#[test]
fn r_policy_control_bytes_refused() {
    let cases = [
        (
            r#"name = "db\u001b[31m""#,
            "4:8: `name` must not contain control characters (found U+001B)",
        ),
        (
            r#"name = "db\u0007""#,
            "4:8: `name` must not contain control characters (found U+0007)",
        ),
        (
            r#"name = "db\u007f""#,
            "4:8: `name` must not contain control characters (found U+007F)",
        ),
        (
            r#"name = "db\u009b2J""#,
            "4:8: `name` must not contain control characters (found U+009B)",
        ),
        (
            r#"name = "a\tb""#,
            "4:8: `name` must not contain control characters (found U+0009)",
        ),
        (
            "name = \"\"\"a\nb\"\"\"",
            "4:8: `name` must not contain control characters (found U+000A)",
        ),
        (
            r#"name = "db"
process = "mariadbd\r""#,
            "5:11: `process` must not contain control characters (found U+000D)",
        ),
        (
            r#"name = "db"
owner = "\u0000""#,
            "5:9: `owner` must not contain control characters (found U+0000)",
        ),
    ];
    for (service, want) in cases {
        let src =
            format!("version = 1\n[[service]]\nport = 3306\n{service}\nzone = \"localhost\"\n");
        let got = errors(&src);
        assert_eq!(got, vec![want.to_string()], "{service}");
    }
    // Catalog names, pool names and addresses go through the same reader.
    let src = "version = 1\n[[pool]]\nname = \"p\\u001b\"\nrange = \"20000-20099\"\n";
    assert_eq!(
        errors(src),
        vec!["3:8: `name` must not contain control characters (found U+001B)".to_string()]
    );
    // Printable Unicode stays allowed where free text is (names are identifiers).
    let src = "version = 1\n[[service]]\nname = \"depot\"\nowner = \"équipe dépôt-ü\"\nport = 3306\nzone = \"localhost\"\n";
    assert_eq!(errors(src), vec!["<accepted>".to_string()]);
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn range_text(a: u16, b: u16) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Item 15: the O(n log n) rules report exactly what their pairwise definitions say.
#[test]
fn r_policy_cross_checks_match_their_pairwise_definitions() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut src = String::from("version = 1\n");
        let mut want: Vec<String> = Vec::new();
        // Pools: (name, lo, hi, protocol).
        let mut pools: Vec<(String, u16, u16, &str)> = Vec::new();
        for i in 0..rng.next(5) {
            let lo = 1 + rng.next(80) as u16;
            let hi = lo + rng.next(15) as u16;
            let proto = if rng.next(3) == 0 { "udp" } else { "tcp" };
            let name = format!("p{}", if rng.next(6) == 0 { 0 } else { i });
            src.push_str(&format!(
                "[[pool]]\nname = \"{name}\"\nrange = \"{lo}-{hi}\"\nprotocol = \"{proto}\"\n"
            ));
            if pools.iter().any(|p| p.0 == name) {
                want.push(format!("pool `{name}` is declared twice"));
            }
            // Messages at one place are raised in order; identical neighbours fold.
            let mut here = Vec::new();
            for q in &pools {
                if q.3 == proto && q.1 <= hi && lo <= q.2 {
                    here.push(format!(
                        "pool `{name}` ({}/{proto}) overlaps pool `{}` ({}/{})",
                        range_text(lo, hi),
                        q.0,
                        range_text(q.1, q.2),
                        q.3
                    ));
                }
            }
            here.dedup();
            want.extend(here);
            pools.push((name, lo, hi, proto));
        }
        // Services with fixed ports: (name, lo, hi, protocol).
        let mut services: Vec<(String, u16, u16, &str)> = Vec::new();
        for i in 0..rng.next(40) {
            let lo = 1 + rng.next(120) as u16;
            let hi = if rng.next(2) == 0 {
                lo
            } else {
                lo + rng.next(6) as u16
            };
            let proto = if rng.next(3) == 0 { "udp" } else { "tcp" };
            let name = format!("s{}", if rng.next(8) == 0 { 0 } else { i });
            src.push_str(&format!(
                "[[service]]\nname = \"{name}\"\nport = \"{}\"\nprotocol = \"{proto}\"\nzone = \"localhost\"\n",
                range_text(lo, hi)
            ));
            if services.iter().any(|s| s.0 == name) {
                want.push(format!("service `{name}` is declared twice"));
            }
            let spec = format!("{}/{proto}", range_text(lo, hi));
            // (message, help): the help names the pool's range.
            let mut here: Vec<(String, String)> = Vec::new();
            if let Some(t) = services
                .iter()
                .find(|t| t.3 == proto && t.1 <= hi && lo <= t.2)
            {
                here.push((
                    format!("port {spec} is already claimed by service `{}`", t.0),
                    String::new(),
                ));
            }
            for p in &pools {
                if p.3 == proto && p.1 <= hi && lo <= p.2 {
                    here.push((
                        format!(
                            "fixed port {spec} of service `{name}` lies inside pool `{}`",
                            p.0
                        ),
                        format!("{}-{}", p.1, p.2),
                    ));
                }
            }
            here.dedup();
            want.extend(here.into_iter().map(|(m, _)| m));
            services.push((name, lo, hi, proto));
        }
        let mut groups: Vec<u16> = Vec::new();
        for i in 0..rng.next(4) {
            let port = 1 + rng.next(120) as u16;
            // Two groups on one address and protocol: the later one is refused.
            if let Some(j) = groups.iter().position(|p| *p == port) {
                want.push(format!(
                    "balance group `b{i}` listens on 127.0.0.1:{port}, as group `b{j}` does (127.0.0.1:{port})"
                ));
            }
            groups.push(port);
            src.push_str(&format!(
                "[[balance]]\nname = \"b{i}\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"127.0.0.2:9\"]\n"
            ));
            if let Some(s) = services
                .iter()
                .find(|s| s.3 == "tcp" && s.1 <= port && port <= s.2)
            {
                want.push(format!(
                    "balance group `b{i}` listens on {port}/tcp, already claimed by service `{}`",
                    s.0
                ));
            }
        }
        let mut got: Vec<String> = match Policy::parse("f.toml", &src, Catalog::builtin()) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|l| l.message).collect(),
        };
        got.sort();
        want.sort();
        assert_eq!(got, want, "round {round}:\n{src}");
    }
}
