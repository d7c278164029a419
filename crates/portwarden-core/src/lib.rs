//! portwarden's pure core: ports, ranges and protocols, the service catalog, the policy
//! model and its validation, and (as they arrive) allocation decisions, check rules and
//! findings.
//!
//! Nothing here does I/O, reads the clock, spawns tasks or prints: facts come in as
//! values, decisions go out as values.
#![deny(missing_docs)]

pub mod addr;
pub mod alloc;
pub mod auth;
pub mod balance;
pub mod catalog;
pub mod change;
pub mod diag;
pub mod draft;
pub mod facts;
pub mod findings;
pub mod health;
pub mod histogram;
pub mod hostcheck;
pub mod policy;
pub mod port;
pub mod report;
pub mod targets;
#[cfg(test)]
mod testkit;
pub mod time;
pub mod units;

pub use addr::{AddrSet, Cidr};
pub use catalog::{Catalog, CatalogEntry, Sensitivity, TlsStyle};
pub use policy::Policy;
pub use port::{Endpoint, Port, PortProto, PortRange, PortSpec, Protocol};

#[cfg(test)]
mod names {
    use strum::IntoEnumIterator;

    /// Each name a table or message shows is the name its JSON carries.
    fn same<T: IntoEnumIterator + serde::Serialize + Copy>(as_str: impl Fn(T) -> &'static str) {
        for v in T::iter() {
            assert_eq!(serde_json::to_value(v).unwrap(), as_str(v));
        }
    }

    #[test]
    fn display_names_are_the_json_names() {
        same(crate::findings::RuleId::as_str);
        same(crate::findings::Severity::as_str);
        same(crate::Protocol::as_str);
        same(crate::policy::ZoneKind::as_str);
        same(crate::policy::TlsRequirement::as_str);
        same(crate::alloc::LeaseState::as_str);
        same(crate::catalog::TlsStyle::as_str);
        same(crate::catalog::Sensitivity::as_str);
        same(crate::auth::Role::as_str);
    }
}
