//! How the token documents read on a terminal.

use portwarden_api::token::{TokenDoc, TokenRevokeDoc, TokensDoc};

use super::Table;
use super::printer::Render;

impl Render for TokenDoc {
    /// The secret alone, so that `TOKEN=$(portwarden token create …)` works.
    fn human(&self, _: u8) -> String {
        format!("{}\n", self.token)
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for TokensDoc {
    fn human(&self, _: u8) -> String {
        if self.tokens.is_empty() {
            return "no tokens\n".into();
        }
        let mut t = Table::new(&["NAME", "ROLE", "CREATED", "BY"]);
        for k in &self.tokens {
            t.row(vec![
                k.name.clone(),
                k.role.as_str().into(),
                k.created.clone(),
                k.actor.clone(),
            ]);
        }
        t.render()
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for TokenRevokeDoc {
    fn human(&self, _: u8) -> String {
        if self.revoked {
            format!("token `{}` revoked\n", self.name)
        } else {
            format!("no token named `{}`\n", self.name)
        }
    }
}
