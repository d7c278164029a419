//! What changes from one policy to another, by meaning rather than by line: services,
//! pools, balance groups and zones added or removed, and each setting that changed, named
//! by its path (`services[rsync-mirror].sources`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Policy;

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiffOp {
    /// Only in the new policy.
    Added,
    /// Only in the old one.
    Removed,
    /// In both, with another value.
    Changed,
}

impl DiffOp {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffOp::Added => "added",
            DiffOp::Removed => "removed",
            DiffOp::Changed => "changed",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyChange {
    /// Added, removed or changed.
    pub op: DiffOp,
    /// What: `services[NAME]` for a whole service, `services[NAME].port` for a setting.
    pub path: String,
    /// The old value (compact JSON), when there was one.
    pub from: Option<String>,
    /// The new value (compact JSON), when there is one.
    pub to: Option<String>,
}

/// The sections whose items are named: an item added or removed is one change.
const NAMED: &[&str] = &["services", "pools", "balance"];

/// Every difference from `old` to `new`, in path order: a named item (service, pool,
/// balance group) or zone that only one has is one change; an item in both lists each
/// setting that differs.
pub fn semantic_diff(old: &Policy, new: &Policy) -> Vec<PolicyChange> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(&to_value(old), "", &mut a);
    flatten(&to_value(new), "", &mut b);
    let items = |m: &BTreeMap<String, Value>| -> BTreeMap<String, ()> {
        m.keys()
            .filter_map(|k| item_of(k))
            .map(|i| (i, ()))
            .collect()
    };
    let (ia, ib) = (items(&a), items(&b));
    let mut out = Vec::new();
    for i in ia.keys().filter(|i| !ib.contains_key(*i)) {
        out.push(whole(DiffOp::Removed, i));
    }
    for i in ib.keys().filter(|i| !ia.contains_key(*i)) {
        out.push(whole(DiffOp::Added, i));
    }
    // Settings of what both have.
    let gone =
        |k: &str, other: &BTreeMap<String, ()>| item_of(k).is_some_and(|i| !other.contains_key(&i));
    for (k, va) in &a {
        if gone(k, &ib) {
            continue;
        }
        match b.get(k) {
            Some(vb) if vb == va => {}
            Some(vb) => out.push(PolicyChange {
                op: DiffOp::Changed,
                path: k.clone(),
                from: Some(va.to_string()),
                to: Some(vb.to_string()),
            }),
            None => out.push(PolicyChange {
                op: DiffOp::Removed,
                path: k.clone(),
                from: Some(va.to_string()),
                to: None,
            }),
        }
    }
    for (k, vb) in &b {
        if !a.contains_key(k) && !gone(k, &ia) {
            out.push(PolicyChange {
                op: DiffOp::Added,
                path: k.clone(),
                from: None,
                to: Some(vb.to_string()),
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path).then(x.op.as_str().cmp(y.op.as_str())));
    out
}

fn whole(op: DiffOp, item: &str) -> PolicyChange {
    PolicyChange {
        op,
        path: item.to_string(),
        from: None,
        to: None,
    }
}

fn to_value(p: &Policy) -> Value {
    // A policy always serializes (plain data, string keys).
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// The named item or zone a path lies in: `services[x]`, `zones.internal`.
fn item_of(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("zones.") {
        let zone = rest.split('.').next()?;
        return Some(format!("zones.{zone}"));
    }
    let end = path.find(']')?;
    let head = &path[..=end];
    NAMED
        .iter()
        .any(|s| head.starts_with(&format!("{s}[")))
        .then(|| head.to_string())
}

/// Leaves by path: objects are walked, arrays of named objects are walked by name, other
/// arrays and scalars are leaves.
fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, &join(k), out);
            }
        }
        Value::Array(items) if NAMED.contains(&prefix) => {
            for x in items {
                let name = x.get("name").and_then(Value::as_str).unwrap_or("?");
                let mut inner = BTreeMap::new();
                flatten(x, "", &mut inner);
                for (k, leaf) in inner {
                    if k == "name" {
                        // The item is there: its name is what says so.
                        out.insert(format!("{prefix}[{name}]"), Value::Bool(true));
                    } else {
                        out.insert(format!("{prefix}[{name}].{k}"), leaf);
                    }
                }
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;

    fn policy(src: &str) -> Policy {
        Policy::parse("t.toml", src, Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn services_added_removed_and_changed_settings_are_named() {
        let base = "version = 1\n[zones.internal]\ncidrs = [\"10.0.0.0/8\"]\n";
        let old = policy(&format!(
            "{base}[[service]]\nname = \"rsync-mirror\"\nport = 873\nzone = \"internal\"\n[[service]]\nname = \"old\"\nport = 8080\nzone = \"internal\"\n"
        ));
        let new = policy(&format!(
            "{base}[[service]]\nname = \"rsync-mirror\"\nport = 8873\nzone = \"internal\"\n[[service]]\nname = \"new\"\nport = 9090\nzone = \"internal\"\n"
        ));
        let d = semantic_diff(&old, &new);
        let shown: Vec<(DiffOp, &str)> = d.iter().map(|c| (c.op, c.path.as_str())).collect();
        assert!(shown.contains(&(DiffOp::Added, "services[new]")), "{d:#?}");
        assert!(
            shown.contains(&(DiffOp::Removed, "services[old]")),
            "{d:#?}"
        );
        let port = d
            .iter()
            .find(|c| c.path == "services[rsync-mirror].placement.fixed")
            .unwrap_or_else(|| panic!("{d:#?}"));
        assert_eq!(port.op, DiffOp::Changed);
        assert!(
            port.to.as_deref().is_some_and(|t| t.contains("8873")),
            "{port:?}"
        );
        // Nothing about the items added or removed but the items themselves.
        assert!(
            !d.iter().any(|c| c.path.starts_with("services[new].")),
            "{d:#?}"
        );
        assert!(semantic_diff(&old, &old).is_empty());
    }

    #[test]
    fn a_new_source_and_a_new_zone_are_one_change_each() {
        let old = policy("version = 1\n[zones.internal]\ncidrs = [\"10.0.0.0/8\"]\n");
        let new = policy(
            "version = 1\n[zones.internal]\ncidrs = [\"10.0.0.0/8\", \"192.0.2.0/24\"]\n[zones.external]\ncidrs = [\"198.51.100.0/24\"]\n",
        );
        let d = semantic_diff(&old, &new);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert!(paths.contains(&"zones.external"), "{d:#?}");
        let nets = d
            .iter()
            .find(|c| c.path.starts_with("zones.internal"))
            .unwrap_or_else(|| panic!("{d:#?}"));
        assert_eq!(nets.op, DiffOp::Changed);
        assert!(
            nets.to
                .as_deref()
                .is_some_and(|t| t.contains("192.0.2.0/24")),
            "{nets:?}"
        );
    }
}
