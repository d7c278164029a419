//! The `check` use-case (and what `report` builds on): the policy, the host's facts and
//! the store's state through every rule.

use std::path::Path;

use portwarden_api::check::CheckDoc;
use portwarden_core::Catalog;
use portwarden_core::findings::{Finding, Severity, policy_findings};
use portwarden_store::Journal;

use crate::Ctx;
use crate::policy::LoadedPolicy;

/// What the embedded store holds for the rules, when it exists.
#[derive(Default)]
struct StoreState {
    leases: Vec<portwarden_store::Lease>,
    broken: Option<(i64, String)>,
    /// `PORT/PROTO` → the last ledger timestamp that touched it.
    last_change: std::collections::BTreeMap<String, i64>,
}

fn read_store(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<StoreState> {
    let Some(s) = crate::store::open_existing(ctx, state_dir)? else {
        return Ok(StoreState::default());
    };
    let entries = s.ledger(None)?;
    let broken = portwarden_store::ledger::verify(&entries).broken;
    let last_change = entries.into_iter().map(|e| (e.subject, e.ts)).collect();
    Ok(StoreState {
        leases: s.leases()?,
        broken,
        last_change,
    })
}

/// Lease, pool and ledger rules, over the store and the facts `check` gathered.
fn store_rules(
    now: i64,
    policy: &portwarden_core::Policy,
    st: &StoreState,
    facts: &portwarden_core::hostcheck::HostFacts,
) -> Vec<Finding> {
    let leases = crate::lease::lease_facts(&st.leases);
    let listeners: Vec<portwarden_core::facts::Socket> =
        facts.listeners.iter().map(|l| l.socket.clone()).collect();
    portwarden_core::findings::store_findings(
        policy,
        &portwarden_core::findings::StoreFacts {
            now,
            leases: &leases,
            listeners: &listeners,
            sysctls: &facts.sysctls,
            ledger_broken: st.broken.as_ref().map(|(s, w)| (*s, w.as_str())),
        },
    )
}

/// Records who owns each managed port and reports changes since the last check.
fn record_identities(
    ctx: &Ctx,
    state_dir: &Path,
    policy: &portwarden_core::Policy,
    facts: &portwarden_core::hostcheck::HostFacts,
) -> anyhow::Result<Vec<Finding>> {
    use portwarden_core::hostcheck::{PortIdentity, identity_change_findings, managed_identities};
    let seen = managed_identities(policy, facts);
    if seen.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<portwarden_store::Identity> = seen
        .iter()
        .filter_map(|i| {
            Some(portwarden_store::Identity {
                protocol: i.protocol,
                port: portwarden_core::Port::new(i.port)?,
                exe: i.exe.clone(),
                sha256: i.sha256.clone(),
                first_seen: 0,
                last_seen: 0,
            })
        })
        .collect();
    let mut store = crate::store::open(ctx, state_dir, true)?;
    let changes = store.record_identities(&records, ctx.clock.now(), &ctx.actor)?;
    let as_fact = |i: &portwarden_store::Identity| PortIdentity {
        protocol: i.protocol,
        port: i.port.get(),
        exe: i.exe.clone(),
        sha256: i.sha256.clone(),
    };
    let changes: Vec<(PortIdentity, PortIdentity)> = changes
        .iter()
        .map(|(o, n)| (as_fact(o), as_fact(n)))
        .collect();
    Ok(identity_change_findings(policy, &changes))
}

/// Everything `check` and `report` compute.
pub struct Evaluation {
    pub loaded: LoadedPolicy,
    pub host: String,
    pub facts: portwarden_core::hostcheck::HostFacts,
    pub findings: Vec<Finding>,
    pub exposure: Vec<portwarden_core::hostcheck::Exposure>,
    pub exposure_total: f64,
    pub last_change: std::collections::BTreeMap<String, i64>,
}

/// Loads the policy (stopping on its errors before any probe), gathers the facts and runs
/// every rule; records each managed port's identity in the store at `state_dir`.
pub async fn evaluate(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<Evaluation> {
    let loaded = crate::policy::load(ctx, policy)?;
    evaluate_loaded(ctx, loaded, state_dir, true).await
}

/// [`evaluate`] of a policy held in hand, writing nothing (a change's pre-flight: what
/// the host would look like under it).
pub async fn evaluate_dry(
    ctx: &Ctx,
    loaded: LoadedPolicy,
    state_dir: &Path,
) -> anyhow::Result<Evaluation> {
    evaluate_loaded(ctx, loaded, state_dir, false).await
}

async fn evaluate_loaded(
    ctx: &Ctx,
    loaded: LoadedPolicy,
    state_dir: &Path,
    record: bool,
) -> anyhow::Result<Evaluation> {
    let mut findings = policy_findings(&loaded.policy, Catalog::builtin());
    let st = read_store(ctx, state_dir)?;
    let leased = st
        .leases
        .iter()
        .map(|l| (l.protocol, l.port.get()))
        .collect();
    ctx.notes.verbose(&format!(
        "policy: {}; store: {}",
        loaded.name,
        state_dir.display()
    ));
    let started = std::time::Instant::now();
    let facts = crate::facts::gather(ctx, &loaded.policy, leased).await?;
    ctx.notes.verbose(&format!(
        "gathered {} listeners ({} probed) in {} ms",
        facts.listeners.len(),
        facts.listeners.iter().filter(|l| l.probe.is_some()).count(),
        started.elapsed().as_millis()
    ));
    findings.extend(store_rules(ctx.clock.now(), &loaded.policy, &st, &facts));
    findings.extend(portwarden_core::hostcheck::host_findings(
        &loaded.policy,
        Catalog::builtin(),
        &facts,
    ));
    if record {
        findings.extend(record_identities(ctx, state_dir, &loaded.policy, &facts)?);
    }
    portwarden_core::findings::sort(&mut findings);
    let (exposure, exposure_total) =
        portwarden_core::hostcheck::exposure(&loaded.policy, Catalog::builtin(), &facts);
    let host = loaded
        .policy
        .host
        .name
        .clone()
        .or_else(|| portwarden_os::hostname().ok())
        .unwrap_or_else(|| "unknown".to_string());
    Ok(Evaluation {
        loaded,
        host,
        facts,
        findings,
        exposure,
        exposure_total,
        last_change: st.last_change,
    })
}

impl Evaluation {
    /// Adds findings from outside the evaluation (the daemon's port health alerts),
    /// keeping the order.
    pub fn add(&mut self, extra: Vec<Finding>) {
        self.findings.extend(extra);
        portwarden_core::findings::sort(&mut self.findings);
    }

    /// The `check` document, judged against `fail_on`.
    pub fn doc(&self, fail_on: Severity) -> CheckDoc {
        CheckDoc {
            api: portwarden_api::API_VERSION,
            policy: self.loaded.name.clone(),
            host: self.host.clone(),
            fail_on,
            exposure_total: self.exposure_total,
            exposure: self.exposure.clone(),
            findings: self.findings.clone(),
        }
    }
}
