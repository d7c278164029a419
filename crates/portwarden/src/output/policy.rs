//! How the `policy check` document reads on a terminal (the diagnostics of an invalid
//! file are on stderr, with their source lines).

use portwarden_api::policy::PolicyCheckDoc;

use super::printer::Render;

impl Render for PolicyCheckDoc {
    fn human(&self, _: u8) -> String {
        self.files
            .iter()
            .filter(|f| f.valid)
            .map(|f| {
                format!(
                    "{}: ok (services: {}, pools: {}, balance groups: {})\n",
                    f.file,
                    f.services.unwrap_or(0),
                    f.pools.unwrap_or(0),
                    f.balance_groups.unwrap_or(0)
                )
            })
            .collect()
    }
}
