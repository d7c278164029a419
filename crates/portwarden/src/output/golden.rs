//! Golden files of documents in both forms: the table and `--json` of one document, side
//! by side under `tests/golden/render/` (`UPDATE_GOLDEN=1` rewrites them), so a change
//! to either shows in review next to the other.

use portwarden_api::API_VERSION;
use portwarden_api::fw::{FwTxnView, StatusDoc};
use portwarden_api::lease::{Lease, LeasesDoc};
use portwarden_api::log::{Broken, Head, VerifyDoc};
use portwarden_core::findings::{Finding, RuleId, Severity};
use serde::Serialize;

use super::printer::tests::printed;
use super::printer::{Mode, Render};

fn both<D: Render + Serialize>(name: &str, d: &D) {
    let text = format!(
        "$ portwarden …\n{}\n$ portwarden --json …\n{}",
        printed(d, Mode::Human),
        printed(d, Mode::Json)
    );
    portwarden_testkit::golden(
        env!("CARGO_MANIFEST_DIR"),
        &format!("render/{name}.txt"),
        &text,
    );
}

fn lease(id: i64, port: u16, state: &str) -> Lease {
    Lease {
        id,
        scope: "local".into(),
        protocol: "tcp".into(),
        port,
        service: "mirror".into(),
        pool: Some("transfer".into()),
        owner: "alice".into(),
        process: Some("/usr/bin/rsync".into()),
        state: state.into(),
        created_at: 1_800_000_000,
        expires_at: 1_800_003_600,
        last_seen_listening: Some(1_800_000_600),
        missed: 0,
        ttl_max: Some(3600),
    }
}

#[test]
fn leases() {
    both(
        "leases",
        &LeasesDoc {
            api: API_VERSION,
            now: 1_800_001_800,
            leases: vec![lease(1, 20000, "active"), lease(2, 20001, "planned")],
        },
    );
}

#[test]
fn check() {
    both(
        "check",
        &portwarden_api::check::CheckDoc {
            api: API_VERSION,
            policy: "/etc/portwarden/policy.toml".into(),
            host: "mirror-01".into(),
            fail_on: Severity::Medium,
            exposure_total: 12.5,
            exposure: vec![],
            findings: vec![Finding {
                id: RuleId::UnmanagedListener,
                severity: Severity::High,
                subject: "0.0.0.0:6379/tcp".into(),
                evidence: "redis-server (pid 812) listens on every address".into(),
                why: "a listener no policy declares is exposure nobody reviewed".into(),
                remedy: "declare it as a service, or bind it to loopback".into(),
            }],
        },
    );
}

#[test]
fn fw_status() {
    both(
        "fw-status",
        &StatusDoc {
            api: API_VERSION,
            backend: "nftables".into(),
            target: "table inet portwarden".into(),
            table: true,
            last: Some(FwTxnView {
                id: 4,
                created: 1_800_000_000,
                deadline: Some(1_800_000_060),
                state: "pending".into(),
                actor: "root (uid 0, sudo from alice)".into(),
                ruleset: "table inet portwarden { … }".into(),
                watcher_pid: Some(4242),
            }),
            warning: None,
        },
    );
}

#[test]
fn log_verify_broken() {
    both(
        "log-verify-broken",
        &VerifyDoc {
            api: API_VERSION,
            ok: false,
            records: 12,
            first_seq: Some(1),
            head: Some(Head {
                seq: 12,
                hash: "9f".repeat(32),
            }),
            broken: Some(Broken {
                seq: 7,
                why: "its hash does not match its contents".into(),
            }),
            problems: vec!["the head anchor says seq 14: records were deleted".into()],
            repaired: vec![],
        },
    );
}
