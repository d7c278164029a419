//! `portwarden fw plan|diff|apply|confirm|rollback|status`, `grant`, `revoke`: the policy's
//! ruleset carried into the kernel with commit-confirm, and time-limited grants.

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_core::units::HumanDuration;
use portwarden_core::{PortProto, Protocol};
use portwarden_nft::{Options, Ruleset};
use portwarden_os::nft;
use portwarden_store::{Change, FwState, FwTxn, SqliteStore, Store};

use crate::cli::{FwCommand, FwFormat, Global, GrantArgs, RevokeArgs};
use crate::{Status, output};

/// The operator's SSH connection: (client address, server port).
fn ssh_peer() -> Option<(IpAddr, u16)> {
    let v = std::env::var("SSH_CONNECTION").ok()?;
    let f: Vec<&str> = v.split_whitespace().collect();
    Some((f.first()?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn render(g: &Global) -> anyhow::Result<(Ruleset, String)> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let interfaces = portwarden_os::host::interfaces()
        .into_iter()
        .map(|i| i.name)
        .collect();
    let rs = portwarden_nft::render(
        &loaded.policy,
        &Options {
            ssh_peer: ssh_peer(),
            interfaces: Some(interfaces),
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
    Ok((rs, text))
}

fn store(g: &Global) -> anyhow::Result<SqliteStore> {
    Ok(super::open_store(g, true)?)
}

fn pending(s: &SqliteStore) -> anyhow::Result<Option<FwTxn>> {
    Ok(s.fw_txns()?
        .into_iter()
        .rev()
        .find(|t| t.state == FwState::Pending))
}

/// Restores the table as it was before `t`: its snapshot, or no table at all.
fn restore(t: &FwTxn) -> anyhow::Result<&'static str> {
    match &t.snapshot {
        None => {
            nft::delete_table()?;
            Ok("removed the table (there was none before)")
        }
        Some(snap) => {
            let text = format!("table inet portwarden\ndelete table inet portwarden\n{snap}");
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
    let how = restore(t)?;
    s.fw_finish(
        t.id,
        FwState::RolledBack,
        super::now(),
        &super::user(),
        &format!("{why}: {how}"),
    )?;
    Ok(how.to_string())
}

/// Rolls back any pending apply whose deadline has passed (a crash or reboot may have
/// killed its watcher).
pub fn recover_expired(g: &Global) -> anyhow::Result<()> {
    let mut s = match super::open_store(g, false) {
        Ok(s) => s,
        Err(portwarden_store::StoreError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if let Some(t) = pending(&s)? {
        if t.deadline.is_some_and(|d| d <= super::now()) {
            let how = rollback_txn(&mut s, &t, "deadline passed")?;
            output::warn(
                g.quiet,
                &format!(
                    "rolled back unconfirmed firewall transaction {}: {how}",
                    t.id
                ),
            );
        }
    }
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
        recover_expired(g)?;
    }
    match c {
        FwCommand::Plan {
            format: FwFormat::Nft,
        } => {
            let (_, text) = render(g)?;
            output::text(&text)?;
            Ok(Status::Ok)
        }
        FwCommand::Plan {
            format: FwFormat::Iptables,
        } => {
            let loaded = super::load_policy(g.policy.as_deref())?;
            let ipt = portwarden_nft::iptables::render(
                &loaded.policy,
                &Options {
                    ssh_peer: ssh_peer(),
                    interfaces: None,
                },
            )?;
            for u in &ipt.unsupported {
                output::warn(g.quiet, &format!("iptables cannot express: {u}"));
            }
            output::text(&format!("{}{}", ipt.v4, ipt.v6))?;
            Ok(Status::Ok)
        }
        FwCommand::Diff => {
            let (_, text) = render(g)?;
            let s = store(g)?;
            let last = s
                .fw_txns()?
                .into_iter()
                .rev()
                .find(|t| t.state != FwState::RolledBack);
            let live = nft::list_table()?;
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
        FwCommand::Apply { confirm_within } => {
            let within: HumanDuration = confirm_within
                .parse()
                .with_context(|| format!("invalid --confirm-within `{confirm_within}`"))?;
            let (_, text) = render(g)?;
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
            let t = s.fw_begin(now, &super::user(), deadline, snapshot, &text)?;
            let watcher = match deadline {
                Some(_) => Some(arm_watcher(g, t.id)?),
                None => None,
            };
            if let Err(e) = nft::apply(&text) {
                // The nft transaction is atomic: nothing changed. Close ours.
                s.fw_finish(
                    t.id,
                    FwState::RolledBack,
                    super::now(),
                    &super::user(),
                    "apply failed",
                )?;
                return Err(e).context("nothing was applied");
            }
            if let Some(listing) = nft::list_table()? {
                s.fw_set_listing(t.id, &listing)?;
            }
            if g.json {
                output::json(&serde_json::json!({
                    "txn": t.id,
                    "deadline": deadline,
                    "watcher_pid": watcher,
                }))?;
            } else if !g.quiet {
                match deadline {
                    Some(d) => output::text(&format!(
                        "applied firewall transaction {}; confirm before {} with `portwarden fw confirm` from a new connection, or it rolls back\n",
                        t.id,
                        output::utc(d)
                    ))?,
                    None => output::text(&format!("applied firewall transaction {}\n", t.id))?,
                }
            }
            Ok(Status::Ok)
        }
        FwCommand::Confirm => {
            let mut s = store(g)?;
            let Some(t) = pending(&s)? else {
                output::refusal("nothing is pending: no apply awaits confirmation");
                return Ok(Status::Negative);
            };
            if s.fw_finish(
                t.id,
                FwState::Confirmed,
                super::now(),
                &super::user(),
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
            let exists = nft::table_exists()?;
            let txns = match super::open_store(g, false) {
                Ok(s) => s.fw_txns()?,
                Err(portwarden_store::StoreError::Missing(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let last = txns.last();
            if g.json {
                output::json(&serde_json::json!({"table": exists, "last": last}))?;
            } else {
                let mut s = format!(
                    "table inet portwarden: {}\n",
                    if exists { "present" } else { "absent" }
                );
                if let Some(t) = last {
                    s.push_str(&format!(
                        "last transaction {}: {:?} at {}{}\n",
                        t.id,
                        t.state,
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
            let wait = (deadline - super::now()).max(0) as u64;
            std::thread::sleep(Duration::from_secs(wait));
            let mut s = store(g)?;
            if let Some(p) = pending(&s)? {
                if p.id == *txn {
                    rollback_txn(&mut s, &p, "not confirmed before the deadline")?;
                }
            }
            Ok(Status::Ok)
        }
    }
}

/// Reads `PORT[/PROTO] ADDR [DURATION]` lines.
fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
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

fn parse_grant(
    port: &str,
    from: &str,
    dur: Option<&str>,
) -> anyhow::Result<(IpAddr, Protocol, u16, Duration)> {
    let pp: PortProto = port
        .parse()
        .with_context(|| format!("invalid port `{port}`"))?;
    let addr: IpAddr = from
        .parse()
        .with_context(|| format!("`{from}` is not an IP address"))?;
    let d = match dur {
        None => Duration::ZERO,
        Some(d) => {
            let h: HumanDuration = d
                .parse()
                .with_context(|| format!("invalid duration `{d}`"))?;
            if h.get().is_zero() {
                bail!("invalid duration `{d}`: a grant must last longer than zero");
            }
            h.get()
        }
    };
    Ok((addr, pp.protocol, pp.port.get(), d))
}

fn need_table() -> anyhow::Result<()> {
    if !nft::table_exists()? {
        bail!("table inet portwarden does not exist: `portwarden fw apply` first");
    }
    Ok(())
}

pub fn grant(g: &Global, a: &GrantArgs) -> anyhow::Result<Status> {
    let grants = match &a.file {
        Some(f) => read_lines(f)?
            .into_iter()
            .map(|(n, f)| match f.as_slice() {
                [p, from, d] => parse_grant(p, from, Some(d)).with_context(|| format!("line {n}")),
                _ => bail!("line {n}: expected `PORT[/PROTO] ADDR DURATION`"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![parse_grant(
            a.port.as_deref().unwrap_or_default(),
            a.from.as_deref().unwrap_or_default(),
            a.duration.as_deref(),
        )?],
    };
    need_table()?;
    nft::apply(&portwarden_nft::grant_commands(&grants)).context("nothing was granted")?;
    let changes = grants
        .iter()
        .map(|(addr, p, port, d)| Change {
            actor: super::user(),
            action: "fw.grant".into(),
            subject: format!("{port}/{p}"),
            before: None,
            after: Some(format!("{addr} for {}", HumanDuration(*d))),
            reason: None,
        })
        .collect();
    store(g)?.record_batch(super::now(), changes)?;
    if !g.quiet {
        output::text(&format!(
            "granted {} source{}\n",
            grants.len(),
            if grants.len() == 1 { "" } else { "s" }
        ))?;
    }
    Ok(Status::Ok)
}

pub fn revoke(g: &Global, a: &RevokeArgs) -> anyhow::Result<Status> {
    let items = match &a.file {
        Some(f) => read_lines(f)?
            .into_iter()
            .map(|(n, f)| match f.as_slice() {
                [p, from] => parse_grant(p, from, None).with_context(|| format!("line {n}")),
                _ => bail!("line {n}: expected `PORT[/PROTO] ADDR`"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![parse_grant(
            a.port.as_deref().unwrap_or_default(),
            a.from.as_deref().unwrap_or_default(),
            None,
        )?],
    };
    need_table()?;
    let list: Vec<(IpAddr, Protocol, u16)> = items
        .iter()
        .map(|(a, p, port, _)| (*a, *p, *port))
        .collect();
    nft::apply(&portwarden_nft::revoke_commands(&list))
        .context("nothing was revoked (is the grant still there?)")?;
    let changes = list
        .iter()
        .map(|(addr, p, port)| Change {
            actor: super::user(),
            action: "fw.revoke".into(),
            subject: format!("{port}/{p}"),
            before: Some(addr.to_string()),
            after: None,
            reason: None,
        })
        .collect();
    store(g)?.record_batch(super::now(), changes)?;
    if !g.quiet {
        output::text(&format!("revoked {}\n", list.len()))?;
    }
    Ok(Status::Ok)
}
