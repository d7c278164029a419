//! `grant` and `revoke`: one source admitted to one port for a while, as an element with
//! a timeout in our table's grant set, recorded in the store so that an apply re-adds it.
//! The kernel and the store never disagree: a failed record undoes the kernel change.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_api::API_VERSION;
use portwarden_api::fw::{GrantDoc, GrantItem, RevokeDoc};
use portwarden_core::units::HumanDuration;
use portwarden_core::{Port, PortProto, Protocol};
use portwarden_nft::Grant;
use portwarden_os::nft;
use portwarden_store::{GrantRecord, Journal};

use super::GRANT_MAX;
use crate::Ctx;

/// The largest grant file read (as for policies).
const GRANT_FILE_MAX: u64 = crate::policy::POLICY_MAX_BYTES;

/// The size limit in the words the policy reader uses.
fn too_large() -> String {
    format!("larger than the {} MiB limit", GRANT_FILE_MAX >> 20)
}

/// One grant or revocation: source (IPv4-mapped addresses as IPv4), protocol, port, and
/// how long (zero for a revocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: Port,
    pub left: Duration,
}

/// Reads `PORT[/PROTO] ADDR [DURATION]` lines: (line number, fields); at most
/// [`GRANT_FILE_MAX`] bytes, so `--file /dev/zero` is an error, not a growing process.
/// `-` is standard input.
fn read_lines(path: &Path) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let shown = path.display();
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(GRANT_FILE_MAX + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {shown}"))?;
        if bytes.len() as u64 > GRANT_FILE_MAX {
            bail!("cannot read {shown}: {}; nothing applied", too_large());
        }
        bytes
    } else {
        crate::files::read_regular(path, GRANT_FILE_MAX).map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => {
                anyhow::anyhow!("cannot read {shown}: {}; nothing applied", too_large())
            }
            _ => anyhow::Error::new(e).context(format!("cannot read {shown}; nothing applied")),
        })?
    };
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

/// Parses one item, as on the command line or a line of `--file`.
pub fn parse_item(port: &str, from: &str, dur: Option<&str>) -> anyhow::Result<Item> {
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
            if h.get().subsec_nanos() != 0 {
                bail!("invalid duration `{d}`: a grant lasts whole seconds");
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

/// The items of a grant file: every bad line reported, nothing taken when one is bad.
pub fn read_items(file: &Path, with_duration: bool) -> anyhow::Result<Vec<Item>> {
    let want = if with_duration {
        "`PORT[/PROTO] ADDR DURATION`"
    } else {
        "`PORT[/PROTO] ADDR`"
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, fields) in read_lines(file)? {
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
            Err(e) => bad.push(format!("{}:{n}: {e:#}", file.display())),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} bad line{} in {}, nothing applied: {}",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" },
            file.display(),
            bad.join("; ")
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

/// `grant`: admits each item's source to its port until its time runs out.
pub fn grant(ctx: &Ctx, state_dir: &Path, list: &[Item]) -> anyhow::Result<GrantDoc> {
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
    let mut s = super::open(ctx, state_dir)?;
    s.check_writable().context("nothing was granted")?;
    let now = ctx.clock.now();
    nft::apply(&portwarden_nft::grant_commands(&grants)).context("nothing was granted")?;
    let records: Vec<GrantRecord> = list
        .iter()
        .map(|i| GrantRecord {
            addr: i.addr,
            protocol: i.protocol,
            port: i.port,
            expires_at: now + i.left.as_secs() as i64,
            actor: ctx.actor.clone(),
        })
        .collect();
    if let Err(e) = s.grant(now, &records) {
        // Not recorded: take them back, so that the store and the kernel agree.
        let keys: Vec<_> = list.iter().map(|i| (i.addr, i.protocol, i.port)).collect();
        let _ = nft::apply(&portwarden_nft::revoke_commands(&keys));
        return Err(e).context("nothing was granted");
    }
    Ok(GrantDoc {
        api: API_VERSION,
        granted: records
            .iter()
            .map(|r| GrantItem {
                addr: r.addr,
                protocol: r.protocol.to_string(),
                port: r.port.get(),
                expires_at: Some(r.expires_at),
            })
            .collect(),
    })
}

/// `revoke`: takes grants back before they expire.
pub fn revoke(ctx: &Ctx, state_dir: &Path, list: &[Item]) -> anyhow::Result<RevokeDoc> {
    need_table()?;
    let keys: Vec<(IpAddr, Protocol, Port)> =
        list.iter().map(|i| (i.addr, i.protocol, i.port)).collect();
    let mut s = super::open(ctx, state_dir)?;
    // The store must be able to record it before the kernel is changed, and a failed
    // record puts the grants back: the store and the kernel never disagree.
    s.check_writable().context("nothing was revoked")?;
    let (held, _) = super::state_of(ctx, &s)?;
    // Say which grant is not there, rather than nft's "No such file or directory".
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !held.iter().any(|h| (h.addr, h.protocol, h.port) == **k))
        .map(|(a, p, port)| format!("{port}/{p} from {a}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "no grant for {} (expired, revoked, or never granted); nothing was revoked",
            missing.join(", ")
        );
    }
    nft::apply(&portwarden_nft::revoke_commands(&keys))
        .context("nothing was revoked (is the grant still there?)")?;
    if let Err(e) = s.revoke(ctx.clock.now(), &ctx.actor, &keys) {
        let back: Vec<Grant> = held
            .into_iter()
            .filter(|h| keys.contains(&(h.addr, h.protocol, h.port)))
            .collect();
        let _ = nft::apply(&portwarden_nft::grant_commands(&back));
        return Err(e).context("nothing was revoked");
    }
    Ok(RevokeDoc {
        api: API_VERSION,
        revoked: keys
            .iter()
            .map(|(addr, protocol, port)| GrantItem {
                addr: *addr,
                protocol: protocol.to_string(),
                port: port.get(),
                expires_at: None,
            })
            .collect(),
    })
}

/// The grants in force, as the store holds them (`GET /api/v1/fw/grants`).
pub fn active(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<GrantDoc> {
    let held = match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => s.grants(ctx.clock.now())?,
        None => Vec::new(),
    };
    Ok(GrantDoc {
        api: API_VERSION,
        granted: held
            .iter()
            .map(|r| GrantItem {
                addr: r.addr,
                protocol: r.protocol.to_string(),
                port: r.port.get(),
                expires_at: Some(r.expires_at),
            })
            .collect(),
    })
}
