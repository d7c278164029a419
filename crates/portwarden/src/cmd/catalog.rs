//! `portwarden catalog [NAME]`.

use anyhow::bail;
use portwarden_core::Catalog;

use crate::cli::{CatalogArgs, Global};
use crate::{Status, output};

pub fn run(g: &Global, a: &CatalogArgs) -> anyhow::Result<Status> {
    let c = Catalog::builtin();
    match &a.name {
        None if g.json => output::json(&c.entries())?,
        None => output::catalog_list(c.entries())?,
        Some(name) => {
            let Some(e) = c.get(name) else {
                match c.suggest(name) {
                    Some(s) => bail!("unknown catalog service `{name}`: did you mean `{s}`?"),
                    None => {
                        bail!("unknown catalog service `{name}`: `portwarden catalog` lists them")
                    }
                }
            };
            if g.json {
                output::json(e)?;
            } else {
                output::catalog_entry(e)?;
            }
        }
    }
    Ok(Status::Ok)
}
