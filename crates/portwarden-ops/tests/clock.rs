//! The use-cases on a manual clock: a lease's TTL and the rules that follow it, without
//! waiting for the wall clock.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use portwarden_ops::lease::{self, AllocReq};
use portwarden_ops::{Ctx, ManualClock};

static NEVER: AtomicBool = AtomicBool::new(false);

const POLICY: &str = r#"
version = 1
[[pool]]
name = "bulk"
range = "20500-20599"
lease_ttl = "1h"
[[service]]
name = "bulk"
pool = "bulk"
zone = "localhost"
"#;

fn req(ttl: Duration) -> AllocReq {
    AllocReq {
        service: "bulk".into(),
        pool: None,
        port: None,
        count: 1,
        ttl: Some(ttl),
        owner: "alice".into(),
        seed: Some(7),
        bind_probe: false,
    }
}

fn finding_ids(doc: &portwarden_api::check::CheckDoc) -> Vec<String> {
    doc.findings
        .iter()
        .map(|f| f.id.as_str().to_string())
        .collect()
}

/// A temp dir with [`POLICY`] and a state dir, and a context on a manual clock.
struct Site {
    _dir: portwarden_testkit::Dir,
    policy: std::path::PathBuf,
    state: std::path::PathBuf,
    clock: std::sync::Arc<ManualClock>,
    ctx: Ctx,
}

fn site(tag: &str) -> Site {
    let dir = portwarden_testkit::tempdir(tag);
    let policy = dir.join("p.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let clock = ManualClock::at(1_800_000_000);
    let mut ctx = Ctx::quiet(&NEVER);
    ctx.clock = clock.clone();
    ctx.actor = "test".into();
    Site {
        state: dir.join("state"),
        _dir: dir,
        policy,
        clock,
        ctx,
    }
}

#[tokio::test]
async fn an_expired_lease_is_a_finding_until_reclaim_retires_it() {
    let site = site("ops-clock");
    let (ctx, clock, state, policy) = (&site.ctx, &site.clock, &site.state, &site.policy);
    let p = Some(policy.as_path());

    let a = lease::alloc(
        ctx,
        p,
        state,
        &req(Duration::from_secs(60)),
        &mut |_| Ok(()),
    )
    .await
    .unwrap();
    assert_eq!(a.leases.len(), 1);
    assert_eq!(a.leases[0].expires_at, 1_800_000_060);
    let listed = lease::list(ctx, state).await.unwrap();
    assert_eq!(listed.now, 1_800_000_000);

    let check = |ctx: &Ctx| {
        let ctx = ctx.clone();
        let (policy, state) = (policy.clone(), state.clone());
        async move {
            portwarden_ops::check::evaluate(&ctx, Some(&policy), &state)
                .await
                .unwrap()
                .doc(portwarden_core::findings::Severity::Info)
        }
    };
    // In force: no expiry finding, nothing to reclaim.
    assert!(!finding_ids(&check(ctx).await).contains(&"expired-lease".to_string()));
    assert!(
        lease::reclaim(ctx, p, state, true)
            .await
            .unwrap()
            .reclaimed
            .is_empty()
    );

    // A second past its TTL.
    clock.advance(61);
    let ids = finding_ids(&check(ctx).await);
    assert!(ids.contains(&"expired-lease".to_string()), "{ids:?}");
    let dry = lease::reclaim(ctx, p, state, true).await.unwrap();
    assert_eq!(dry.reclaimed.len(), 1);
    assert_eq!(
        (
            dry.reclaimed[0].action.as_str(),
            dry.reclaimed[0].reason.as_str()
        ),
        ("retire", "expired")
    );
    assert_eq!(
        lease::list(ctx, state).await.unwrap().leases.len(),
        1,
        "a dry run changes nothing"
    );
    let done = lease::reclaim(ctx, p, state, false).await.unwrap();
    assert_eq!(done.reclaimed.len(), 1);
    assert!(lease::list(ctx, state).await.unwrap().leases.is_empty());
    assert!(!finding_ids(&check(ctx).await).contains(&"expired-lease".to_string()));

    // The ledger's times are the clock's.
    let log = portwarden_ops::log::list(ctx, state, None).unwrap();
    assert!(
        log.records.iter().all(|r| r.ts >= 1_800_000_000),
        "{:?}",
        log.records
    );
    assert_eq!(log.records.last().unwrap().ts, 1_800_000_061);
}

#[tokio::test]
async fn a_renewal_counts_from_the_clock_and_is_capped_by_the_pool() {
    let site = site("ops-renew");
    let (ctx, clock, state) = (&site.ctx, &site.clock, &site.state);
    let p = Some(site.policy.as_path());
    let a = lease::alloc(ctx, p, state, &req(Duration::from_secs(600)), &mut |_| {
        Ok(())
    })
    .await
    .unwrap();
    let id = a.leases[0].id;
    clock.advance(300);
    let r = lease::renew(ctx, p, state, id, None, "alice")
        .await
        .unwrap();
    assert_eq!(
        r.lease.expires_at,
        1_800_000_300 + 3600,
        "the pool's lease_ttl"
    );
    let e = lease::renew(ctx, p, state, id, Some(Duration::from_secs(7200)), "alice")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 1h"), "{e}");
    let e = lease::renew(ctx, p, state, id, None, "mallory")
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("not `mallory`"), "{e:#}");
}

/// The daemon runs the lease use-cases on a multi-threaded runtime: their futures are Send.
#[test]
fn lease_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let ctx = Ctx::quiet(&NEVER);
    let dir = std::path::Path::new("/nonexistent");
    let r = req(Duration::from_secs(1));
    let mut heard = |_: &portwarden_api::lease::Lease| Ok(());
    send(lease::alloc(&ctx, None, dir, &r, &mut heard));
    send(lease::renew(&ctx, None, dir, 1, None, "a"));
    send(lease::release(&ctx, dir, 1, "a"));
    send(lease::list(&ctx, dir));
    send(lease::reclaim(&ctx, None, dir, true));
    send(lease::pools(&ctx, None, dir));
}
