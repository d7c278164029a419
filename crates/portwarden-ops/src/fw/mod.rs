//! The firewall use-cases: `fw plan|diff|apply|confirm|rollback|status|watch`, the
//! re-arming of a dead rollback watcher, lease changes carried into the live table, and
//! grants. Blocking (they run `nft` and SQLite): the daemon calls them on a blocking
//! thread.

mod backend;
pub mod grants;

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_api::API_VERSION;
use portwarden_api::fw::{ApplyDoc, DiffDoc, FwTxnView, PlanDoc, StatusDoc, TxnDoc};
use portwarden_core::Protocol;
use portwarden_core::time::utc;
use portwarden_core::units::HumanDuration;
use portwarden_nft::{Grant, LeasedPort, Options};
use portwarden_store::{Change, FwState, FwTxn, Journal, SqliteStore, StoreError};

pub use backend::{Firewall, IPT_MARK, Iptables, Nft, nft_installed, of_ruleset};

use crate::Ctx;

/// The longest commit-confirm window: a rollback further away protects nobody.
pub const CONFIRM_MAX: Duration = Duration::from_secs(86_400);
/// The longest grant: an opening meant to last belongs in the policy.
pub const GRANT_MAX: Duration = Duration::from_secs(365 * 86_400);

/// The operator's SSH connection: (client address, server port).
fn ssh_peer() -> Option<(IpAddr, u16)> {
    let v = std::env::var("SSH_CONNECTION").ok()?;
    let f: Vec<&str> = v.split_whitespace().collect();
    Some((f.first()?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The store's leases as the renderer admits them.
pub fn leased_ports(leases: &[portwarden_store::Lease]) -> Vec<LeasedPort> {
    leases
        .iter()
        .map(|l| LeasedPort {
            service: l.service.clone(),
            protocol: l.protocol,
            port: l.port,
        })
        .collect()
}

fn open(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<SqliteStore> {
    Ok(crate::store::open(ctx, state_dir, true)?)
}

use crate::store::open_existing;

/// The store's unexpired grants and leased ports. A grant row's time left is capped by
/// [`GRANT_MAX`]: the store is not trusted to open a port for longer than `grant` can.
fn state_of(ctx: &Ctx, s: &SqliteStore) -> anyhow::Result<(Vec<Grant>, Vec<LeasedPort>)> {
    let now = ctx.clock.now();
    let grants = s
        .grants(now)?
        .into_iter()
        .map(|r| Grant {
            addr: r.addr,
            protocol: r.protocol,
            port: r.port,
            left: Duration::from_secs(r.expires_at.saturating_sub(now).max(1) as u64)
                .min(GRANT_MAX),
        })
        .collect();
    // Only leases portwarden wrote on this host, still in force, open a port.
    Ok((grants, leased_ports(&s.admitted_leases(now)?)))
}

/// What the rendered table carries from the store: unexpired grants (with the time they
/// have left) and the leased ports of pool services.
fn live_state(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<(Vec<Grant>, Vec<LeasedPort>)> {
    match open_existing(ctx, state_dir)? {
        Some(s) => state_of(ctx, &s),
        None => Ok((Vec::new(), Vec::new())),
    }
}

/// Renders the policy to nftables after the lock-out guard on the rendered model. A zone
/// interface this host lacks is a warning when `allow_missing` (`fw plan`, `fw diff`,
/// `fw apply --allow-missing-interface`: nft matches interfaces by name, so the rule takes
/// effect when the interface appears), and an error otherwise.
fn render(
    ctx: &Ctx,
    policy: &portwarden_core::Policy,
    state_dir: &Path,
    allow_missing: bool,
) -> anyhow::Result<String> {
    let interfaces: Vec<String> = portwarden_os::host::interfaces()
        .into_iter()
        .map(|i| i.name)
        .collect();
    let missing: Vec<String> = policy
        .zones
        .iter()
        .flat_map(|(kind, z)| z.interfaces.iter().map(move |i| (kind, i)))
        .filter(|(_, i)| !interfaces.contains(i))
        .map(|(kind, i)| {
            format!("zone `{kind}` names interface `{i}`, which this host does not have")
        })
        .collect();
    if allow_missing {
        for m in &missing {
            ctx.notes
                .warn(&format!("{m}: its rules match nothing until it appears"));
        }
    } else if let Some(first) = missing.first() {
        bail!(
            "{first} (`fw apply --allow-missing-interface` applies it anyway: nft matches interfaces by name)"
        );
    }
    let (grants, leases) = live_state(ctx, state_dir)?;
    let rs = portwarden_nft::render(
        policy,
        &Options {
            ssh_peer: ssh_peer(),
            interfaces: (!allow_missing).then_some(interfaces),
            grants,
            leases,
        },
    )?;
    // Lock-out guard: the model must admit the management path and the SSH peer.
    for spec in &policy.host.management.ports {
        for c in policy.host.management.from.cidrs() {
            if !rs.admits(c.addr(), spec.protocol, spec.range.start().get()) {
                bail!(
                    "refusing to apply: the ruleset would not admit management port {spec} from {c}"
                );
            }
        }
    }
    if let Some((peer, port)) = ssh_peer() {
        if !rs.admits(peer, Protocol::Tcp, port) {
            bail!(
                "refusing to apply: the ruleset would lock out the current SSH session from {peer}"
            );
        }
    }
    Ok(rs.to_nft())
}

/// The nft ruleset `policy` renders to here (the store's grants and leases in it), for a
/// diff: interfaces this host lacks are allowed, the lock-out guard still refuses.
pub(crate) fn ruleset_of(
    ctx: &Ctx,
    policy: &portwarden_core::Policy,
    state_dir: &Path,
) -> anyhow::Result<String> {
    render(ctx, policy, state_dir, true)
}

/// A change's lock-out guard: `new` must admit, by its own rules (not the rule for the
/// current session every apply adds), the management path `old` admits and the current
/// SSH peer; the refusal names what it would lock out.
pub(crate) fn lockout_check(
    ctx: &Ctx,
    old: &portwarden_core::Policy,
    new: &portwarden_core::Policy,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let (grants, leases) = live_state(ctx, state_dir)?;
    let rs = portwarden_nft::render(
        new,
        &Options {
            ssh_peer: None,
            interfaces: None,
            grants,
            leases,
        },
    )?;
    // The management path in force must stay whole: every port range and every network
    // of it covered by one of the new policy's (a narrower network, a shorter range, a
    // hole, is a lock-out for someone).
    let new_mgmt = &new.host.management;
    for spec in &old.host.management.ports {
        let ports_kept = new_mgmt.ports.iter().any(|n| {
            n.protocol == spec.protocol
                && n.range.contains(spec.range.start())
                && n.range.contains(spec.range.end())
        });
        for c in old.host.management.from.cidrs() {
            let from_kept = new_mgmt.from.cidrs().iter().any(|n| n.covers(*c));
            if ports_kept && from_kept {
                continue;
            }
            bail!(
                "refusing the change: it would lock out the management path: port {spec} from {c} is admitted now and not, as a whole, by the new policy's [host] management"
            );
        }
    }
    if let Some((peer, port)) = ssh_peer() {
        if !rs.admits(peer, Protocol::Tcp, port) {
            bail!(
                "refusing the change: it would lock out the current SSH peer {peer} (port {port}/tcp): only this session's own rule would still admit it, and the next login would be dropped"
            );
        }
    }
    Ok(())
}

/// The iptables rendering of `policy` (v4 then v6), warning of what it cannot express.
fn render_iptables(
    ctx: &Ctx,
    policy: &portwarden_core::Policy,
    state_dir: &Path,
) -> anyhow::Result<String> {
    let (_, leases) = live_state(ctx, state_dir)?;
    let ipt = portwarden_nft::iptables::render(
        policy,
        &Options {
            ssh_peer: ssh_peer(),
            leases,
            ..Options::default()
        },
    )?;
    for u in &ipt.unsupported {
        ctx.notes.warn(&format!("iptables cannot express: {u}"));
    }
    Ok(format!("{}{}", ipt.v4, ipt.v6))
}

/// Which ruleset language `fw plan` prints and which backend `fw apply` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nftables when installed, else iptables.
    Auto,
    Nft,
    Iptables,
}

/// `fw plan`: the ruleset the policy renders to, with the store's grants and leases.
pub fn plan(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    format: Backend,
) -> anyhow::Result<PlanDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let (format, ruleset) = if format == Backend::Iptables {
        ("iptables", render_iptables(ctx, &loaded.policy, state_dir)?)
    } else {
        ("nft", render(ctx, &loaded.policy, state_dir, true)?)
    };
    Ok(PlanDoc {
        api: API_VERSION,
        format: format.into(),
        ruleset,
    })
}

/// Lines removed (`- `) and added (`+ `) from `old` to `new`, in order.
pub fn line_diff(old: &str, new: &str) -> Vec<String> {
    // Past a second the diff stops looking for the shortest answer (two large policies
    // that differ throughout would otherwise take minutes); it is still a correct diff.
    similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(1))
        .diff_lines(old, new)
        .iter_all_changes()
        .filter_map(|c| {
            let sign = match c.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => return None,
            };
            Some(format!("{sign} {}", c.value().trim_end_matches('\n')))
        })
        .collect()
}

/// `fw diff`: the rendered ruleset against the last one applied (not rolled back), and
/// the live table against what nft listed right after that apply.
pub fn diff(ctx: &Ctx, policy: Option<&Path>, state_dir: &Path) -> anyhow::Result<DiffDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let text = render(ctx, &loaded.policy, state_dir, true)?;
    let last = open(ctx, state_dir)?
        .fw_txns()?
        .into_iter()
        .rev()
        .find(|t| t.state != FwState::RolledBack);
    let live = portwarden_os::nft::list_table()?;
    let old = last.as_ref().map(|t| t.ruleset.as_str()).unwrap_or("");
    let live_changed = match (&live, last.as_ref().and_then(|t| t.listing.as_ref())) {
        (Some(l), Some(at_apply)) => {
            Some(line_diff(&as_policy(at_apply), &as_policy(l))).filter(|d| !d.is_empty())
        }
        _ => None,
    };
    Ok(DiffDoc {
        api: API_VERSION,
        since_transaction: last.as_ref().map(|t| t.id),
        since_at: last.as_ref().map(|t| t.created),
        changes: line_diff(&as_policy(old), &as_policy(&text)),
        live_table: live.is_some(),
        live_changed,
    })
}

/// The pending transaction, if any.
fn pending(s: &SqliteStore) -> anyhow::Result<Option<FwTxn>> {
    Ok(s.fw_txns()?
        .into_iter()
        .rev()
        .find(|t| t.state == FwState::Pending))
}

/// The id of the firewall apply waiting for its confirm, if one is (the store only:
/// no `nft` run, so a metrics scrape can ask).
pub fn pending_txn(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<Option<i64>> {
    match open_existing(ctx, state_dir)? {
        Some(s) => Ok(pending(&s)?.map(|t| t.id)),
        None => Ok(None),
    }
}

/// Restores the firewall as it was before `t`: its snapshot, or none of ours at all. A
/// snapshot whose SHA-256 differs from the one the apply recorded is never loaded: ours
/// is removed instead, which drops nothing.
fn restore(ctx: &Ctx, s: &SqliteStore, t: &FwTxn) -> anyhow::Result<String> {
    let fw = of_ruleset(&t.ruleset);
    let what = if fw.name() == "iptables" {
        "chain"
    } else {
        "table"
    };
    let snapshot = match s.fw_verified_snapshot(t) {
        Ok(snap) => snap,
        Err(e @ StoreError::SnapshotTampered { .. }) => {
            fw.remove()?;
            return Ok(format!("{e}; removed our {what} instead"));
        }
        // Not applied here: rolling back something we never applied could only carry out
        // what whoever wrote the store wants. The kernel is left as it is.
        Err(e @ StoreError::SnapshotUnvouched { .. }) => {
            return Ok(format!("{e}; the firewall was left as it is"));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = snapshot
        .as_deref()
        .and_then(|snap| fw.vet_snapshot(snap).err())
    {
        fw.remove()?;
        return Ok(format!(
            "refusing to load the rollback snapshot of transaction {}: {why}; removed our {what} instead",
            t.id
        ));
    }
    // A store that cannot say who is granted must not stop a rollback: it restores with
    // no grants or leases, which admits less, never more.
    let (grants, leases, note) = match state_of(ctx, s) {
        Ok((g, l)) => (g, l, String::new()),
        Err(e) => (
            Vec::new(),
            Vec::new(),
            format!(" (without grants and leases: {e:#})"),
        ),
    };
    fw.restore(snapshot.as_deref(), &grants, &leases)
        .map(|how| format!("{how}{note}"))
}

fn rollback_txn(ctx: &Ctx, s: &mut SqliteStore, t: &FwTxn, why: &str) -> anyhow::Result<String> {
    stop_watcher(t);
    let how = restore(ctx, s, t)?;
    s.fw_finish(
        t.id,
        FwState::RolledBack,
        ctx.clock.now(),
        &ctx.actor,
        &format!("{why}: {how}"),
    )?;
    Ok(how)
}

/// Whether `pid` is the rollback watcher of transaction `txn` (not a reused pid).
fn watcher_alive(pid: u32, txn: i64) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let id = txn.to_string();
    args.contains(&b"watch".as_slice())
        && args
            .windows(2)
            .any(|w| w[0] == b"--txn" && w[1] == id.as_bytes())
}

/// Stops the transaction's watcher, if it still runs: confirm and rollback end it.
fn stop_watcher(t: &FwTxn) {
    if let Some(pid) = t.watcher_pid {
        if watcher_alive(pid, t.id) {
            // SAFETY: kill has no memory preconditions; the pid was checked just above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

/// Starts the detached watcher (`portwarden fw watch --txn N`, this executable) that
/// rolls back at the deadline: its own session, no terminal, so it outlives the
/// operator's SSH connection and the daemon's restart.
fn arm_watcher(state_dir: &Path, txn: i64) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir")
        .arg(state_dir)
        .args(["fw", "watch", "--txn", &txn.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the rollback watcher")?;
    Ok(child.id())
}

/// A pending apply whose watcher has died (killed, or the host rebooted) gets a new one,
/// which rolls back at the deadline, or at once when it has passed; the delay is warned
/// of and recorded. The rollback itself is always the watcher's, never the caller's.
pub fn recover_expired(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<()> {
    // A store that cannot be opened is the command's own error to report, once.
    let Ok(Some(mut s)) = open_existing(ctx, state_dir) else {
        return Ok(());
    };
    let Some(t) = pending(&s)? else {
        return Ok(());
    };
    let Some(deadline) = t.deadline else {
        return Ok(());
    };
    if t.watcher_pid.is_some_and(|p| watcher_alive(p, t.id)) {
        return Ok(());
    }
    let pid = arm_watcher(state_dir, t.id)?;
    s.fw_set_watcher(t.id, Some(pid))?;
    let now = ctx.clock.now();
    let what = if deadline <= now {
        format!(
            "the rollback watcher of firewall transaction {} had died and its deadline passed {}s ago: re-armed, it rolls back now",
            t.id,
            now - deadline
        )
    } else {
        format!(
            "the rollback watcher of firewall transaction {} had died: re-armed for its deadline {}",
            t.id,
            utc(deadline)
        )
    };
    s.record(
        now,
        Change {
            actor: ctx.actor.clone(),
            action: "fw.watcher-rearmed".into(),
            subject: format!("fw txn {}", t.id),
            before: None,
            after: Some(format!("watcher pid {pid}")),
            reason: Some(what.clone()),
        },
    )?;
    ctx.notes.warn(&what);
    if deadline <= now {
        // The watcher rolls back at once: give it a moment (bounded), so that what this
        // command goes on to show (`fw status`) is the state after that rollback.
        for _ in 0..50 {
            if pending(&s)?.is_none_or(|p| p.id != t.id) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// What `fw apply` is asked.
#[derive(Debug, Clone, Copy)]
pub struct ApplyReq {
    /// The commit-confirm window (zero: applied without confirmation).
    pub confirm_within: Duration,
    pub backend: Backend,
    /// Apply although a zone names an interface the host lacks.
    pub allow_missing_interface: bool,
    /// What the policy version's adoption says did it: `fw apply`, `change apply` …
    pub how: &'static str,
}

/// `fw apply`: the lock-out guard, the backend's check, a snapshot, the transaction and
/// its rollback watcher, then the load; a failed load leaves the firewall as it was.
pub fn apply(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    req: ApplyReq,
) -> anyhow::Result<ApplyDoc> {
    let within = req.confirm_within;
    if within.subsec_nanos() != 0 {
        bail!(
            "invalid --confirm-within `{}`: a deadline is whole seconds",
            HumanDuration(within)
        );
    }
    if within > CONFIRM_MAX {
        bail!(
            "invalid --confirm-within `{}`: at most {}; a rollback that far away protects nobody",
            HumanDuration(within),
            HumanDuration(CONFIRM_MAX)
        );
    }
    let fw: &dyn Firewall = match req.backend {
        Backend::Nft => &Nft,
        Backend::Iptables => &Iptables,
        Backend::Auto if nft_installed() => &Nft,
        Backend::Auto => &Iptables,
    };
    ctx.notes.verbose(&format!("backend: {}", fw.name()));
    let loaded = crate::policy::load(ctx, policy)?;
    crate::change::approval_gate(ctx, state_dir, &loaded, req.how)?;
    // The lock-out guard on the model, whichever backend carries it.
    let mut text = render(ctx, &loaded.policy, state_dir, req.allow_missing_interface)?;
    if fw.name() == "iptables" {
        text = render_iptables(ctx, &loaded.policy, state_dir)?;
    }
    let mut s = open(ctx, state_dir)?;
    if let Some(t) = pending(&s)? {
        bail!(StoreError::Pending(t.id));
    }
    fw.check(&text)?;
    if fw.name() == "nftables" {
        let managers = portwarden_os::host::firewall().managers;
        if !managers.is_empty() {
            ctx.notes.warn(&format!(
                "{} active: an accept in table inet portwarden cannot override their drops, nor their accepts ours (Docker-published ports bypass INPUT)",
                managers.join(", ")
            ));
        }
    }
    let snapshot = fw.snapshot()?;
    let now = ctx.clock.now();
    let deadline = (!within.is_zero()).then(|| now + within.as_secs().max(1) as i64);
    let t = s.fw_begin(now, &ctx.actor, deadline, snapshot.clone(), &text)?;
    let watcher = match t.deadline {
        None => None,
        Some(_) => {
            let pid = arm_watcher(state_dir, t.id)?;
            s.fw_set_watcher(t.id, Some(pid))?;
            Some(pid)
        }
    };
    if let Err(e) = fw.load(&text) {
        stop_watcher(&FwTxn {
            watcher_pid: watcher,
            ..t.clone()
        });
        // nft's transaction is atomic (nothing changed); iptables' two loads are not, so
        // its snapshot goes back.
        if fw.name() == "iptables" {
            let _ = fw.restore(snapshot.as_deref(), &[], &[]);
        }
        s.fw_finish(
            t.id,
            FwState::RolledBack,
            ctx.clock.now(),
            &ctx.actor,
            "apply failed",
        )?;
        return Err(e).context(if fw.name() == "iptables" {
            "nothing stays applied"
        } else {
            "nothing was applied"
        });
    }
    // The watcher may have reached the deadline while the load ran (a large ruleset, a
    // loaded host): then what we just loaded is unconfirmed with nobody to roll it back.
    // Roll it back now.
    if t.deadline.is_some() && pending(&s)?.is_none_or(|p| p.id != t.id) {
        // Our own snapshot, taken by this process a moment ago.
        let (grants, leases) = state_of(ctx, &s).unwrap_or_default();
        let how = fw.restore(snapshot.as_deref(), &grants, &leases)?;
        bail!(
            "the deadline passed while the ruleset was being loaded and the watcher rolled back first; rolled back again ({how}): nothing stays applied"
        );
    }
    if let Some(listing) = fw.snapshot()? {
        s.fw_set_listing(t.id, &listing)?;
    }
    // The version applied, kept with its text (what a rollback to it loads again).
    let version = s
        .policy_adopt(
            ctx.clock.now(),
            portwarden_store::NewAdoption {
                actor: &ctx.actor,
                how: req.how,
                source: &loaded.name,
                text: &loaded.text,
                reason: None,
                txn: Some(t.id),
            },
        )?
        .map(|a| a.hash)
        .unwrap_or_default();
    Ok(ApplyDoc {
        api: API_VERSION,
        txn: t.id,
        deadline: t.deadline,
        watcher_pid: watcher,
        backend: fw.name().into(),
        target: fw.target(),
        version,
    })
}

fn txn_doc(action: &str, txn: Option<i64>, done: bool, detail: impl Into<String>) -> TxnDoc {
    TxnDoc {
        api: API_VERSION,
        action: action.into(),
        txn,
        done,
        detail: detail.into(),
    }
}

/// `fw confirm`: keeps the pending apply (`done: false` when there is none, or it is too
/// late).
pub fn confirm(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<TxnDoc> {
    let mut s = open(ctx, state_dir)?;
    let Some(t) = pending(&s)? else {
        return Ok(txn_doc(
            "confirm",
            None,
            false,
            "nothing is pending: no apply awaits confirmation",
        ));
    };
    if t.deadline.is_some_and(|d| d <= ctx.clock.now()) {
        return Ok(txn_doc(
            "confirm",
            Some(t.id),
            false,
            "too late: the deadline has passed and the watcher is rolling the transaction back",
        ));
    }
    stop_watcher(&t);
    if s.fw_finish(
        t.id,
        FwState::Confirmed,
        ctx.clock.now(),
        &ctx.actor,
        "confirmed",
    )? {
        Ok(txn_doc("confirm", Some(t.id), true, "confirmed"))
    } else {
        Ok(txn_doc(
            "confirm",
            Some(t.id),
            false,
            "too late: the transaction was rolled back meanwhile",
        ))
    }
}

/// `fw rollback`: undoes the pending apply now.
pub fn rollback(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<TxnDoc> {
    let mut s = open(ctx, state_dir)?;
    let Some(t) = pending(&s)? else {
        return Ok(txn_doc(
            "rollback",
            None,
            false,
            "nothing is pending: no apply to roll back",
        ));
    };
    let how = rollback_txn(ctx, &mut s, &t, "rolled back by the operator")?;
    Ok(txn_doc("rollback", Some(t.id), true, how))
}

/// Sets whose elements are state, not policy: grants, leases, the scan guard's and the
/// connection limits' dynamic sets.
const STATE_SETS: [&str; 5] = ["grants_", "lease_", "blocked_", "scanrate_", "conn_"];

/// A ruleset or listing as policy: without counters' values, timeouts and expiries, and
/// without the elements of [`STATE_SETS`] (a grant made since the apply is not an edit
/// of the table). Line by line, for `fw diff`.
pub fn as_policy(text: &str) -> String {
    let mut out = String::new();
    let mut in_state_set = false;
    let mut skipping_elements = false;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t
            .strip_prefix("set ")
            .and_then(|r| r.split_whitespace().next())
        {
            in_state_set = STATE_SETS.iter().any(|p| name.starts_with(p));
        }
        if skipping_elements {
            skipping_elements = !t.contains('}');
            continue;
        }
        let mut line = line.to_string();
        if in_state_set {
            if t.starts_with("elements = {") {
                skipping_elements = !t.contains('}');
                continue;
            }
            if let (Some(a), Some(b)) = (line.find(" elements = {"), line.rfind("};")) {
                line.replace_range(a..b + 2, "");
            }
        }
        if t.starts_with("add element") && STATE_SETS.iter().any(|p| t.contains(&format!(" {p}"))) {
            continue;
        }
        if t == "}" {
            in_state_set = false;
        }
        let mut words = line.split(' ').peekable();
        let mut kept = Vec::new();
        while let Some(w) = words.next() {
            if matches!(w, "packets" | "bytes" | "expires") {
                words.next();
                continue;
            }
            kept.push(w);
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

/// A listing without what changes by itself: counters, and the time left on grants.
fn steady(listing: &str) -> String {
    let mut out = Vec::new();
    let mut words = listing.split_whitespace();
    while let Some(w) = words.next() {
        match w {
            "packets" | "bytes" | "expires" => {
                words.next();
            }
            w => out.push(w.trim_end_matches(',')),
        }
    }
    out.join(" ")
}

/// Whether the live table is still what rolled-back transaction `t` loaded, although
/// its rollback would have changed it (an apply that left the table as it was, then
/// rolled back, leaves it as it was too).
fn closed_without_rollback(t: &FwTxn, live: &str) -> bool {
    let Some(applied) = t.listing.as_deref() else {
        return false;
    };
    let unchanged = t
        .snapshot
        .as_deref()
        .is_some_and(|before| steady(before) == steady(applied));
    steady(applied) == steady(live) && !unchanged
}

/// The words `--json` and the table use for a transaction's state.
pub fn state_word(s: FwState) -> &'static str {
    match s {
        FwState::Pending => "pending",
        FwState::Confirmed => "confirmed",
        FwState::RolledBack => "rolled-back",
    }
}

/// `fw status`: whether ours is in the kernel, and the last transaction.
pub fn status(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<StatusDoc> {
    let txns = match open_existing(ctx, state_dir)? {
        Some(s) => s.fw_txns()?,
        None => Vec::new(),
    };
    let last = txns.last();
    let fw = last.map_or(&Nft as &dyn Firewall, |t| of_ruleset(&t.ruleset));
    let table = if fw.name() == "nftables" {
        portwarden_os::nft::table_exists()?
    } else {
        fw.snapshot()?.is_some()
    };
    // A transaction closed without its rollback (one the key could not vouch for) leaves
    // its ruleset live: say so rather than let "rolled-back" stand.
    let warning = last
        .filter(|t| t.state == FwState::RolledBack && fw.name() == "nftables")
        .and_then(|t| {
            let live = portwarden_os::nft::list_table().ok()??;
            closed_without_rollback(t, &live).then(|| format!(
                "the live table is still the one transaction {} applied: it was closed without being rolled back (see `portwarden log`)",
                t.id
            ))
        });
    Ok(StatusDoc {
        api: API_VERSION,
        backend: fw.name().into(),
        target: fw.target(),
        table,
        last: last.map(|t| FwTxnView {
            id: t.id,
            created: t.created,
            deadline: t.deadline,
            state: state_word(t.state).into(),
            actor: t.actor.clone(),
            ruleset: t.ruleset.clone(),
            watcher_pid: t.watcher_pid,
        }),
        warning,
    })
}

/// `fw watch --txn N`, the rollback watcher: sleeps until the deadline (a real timer: it
/// is what rolls back), then rolls back unless the transaction was confirmed meanwhile.
pub fn watch(ctx: &Ctx, state_dir: &Path, txn: i64) -> anyhow::Result<bool> {
    let find = |s: &SqliteStore| -> anyhow::Result<Option<FwTxn>> {
        Ok(s.fw_txns()?.into_iter().find(|t| t.id == txn))
    };
    let Some(t) = find(&open(ctx, state_dir)?)? else {
        return Ok(false);
    };
    let Some(deadline) = t.deadline else {
        return Ok(true);
    };
    let late = ctx.clock.now() - deadline;
    while ctx.clock.now() < deadline {
        let left = (deadline - ctx.clock.now()).clamp(0, 5) as u64;
        std::thread::sleep(Duration::from_secs(left.max(1)));
    }
    // An apply still loading (no listing recorded yet) gets a little longer, so the
    // rollback never runs before the ruleset it undoes; bounded.
    for _ in 0..60 {
        let t = find(&open(ctx, state_dir)?)?;
        if t.is_none_or(|t| t.listing.is_some() || t.state != FwState::Pending) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut s = open(ctx, state_dir)?;
    if let Some(p) = pending(&s)?.filter(|p| p.id == txn) {
        let why = if late >= 0 {
            format!(
                "not confirmed before the deadline; rolled back {late}s after it (its watcher had died)"
            )
        } else {
            "not confirmed before the deadline".to_string()
        };
        // This process is the watcher: nothing to stop.
        let p = FwTxn {
            watcher_pid: None,
            ..p
        };
        rollback_txn(ctx, &mut s, &p, &why)?;
    }
    Ok(true)
}

/// Carries lease changes into the live table in one nft transaction: newly leased ports
/// of pool services are admitted for their sources at once, released ones no longer.
/// What to change is read from the live table, not from the policy at hand (`release`
/// without `--policy` still closes the port): a lease is admitted when the applied table
/// has its service's lease set, and unadmitted when the set holds it. Without our table
/// there is nothing to update; with the iptables backend, the next `fw apply` carries it
/// (a warning says so).
pub fn sync_leases(
    ctx: &Ctx,
    state_dir: &Path,
    added: &[portwarden_store::Lease],
    removed: &[portwarden_store::Lease],
) -> anyhow::Result<()> {
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let live = match portwarden_os::nft::lease_sets() {
        Ok(Some(l)) => l,
        Err(e) if nft_installed() => {
            ctx.notes.warn(&format!(
                "cannot read the live table ({e}); `portwarden fw apply` carries the lease change"
            ));
            return Ok(());
        }
        _ => {
            let ipt = open_existing(ctx, state_dir)
                .ok()
                .flatten()
                .and_then(|s| s.fw_txns().ok())
                .and_then(|t| t.last().map(|t| t.ruleset.starts_with(IPT_MARK)))
                .unwrap_or(false);
            if ipt {
                ctx.notes.warn(
                    "the iptables rules were not updated for the lease change (iptables cannot change them in place); `portwarden fw apply` carries it",
                );
            }
            return Ok(());
        }
    };
    let has = |l: &portwarden_store::Lease| {
        live.get(&portwarden_nft::lease_set(&l.service))
            .map(|set| set.contains(&(l.protocol.to_string(), l.port.get())))
    };
    let add: Vec<&portwarden_store::Lease> =
        added.iter().filter(|l| has(l) == Some(false)).collect();
    let del: Vec<portwarden_store::Lease> = removed
        .iter()
        .filter(|l| has(l) == Some(true))
        .cloned()
        .collect();
    if add.is_empty() && del.is_empty() {
        return Ok(());
    }
    let mut s = open(ctx, state_dir)?;
    // Only leases portwarden wrote on this host open a port (closing one is always safe).
    let admitted: std::collections::HashSet<i64> = s
        .admitted_leases(ctx.clock.now())?
        .iter()
        .map(|l| l.id)
        .collect();
    let add: Vec<portwarden_store::Lease> = add
        .into_iter()
        .filter(|l| admitted.contains(&l.id))
        .cloned()
        .collect();
    let text = portwarden_nft::lease_commands(&leased_ports(&add), &leased_ports(&del));
    if let Err(e) = portwarden_os::nft::apply(&text) {
        ctx.notes.warn(&format!(
            "the live table was not updated for the lease change ({e}); `portwarden fw apply` carries it"
        ));
        return Ok(());
    }
    let changes = add
        .iter()
        .map(|l| (l, "fw.lease-admit"))
        .chain(del.iter().map(|l| (l, "fw.lease-unadmit")))
        .map(|(l, action)| Change {
            actor: ctx.actor.clone(),
            action: action.into(),
            subject: format!("{}/{}", l.port, l.protocol),
            before: None,
            after: Some(format!("lease {} of service {}", l.id, l.service)),
            reason: None,
        })
        .collect();
    s.record_batch(ctx.clock.now(), changes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_of_two_large_texts_that_differ_throughout_is_bounded_and_still_a_diff() {
        // 20,000 lines, two in three changed: minutes of search without the bound.
        let side = |tag: &str| -> String {
            (0..20_000)
                .map(|i| {
                    if i % 3 == 0 {
                        format!("same {i}\n")
                    } else {
                        format!("{tag} {i}\n")
                    }
                })
                .collect()
        };
        let (old, new) = (side("a"), side("b"));
        let d = line_diff(&old, &new);
        let removed: Vec<&str> = d.iter().filter_map(|l| l.strip_prefix("- ")).collect();
        let added: Vec<&str> = d.iter().filter_map(|l| l.strip_prefix("+ ")).collect();
        // Every changed line is there (and only lines of its side); at most every line.
        assert!(
            (13_333..=20_000).contains(&removed.len()),
            "{}",
            removed.len()
        );
        assert!((13_333..=20_000).contains(&added.len()), "{}", added.len());
        let lines = |t: &str| -> std::collections::HashSet<String> {
            t.lines().map(str::to_string).collect()
        };
        let (o, n) = (lines(&old), lines(&new));
        assert!(removed.iter().all(|l| o.contains(*l)));
        assert!(added.iter().all(|l| n.contains(*l)));
        assert!(removed.iter().filter(|l| l.starts_with("a ")).count() == 13_333);
    }

    #[test]
    fn diff_compares_policy_not_counters_grants_or_guard_state() {
        let at_apply = "table inet portwarden {\n\tset grants_v4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags timeout\n\t}\n\tchain input {\n\t\ttcp dport 873 counter packets 0 bytes 0 accept\n\t}\n}\n";
        let live = "table inet portwarden {\n\tset grants_v4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags timeout\n\t\telements = { 10.0.0.3 . tcp . 873 timeout 5m expires 4m2s,\n\t\t\t     10.0.0.4 . tcp . 873 timeout 5m expires 1m }\n\t}\n\tchain input {\n\t\ttcp dport 873 counter packets 12 bytes 720 accept\n\t}\n}\n";
        assert_eq!(
            line_diff(&as_policy(at_apply), &as_policy(live)),
            Vec::<String>::new()
        );
        // A real edit still shows.
        let edited = live.replace("dport 873", "dport 874");
        let d = line_diff(&as_policy(at_apply), &as_policy(&edited));
        assert!(
            d.iter().any(|l| l.starts_with("+ ") && l.contains("874")),
            "{d:?}"
        );
        // The rendered one-line form: grant elements and their add-element lines go.
        let rendered = "  set grants_v4 { type ipv4_addr; flags timeout; elements = { 10.0.0.3 . tcp . 873 timeout 35s }; }\nadd element inet portwarden grants_v4 { 10.0.0.5 . tcp . 873 timeout 9s }\n";
        let a = as_policy(rendered);
        assert!(!a.contains("10.0.0."), "{a}");
        assert!(a.contains("flags timeout;"), "{a}");
    }

    fn txn(snapshot: Option<&str>, listing: &str) -> FwTxn {
        FwTxn {
            id: 6,
            created: 0,
            deadline: None,
            state: FwState::RolledBack,
            snapshot: snapshot.map(String::from),
            ruleset: String::new(),
            listing: Some(listing.into()),
            actor: "root".into(),
            ledger_seq: None,
            watcher_pid: None,
        }
    }

    #[test]
    fn status_warns_only_when_a_rollback_should_have_changed_the_table() {
        let a = "table inet portwarden { counter packets 1 bytes 60 }";
        let b = "table inet portwarden { tcp dport 22 accept }";
        // Applied b over a, rolled back, and b is still live: closed without rollback.
        assert!(closed_without_rollback(&txn(Some(a), b), b));
        // The apply re-loaded the same table: its rollback leaves it too.
        assert!(!closed_without_rollback(&txn(Some(b), b), b));
        // Rolled back to a: nothing to say.
        assert!(!closed_without_rollback(&txn(Some(a), b), a));
    }
}
