//! `portwarden scan`: the flags into a [`ScanRequest`], the use-case in `portwarden-ops`,
//! and its document out as a table, `--json`, `-oG` and `-oX`.

use std::sync::Arc;

use anyhow::Context;
use portwarden_api::scan::ScanDoc;
use portwarden_ops::scan::ScanRequest;

use crate::cli::{Global, ScanArgs};
use crate::{Status, output};

pub fn run(g: &Global, a: &ScanArgs) -> anyhow::Result<Status> {
    let dash = |p: &Option<std::path::PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if g.json && (dash(&a.grepable) || dash(&a.xml)) {
        anyhow::bail!(
            "--json and -oG -/-oX - would both write to stdout: give the -o output a file"
        );
    }
    let timeout = a.timeout;
    let old: Option<ScanDoc> = match &a.diff {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not a `portwarden scan --json` output", p.display())
            })?)
        }
    };
    let req = ScanRequest {
        targets: a.targets.clone(),
        ports: a.ports.clone(),
        top: a.top,
        exclude_ports: a.exclude_ports.clone(),
        udp: a.udp,
        syn: a.syn,
        connect: a.connect,
        no_ping: a.no_ping,
        rate: a.rate,
        service: a.service,
        probes_db: a.probes_db.clone(),
        timeout: timeout.get(),
        retries: a.retries,
        max_hosts: a.max_hosts,
        old,
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    };
    let progress = output::Progress::new(g.quiet || g.json);
    let mut ctx = super::ctx(g);
    let mut notes = output::CliNotes::new(g);
    notes.progress = Some(progress.clone());
    ctx.notes = Arc::new(notes);
    ctx.progress = Arc::new(move |d, t| progress.update(d, t));
    let rt = super::runtime()?;
    // A signal stops the scan cleanly (the SYN scan's RST table is removed) instead of
    // killing it; the previous dispositions come back afterwards.
    let guard = crate::signals::catch();
    let doc = rt.block_on(portwarden_ops::scan::run(&ctx, &req));
    // An engine abandoned on a stop may still be running: not waited for.
    rt.shutdown_background();
    drop(guard);
    let doc = doc?;
    if let Some(p) = &a.grepable {
        output::write_output(p, output::scan_grepable(&doc).as_bytes(), a.force)?;
    }
    if let Some(p) = &a.xml {
        output::write_output(p, output::scan_xml(&doc).as_bytes(), a.force)?;
    }
    output::Printer::stdout(g).doc(&doc)?;
    if doc.interrupted {
        return Ok(Status::Error);
    }
    Ok(if doc.ports.iter().any(|p| p.state == "open") {
        Status::Ok
    } else {
        Status::Negative
    })
}
