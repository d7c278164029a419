//! `portwarden catalog [NAME]`.

use anyhow::bail;
use portwarden_api::API_VERSION;
use portwarden_api::catalog::{CatalogDoc, EntryDoc};
use portwarden_core::Catalog;

use crate::Status;
use crate::cli::{CatalogArgs, Global};
use crate::output::Printer;

pub fn run(g: &Global, a: &CatalogArgs) -> anyhow::Result<Status> {
    let c = Catalog::builtin();
    let out = Printer::stdout(g);
    let Some(name) = &a.name else {
        out.doc(&CatalogDoc {
            api: API_VERSION,
            entries: c.entries().to_vec(),
        })?;
        return Ok(Status::Ok);
    };
    let Some(e) = c.get(name) else {
        match c.suggest(name) {
            Some(s) => bail!("unknown catalog service `{name}`: did you mean `{s}`?"),
            None => bail!("unknown catalog service `{name}`: `portwarden catalog` lists them"),
        }
    };
    out.doc(&EntryDoc {
        api: API_VERSION,
        entry: e.clone(),
    })?;
    Ok(Status::Ok)
}
