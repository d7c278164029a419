//! Commands inside network namespaces this suite creates.

use super::*;

#[test]
fn pools_reserve_writes_the_namespace_sysctl_keeping_what_is_there() {
    let Some(ns) = Netns::new("reserve") else {
        return;
    };
    let dir = tempdir("reserve");
    let p = dir.join("p.toml");
    std::fs::write(
            &p,
            "version = 1\n[[pool]]\nname = \"a\"\nrange = \"40000-40999\"\n[[pool]]\nname = \"b\"\nrange = \"41000-41099\"\n",
        )
        .unwrap();
    let o = ns.exec(&[
        "sh",
        "-c",
        "echo 8080 > /proc/sys/net/ipv4/ip_local_reserved_ports",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b = env!("CARGO_BIN_EXE_portwarden");
    let state = dir.join("state");
    let args = |extra: &[&'static str]| {
        let mut v = vec![
            b.to_string(),
            "--policy".into(),
            p.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "pools".into(),
            "reserve".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let dry = args(&["--dry-run"]);
    let o = ns.exec(&dry.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("8080,40000-41099"));
    let read = || {
        String::from_utf8_lossy(
            &ns.exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert_eq!(read(), "8080", "dry run writes nothing");
    let real = args(&[]);
    let o = ns.exec(&real.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(read(), "8080,40000-41099");
    // The host's own setting is untouched.
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    assert!(!host.contains("40000-41099"));
    // The change is in the ledger.
    let o = bin()
        .args(["--state-dir", state.to_str().unwrap(), "log", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"][0]["action"], "sysctl.reserve");
    assert_eq!(v["records"][0]["before"], "8080");
}
