//! Rendered rulesets against the real nft: random policies (names at the edge of what
//! the policy accepts) render to text that `nft -c` accepts, and once loaded inside a
//! network namespace this test creates, nft lists back exactly the sets and the number
//! of rules the model has: no policy value added, merged or split a rule.

use std::io::Write;
use std::process::{Command, Stdio};

use portwarden_core::{Catalog, Policy, Port, Protocol};
use portwarden_nft::{Grant, LeasedPort, Options, render};
use proptest::prelude::*;

struct Ns(String);

impl Ns {
    fn new() -> Option<Ns> {
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("SKIP: nft is not installed");
            return None;
        }
        let name = format!("pw-nftrt-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: cannot create a network namespace (needs root and iproute2)");
            return None;
        }
        Some(Ns(name))
    }

    fn nft(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
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

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn policy_src(names: &[String], iface: &str, bal: &str, mode: &str) -> String {
    let mut src = format!(
        "version = 1\n[zones]\ninternal = {{ interfaces = [\"{iface}\"], cidrs = [\"10.0.0.0/8\", \"fd00::/8\"] }}\n\
         [firewall]\nmode = \"{mode}\"\n[[pool]]\nname = \"{}\"\nrange = \"30000-30999\"\n",
        names[0]
    );
    for (i, n) in names.iter().enumerate() {
        if i == 0 {
            src.push_str(&format!(
                "[[service]]\nname = \"{n}\"\npool = \"{n}\"\nzone = \"internal\"\nallow_from = [\"10.9.0.0/16\", \"fd09::/16\"]\n"
            ));
        } else {
            src.push_str(&format!(
                "[[service]]\nname = \"{n}\"\nport = {}\nzone = \"internal\"\nmax_conn_per_source = {i}\n",
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
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn r_rendered_rulesets_load_and_list_back_as_modelled(
        names in prop::collection::btree_set("[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", 2..6),
        bal in "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
        iface in "[A-Za-z0-9_.@+-]{1,14}",
        enforce in any::<bool>(),
    ) {
        prop_assume!(iface != "." && iface != "..");
        let Some(ns) = Ns::new() else { return Ok(()) };
        let names: Vec<String> = names.into_iter().collect();
        let src = policy_src(&names, &iface, &bal, if enforce { "enforce" } else { "monitor" });
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
        prop_assert_eq!(sets, want);
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
                portwarden_nft::Rule::Accept { comment, .. } | portwarden_nft::Rule::AcceptLeased { comment, .. } => *comment == c,
                portwarden_nft::Rule::Raw(_) => false,
            }).count();
            prop_assert_eq!(comments.iter().filter(|x| **x == c).count(), modelled, "{}", c);
        }
    }
}
