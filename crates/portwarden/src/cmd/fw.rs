//! `portwarden fw plan|diff|apply|confirm|rollback|status`, `grant`, `revoke`: the policy's
//! ruleset carried into the kernel with commit-confirm, and time-limited grants.

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_core::units::HumanDuration;
use portwarden_core::{PortProto, Protocol};
use portwarden_nft::iptables::Iptables;
use portwarden_nft::{Grant, LeasedPort, Options};
use portwarden_os::nft;
use portwarden_store::{Change, FwState, FwTxn, GrantRecord, SqliteStore, Store, StoreError};

use crate::cli::{FwBackend, FwCommand, FwFormat, Global, GrantArgs, RevokeArgs};
use crate::{Status, output};

/// The operator's SSH connection: (client address, server port).
fn ssh_peer() -> Option<(IpAddr, u16)> {
    let v = std::env::var("SSH_CONNECTION").ok()?;
    let f: Vec<&str> = v.split_whitespace().collect();
    Some((f.first()?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The longest commit-confirm window: a rollback further away protects nobody.
const CONFIRM_MAX: Duration = Duration::from_secs(86_400);
/// The longest grant: an opening meant to last belongs in the policy.
const GRANT_MAX: Duration = Duration::from_secs(365 * 86_400);

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

/// What the rendered table carries from the store: unexpired grants (with the time they
/// have left) and the leased ports of pool services.
fn live_state(g: &Global) -> anyhow::Result<(Vec<Grant>, Vec<LeasedPort>)> {
    let s = match super::open_store(g, false) {
        Ok(s) => s,
        Err(StoreError::Missing(_)) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e.into()),
    };
    state_of(&s)
}

/// The store's unexpired grants and leased ports. A grant row's time left is capped by
/// [`GRANT_MAX`]: the store is not trusted to open a port for longer than `grant` can.
fn state_of(s: &SqliteStore) -> anyhow::Result<(Vec<Grant>, Vec<LeasedPort>)> {
    let now = super::now();
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

/// The policy and its nftables text, after the lock-out guard on the rendered model.
/// Renders the policy. A zone interface this host lacks is a warning when
/// `allow_missing` (`fw plan`, `fw diff`, `fw apply --allow-missing-interface`: nft
/// matches interfaces by name, so the rule takes effect when the interface appears), and
/// an error otherwise.
fn render(g: &Global, allow_missing: bool) -> anyhow::Result<(portwarden_core::Policy, String)> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let interfaces: Vec<String> = portwarden_os::host::interfaces()
        .into_iter()
        .map(|i| i.name)
        .collect();
    let missing: Vec<String> = loaded
        .policy
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
            output::warn(
                g.quiet,
                &format!("{m}: its rules match nothing until it appears"),
            );
        }
    } else if let Some(first) = missing.first() {
        bail!(
            "{first} (`fw apply --allow-missing-interface` applies it anyway: nft matches interfaces by name)"
        );
    }
    let (grants, leases) = live_state(g)?;
    let rs = portwarden_nft::render(
        &loaded.policy,
        &Options {
            ssh_peer: ssh_peer(),
            interfaces: (!allow_missing).then_some(interfaces),
            grants,
            leases,
        },
    )?;
    // Lock-out guard: the model must admit the management path and the SSH peer.
    let p = &loaded.policy;
    for spec in &p.host.management.ports {
        for c in p.host.management.from.cidrs() {
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
    let text = rs.to_nft();
    Ok((loaded.policy, text))
}

/// The iptables rendering of `policy`, saying on stderr what it cannot express.
fn iptables_rules(g: &Global, policy: &portwarden_core::Policy) -> anyhow::Result<Iptables> {
    let (_, leases) = live_state(g)?;
    let ipt = portwarden_nft::iptables::render(
        policy,
        &Options {
            ssh_peer: ssh_peer(),
            leases,
            ..Options::default()
        },
    )?;
    for u in &ipt.unsupported {
        output::warn(g.quiet, &format!("iptables cannot express: {u}"));
    }
    Ok(ipt)
}

fn store(g: &Global) -> anyhow::Result<SqliteStore> {
    Ok(super::open_store(g, true)?)
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

fn pending(s: &SqliteStore) -> anyhow::Result<Option<FwTxn>> {
    Ok(s.fw_txns()?
        .into_iter()
        .rev()
        .find(|t| t.state == FwState::Pending))
}

const IPT_MARK: &str = "# generated by portwarden for iptables";
const IPT_SNAP_V6: &str = "\n# ip6tables snapshot\n";
const ABSENT: &str = "<absent>";

/// Our iptables chains now, as one snapshot text (`None`: neither exists).
fn ipt_snapshot() -> anyhow::Result<Option<String>> {
    use portwarden_os::iptables::{Fam, snapshot};
    let (v4, v6) = (snapshot(Fam::V4)?, snapshot(Fam::V6)?);
    if v4.is_none() && v6.is_none() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}{IPT_SNAP_V6}{}",
        v4.as_deref().unwrap_or(ABSENT),
        v6.as_deref().unwrap_or(ABSENT)
    )))
}

fn ipt_restore(snap: Option<&str>) -> anyhow::Result<&'static str> {
    use portwarden_os::iptables::{Fam, restore};
    let (v4, v6) = match snap {
        None => (None, None),
        Some(s) => {
            let (a, b) = s.split_once(IPT_SNAP_V6).unwrap_or((s, ABSENT));
            ((a != ABSENT).then_some(a), (b != ABSENT).then_some(b))
        }
    };
    restore(Fam::V4, v4)?;
    restore(Fam::V6, v6)?;
    Ok(if snap.is_some() {
        "restored the previous chain"
    } else {
        "removed our chain (there was none before)"
    })
}

fn is_iptables(t: &FwTxn) -> bool {
    t.ruleset.starts_with(IPT_MARK)
}

/// Restores the firewall as it was before `t`: its snapshot, or none of ours at all. A
/// snapshot whose SHA-256 differs from the one the apply recorded is never loaded: our
/// table (or chain) is removed instead, which drops nothing.
fn restore(s: &SqliteStore, t: &FwTxn) -> anyhow::Result<String> {
    let snapshot = match s.fw_verified_snapshot(t) {
        Ok(snap) => snap,
        Err(e @ StoreError::SnapshotTampered { .. }) => {
            if is_iptables(t) {
                ipt_restore(None)?;
            } else {
                nft::delete_table()?;
            }
            return Ok(format!(
                "{e}; removed our {} instead",
                if is_iptables(t) { "chain" } else { "table" }
            ));
        }
        // Not applied here: rolling back something we never applied could only carry out
        // what whoever wrote the store wants. The kernel is left as it is.
        Err(e @ StoreError::SnapshotUnvouched { .. }) => {
            return Ok(format!("{e}; the firewall was left as it is"));
        }
        Err(e) => return Err(e.into()),
    };
    if is_iptables(t) {
        return ipt_restore(snapshot.as_deref()).map(String::from);
    }
    if let Some(why) = snapshot
        .as_deref()
        .and_then(|t| portwarden_nft::check_snapshot(t).err())
    {
        nft::delete_table()?;
        return Ok(format!(
            "refusing to load the rollback snapshot of transaction {}: {why}; removed our table instead",
            t.id
        ));
    }
    // A store that cannot say who is granted must not stop a rollback: it restores with
    // no grants or leases, which admits less, never more.
    let (grants, leases, note) = match state_of(s) {
        Ok((g, l)) => (g, l, String::new()),
        Err(e) => (
            Vec::new(),
            Vec::new(),
            format!(" (without grants and leases: {e:#})"),
        ),
    };
    restore_nft(snapshot.as_ref(), &grants, &leases).map(|how| format!("{how}{note}"))
}

/// Loads `snapshot` in one transaction with the store's grants and leases in its sets
/// (a grant revoked or a lease released since the snapshot was taken stays gone).
fn restore_nft(
    snapshot: Option<&String>,
    grants: &[Grant],
    leases: &[LeasedPort],
) -> anyhow::Result<&'static str> {
    match snapshot {
        None => {
            nft::delete_table()?;
            Ok("removed the table (there was none before)")
        }
        Some(snap) => {
            let state =
                portwarden_nft::state_commands(&portwarden_nft::listed_sets(snap), grants, leases);
            let text =
                format!("table inet portwarden\ndelete table inet portwarden\n{snap}\n{state}");
            match nft::apply(&text) {
                Ok(()) => Ok("restored the previous table"),
                Err(_) => {
                    // Never leave the host locked out: without our table, nothing of ours drops.
                    nft::delete_table()?;
                    Ok("could not reload the previous table; removed ours instead")
                }
            }
        }
    }
}

fn rollback_txn(s: &mut SqliteStore, t: &FwTxn, why: &str) -> anyhow::Result<String> {
    stop_watcher(t);
    let how = restore(s, t)?;
    s.fw_finish(
        t.id,
        FwState::RolledBack,
        super::now(),
        &super::actor(),
        &format!("{why}: {how}"),
    )?;
    Ok(how.to_string())
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

/// A pending apply whose watcher has died (killed, or the host rebooted) gets a new one,
/// which rolls back at the deadline, or at once when it has passed; the delay is logged
/// and recorded. The rollback itself is always the watcher's, never this command's.
pub fn recover_expired(g: &Global) -> anyhow::Result<()> {
    let mut s = match super::open_store(g, false) {
        Ok(s) => s,
        Err(StoreError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
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
    let pid = arm_watcher(g, t.id)?;
    s.fw_set_watcher(t.id, Some(pid))?;
    let now = super::now();
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
            output::utc(deadline)
        )
    };
    s.record(
        now,
        Change {
            actor: super::actor(),
            action: "fw.watcher-rearmed".into(),
            subject: format!("fw txn {}", t.id),
            before: None,
            after: Some(format!("watcher pid {pid}")),
            reason: Some(what.clone()),
        },
    )?;
    output::warn(g.quiet, &what);
    Ok(())
}

/// Starts the detached watcher that rolls back at the deadline: its own session, no
/// terminal, so it outlives the operator's SSH connection.
fn arm_watcher(g: &Global, txn: i64) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir")
        .arg(super::state_dir(g))
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

pub fn run(g: &Global, c: &FwCommand) -> anyhow::Result<Status> {
    if !matches!(c, FwCommand::Watch { .. } | FwCommand::Plan { .. }) {
        // A store that refuses writes must not also stop `fw status` or a rollback.
        if let Err(e) = recover_expired(g) {
            output::warn(
                g.quiet,
                &format!("cannot re-arm the firewall rollback watcher: {e:#}"),
            );
        }
    }
    match c {
        FwCommand::Plan {
            format: FwFormat::Nft,
        } => {
            let (_, text) = render(g, true)?;
            plan_out(g, "nft", &text)?;
            Ok(Status::Ok)
        }
        FwCommand::Plan {
            format: FwFormat::Iptables,
        } => {
            let loaded = super::load_policy(g.policy.as_deref())?;
            let ipt = iptables_rules(g, &loaded.policy)?;
            plan_out(g, "iptables", &format!("{}{}", ipt.v4, ipt.v6))?;
            Ok(Status::Ok)
        }
        FwCommand::Diff => {
            let (_, text) = render(g, true)?;
            let s = store(g)?;
            let last = s
                .fw_txns()?
                .into_iter()
                .rev()
                .find(|t| t.state != FwState::RolledBack);
            let live = nft::list_table()?;
            if g.json {
                let old = last.as_ref().map(|t| t.ruleset.as_str()).unwrap_or("");
                let changes = output::line_diff(old, &text);
                let drift = match (&live, last.as_ref().and_then(|t| t.listing.as_ref())) {
                    (Some(l), Some(at_apply)) if l != at_apply => {
                        Some(output::line_diff(at_apply, l))
                    }
                    _ => None,
                };
                output::json(&serde_json::json!({
                    "api": portwarden_api::API_VERSION,
                    "since_transaction": last.as_ref().map(|t| t.id),
                    "changes": changes.lines().collect::<Vec<_>>(),
                    "live_table": live.is_some(),
                    "live_changed": drift.as_ref().map(|d| d.lines().collect::<Vec<_>>()),
                }))?;
                return Ok(if changes.is_empty() {
                    Status::Ok
                } else {
                    Status::Negative
                });
            }
            let mut out = String::new();
            match &last {
                None => out.push_str("nothing applied yet; `fw apply` would load:\n"),
                Some(t) => out.push_str(&format!(
                    "since transaction {} ({}):\n",
                    t.id,
                    output::utc(t.created)
                )),
            }
            let old = last.as_ref().map(|t| t.ruleset.as_str()).unwrap_or("");
            let changes = output::line_diff(old, &text);
            if changes.is_empty() {
                out.push_str("  the policy renders the same ruleset\n");
            } else {
                out.push_str(&changes);
            }
            match (live, last.and_then(|t| t.listing)) {
                (None, _) => out.push_str("the live table is absent\n"),
                (Some(l), Some(at_apply)) if l != at_apply => {
                    out.push_str(
                        "the live table changed since it was applied (someone edited it):\n",
                    );
                    out.push_str(&output::line_diff(&at_apply, &l));
                }
                _ => out.push_str("the live table is as applied\n"),
            }
            output::text(&out)?;
            Ok(if changes.is_empty() {
                Status::Ok
            } else {
                Status::Negative
            })
        }
        FwCommand::Apply {
            confirm_within,
            backend,
            allow_missing_interface,
        } => {
            let within = *confirm_within;
            if within.get() > CONFIRM_MAX {
                bail!(
                    "invalid --confirm-within `{confirm_within}`: at most {}; a rollback that far away protects nobody",
                    HumanDuration(CONFIRM_MAX)
                );
            }
            let iptables = match backend {
                FwBackend::Nft => false,
                FwBackend::Iptables => true,
                FwBackend::Auto => !nft_installed(),
            };
            output::verbose(
                g.verbose,
                &format!(
                    "backend: {}",
                    if iptables { "iptables" } else { "nftables" }
                ),
            );
            if iptables {
                return apply_iptables(g, within, *allow_missing_interface);
            }
            let (_, text) = render(g, *allow_missing_interface)?;
            let mut s = store(g)?;
            if let Some(t) = pending(&s)? {
                bail!(portwarden_store::StoreError::Pending(t.id));
            }
            nft::check(&text).context("the ruleset failed `nft -c`; nothing was applied")?;
            let managers = portwarden_os::host::firewall().managers;
            if !managers.is_empty() {
                output::warn(
                    g.quiet,
                    &format!(
                        "{} active: an accept in table inet portwarden cannot override their drops, nor their accepts ours (Docker-published ports bypass INPUT)",
                        managers.join(", ")
                    ),
                );
            }
            let snapshot = nft::list_table()?;
            let now = super::now();
            let deadline =
                (!within.get().is_zero()).then(|| now + within.get().as_secs().max(1) as i64);
            let t = s.fw_begin(now, &super::actor(), deadline, snapshot.clone(), &text)?;
            let watcher = start_watcher(g, &mut s, &t)?;
            if let Err(e) = nft::apply(&text) {
                stop_watcher(&FwTxn {
                    watcher_pid: watcher,
                    ..t.clone()
                });
                // The nft transaction is atomic: nothing changed. Close ours.
                s.fw_finish(
                    t.id,
                    FwState::RolledBack,
                    super::now(),
                    &super::actor(),
                    "apply failed",
                )?;
                return Err(e).context("nothing was applied");
            }
            // The watcher may have reached the deadline while nft ran (a large ruleset, a
            // loaded host): then what we just loaded is unconfirmed with nobody to roll it
            // back. Roll it back now.
            if t.deadline.is_some() && pending(&s)?.is_none_or(|p| p.id != t.id) {
                // Our own snapshot, taken by this process a moment ago.
                let (grants, leases) = state_of(&s).unwrap_or_default();
                let how = restore_nft(snapshot.as_ref(), &grants, &leases)?;
                bail!(
                    "the deadline passed while the ruleset was being loaded and the watcher rolled back first; rolled back again ({how}): nothing stays applied"
                );
            }
            if let Some(listing) = nft::list_table()? {
                s.fw_set_listing(t.id, &listing)?;
            }
            applied(g, &t, watcher, "nftables", "table inet portwarden")
        }
        FwCommand::Confirm => {
            let mut s = store(g)?;
            let Some(t) = pending(&s)? else {
                output::refusal("nothing is pending: no apply awaits confirmation");
                return Ok(Status::Negative);
            };
            if t.deadline.is_some_and(|d| d <= super::now()) {
                output::refusal(
                    "too late: the deadline has passed and the watcher is rolling the transaction back",
                );
                return Ok(Status::Negative);
            }
            stop_watcher(&t);
            if s.fw_finish(
                t.id,
                FwState::Confirmed,
                super::now(),
                &super::actor(),
                "confirmed",
            )? {
                output::text(&format!("confirmed firewall transaction {}\n", t.id))?;
                Ok(Status::Ok)
            } else {
                output::refusal("too late: the transaction was rolled back meanwhile");
                Ok(Status::Negative)
            }
        }
        FwCommand::Rollback => {
            let mut s = store(g)?;
            let Some(t) = pending(&s)? else {
                output::refusal("nothing is pending: no apply to roll back");
                return Ok(Status::Negative);
            };
            let how = rollback_txn(&mut s, &t, "rolled back by the operator")?;
            output::text(&format!(
                "rolled back firewall transaction {}: {how}\n",
                t.id
            ))?;
            Ok(Status::Ok)
        }
        FwCommand::Status => {
            let txns = match super::open_store(g, false) {
                Ok(s) => s.fw_txns()?,
                Err(StoreError::Missing(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let last = txns.last();
            let ipt = last.is_some_and(is_iptables);
            let (backend, what, exists) = if ipt {
                (
                    "iptables",
                    format!("iptables chain {}", portwarden_os::iptables::CHAIN),
                    ipt_snapshot()?.is_some(),
                )
            } else {
                (
                    "nftables",
                    "table inet portwarden".to_string(),
                    nft::table_exists()?,
                )
            };
            if g.json {
                output::json(
                    &serde_json::json!({"api": portwarden_api::API_VERSION, "backend": backend, "table": exists, "last": last}),
                )?;
            } else {
                let mut s = format!("{what}: {}\n", if exists { "present" } else { "absent" });
                // A transaction closed without its rollback (one the key could not vouch
                // for) leaves its ruleset live: say so rather than let "rolled-back" stand.
                if let Some(t) = last.filter(|t| t.state == FwState::RolledBack && !ipt) {
                    if let (Some(applied), Ok(Some(live))) = (&t.listing, nft::list_table()) {
                        if steady(applied) == steady(&live) {
                            s.push_str(&format!(
                                "warning: the live table is still the one transaction {} applied: it was closed without being rolled back (see `portwarden log`)\n",
                                t.id
                            ));
                        }
                    }
                }
                if let Some(t) = last {
                    // The state in the words `--json` uses.
                    let state = serde_json::to_value(t.state)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_else(|| format!("{:?}", t.state));
                    s.push_str(&format!(
                        "last transaction {}: {state}, applied at {}{}\n",
                        t.id,
                        output::utc(t.created),
                        t.deadline.filter(|_| t.state == FwState::Pending).map_or(
                            String::new(),
                            |d| format!(", rolls back at {}", output::utc(d))
                        )
                    ));
                }
                output::text(&s)?;
            }
            Ok(Status::Ok)
        }
        FwCommand::Watch { txn } => {
            // Sleep until the deadline, then roll back unless confirmed meanwhile.
            let s = store(g)?;
            let Some(t) = s.fw_txns()?.into_iter().find(|t| t.id == *txn) else {
                return Ok(Status::Negative);
            };
            drop(s);
            let Some(deadline) = t.deadline else {
                return Ok(Status::Ok);
            };
            let late = super::now() - deadline;
            while super::now() < deadline {
                let left = (deadline - super::now()).clamp(0, 5) as u64;
                std::thread::sleep(Duration::from_secs(left.max(1)));
            }
            // An apply still loading (no listing recorded yet) gets a little longer, so
            // the rollback never runs before the ruleset it undoes; bounded.
            for _ in 0..60 {
                let s = store(g)?;
                let t = s.fw_txns()?.into_iter().find(|x| x.id == *txn);
                if t.is_none_or(|t| t.listing.is_some() || t.state != FwState::Pending) {
                    break;
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut s = store(g)?;
            if let Some(p) = pending(&s)? {
                if p.id == *txn {
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
                    rollback_txn(&mut s, &p, &why)?;
                }
            }
            Ok(Status::Ok)
        }
    }
}

/// `fw apply` for hosts without nftables: the same model, as iptables-restore input into
/// our chain, with the same commit-confirm.
fn apply_iptables(
    g: &Global,
    within: HumanDuration,
    allow_missing: bool,
) -> anyhow::Result<Status> {
    use portwarden_os::iptables::{Fam, apply, check};
    let (policy, _) = render(g, allow_missing)?; // the lock-out guard on the model
    let ipt = iptables_rules(g, &policy)?;
    let mut s = store(g)?;
    if let Some(t) = pending(&s)? {
        bail!(portwarden_store::StoreError::Pending(t.id));
    }
    check(Fam::V4, &ipt.v4)
        .context("the ruleset failed `iptables-restore --test`; nothing was applied")?;
    check(Fam::V6, &ipt.v6)
        .context("the ruleset failed `ip6tables-restore --test`; nothing was applied")?;
    let snapshot = ipt_snapshot()?;
    let now = super::now();
    let deadline = (!within.get().is_zero()).then(|| now + within.get().as_secs().max(1) as i64);
    let text = format!("{}{}", ipt.v4, ipt.v6);
    let t = s.fw_begin(now, &super::actor(), deadline, snapshot.clone(), &text)?;
    let watcher = start_watcher(g, &mut s, &t)?;
    let done = apply(Fam::V4, &ipt.v4).and_then(|()| apply(Fam::V6, &ipt.v6));
    if let Err(e) = done {
        stop_watcher(&FwTxn {
            watcher_pid: watcher,
            ..t.clone()
        });
        let _ = ipt_restore(snapshot.as_deref());
        s.fw_finish(
            t.id,
            FwState::RolledBack,
            super::now(),
            &super::actor(),
            "apply failed",
        )?;
        return Err(e).context("nothing stays applied");
    }
    if let Some(listing) = ipt_snapshot()? {
        s.fw_set_listing(t.id, &listing)?;
    }
    applied(
        g,
        &t,
        watcher,
        "iptables",
        &format!("iptables chain {}", portwarden_os::iptables::CHAIN),
    )
}

/// Arms the rollback watcher of a pending transaction and notes its pid.
fn start_watcher(g: &Global, s: &mut SqliteStore, t: &FwTxn) -> anyhow::Result<Option<u32>> {
    if t.deadline.is_none() {
        return Ok(None);
    }
    let pid = arm_watcher(g, t.id)?;
    s.fw_set_watcher(t.id, Some(pid))?;
    Ok(Some(pid))
}

/// The same notice for every backend: the transaction, its deadline and how to confirm.
fn applied(
    g: &Global,
    t: &FwTxn,
    watcher: Option<u32>,
    backend: &str,
    what: &str,
) -> anyhow::Result<Status> {
    if g.json {
        output::json(&serde_json::json!({
            "txn": t.id,
            "deadline": t.deadline,
            "watcher_pid": watcher,
            "backend": backend,
        }))?;
    } else if !g.quiet {
        match t.deadline {
            Some(d) => output::text(&format!(
                "applied firewall transaction {} ({what}); confirm before {} with `portwarden fw confirm` from a new connection, or it rolls back\n",
                t.id,
                output::utc(d)
            ))?,
            None => output::text(&format!("applied firewall transaction {} ({what})\n", t.id))?,
        }
    }
    Ok(Status::Ok)
}

/// The largest grant file read (as for policies).
const GRANT_FILE_MAX: u64 = super::POLICY_MAX_BYTES;

/// Reads `PORT[/PROTO] ADDR [DURATION]` lines: (line number, fields); at most
/// [`GRANT_FILE_MAX`] bytes, so `--file /dev/zero` is an error, not a growing process.
fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let mut bytes = Vec::new();
    let shown = path.display();
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("cannot read {shown}"))?)
    };
    reader
        .take(GRANT_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {shown}"))?;
    if bytes.len() as u64 > GRANT_FILE_MAX {
        bail!("{shown} is larger than {GRANT_FILE_MAX} bytes; nothing applied");
    }
    let text = String::from_utf8(bytes).with_context(|| format!("{shown} is not UTF-8"))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            (
                i + 1,
                l.split('#')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, f)| !f.is_empty())
        .collect())
}

/// One grant or revocation: source (IPv4-mapped addresses as IPv4), protocol, port, and
/// how long (zero for a revocation).
struct Item {
    addr: IpAddr,
    protocol: Protocol,
    port: portwarden_core::Port,
    left: Duration,
}

fn parse_item(port: &str, from: &str, dur: Option<&str>) -> anyhow::Result<Item> {
    let pp: PortProto = port
        .parse()
        .with_context(|| format!("invalid port `{port}`"))?;
    let addr: IpAddr = from
        .parse()
        .with_context(|| format!("`{from}` is not an IP address"))?;
    if portwarden_core::addr::never_a_source(addr) {
        bail!("`{from}` is never the source of a connection (unspecified, multicast or broadcast)");
    }
    let left = match dur {
        None => Duration::ZERO,
        Some(d) => {
            let h: HumanDuration = d
                .parse()
                .with_context(|| format!("invalid duration `{d}`"))?;
            if h.get().is_zero() {
                bail!("invalid duration `{d}`: a grant must last longer than zero");
            }
            if h.get() > GRANT_MAX {
                bail!(
                    "invalid duration `{d}`: a grant lasts at most {}; a lasting opening belongs in the policy",
                    HumanDuration(GRANT_MAX)
                );
            }
            h.get()
        }
    };
    Ok(Item {
        addr: portwarden_nft::canonical(addr),
        protocol: pp.protocol,
        port: pp.port,
        left,
    })
}

/// The items of `--file` (every bad line reported, nothing taken when one is bad), or the
/// one on the command line.
fn items(
    file: Option<&std::path::Path>,
    one: (Option<&str>, Option<&str>, Option<&str>),
    with_duration: bool,
) -> anyhow::Result<Vec<Item>> {
    let Some(f) = file else {
        return Ok(vec![parse_item(
            one.0.unwrap_or_default(),
            one.1.unwrap_or_default(),
            one.2,
        )?]);
    };
    let want = if with_duration {
        "`PORT[/PROTO] ADDR DURATION`"
    } else {
        "`PORT[/PROTO] ADDR`"
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, fields) in read_lines(f)? {
        let r = match (fields.as_slice(), with_duration) {
            ([p, from, d], true) => parse_item(p, from, Some(d)),
            ([p, from], false) => parse_item(p, from, None),
            _ => Err(anyhow::anyhow!("expected {want}")),
        }
        .and_then(|i| match seen.insert((i.addr, i.protocol, i.port), n) {
            Some(first) => Err(anyhow::anyhow!(
                "{}/{} from {} is already on line {first}",
                i.port,
                i.protocol,
                i.addr
            )),
            None => Ok(i),
        });
        match r {
            Ok(i) => good.push(i),
            Err(e) => bad.push(format!("{}:{n}: {e:#}", f.display())),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} bad line{} in {}, nothing applied:\n{}",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" },
            f.display(),
            bad.join("\n")
        );
    }
    Ok(good)
}

fn need_table() -> anyhow::Result<()> {
    if !nft::table_exists()? {
        bail!("table inet portwarden does not exist: `portwarden fw apply` first");
    }
    Ok(())
}

/// `fw plan`: the ruleset text, or with `--json` a document holding it.
fn plan_out(g: &Global, format: &str, text: &str) -> anyhow::Result<()> {
    if g.json {
        output::json(&serde_json::json!({
            "api": portwarden_api::API_VERSION,
            "format": format,
            "ruleset": text,
        }))?;
    } else {
        output::text(text)?;
    }
    Ok(())
}

pub fn grant(g: &Global, a: &GrantArgs) -> anyhow::Result<Status> {
    let list = items(
        a.file.as_deref(),
        (a.port.as_deref(), a.from.as_deref(), a.duration.as_deref()),
        true,
    )?;
    let grants: Vec<Grant> = list
        .iter()
        .map(|i| Grant {
            addr: i.addr,
            protocol: i.protocol,
            port: i.port,
            left: i.left,
        })
        .collect();
    need_table()?;
    let mut s = store(g)?;
    s.check_writable().context("nothing was granted")?;
    let now = super::now();
    nft::apply(&portwarden_nft::grant_commands(&grants)).context("nothing was granted")?;
    let records: Vec<GrantRecord> = list
        .iter()
        .map(|i| GrantRecord {
            addr: i.addr,
            protocol: i.protocol,
            port: i.port,
            expires_at: now + i.left.as_secs() as i64,
            actor: super::actor(),
        })
        .collect();
    if let Err(e) = s.grant(now, &records) {
        // Not recorded: take them back, so that the store and the kernel agree.
        let keys: Vec<_> = list.iter().map(|i| (i.addr, i.protocol, i.port)).collect();
        let _ = nft::apply(&portwarden_nft::revoke_commands(&keys));
        return Err(e).context("nothing was granted");
    }
    if g.json {
        let list: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "addr": r.addr,
                    "protocol": r.protocol.to_string(),
                    "port": r.port.get(),
                    "expires_at": r.expires_at,
                })
            })
            .collect();
        output::json(&serde_json::json!({
            "api": portwarden_api::API_VERSION,
            "granted": list,
        }))?;
    } else if !g.quiet {
        output::text(&format!(
            "granted {} source{}\n",
            grants.len(),
            if grants.len() == 1 { "" } else { "s" }
        ))?;
    }
    Ok(Status::Ok)
}

pub fn revoke(g: &Global, a: &RevokeArgs) -> anyhow::Result<Status> {
    let list = items(
        a.file.as_deref(),
        (a.port.as_deref(), a.from.as_deref(), None),
        false,
    )?;
    need_table()?;
    let keys: Vec<(IpAddr, Protocol, portwarden_core::Port)> =
        list.iter().map(|i| (i.addr, i.protocol, i.port)).collect();
    let mut s = store(g)?;
    // The store must be able to record it before the kernel is changed, and a failed
    // record puts the grants back: the store and the kernel never disagree.
    s.check_writable().context("nothing was revoked")?;
    let (held, _) = state_of(&s)?;
    nft::apply(&portwarden_nft::revoke_commands(&keys))
        .context("nothing was revoked (is the grant still there?)")?;
    if let Err(e) = s.revoke(super::now(), &super::actor(), &keys) {
        let back: Vec<Grant> = held
            .into_iter()
            .filter(|h| keys.contains(&(h.addr, h.protocol, h.port)))
            .collect();
        let _ = nft::apply(&portwarden_nft::grant_commands(&back));
        return Err(e).context("nothing was revoked");
    }
    if g.json {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|(addr, protocol, port)| {
                serde_json::json!({
                    "addr": addr,
                    "protocol": protocol.to_string(),
                    "port": port.get(),
                })
            })
            .collect();
        output::json(&serde_json::json!({
            "api": portwarden_api::API_VERSION,
            "revoked": list,
        }))?;
    } else if !g.quiet {
        output::text(&format!("revoked {}\n", keys.len()))?;
    }
    Ok(Status::Ok)
}

/// Carries lease changes into the live table in one nft transaction: newly leased ports
/// of pool services are admitted for their sources at once, released ones no longer.
/// What to change is read from the live table, not from the policy at hand (`release`
/// without `--policy` still closes the port): a lease is admitted when the applied table
/// has its service's lease set, and unadmitted when the set holds it. Without our table
/// there is nothing to update; with the iptables backend, the next `fw apply` carries it
/// (said on stderr).
pub fn sync_leases(
    g: &Global,
    added: &[portwarden_store::Lease],
    removed: &[portwarden_store::Lease],
) -> anyhow::Result<()> {
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let live = match nft::lease_sets() {
        Ok(Some(l)) => l,
        Err(e) if nft_installed() => {
            output::warn(
                g.quiet,
                &format!(
                    "cannot read the live table ({e}); `portwarden fw apply` carries the lease change"
                ),
            );
            return Ok(());
        }
        _ => {
            let ipt = super::open_store(g, false)
                .ok()
                .and_then(|s| s.fw_txns().ok())
                .and_then(|t| t.last().map(is_iptables))
                .unwrap_or(false);
            if ipt {
                output::warn(
                    g.quiet,
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
    let add: Vec<portwarden_store::Lease> = added
        .iter()
        .filter(|l| has(l) == Some(false))
        .cloned()
        .collect();
    let del: Vec<portwarden_store::Lease> = removed
        .iter()
        .filter(|l| has(l) == Some(true))
        .cloned()
        .collect();
    if add.is_empty() && del.is_empty() {
        return Ok(());
    }
    let mut s = store(g)?;
    // Only leases portwarden wrote on this host open a port (closing one is always safe).
    let admitted: std::collections::HashSet<i64> = s
        .admitted_leases(super::now())?
        .iter()
        .map(|l| l.id)
        .collect();
    let add: Vec<portwarden_store::Lease> = add
        .into_iter()
        .filter(|l| admitted.contains(&l.id))
        .collect();
    let text = portwarden_nft::lease_commands(&leased_ports(&add), &leased_ports(&del));
    if let Err(e) = nft::apply(&text) {
        output::warn(
            g.quiet,
            &format!(
                "the live table was not updated for the lease change ({e}); `portwarden fw apply` carries it"
            ),
        );
        return Ok(());
    }
    let changes = add
        .iter()
        .map(|l| (l, "fw.lease-admit"))
        .chain(del.iter().map(|l| (l, "fw.lease-unadmit")))
        .map(|(l, action)| Change {
            actor: super::actor(),
            action: action.into(),
            subject: format!("{}/{}", l.port, l.protocol),
            before: None,
            after: Some(format!("lease {} of service {}", l.id, l.service)),
            reason: None,
        })
        .collect();
    s.record_batch(super::now(), changes)?;
    Ok(())
}

/// Whether an `nft` binary is there at all (hosts without it use iptables or nothing).
fn nft_installed() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok()
}
