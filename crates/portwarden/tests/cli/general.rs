//! The CLI as a whole: check, policy, catalog, flags, usage errors, JSON, verbosity.

use super::*;

#[test]
fn check_runs_against_the_baseline() {
    let o = run(&["check", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["policy"], "the built-in baseline policy");
    // Exit 1 exactly when a finding at medium or above exists (the default --fail-on):
    // this host's own listeners decide which.
    let worth_fixing = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| matches!(f["severity"].as_str(), Some("medium" | "high" | "critical")));
    assert_eq!(code(&o), i32::from(worth_fixing), "{}", stderr(&o));
    let o = run(&["check", "--fail-on", "critical", "-q"]);
    let critical = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["severity"] == "critical");
    assert_eq!(code(&o), i32::from(critical), "{}", stderr(&o));
    let ids: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"management-open-to-all"), "{ids:?}");
    // --fail-on low turns the low finding into a negative answer.
    let o = run(&["check", "--fail-on", "low", "-q"]);
    assert_eq!(code(&o), 1);
    assert!(o.stdout.is_empty());
}

#[test]
fn check_exits_1_on_high_findings() {
    let dir = tempdir("high");
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        "version = 1\n[[service]]\nname = \"db\"\ncatalog = \"redis\"\nzone = \"external\"\nmax_conn_per_source = 5\n",
    )
    .unwrap();
    let o = run(&["--policy", p.to_str().unwrap(), "check", "--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let high: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "high")
        .collect();
    assert!(high.iter().any(|f| f["id"] == "high-risk-exposed"), "{v}");
}

#[test]
fn check_stops_on_an_invalid_policy() {
    let p = root().join("tests/data/bad-policies/01-port-out-of-range.toml");
    let o = run(&["--policy", p.to_str().unwrap(), "check"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(":5:8: port 70000 is out of range 1-65535"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn policy_check_accepts_examples_and_the_starter() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let dir = tempdir("starter");
    let p = dir.join("policy.toml");
    let o = run(&["policy", "init", "-o", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn every_bad_policy_exits_2_with_its_diagnostic() {
    let dir = root().join("tests/data/bad-policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let first = src
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# expect: ")
            .split(" ;; ")
            .next()
            .unwrap()
            .trim_end_matches('*')
            .to_string();
        let o = run(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{}", path.display());
        let want = format!("{}:{first}", path.display());
        assert!(
            stderr(&o).contains(&want),
            "{}: want {want}\n{}",
            path.display(),
            stderr(&o)
        );
        // The caret snippet follows the location line.
        assert!(stderr(&o).contains(" | "), "{}", stderr(&o));
        n += 1;
    }
    assert!(n >= 30);
}

#[test]
fn policy_check_json_lists_every_error() {
    let p = root().join("tests/data/bad-policies/37-many-errors.toml");
    let o = run(&["policy", "check", "--json", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][0]["valid"], false);
    assert_eq!(v["files"][0]["errors"].as_array().unwrap().len(), 4);
    assert_eq!(v["files"][0]["errors"][0]["line"], 5);
    assert_eq!(v["files"][0]["errors"][0]["col"], 8);
}

#[test]
fn policy_init_never_clobbers_without_force() {
    let dir = tempdir("init");
    let p = dir.join("policy.toml");
    std::fs::write(&p, "# mine\n").unwrap();
    let o = run(&["policy", "init", "-o", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("already exists: pass --force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "# mine\n");
    let o = run(&["policy", "init", "-o", p.to_str().unwrap(), "--force"]);
    assert_eq!(code(&o), 0);
    assert!(
        std::fs::read_to_string(&p)
            .unwrap()
            .starts_with("# portwarden policy")
    );
    // To stdout, the starter is printed whole.
    let o = run(&["policy", "init"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("version = 1"));
}

#[test]
fn catalog_lists_and_shows() {
    let o = run(&["catalog", "--json"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["entries"].as_array().unwrap().len() >= 60);
    let o = run(&["catalog", "mariadb", "--json"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["entry"]["name"], "mysql");
    assert_eq!(v["entry"]["tls"], "in-protocol");
    assert_eq!(v["entry"]["ports"][0], "3306/tcp");
    let o = run(&["catalog", "postgress"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("did you mean `postgres`?"),
        "{}",
        stderr(&o)
    );
}

/// Durations, ports and addresses are parsed with the flags: a bad one is a usage error
/// (exit 2, one line) before anything runs, so not even the state directory is made.
#[test]
fn r_bad_flag_values_are_usage_errors_before_anything_runs() {
    let dir = tempdir("flags");
    let state = dir.join("state");
    for args in [
        &["alloc", "svc", "--ttl", "bogus"][..],
        &["renew", "1", "--ttl", "3x"],
        &["log", "--since", "5q"],
        &["grant", "22", "--from", "1.2.3", "--for", "1h"],
        &["grant", "22", "--from", "10.0.0.1", "--for", "forever"],
        &["grant", "22/sctp", "--from", "10.0.0.1", "--for", "1h"],
        &["revoke", "70000", "--from", "10.0.0.1"],
        &["fw", "apply", "--confirm-within", "soon"],
        &["scan", "127.0.0.1", "--exclude-ports", "0"],
        &["ls", "--port", "9-1"],
        &["who", "0"],
        &["who", "22/"],
        &["grant", "22", "--from", "0.0.0.0", "--for", "1h"],
        &["grant", "22", "--from", "ff02::1", "--for", "1h"],
    ] {
        let o = bin()
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with("portwarden: error: invalid value"),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            !state.exists(),
            "{args:?} ran before its flags were checked"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["check", "--fail-on", "severe"],
        &["policy", "check"],
        &["frobnicate"],
        &["completions", "tcsh"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}");
    }
    let o = run(&["--policy", "/nonexistent/p.toml", "check"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read policy /nonexistent/p.toml"));
}

#[test]
fn completions_and_man_render() {
    let o = run(&["completions", "bash"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("portwarden"));
    let o = run(&["man"]);
    assert_eq!(code(&o), 0);
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH portwarden"));
    // The sections a man page has, and no reference to a page that does not exist.
    for section in [
        ".SH COMMANDS",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    assert!(!page.contains("portwarden\\-check(1)"), "{page}");
}

/// `--json` prints a JSON document on every command that has one, never text.
#[test]
fn broken_pipe_exits_0_quietly() {
    let mut child = bin()
        .args(["catalog"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the child writes: its first write meets EPIPE.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn examples_dir_exists() {
    assert!(Path::new(&root().join("examples/mirror-01.toml")).exists());
}

#[test]
fn verbose_says_what_is_done_and_quiet_says_nothing() {
    let o = run(&["ls", "-v", "--port", "1"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("sockets via Netlink"), "{}", stderr(&o));
    let o = run(&["check", "-q"]);
    assert!(o.stdout.is_empty());
    let o = run(&["check", "-q", "-v"]);
    assert_eq!(code(&o), 2, "-q and -v conflict");
}

#[test]
fn r5_progress_bar_only_on_a_terminal() {
    // `script` gives the scan a pseudo-terminal; a pipe gets no progress bar.
    let exe = env!("CARGO_BIN_EXE_portwarden");
    let cmd = format!("{exe} scan 127.0.0.11 -p 1-20000");
    let Ok(o) = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
    else {
        eprintln!("SKIP: script(1) is not installed");
        return;
    };
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains("100% 20000/20000"), "{tty}");
    let piped = run(&["scan", "127.0.0.11", "-p", "1-20000"]);
    assert!(!stderr(&piped).contains('%'), "{}", stderr(&piped));
}

#[test]
fn r2_policy_init_from_host_drafts_a_policy_that_manages_every_listener() {
    let Some(mut ns) = Netns::new("draft") else {
        return;
    };
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &[
            "ip", "link", "add", "pd0", "type", "veth", "peer", "name", "pd1",
        ],
        &["ip", "addr", "add", "10.204.0.1/24", "dev", "pd0"],
        &["ip", "link", "set", "pd0", "up"],
    ] {
        ns.run(cmd);
    }
    ns.serve(&[
        "mysql-ssl@10.204.0.1:3306",
        "http@0.0.0.0:8080",
        "udpecho@10.204.0.1:5353",
    ]);
    let dir = tempdir("draft");
    let draft = dir.join("draft.toml");
    let pw = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_portwarden")])
            .args(["--state-dir", dir.join("s").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let o = pw(&[
        "policy",
        "init",
        "--from-host",
        "-o",
        draft.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = std::fs::read_to_string(&draft).unwrap();
    assert!(
        text.contains("name = \"mysql\"")
            && text.contains("port = 8080")
            && text.contains("port = 5353"),
        "{text}"
    );
    assert_eq!(code(&pw(&["policy", "check", draft.to_str().unwrap()])), 0);
    let o = pw(&[
        "--policy",
        draft.to_str().unwrap(),
        "check",
        "--json",
        "--fail-on",
        "critical",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let unmanaged: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "unmanaged-listener")
        .collect();
    assert!(unmanaged.is_empty(), "{unmanaged:?}");
    // Drafting again refuses to clobber the file.
    assert_eq!(
        code(&pw(&[
            "policy",
            "init",
            "--from-host",
            "-o",
            draft.to_str().unwrap()
        ])),
        2
    );
}

/// What the review of the rework found, held: an audit of a wrong state directory does
/// not pass, conflicting format flags are refused, sub-second lifetimes and blank owner
/// labels are usage errors.
#[test]
fn r_wrong_state_dirs_and_conflicting_flags_are_said() {
    let dir = tempdir("review");
    let missing = dir.join("nope");
    let o = run(&["--state-dir", missing.to_str().unwrap(), "log", "verify"]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no ledger at"));
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let o = run(&["--state-dir", file.to_str().unwrap(), "leases"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    assert!(err.contains("not a directory"), "{err}");
    // A value with an escape sequence is quoted back escaped, not as clap strips it.
    let o = run(&["who", "\u{1b}[31m80"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("`\\x1b[31m80`"), "{}", stderr(&o));
    let o = run(&["--json", "report", "--format", "csv"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("two formats"), "{}", stderr(&o));
    for args in [
        &["alloc", "x", "--owner", " "][..],
        &["alloc", "x", "--owner", "a\u{2028}b"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}");
    }
    let policy = dir.join("p.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[pool]]\nname = \"p\"\nrange = \"20000-20099\"\n[[service]]\nname = \"s\"\npool = \"p\"\nzone = \"localhost\"\n",
    )
    .unwrap();
    let state = dir.join("state");
    let p = policy.to_str().unwrap();
    let s = state.to_str().unwrap();
    let o = run(&[
        "--policy",
        p,
        "--state-dir",
        s,
        "alloc",
        "s",
        "--ttl",
        "1500ms",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("whole seconds"), "{}", stderr(&o));
    // Without USER or LOGNAME, the owner label is still the user's name, so a lease made
    // by cron can be renewed from a shell.
    let o = bin()
        .args([
            "--policy",
            p,
            "--state-dir",
            s,
            "--json",
            "alloc",
            "s",
            "--no-probe",
        ])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !v["leases"][0]["owner"]
            .as_str()
            .unwrap()
            .starts_with("uid:"),
        "{v}"
    );
}
