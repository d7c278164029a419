//! `portwarden serve` (the daemon is `portwarden_server`) and `portwarden token`.

use portwarden_ops::token;

use crate::Status;
use crate::cli::{Global, LogFormat, ServeArgs, TokenCommand};
use crate::output::Printer;

pub fn serve(g: &Global, a: &ServeArgs) -> anyhow::Result<Status> {
    portwarden_server::init_logging(a.log_format == LogFormat::Json, g.verbose);
    let mut cfg = portwarden_server::Config::new(super::state_dir(g));
    cfg.listen = a.listen;
    cfg.metrics_listen = a.metrics_listen;
    cfg.socket = a.socket.clone();
    cfg.tls = a.tls_cert.clone().zip(a.tls_key.clone());
    cfg.insecure_http = a.insecure_http;
    cfg.balance = a.balance;
    cfg.policy = g.policy.clone();
    cfg.interval = a.interval.get();
    cfg.max_connections = a.max_connections as usize;
    cfg.header_timeout = a.header_timeout.get();
    let rt = super::runtime()?;
    let r = rt.block_on(portwarden_server::serve(cfg));
    // The daemon has ended its jobs and requests; what still runs on a blocking thread
    // (a name lookup for the webhook, cut short by the stop) is not waited for long.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r?;
    Ok(Status::Ok)
}

pub fn token(g: &Global, c: &TokenCommand) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    match c {
        TokenCommand::Create { name, role } => {
            out.doc(&token::create(&s.ctx, &s.dir, name, (*role).into())?)?
        }
        TokenCommand::List => out.doc(&token::list(&s.ctx, &s.dir)?)?,
        TokenCommand::Revoke { name } => {
            let d = token::revoke(&s.ctx, &s.dir, name)?;
            out.doc(&d)?;
            if !d.revoked {
                return Ok(Status::Negative);
            }
        }
    }
    Ok(Status::Ok)
}
