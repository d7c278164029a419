//! Reads the span tree into a [`Policy`], collecting every error with its position, then
//! runs the cross-field rules (conflicts, overlaps, references).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;

use super::tree::{self, Key, Kind, Node};
use super::*;
use crate::addr::{Cidr, unmapped};
use crate::catalog::{Catalog, Sensitivity, edit_distance};
use crate::diag::Diagnostic;
use crate::port::Port;
use crate::units::HumanDuration;

const TOP_KEYS: &[&str] = &[
    "version",
    "host",
    "zones",
    "transfer",
    "pool",
    "service",
    "compliance",
    "firewall",
    "balance",
    "scan",
    "alerts",
    "change",
];
const CHANGE_KEYS: &[&str] = &[
    "approvals",
    "require_approval",
    "pre_apply",
    "post_apply",
    "hook_timeout",
];

/// The longest `[change] hook_timeout`.
pub const HOOK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
const HOST_KEYS: &[&str] = &["name", "management"];
const MGMT_KEYS: &[&str] = &["ports", "from"];
const ZONE_KEYS: &[&str] = &["interfaces", "cidrs"];
const TRANSFER_KEYS: &[&str] = &["bandwidth", "rtt"];
const POOL_KEYS: &[&str] = &[
    "name",
    "range",
    "protocol",
    "static",
    "lease_ttl",
    "reclaim_idle",
    "allow_ephemeral",
];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "catalog",
    "port",
    "pool",
    "protocol",
    "zone",
    "allow_from",
    "tls",
    "max_conn_per_source",
    "max_conn",
    "sensitivity",
    "process",
    "owner",
];
const COMPLIANCE_KEYS: &[&str] = &[
    "max_external_ports",
    "ledger_retention_days",
    "require_tls",
    "forbid",
    "protocols",
    "pool_utilisation_alert",
    "port_utilisation_alert",
    "port_error_rate_alert",
];
const FIREWALL_KEYS: &[&str] = &["mode", "icmp", "scan_guard"];
const GUARD_KEYS: &[&str] = &["threshold", "window", "block"];
const BALANCE_KEYS: &[&str] = &[
    "name",
    "listen",
    "algorithm",
    "backends",
    "backup",
    "health",
    "max_conn_per_source",
    "protocol",
    "max_rate_per_source",
    "max_conn",
    "queue_timeout",
    "connect_timeout",
    "idle_timeout",
    "drain_timeout",
    "nodelay",
    "proxy_protocol",
    "accept_proxy",
];
const BACKEND_KEYS: &[&str] = &["addr", "weight", "max_conn"];
const SCAN_KEYS: &[&str] = &["targets", "max_hosts"];
/// The longest `[alerts] timeout`: one attempt at the webhook.
pub const WEBHOOK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(60);
const ALERTS_KEYS: &[&str] = &["webhook", "timeout", "retries", "queue", "ca"];
const HEALTH_KEYS: &[&str] = &[
    "interval", "timeout", "fall", "rise", "send", "expect", "http", "status",
];

/// Collects diagnostics while reading values.
struct Cx<'c> {
    diags: Vec<Diagnostic>,
    catalog: &'c Catalog,
}

/// The keys of one table, marking which were read so the rest can be reported as unknown.
struct Fields<'a> {
    entries: &'a [(Key, Node)],
    span: Span,
    allowed: &'static [&'static str],
    what: &'static str,
}

fn closest<'s>(word: &str, options: impl IntoIterator<Item = &'s str>) -> Option<&'s str> {
    options
        .into_iter()
        .map(|o| (edit_distance(word, o), o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 3))
        .min()
        .map(|(_, o)| o)
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        debug_assert!(self.allowed.contains(&key), "{key} not in allowed list");
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// Reports keys outside the allowed list, with a suggestion.
    fn check_unknown(&self, cx: &mut Cx<'_>) {
        for (k, _) in self.entries {
            if !self.allowed.contains(&k.name.as_str()) {
                let mut d = Diagnostic::new(
                    k.span.clone(),
                    format!("unknown key `{}` in {}", k.name, self.what),
                );
                d = match closest(&k.name, self.allowed.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("expected one of: {}", self.allowed.join(", "))),
                };
                cx.diags.push(d);
            }
        }
    }
}

impl<'c> Cx<'c> {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, msg));
    }

    fn err_help(&mut self, span: Span, msg: impl Into<String>, help: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, msg).with_help(help));
    }

    fn mismatch(&mut self, node: &Node, key: &str, want: &str) {
        self.err(
            node.span.clone(),
            format!("`{key}` must be {want}, found {}", node.kind.type_name()),
        );
    }

    fn fields<'a>(
        &mut self,
        node: &'a Node,
        what: &'static str,
        allowed: &'static [&'static str],
    ) -> Option<Fields<'a>> {
        match &node.kind {
            Kind::Table(entries) => {
                let f = Fields {
                    entries,
                    span: node.span.clone(),
                    allowed,
                    what,
                };
                f.check_unknown(self);
                Some(f)
            }
            _ => {
                self.mismatch(node, what, "a table");
                None
            }
        }
    }

    /// A string value. Every string of a policy is read here, so this is where control
    /// characters (C0 with tab and newline, DEL, C1) are refused: names and `process`
    /// end up in terminals, reports and rulesets.
    fn string<'a>(&mut self, node: &'a Node, key: &str) -> Option<&'a str> {
        match &node.kind {
            Kind::Str(s) => match s.chars().find(|c| c.is_control()) {
                Some(c) => {
                    self.err_help(
                        node.span.clone(),
                        format!(
                            "`{key}` must not contain control characters (found U+{:04X})",
                            u32::from(c)
                        ),
                        "remove the escape sequence or invisible character from the string",
                    );
                    None
                }
                None => Some(s.as_str()),
            },
            _ => {
                self.mismatch(node, key, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, node: &Node, key: &str) -> Option<String> {
        let s = self.string(node, key)?;
        if s.trim().is_empty() {
            self.err(node.span.clone(), format!("`{key}` must not be empty"));
            return None;
        }
        Some(s.to_string())
    }

    /// A name that reaches other languages (nft set names, comments, file names): an
    /// identifier as `crate::policy::is_identifier` defines it.
    fn identifier(&mut self, node: &Node, key: &str, what: &str) -> Option<String> {
        let s = self.nonempty_string(node, key)?;
        if let Err(why) = super::check_identifier(&s) {
            self.err_help(
                node.span.clone(),
                format!("{what} name `{}` is not an identifier: {why}", s.escape_debug()),
                "names are letters, digits, `_`, `.` and `-`, start with a letter or digit, and are at most 63 characters",
            );
            return None;
        }
        Some(s)
    }

    fn parsed<T>(&mut self, node: &Node, key: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let s = self.string(node, key)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(node.span.clone(), e.to_string());
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match node.kind {
            Kind::Bool(b) => Some(b),
            _ => {
                self.mismatch(node, key, "true or false");
                None
            }
        }
    }

    /// A positive integer that fits `u32`.
    fn positive(&mut self, node: &Node, key: &str) -> Option<u32> {
        match node.kind {
            Kind::Int(i) if i > 0 && i <= i64::from(u32::MAX) => Some(i as u32),
            Kind::Int(i) => {
                self.err(
                    node.span.clone(),
                    format!("`{key}` must be a positive whole number, found {i}"),
                );
                None
            }
            _ => {
                self.mismatch(node, key, "a positive whole number");
                None
            }
        }
    }

    fn array<'a>(&mut self, node: &'a Node, key: &str) -> Option<&'a [Node]> {
        match &node.kind {
            Kind::Array(items) => Some(items),
            _ => {
                self.mismatch(node, key, "an array");
                None
            }
        }
    }

    /// An enum value from a closed list, with a suggestion.
    fn choice<T: Copy>(&mut self, node: &Node, key: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, key)?;
        if let Some((_, v)) = options.iter().find(|(n, _)| *n == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let list = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let msg = format!("`{key}` must be one of {list}, found `{s}`");
        match closest(s, names.iter().copied()) {
            Some(c) => self.err_help(node.span.clone(), msg, format!("did you mean `{c}`?")),
            None => self.err(node.span.clone(), msg),
        }
        None
    }

    fn duration(&mut self, node: &Node, key: &str, positive: bool) -> Option<HumanDuration> {
        let d: HumanDuration = self.parsed(node, key)?;
        if positive && d.get().is_zero() {
            self.err(
                node.span.clone(),
                format!("`{key}` must be longer than zero"),
            );
            return None;
        }
        Some(d)
    }

    /// `port = 3306`, `port = "3306"` or `port = "6800-7300"`.
    fn port_range(&mut self, node: &Node, key: &str) -> Option<PortRange> {
        match &node.kind {
            Kind::Int(i) => match Port::from_i64(*i) {
                Ok(p) => Some(PortRange::single(p)),
                Err(e) => {
                    self.err(node.span.clone(), e.to_string());
                    None
                }
            },
            Kind::Str(s) => match s.parse::<PortRange>() {
                Ok(r) => Some(r),
                Err(e) => {
                    self.err(node.span.clone(), e.to_string());
                    None
                }
            },
            _ => {
                self.mismatch(node, key, "a port number or a range like \"20000-29999\"");
                None
            }
        }
    }

    fn protocol(&mut self, node: &Node, key: &str) -> Option<Protocol> {
        self.choice(node, key, &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)])
    }

    /// `"tcp"` or `["tcp", "udp"]`.
    fn protocols(&mut self, node: &Node, key: &str) -> Option<Vec<Protocol>> {
        let mut out = match &node.kind {
            Kind::Array(items) => {
                if items.is_empty() {
                    self.err(node.span.clone(), format!("`{key}` must not be empty"));
                    return None;
                }
                let mut v = Vec::new();
                for it in items {
                    v.push(self.protocol(it, key)?);
                }
                v
            }
            _ => vec![self.protocol(node, key)?],
        };
        out.sort();
        out.dedup();
        Some(out)
    }

    fn addr_set(&mut self, node: &Node, key: &str) -> Option<AddrSet> {
        let items = self.array(node, key)?;
        let mut nets = Vec::new();
        let mut ok = true;
        for it in items {
            match self.parsed::<Cidr>(it, key) {
                Some(c) => nets.push(c),
                None => ok = false,
            }
        }
        ok.then(|| AddrSet::new(nets))
    }

    fn string_list(&mut self, node: &Node, key: &str) -> Option<Vec<(String, Span)>> {
        let items = self.array(node, key)?;
        let mut out = Vec::new();
        for it in items {
            out.push((self.nonempty_string(it, key)?, it.span.clone()));
        }
        Some(out)
    }

    /// A catalog name (or alias) resolved to its canonical name.
    fn catalog_name(&mut self, name: &str, span: Span) -> Option<String> {
        match self.catalog.get(name) {
            Some(e) => Some(e.name.clone()),
            None => {
                let msg = format!("unknown catalog service `{name}`");
                match self.catalog.suggest(name) {
                    Some(s) => self.err_help(span, msg, format!("did you mean `{s}`?")),
                    None => {
                        self.err_help(span, msg, "`portwarden catalog` lists the known services")
                    }
                }
                None
            }
        }
    }

    fn socket_addr(&mut self, node: &Node, key: &str) -> Option<SocketAddr> {
        let s = self.string(node, key)?;
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                self.err(
                    node.span.clone(),
                    format!("`{key}` needs a port other than 0: `{s}`"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.err_help(
                    node.span.clone(),
                    format!("`{s}` is not an ADDRESS:PORT"),
                    "write e.g. \"10.0.0.11:873\" or \"[2001:db8::11]:873\"",
                );
                None
            }
        }
    }
}

/// Positions that the cross-field rules point at.
struct ServiceSpans {
    name: Span,
    header: Span,
    port: Option<Span>,
    pool: Option<Span>,
    catalog: Option<Span>,
    tls: Option<Span>,
    zone: Span,
}

struct PoolSpans {
    name: Span,
    range: Span,
}

pub(crate) fn parse(src: &str, catalog: &Catalog) -> Result<Policy, Vec<Diagnostic>> {
    let root = tree::parse(src).map_err(|d| vec![d])?;
    let mut cx = Cx {
        diags: Vec::new(),
        catalog,
    };
    let Some(top) = cx.fields(&root, "the policy", TOP_KEYS) else {
        return Err(cx.diags);
    };

    let version = match top.get("version") {
        None => {
            cx.err_help(
                0..0,
                "missing `version`",
                "start the policy with `version = 1`",
            );
            1
        }
        Some(n) => match n.kind {
            Kind::Int(SUPPORTED_VERSION) => 1,
            Kind::Int(v) => {
                cx.err_help(
                    n.span.clone(),
                    format!("policy version {v} is not supported"),
                    format!("this portwarden reads version {SUPPORTED_VERSION}"),
                );
                1
            }
            _ => {
                cx.mismatch(n, "version", "an integer");
                1
            }
        },
    };

    let host = read_host(&mut cx, top.get("host"));
    let zones = read_zones(&mut cx, top.get("zones"));
    let transfer = top.get("transfer").and_then(|n| read_transfer(&mut cx, n));
    let compliance = match top.get("compliance") {
        Some(n) => read_compliance(&mut cx, n),
        None => Compliance::default(),
    };
    let firewall = match top.get("firewall") {
        Some(n) => read_firewall(&mut cx, n),
        None => Firewall::default(),
    };

    let scan = match top.get("scan") {
        Some(n) => read_scan(&mut cx, n),
        None => ScanPolicy::default(),
    };
    let alerts = match top.get("alerts") {
        Some(n) => read_alerts(&mut cx, n),
        None => Alerts::default(),
    };
    let change = match top.get("change") {
        Some(n) => read_change(&mut cx, n),
        None => ChangeSettings::default(),
    };

    let mut pools = Vec::new();
    if let Some(n) = top.get("pool") {
        for item in table_array(&mut cx, n, "pool") {
            if let Some(p) = read_pool(&mut cx, item) {
                pools.push(p);
            }
        }
    }

    let mut services = Vec::new();
    if let Some(n) = top.get("service") {
        for item in table_array(&mut cx, n, "service") {
            if let Some(s) = read_service(&mut cx, item, &pools) {
                services.push(s);
            }
        }
    }

    let mut balance = Vec::new();
    if let Some(n) = top.get("balance") {
        for item in table_array(&mut cx, n, "balance") {
            if let Some(b) = read_balance(&mut cx, item) {
                balance.push(b);
            }
        }
    }

    cross_check(&mut cx, &pools, &services, &balance, &compliance, &zones);
    management_claims(&mut cx, &host, &services, &balance, &zones);

    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    Ok(Policy {
        version,
        host,
        zones,
        transfer,
        pools: pools.into_iter().map(|(p, _)| p).collect(),
        services: services.into_iter().map(|(s, _)| s).collect(),
        compliance,
        firewall,
        balance: balance.into_iter().map(|(b, _)| b).collect(),
        scan,
        alerts,
        change,
    })
}

fn read_change(cx: &mut Cx<'_>, node: &Node) -> ChangeSettings {
    let mut c = ChangeSettings::default();
    let Some(f) = cx.fields(node, "[change]", CHANGE_KEYS) else {
        return c;
    };
    if let Some(n) = f.get("approvals") {
        match n.kind {
            Kind::Int(i) if (1..=10).contains(&i) => c.approvals = i as u32,
            Kind::Int(i) => cx.err(
                n.span.clone(),
                format!("`approvals` must be 1-10, found {i}"),
            ),
            _ => cx.mismatch(n, "approvals", "a whole number"),
        }
    }
    if let Some(n) = f.get("require_approval") {
        if let Some(b) = cx.boolean(n, "require_approval") {
            c.require_approval = b;
        }
    }
    for key in ["pre_apply", "post_apply"] {
        let Some(n) = f.get(key) else { continue };
        let Some(items) = cx.array(n, key) else {
            continue;
        };
        let mut argv = Vec::new();
        for it in items {
            if let Some(a) = cx.string(it, key) {
                argv.push(a.to_string());
            }
        }
        match argv.first() {
            None if items.is_empty() => cx.err_help(
                n.span.clone(),
                format!("`{key}` is an empty command"),
                "write the program and its arguments: [\"/usr/local/bin/notify\", \"--change\"]",
            ),
            Some(p) if !p.starts_with('/') => cx.err_help(
                items[0].span.clone(),
                format!("`{key}` runs `{p}`: the program must be an absolute path"),
                "no shell and no PATH lookup: write e.g. \"/usr/local/bin/deploy-check\"",
            ),
            _ => {}
        }
        if key == "pre_apply" {
            c.pre_apply = argv;
        } else {
            c.post_apply = argv;
        }
    }
    if let Some(n) = f.get("hook_timeout") {
        match cx.duration(n, "hook_timeout", true) {
            Some(d) if d.get() <= HOOK_TIMEOUT_MAX => c.hook_timeout = d,
            Some(d) => cx.err(
                n.span.clone(),
                format!(
                    "`hook_timeout` must be at most {}, found {d}",
                    HumanDuration(HOOK_TIMEOUT_MAX)
                ),
            ),
            None => {}
        }
    }
    c
}

fn read_scan(cx: &mut Cx<'_>, node: &Node) -> ScanPolicy {
    let mut s = ScanPolicy::default();
    let Some(f) = cx.fields(node, "[scan]", SCAN_KEYS) else {
        return s;
    };
    if let Some(n) = f.get("targets") {
        if let Some(t) = cx.addr_set(n, "targets") {
            s.targets = t;
        }
    }
    if let Some(n) = f.get("max_hosts") {
        if let Some(m) = cx.positive(n, "max_hosts") {
            s.max_hosts = m;
        }
    }
    s
}

fn read_alerts(cx: &mut Cx<'_>, node: &Node) -> Alerts {
    let Some(f) = cx.fields(node, "[alerts]", ALERTS_KEYS) else {
        return Alerts::default();
    };
    let url = f.get("webhook").and_then(|n| {
        let s = cx.string(n, "webhook")?;
        match s.parse::<WebhookUrl>() {
            Ok(u) => Some(u),
            Err(e) => {
                cx.err_help(
                    n.span.clone(),
                    e,
                    "write e.g. \"https://alerts.example.net/portwarden\"",
                );
                None
            }
        }
    });
    let mut timeout = HumanDuration(std::time::Duration::from_secs(5));
    if let Some(n) = f.get("timeout") {
        match cx.duration(n, "timeout", true) {
            Some(d) if d.get() <= WEBHOOK_TIMEOUT_MAX => timeout = d,
            Some(d) => cx.err_help(
                n.span.clone(),
                format!(
                    "`timeout` is one attempt at the webhook: at most {}, found {d}",
                    HumanDuration(WEBHOOK_TIMEOUT_MAX)
                ),
                "a receiver that takes longer is down; `retries` tries it again",
            ),
            None => {}
        }
    }
    let mut retries = 5;
    if let Some(n) = f.get("retries") {
        match n.kind {
            Kind::Int(i) if (0..=100).contains(&i) => retries = i as u32,
            Kind::Int(i) => cx.err(
                n.span.clone(),
                format!("`retries` must be 0-100, found {i}"),
            ),
            _ => cx.mismatch(n, "retries", "a whole number"),
        }
    }
    let mut queue = 1000;
    if let Some(n) = f.get("queue") {
        match cx.positive(n, "queue") {
            Some(q) if q <= 100_000 => queue = q,
            Some(q) => cx.err(
                n.span.clone(),
                format!("`queue` must be at most 100000, found {q}"),
            ),
            None => {}
        }
    }
    let ca = f.get("ca").and_then(|n| {
        let c = cx.nonempty_string(n, "ca")?;
        if url.as_ref().is_some_and(|u| !u.tls) {
            cx.err_help(
                n.span.clone(),
                "`ca` is a trust anchor for HTTPS, and the webhook is http://",
                "write the webhook as https://… or remove `ca`",
            );
        }
        Some(std::path::PathBuf::from(c))
    });
    if url.is_none() && f.get("webhook").is_none() {
        for k in ["timeout", "retries", "queue", "ca"] {
            if let Some(n) = f.get(k) {
                cx.err_help(
                    n.span.clone(),
                    format!("`{k}` says how the webhook is delivered, and there is no `webhook`"),
                    "add `webhook = \"https://…\"` or remove the key",
                );
            }
        }
    }
    Alerts {
        webhook: url.map(|url| Webhook {
            url,
            timeout,
            retries,
            queue,
            ca,
        }),
    }
}

fn table_array<'a>(cx: &mut Cx<'_>, node: &'a Node, key: &str) -> Vec<&'a Node> {
    match &node.kind {
        Kind::Array(items) => items.iter().collect(),
        _ => {
            cx.err_help(
                node.span.clone(),
                format!("`{key}` must be an array of tables"),
                format!("declare each one under its own `[[{key}]]` header"),
            );
            Vec::new()
        }
    }
}

fn read_host(cx: &mut Cx<'_>, node: Option<&Node>) -> Host {
    let mut host = Host {
        name: None,
        management: Management {
            ports: vec![PortSpec {
                range: PortRange::single(Port::new(22).expect("22 is a port")),
                protocol: Protocol::Tcp,
            }],
            from: AddrSet::any(),
        },
    };
    let Some(node) = node else { return host };
    let Some(f) = cx.fields(node, "[host]", HOST_KEYS) else {
        return host;
    };
    if let Some(n) = f.get("name") {
        host.name = cx.identifier(n, "name", "host");
    }
    if let Some(m) = f.get("management") {
        if let Some(mf) = cx.fields(m, "management", MGMT_KEYS) {
            if let Some(p) = mf.get("ports") {
                if let Some(items) = cx.array(p, "ports") {
                    if items.is_empty() {
                        cx.err_help(
                            p.span.clone(),
                            "management `ports` is empty: the management path would be locked out",
                            "list at least the SSH port, e.g. [\"22/tcp\"]",
                        );
                    }
                    let specs: Vec<PortSpec> = items
                        .iter()
                        .filter_map(|it| match &it.kind {
                            Kind::Int(_) => cx.port_range(it, "ports").map(|range| PortSpec {
                                range,
                                protocol: Protocol::Tcp,
                            }),
                            _ => cx.parsed::<PortSpec>(it, "ports"),
                        })
                        .collect();
                    if !specs.is_empty() {
                        host.management.ports = specs;
                    }
                }
            }
            if let Some(fr) = mf.get("from") {
                if let Some(set) = cx.addr_set(fr, "from") {
                    if set.is_empty() {
                        cx.err_help(
                            fr.span.clone(),
                            "management `from` is empty: nobody could reach the management path",
                            "list the networks operators connect from",
                        );
                    } else {
                        host.management.from = set;
                    }
                }
            }
        }
    }
    host
}

fn read_zones(cx: &mut Cx<'_>, node: Option<&Node>) -> BTreeMap<ZoneKind, Zone> {
    let mut zones = BTreeMap::new();
    zones.insert(
        ZoneKind::Localhost,
        Zone {
            interfaces: vec!["lo".to_string()],
            cidrs: AddrSet::loopback(),
        },
    );
    let Some(node) = node else { return zones };
    let Kind::Table(entries) = &node.kind else {
        cx.mismatch(node, "zones", "a table");
        return zones;
    };
    for (k, v) in entries {
        let Some(kind) = ZoneKind::parse(&k.name) else {
            let mut d = Diagnostic::new(k.span.clone(), format!("unknown zone `{}`", k.name))
                .with_help("zones are `external`, `internal` and `localhost`");
            if let Some(s) = closest(&k.name, ZoneKind::ALL.iter().map(|z| z.as_str())) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            cx.diags.push(d);
            continue;
        };
        let Some(f) = cx.fields(v, "a zone", ZONE_KEYS) else {
            continue;
        };
        let mut named = 0;
        let interfaces = f
            .get("interfaces")
            .and_then(|n| cx.string_list(n, "interfaces"))
            .map(|v| {
                named = v.len();
                v.into_iter()
                    .filter_map(|(s, span)| match super::check_interface(&s) {
                        Ok(()) => Some(s),
                        Err(why) => {
                            cx.err_help(
                                span,
                                format!("interface `{}` is not an interface name: {why}", s.escape_debug()),
                                "Linux interface names are 1-15 letters, digits, `_`, `.`, `-`, `@` or `+`, optionally ending in `*`",
                            );
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let cidrs = f
            .get("cidrs")
            .and_then(|n| cx.addr_set(n, "cidrs"))
            .unwrap_or_default();
        if named == 0 && cidrs.is_empty() && kind != ZoneKind::Localhost {
            cx.err_help(
                v.span.clone(),
                format!("zone `{}` names no interfaces and no cidrs", k.name),
                "give `interfaces = [\"eth1\"]` and/or `cidrs = [\"10.0.0.0/8\"]`",
            );
        }
        zones.insert(kind, Zone { interfaces, cidrs });
    }
    zones
}

fn read_transfer(cx: &mut Cx<'_>, node: &Node) -> Option<Transfer> {
    let f = cx.fields(node, "[transfer]", TRANSFER_KEYS)?;
    let bandwidth = match f.get("bandwidth") {
        Some(n) => cx.parsed::<Bandwidth>(n, "bandwidth"),
        None => {
            cx.err(
                f.span.clone(),
                "[transfer] needs `bandwidth`, e.g. \"10Gbit\"",
            );
            None
        }
    };
    let rtt = match f.get("rtt") {
        Some(n) => cx.duration(n, "rtt", true),
        None => {
            cx.err(f.span.clone(), "[transfer] needs `rtt`, e.g. \"40ms\"");
            None
        }
    };
    if let (Some(b), Some(n)) = (bandwidth, f.get("bandwidth")) {
        if b.bits_per_sec() == 0 {
            cx.err(n.span.clone(), "`bandwidth` must be above zero");
            return None;
        }
    }
    Some(Transfer {
        bandwidth: bandwidth?,
        rtt: rtt?,
    })
}

fn read_compliance(cx: &mut Cx<'_>, node: &Node) -> Compliance {
    let mut c = Compliance::default();
    let Some(f) = cx.fields(node, "[compliance]", COMPLIANCE_KEYS) else {
        return c;
    };
    if let Some(n) = f.get("max_external_ports") {
        match n.kind {
            Kind::Int(i) if (0..=65535).contains(&i) => c.max_external_ports = i as u32,
            Kind::Int(i) => cx.err(
                n.span.clone(),
                format!("`max_external_ports` must be 0-65535, found {i}"),
            ),
            _ => cx.mismatch(n, "max_external_ports", "a whole number"),
        }
    }
    if let Some(n) = f.get("ledger_retention_days") {
        if let Some(d) = cx.positive(n, "ledger_retention_days") {
            c.ledger_retention_days = d;
        }
    }
    for (key, slot) in [
        ("require_tls", &mut c.require_tls),
        ("forbid", &mut c.forbid),
    ] {
        if let Some(n) = f.get(key) {
            if let Some(list) = cx.string_list(n, key) {
                *slot = list
                    .into_iter()
                    .filter_map(|(name, span)| cx.catalog_name(&name, span))
                    .collect();
            }
        }
    }
    for name in c.require_tls.clone() {
        if let Some(e) = cx.catalog.get(&name) {
            if !e.tls.can_encrypt() {
                let span = f.get("require_tls").map_or(0..0, |n| n.span.clone());
                cx.err(
                    span,
                    format!("`require_tls` lists `{name}`, which has no encryption to require"),
                );
            }
        }
    }
    if let Some(n) = f.get("protocols") {
        if let Some(p) = cx.protocols(n, "protocols") {
            c.protocols = p;
        }
    }
    if let Some(v) = fraction(
        cx,
        f.get("pool_utilisation_alert"),
        "pool_utilisation_alert",
    ) {
        c.pool_utilisation_alert = v;
    }
    if let Some(v) = fraction(
        cx,
        f.get("port_utilisation_alert"),
        "port_utilisation_alert",
    ) {
        c.port_utilisation_alert = v;
    }
    if let Some(v) = fraction(cx, f.get("port_error_rate_alert"), "port_error_rate_alert") {
        c.port_error_rate_alert = v;
    }
    c
}

/// A threshold in (0, 1].
fn fraction(cx: &mut Cx<'_>, n: Option<&Node>, key: &str) -> Option<f64> {
    let n = n?;
    let v = match n.kind {
        Kind::Float(x) => x,
        Kind::Int(i) => i as f64,
        _ => {
            cx.mismatch(n, key, "a fraction like 0.70");
            return None;
        }
    };
    if v > 0.0 && v <= 1.0 {
        Some(v)
    } else {
        cx.err_help(
            n.span.clone(),
            format!("`{key}` must be above 0 and at most 1, found {v}"),
            "write a fraction: 0.70 means 70 %",
        );
        None
    }
}

fn read_firewall(cx: &mut Cx<'_>, node: &Node) -> Firewall {
    let mut fw = Firewall::default();
    let Some(f) = cx.fields(node, "[firewall]", FIREWALL_KEYS) else {
        return fw;
    };
    if let Some(n) = f.get("mode") {
        if let Some(m) = cx.choice(
            n,
            "mode",
            &[
                ("enforce", FirewallMode::Enforce),
                ("monitor", FirewallMode::Monitor),
            ],
        ) {
            fw.mode = m;
        }
    }
    if let Some(n) = f.get("icmp") {
        if let Some(m) = cx.choice(
            n,
            "icmp",
            &[
                ("essential", IcmpPolicy::Essential),
                ("allow", IcmpPolicy::Allow),
                ("deny", IcmpPolicy::Deny),
            ],
        ) {
            fw.icmp = m;
        }
    }
    if let Some(n) = f.get("scan_guard") {
        if let Some(g) = cx.fields(n, "scan_guard", GUARD_KEYS) {
            let threshold = g.get("threshold").and_then(|n| cx.positive(n, "threshold"));
            let window = g.get("window").and_then(|n| cx.duration(n, "window", true));
            let block = g.get("block").and_then(|n| cx.duration(n, "block", true));
            match (threshold, window, block) {
                (Some(threshold), Some(window), Some(block)) => {
                    fw.scan_guard = Some(ScanGuard {
                        threshold,
                        window,
                        block,
                    })
                }
                _ => {
                    for k in ["threshold", "window", "block"] {
                        if g.get(k).is_none() {
                            cx.err(g.span.clone(), format!("`scan_guard` needs `{k}`"));
                        }
                    }
                }
            }
        }
    }
    fw
}

fn read_pool(cx: &mut Cx<'_>, node: &Node) -> Option<(Pool, PoolSpans)> {
    let f = cx.fields(node, "[[pool]]", POOL_KEYS)?;
    let name_node = f.get("name");
    let name = match name_node {
        Some(n) => cx.identifier(n, "name", "pool"),
        None => {
            cx.err(f.span.clone(), "a pool needs a `name`");
            None
        }
    };
    let range_node = f.get("range");
    let range = match range_node {
        Some(n) => cx.port_range(n, "range"),
        None => {
            cx.err(
                f.span.clone(),
                "a pool needs a `range`, e.g. \"20000-29999\"",
            );
            None
        }
    };
    let protocol = match f.get("protocol") {
        Some(n) => cx.protocol(n, "protocol"),
        None => Some(Protocol::Tcp),
    };
    let static_band = match f.get("static") {
        Some(n) => match cx.port_range(n, "static") {
            Some(s) => {
                if let Some(r) = range {
                    if !r.covers(s) {
                        cx.err(
                            n.span.clone(),
                            format!("static band {s} lies outside the pool range {r}"),
                        );
                    } else if s == r {
                        cx.err_help(
                            n.span.clone(),
                            format!("static band {s} is the whole pool: no dynamic ports remain"),
                            "keep part of the range for automatic allocation",
                        );
                    }
                }
                Some(Some(s))
            }
            None => None,
        },
        None => Some(None),
    };
    let lease_ttl = match f.get("lease_ttl") {
        Some(n) => cx.duration(n, "lease_ttl", true),
        None => Some(HumanDuration(std::time::Duration::from_secs(86_400))),
    };
    let reclaim_idle = match f.get("reclaim_idle") {
        Some(n) => cx.duration(n, "reclaim_idle", true).map(Some),
        None => Some(None),
    };
    let allow_ephemeral = match f.get("allow_ephemeral") {
        Some(n) => cx.boolean(n, "allow_ephemeral"),
        None => Some(false),
    };
    let spans = PoolSpans {
        name: name_node.map_or(f.span.clone(), |n| n.span.clone()),
        range: range_node.map_or(f.span.clone(), |n| n.span.clone()),
    };
    Some((
        Pool {
            name: name?,
            range: range?,
            protocol: protocol?,
            static_band: static_band?,
            lease_ttl: lease_ttl?,
            reclaim_idle: reclaim_idle?,
            allow_ephemeral: allow_ephemeral?,
            span: f.span.clone(),
        },
        spans,
    ))
}

fn read_service(
    cx: &mut Cx<'_>,
    node: &Node,
    pools: &[(Pool, PoolSpans)],
) -> Option<(Service, ServiceSpans)> {
    let f = cx.fields(node, "[[service]]", SERVICE_KEYS)?;
    let name_node = f.get("name");
    let name = match name_node {
        Some(n) => cx.identifier(n, "name", "service"),
        None => {
            cx.err(f.span.clone(), "a service needs a `name`");
            None
        }
    };
    let catalog_node = f.get("catalog");
    let entry = catalog_node.and_then(|n| {
        let s = cx.string(n, "catalog")?;
        let canonical = cx.catalog_name(s, n.span.clone())?;
        cx.catalog.get(&canonical)
    });
    let catalog_failed = catalog_node.is_some() && entry.is_none();

    let explicit_protocols = optional(f.get("protocol"), |n| cx.protocols(n, "protocol"));
    let port_node = f.get("port");
    let pool_node = f.get("pool");
    let port = optional(port_node, |n| cx.port_range(n, "port"));
    let placement = match (port, explicit_protocols.clone()) {
        (Some(port), Some(explicit_protocols)) => placement(
            cx,
            &f,
            port,
            explicit_protocols,
            entry,
            catalog_failed,
            pools,
            name.as_deref(),
        ),
        _ => None,
    };
    let protocols = match placement.as_ref() {
        None => Vec::new(),
        Some(Placement::Fixed(specs)) => {
            let mut v: Vec<Protocol> = specs.iter().map(|s| s.protocol).collect();
            v.sort();
            v.dedup();
            v
        }
        Some(Placement::Pool(pname)) => {
            let pool_proto = pools
                .iter()
                .find(|(p, _)| &p.name == pname)
                .map_or(Protocol::Tcp, |(p, _)| p.protocol);
            if let Some(Some(ps)) = &explicit_protocols {
                if ps.iter().any(|&p| p != pool_proto) {
                    cx.err(
                        f.get("protocol").map_or(f.span.clone(), |n| n.span.clone()),
                        format!("pool `{pname}` hands out {pool_proto} ports only"),
                    );
                }
            }
            vec![pool_proto]
        }
    };

    let zone_node = f.get("zone");
    let zone = match zone_node {
        Some(n) => cx.choice(
            n,
            "zone",
            &[
                ("external", ZoneKind::External),
                ("internal", ZoneKind::Internal),
                ("localhost", ZoneKind::Localhost),
            ],
        ),
        None => {
            cx.err_help(
                name_node.map_or(f.span.clone(), |n| n.span.clone()),
                format!(
                    "service `{}` needs a `zone`",
                    name.as_deref().unwrap_or("?")
                ),
                "zone = \"external\", \"internal\" or \"localhost\"",
            );
            None
        }
    };
    let allow_from = optional(f.get("allow_from"), |n| cx.addr_set(n, "allow_from"));
    let tls_node = f.get("tls");
    let tls = match tls_node {
        Some(n) => cx.choice(
            n,
            "tls",
            &[
                ("required", TlsRequirement::Required),
                ("optional", TlsRequirement::Optional),
                ("none", TlsRequirement::None),
            ],
        ),
        None => Some(match entry {
            Some(e) if e.tls.can_encrypt() => TlsRequirement::Optional,
            _ => TlsRequirement::None,
        }),
    };
    if let (Some(TlsRequirement::Required), Some(e), Some(n)) = (tls, entry, tls_node) {
        if !e.tls.can_encrypt() {
            cx.err_help(
                n.span.clone(),
                format!(
                    "`tls = \"required\"` but catalog service `{}` cannot do TLS",
                    e.name
                ),
                format!(
                    "{}: {}; tunnel it (stunnel, ssh) as a separate service",
                    e.name, e.note
                ),
            );
        }
    }
    let max_conn_per_source = optional(f.get("max_conn_per_source"), |n| {
        cx.positive(n, "max_conn_per_source")
    });
    let max_conn = optional(f.get("max_conn"), |n| cx.positive(n, "max_conn"));
    let sensitivity = match f.get("sensitivity") {
        Some(n) => cx.choice(
            n,
            "sensitivity",
            &[
                ("low", Sensitivity::Low),
                ("medium", Sensitivity::Medium),
                ("high", Sensitivity::High),
            ],
        ),
        None => Some(entry.map_or(Sensitivity::Medium, |e| e.sensitivity)),
    };
    let process = optional(f.get("process"), |n| cx.nonempty_string(n, "process"));
    let owner = optional(f.get("owner"), |n| cx.nonempty_string(n, "owner"));
    let spans = ServiceSpans {
        name: name_node.map_or(f.span.clone(), |n| n.span.clone()),
        header: f.span.clone(),
        port: port_node.map(|n| n.span.clone()),
        pool: pool_node.map(|n| n.span.clone()),
        catalog: catalog_node.map(|n| n.span.clone()),
        tls: tls_node.map(|n| n.span.clone()),
        zone: zone_node.map_or(f.span.clone(), |n| n.span.clone()),
    };
    Some((
        Service {
            name: name?,
            catalog: entry.map(|e| e.name.clone()),
            placement: placement?,
            protocols,
            zone: zone?,
            allow_from: allow_from?,
            tls: tls?,
            max_conn_per_source: max_conn_per_source?,
            max_conn: max_conn?,
            sensitivity: sensitivity?,
            process: process?,
            owner: owner?,
            span: f.span.clone(),
        },
        spans,
    ))
}

/// Reads an optional key: `Some(None)` when absent, `None` when present but invalid.
fn optional<T>(node: Option<&Node>, read: impl FnOnce(&Node) -> Option<T>) -> Option<Option<T>> {
    match node {
        None => Some(None),
        Some(n) => read(n).map(Some),
    }
}

/// Where a service's ports come from: a fixed port, a pool, or its catalog entry.
#[allow(clippy::too_many_arguments)]
fn placement(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    port: Option<PortRange>,
    explicit_protocols: Option<Vec<Protocol>>,
    entry: Option<&crate::catalog::CatalogEntry>,
    catalog_failed: bool,
    pools: &[(Pool, PoolSpans)],
    name: Option<&str>,
) -> Option<Placement> {
    let name_span = f.get("name").map_or(f.span.clone(), |n| n.span.clone());
    match (port, f.get("pool")) {
        (Some(_), Some(p)) => {
            cx.err_help(
                p.span.clone(),
                "`port` and `pool` are exclusive",
                "a service either has a fixed port or gets one from a pool",
            );
            None
        }
        (Some(range), None) => {
            let protocols = explicit_protocols
                .or_else(|| entry.map(|e| e.protocols()))
                .unwrap_or_else(|| vec![Protocol::Tcp]);
            Some(Placement::Fixed(
                protocols
                    .into_iter()
                    .map(|protocol| PortSpec { range, protocol })
                    .collect(),
            ))
        }
        (None, Some(p)) => {
            let pname = cx.string(p, "pool")?;
            if pools.iter().any(|(pool, _)| pool.name == pname) {
                return Some(Placement::Pool(pname.to_string()));
            }
            let msg = format!("service refers to unknown pool `{pname}`");
            match closest(pname, pools.iter().map(|(p, _)| p.name.as_str())) {
                Some(s) => cx.err_help(p.span.clone(), msg, format!("did you mean `{s}`?")),
                None => cx.err_help(p.span.clone(), msg, "declare it with a [[pool]] table"),
            }
            None
        }
        (None, None) => match entry {
            Some(e) => {
                let specs: Vec<PortSpec> = e
                    .ports
                    .iter()
                    .filter(|s| {
                        explicit_protocols
                            .as_ref()
                            .is_none_or(|ps| ps.contains(&s.protocol))
                    })
                    .copied()
                    .collect();
                if specs.is_empty() {
                    cx.err(
                        f.get("protocol").map_or(f.span.clone(), |n| n.span.clone()),
                        format!(
                            "catalog service `{}` has no port with that protocol",
                            e.name
                        ),
                    );
                    return None;
                }
                Some(Placement::Fixed(specs))
            }
            None if catalog_failed => None,
            None => {
                cx.err_help(
                    name_span,
                    format!("service `{}` has no port", name.unwrap_or("?")),
                    "set `port`, `pool`, or a `catalog` entry whose default ports apply",
                );
                None
            }
        },
    }
}

/// Whether a connection to `node` reaches a socket listening on `listen` of this host, as
/// far as addresses alone tell (a wildcard listener takes every local address; loopback
/// is always local). Other local addresses are checked when the balancer starts.
pub fn reaches(node: SocketAddr, listen: SocketAddr) -> bool {
    let (n, l) = (unmapped(node), unmapped(listen));
    // `0.0.0.0` takes IPv4 only; `[::]` both (Linux's default dual stack).
    n.port() == l.port()
        && (n.ip() == l.ip()
            || (l.ip().is_unspecified() && n.ip().is_loopback() && (l.is_ipv6() || n.is_ipv4())))
}

/// Groups of one protocol must not listen on the same port of overlapping addresses, and
/// no chain of groups (a node that is another group's listener) may come back round.
fn balance_listeners(cx: &mut Cx<'_>, balance: &[(Balance, Span)]) {
    for (i, (b, span)) in balance.iter().enumerate() {
        let l = unmapped(b.listen);
        if let Some((o, _)) = balance[..i].iter().find(|(o, _)| {
            let m = unmapped(o.listen);
            o.protocol == b.protocol
                && m.port() == l.port()
                && (m.ip() == l.ip() || m.ip().is_unspecified() || l.ip().is_unspecified())
        }) {
            cx.err(
                span.clone(),
                format!(
                    "balance group `{}` listens on {}, as group `{}` does ({})",
                    b.name, b.listen, o.name, o.listen
                ),
            );
        }
    }
    // Edges: group i forwards to group j's listener. A cycle loops connections forever.
    let n = balance.len();
    let edges: Vec<Vec<usize>> = balance
        .iter()
        .map(|(b, _)| {
            (0..n)
                .filter(|&j| {
                    let (o, _) = &balance[j];
                    o.protocol == b.protocol && b.nodes().any(|(x, _)| reaches(x.addr, o.listen))
                })
                .collect()
        })
        .collect();
    if let Some(cycle) = crate::balance::find_cycle(&edges)
        && cycle.len() > 1
    {
        let names: Vec<String> = cycle
            .iter()
            .map(|&k| format!("`{}`", balance[k].0.name))
            .collect();
        cx.err_help(
            balance[cycle[0]].1.clone(),
            format!(
                "balance groups {} forward to each other's listeners in a loop",
                names.join(" → ")
            ),
            "a chain of groups must end at real backends",
        );
    }
}

fn read_balance(cx: &mut Cx<'_>, node: &Node) -> Option<(Balance, Span)> {
    let f = cx.fields(node, "[[balance]]", BALANCE_KEYS)?;
    let name_node = f.get("name");
    let name = match name_node {
        Some(n) => cx.identifier(n, "name", "balance group"),
        None => {
            cx.err(f.span.clone(), "a balance group needs a `name`");
            None
        }
    };
    let listen_node = f.get("listen");
    let listen = match listen_node {
        Some(n) => cx.socket_addr(n, "listen"),
        None => {
            cx.err(
                f.span.clone(),
                "a balance group needs `listen`, e.g. \"0.0.0.0:8873\"",
            );
            None
        }
    };
    let protocol = match f.get("protocol") {
        Some(n) => cx.choice(
            n,
            "protocol",
            &[("tcp", BalanceProtocol::Tcp), ("udp", BalanceProtocol::Udp)],
        ),
        None => Some(BalanceProtocol::Tcp),
    };
    let algorithm = match f.get("algorithm") {
        Some(n) => cx.choice(
            n,
            "algorithm",
            &[
                ("round-robin", Algorithm::RoundRobin),
                ("least-conn", Algorithm::LeastConn),
                ("source-hash", Algorithm::SourceHash),
            ],
        ),
        None => Some(Algorithm::RoundRobin),
    };
    let mut nodes = |key: &str, required: bool| -> Option<Vec<Backend>> {
        match f.get(key) {
            Some(n) => {
                let items = cx.array(n, key)?;
                if required && items.is_empty() {
                    cx.err(
                        n.span.clone(),
                        format!("`{key}` must list at least one node"),
                    );
                    return None;
                }
                let mut v = Vec::new();
                let mut ok = true;
                for it in items {
                    match read_backend(cx, it, key) {
                        Some(b) => v.push(b),
                        None => ok = false,
                    }
                }
                ok.then_some(v)
            }
            None if required => {
                cx.err(f.span.clone(), format!("a balance group needs `{key}`"));
                None
            }
            None => Some(Vec::new()),
        }
    };
    let backends = nodes("backends", true);
    let backup = nodes("backup", false);
    let health = match f.get("health") {
        Some(n) => read_health(cx, n),
        None => Some(HealthCheck::default()),
    };
    let pos = |cx: &mut Cx<'_>, key: &str| -> Option<Option<u32>> {
        match f.get(key) {
            Some(n) => Some(Some(cx.positive(n, key)?)),
            None => Some(None),
        }
    };
    let max_conn_per_source = pos(cx, "max_conn_per_source");
    let max_rate_per_source = pos(cx, "max_rate_per_source");
    let max_conn = pos(cx, "max_conn");
    // Bounded, so that no timer overflows (and a mistyped `7000d` is caught).
    let dur = |cx: &mut Cx<'_>, key: &str, default: u64, max_secs: u64| -> Option<HumanDuration> {
        match f.get(key) {
            Some(n) => {
                let d = cx.duration(n, key, true)?;
                if d.get() > std::time::Duration::from_secs(max_secs) {
                    cx.err(
                        n.span.clone(),
                        format!(
                            "`{key}` must be at most {}, found {d}",
                            HumanDuration(std::time::Duration::from_secs(max_secs))
                        ),
                    );
                    return None;
                }
                Some(d)
            }
            None => Some(HumanDuration(std::time::Duration::from_secs(default))),
        }
    };
    let queue_timeout = dur(cx, "queue_timeout", 5, 3600);
    let connect_timeout = dur(cx, "connect_timeout", 2, 3600);
    let idle_default = if protocol == Some(BalanceProtocol::Udp) {
        30
    } else {
        600
    };
    let idle_timeout = dur(cx, "idle_timeout", idle_default, 7 * 86_400);
    let drain_timeout = dur(cx, "drain_timeout", 30, 3600);
    let flag = |cx: &mut Cx<'_>, key: &str, default: bool| -> Option<bool> {
        match f.get(key) {
            Some(n) => cx.boolean(n, key),
            None => Some(default),
        }
    };
    let nodelay = flag(cx, "nodelay", true);
    let accept_proxy = flag(cx, "accept_proxy", false);
    let proxy_protocol = match f.get("proxy_protocol") {
        Some(n) => cx
            .choice(
                n,
                "proxy_protocol",
                &[("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)],
            )
            .map(Some),
        None => Some(None),
    };
    if protocol == Some(BalanceProtocol::Udp) {
        if let (Some(l), Some(n)) = (listen, listen_node)
            && l.ip().is_unspecified()
        {
            cx.err_help(
                n.span.clone(),
                format!("a UDP balance group needs one address to listen on, not {l}"),
                "answers must come from the address the client sent to: one group per local address",
            );
        }
        if let Some(h) = f.get("health")
            && let Kind::Table(entries) = &h.kind
            && entries.iter().any(|(k, _)| k.name == "http")
        {
            cx.err(
                h.span.clone(),
                "health `http` applies to TCP balance groups only (this one is `udp`)",
            );
        }
        for key in [
            "proxy_protocol",
            "accept_proxy",
            "max_conn",
            "queue_timeout",
        ] {
            if let Some(n) = f.get(key) {
                cx.err(
                    n.span.clone(),
                    format!("`{key}` applies to TCP balance groups only (this one is `udp`)"),
                );
            }
        }
    }
    let span = listen_node.map_or(f.span.clone(), |n| n.span.clone());
    let b = Balance {
        name: name?,
        listen: listen?,
        protocol: protocol?,
        algorithm: algorithm?,
        backends: backends?,
        backup: backup?,
        health: health?,
        max_conn_per_source: max_conn_per_source?,
        max_rate_per_source: max_rate_per_source?,
        max_conn: max_conn?,
        queue_timeout: queue_timeout?,
        connect_timeout: connect_timeout?,
        idle_timeout: idle_timeout?,
        drain_timeout: drain_timeout?,
        nodelay: nodelay?,
        proxy_protocol: proxy_protocol?,
        accept_proxy: accept_proxy?,
    };
    // A node that is the balancer itself would send every connection round in a loop.
    let mut seen = std::collections::BTreeSet::new();
    let items = |key: &str| match f.get(key).map(|n| &n.kind) {
        Some(Kind::Array(v)) => v.as_slice(),
        _ => &[],
    };
    for ((node, _), item) in b
        .nodes()
        .zip(items("backends").iter().chain(items("backup")))
    {
        let a = node.addr;
        let bad = match unmapped(a).ip() {
            std::net::IpAddr::V4(v4) => {
                v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
            }
            std::net::IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        };
        if bad {
            cx.err_help(
                item.span.clone(),
                format!("node {a} is not one host's address"),
                "a node is the unicast address a backend listens on (0.0.0.0 and :: mean this host; multicast and broadcast are many)",
            );
            return None;
        }
        if reaches(a, b.listen) {
            cx.err_help(
                item.span.clone(),
                format!("node {a} is the balancer's own `listen` ({})", b.listen),
                "a balance group forwards to other addresses or ports; this would loop",
            );
            return None;
        }
        if !seen.insert(a) {
            cx.err(item.span.clone(), format!("node {a} is listed twice"));
            return None;
        }
    }
    if b.protocol == BalanceProtocol::Udp && b.nodes().any(|(n, _)| n.max_conn.is_some()) {
        cx.err(
            f.get("backends").map_or(span.clone(), |n| n.span.clone()),
            "a node's `max_conn` applies to TCP balance groups only (this one is `udp`)",
        );
        return None;
    }
    if b.health.status.is_some() && b.health.http.is_none() {
        cx.err(
            f.get("health").map_or(span.clone(), |n| n.span.clone()),
            "health `status` needs `http` (the path to GET)",
        );
        return None;
    }
    Some((b, span))
}

/// A node: `"ADDR:PORT"` or `{ addr = "ADDR:PORT", weight = 2, max_conn = 100 }`.
fn read_backend(cx: &mut Cx<'_>, node: &Node, key: &str) -> Option<Backend> {
    if let Kind::Str(_) = node.kind {
        return Some(Backend {
            addr: cx.socket_addr(node, key)?,
            weight: 1,
            max_conn: None,
        });
    }
    let f = cx.fields(node, "a balance node", BACKEND_KEYS)?;
    let addr = match f.get("addr") {
        Some(n) => cx.socket_addr(n, "addr"),
        None => {
            cx.err(
                f.span.clone(),
                "a balance node needs `addr`, e.g. { addr = \"10.0.0.11:873\", weight = 2 }",
            );
            None
        }
    };
    let weight = match f.get("weight") {
        Some(n) => match cx.positive(n, "weight") {
            Some(w) if w > 1000 => {
                cx.err(
                    n.span.clone(),
                    format!("`weight` must be at most 1000, found {w}"),
                );
                None
            }
            w => w,
        },
        None => Some(1),
    };
    let max_conn = match f.get("max_conn") {
        Some(n) => Some(Some(cx.positive(n, "max_conn")?)),
        None => Some(None),
    };
    Some(Backend {
        addr: addr?,
        weight: weight?,
        max_conn: max_conn?,
    })
}

fn read_health(cx: &mut Cx<'_>, node: &Node) -> Option<HealthCheck> {
    let f = cx.fields(node, "health", HEALTH_KEYS)?;
    let mut h = HealthCheck::default();
    let mut ok = true;
    if let Some(n) = f.get("interval") {
        match cx.duration(n, "interval", true) {
            Some(d) if d.get() > std::time::Duration::from_secs(3600) => {
                cx.err(
                    n.span.clone(),
                    format!("health `interval` must be at most 1h, found {d}"),
                );
                ok = false;
            }
            Some(d) if d.get() < std::time::Duration::from_millis(10) => {
                cx.err(
                    n.span.clone(),
                    format!("health `interval` must be at least 10ms, found {d}"),
                );
                ok = false;
            }
            Some(d) => h.interval = d,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("timeout") {
        match cx.duration(n, "timeout", true) {
            Some(d) => h.timeout = d,
            None => ok = false,
        }
    }
    for (key, slot) in [("fall", &mut h.fall), ("rise", &mut h.rise)] {
        if let Some(n) = f.get(key) {
            match cx.positive(n, key) {
                Some(v) => *slot = v,
                None => ok = false,
            }
        }
    }
    // `send` and `expect` are bytes on the wire: TOML escapes (`\r\n`) are how they are
    // written, so control characters are allowed here (and only here).
    for (key, slot) in [("send", &mut h.send), ("expect", &mut h.expect)] {
        if let Some(n) = f.get(key) {
            match &n.kind {
                Kind::Str(s) if s.is_empty() => {
                    cx.err(n.span.clone(), format!("`{key}` must not be empty"));
                    ok = false;
                }
                Kind::Str(s) if s.len() > 1024 => {
                    cx.err(
                        n.span.clone(),
                        format!("`{key}` must be at most 1024 bytes"),
                    );
                    ok = false;
                }
                Kind::Str(s) => *slot = Some(s.clone()),
                _ => {
                    cx.mismatch(n, key, "a string");
                    ok = false;
                }
            }
        }
    }
    if let Some(n) = f.get("http") {
        match cx.nonempty_string(n, "http") {
            Some(p) if !p.starts_with('/') || p.bytes().any(|b| !b.is_ascii_graphic()) => {
                cx.err(
                    n.span.clone(),
                    format!(
                        "`http` must be a path starting with `/` of visible ASCII, found `{}`",
                        p.escape_debug()
                    ),
                );
                ok = false;
            }
            Some(p) => h.http = Some(p),
            None => ok = false,
        }
    }
    if let Some(n) = f.get("status") {
        match cx.positive(n, "status") {
            Some(v) if (100..=599).contains(&v) => h.status = Some(v as u16),
            Some(v) => {
                cx.err(
                    n.span.clone(),
                    format!("`status` must be an HTTP status (100-599), found {v}"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if ok && h.http.is_some() && (h.send.is_some() || h.expect.is_some()) {
        cx.err(
            f.span.clone(),
            "health `http` is a check of its own: drop `send`/`expect`, or `http`",
        );
        ok = false;
    }
    if ok && h.send.is_some() && h.expect.is_none() {
        let span = f.get("send").map_or(f.span.clone(), |n| n.span.clone());
        cx.err_help(
            span,
            "health `send` needs `expect` (what the answer must contain)",
            "e.g. send = \"PING\\r\\n\", expect = \"+PONG\"",
        );
        ok = false;
    }
    if ok && h.timeout > h.interval {
        let span = f.get("timeout").map_or(f.span.clone(), |n| n.span.clone());
        cx.err(
            span,
            format!(
                "health `timeout` ({}) is longer than `interval` ({})",
                h.timeout, h.interval
            ),
        );
        ok = false;
    }
    ok.then_some(h)
}

fn cross_check(
    cx: &mut Cx<'_>,
    pools: &[(Pool, PoolSpans)],
    services: &[(Service, ServiceSpans)],
    balance: &[(Balance, Span)],
    compliance: &Compliance,
    zones: &BTreeMap<ZoneKind, Zone>,
) {
    // Every rule below is O(n log n) (plus the errors it reports): a policy of 100,000
    // services validates in well under a second. The messages and the order they are
    // raised in are those of the pairwise definitions the comments give.

    // Unique names: an error at every declaration after the first.
    let mut seen = std::collections::HashSet::new();
    for (p, ps) in pools {
        if !seen.insert(p.name.as_str()) {
            cx.err(
                ps.name.clone(),
                format!("pool `{}` is declared twice", p.name),
            );
        }
    }
    seen.clear();
    for (s, ss) in services {
        if !seen.insert(s.name.as_str()) {
            cx.err(
                ss.name.clone(),
                format!("service `{}` is declared twice", s.name),
            );
        }
    }
    seen.clear();
    for (b, span) in balance {
        if !seen.insert(b.name.as_str()) {
            cx.err(
                span.clone(),
                format!("balance group `{}` is declared twice", b.name),
            );
        }
    }
    balance_listeners(cx, balance);

    // Pools must not overlap within a protocol: pool i against every earlier pool q.
    let pool_specs: Vec<PortSpec> = pools
        .iter()
        .map(|(p, _)| PortSpec {
            range: p.range,
            protocol: p.protocol,
        })
        .collect();
    for (i, earlier) in overlapping_pairs(&pool_specs) {
        let ((p, ps), (q, _)) = (&pools[i], &pools[earlier]);
        cx.err(
            ps.range.clone(),
            format!(
                "pool `{}` ({}/{}) overlaps pool `{}` ({}/{})",
                p.name, p.range, p.protocol, q.name, q.range, q.protocol
            ),
        );
    }

    // Fixed ports: one owner each (the first earlier service that claims a port is
    // named), and never inside a pool's dynamic band.
    let listeners: Vec<PortSpec> = balance
        .iter()
        .filter_map(|(b, _)| Port::new(b.listen.port()))
        .map(|port| PortSpec {
            range: PortRange::single(port),
            protocol: Protocol::Tcp,
        })
        .collect();
    let claims = FirstClaim::new(services.iter().map(|(s, _)| s.fixed_ports()), &listeners);
    let pool_index = RangeIndex::new(&pool_specs);
    for (i, (s, ss)) in services.iter().enumerate() {
        let at = ss
            .port
            .clone()
            .or(ss.catalog.clone())
            .unwrap_or(ss.header.clone());
        for spec in s.fixed_ports() {
            if let Some(t) = claims.first(*spec).filter(|&t| t < i) {
                cx.err_help(
                    at.clone(),
                    format!(
                        "port {spec} is already claimed by service `{}`",
                        services[t].0.name
                    ),
                    "two services cannot own the same port and protocol",
                );
            }
            for j in pool_index.overlapping(*spec) {
                let p = &pools[j].0;
                let pinned = p.static_band.is_some_and(|b| b.covers(spec.range));
                if !pinned {
                    let help = match p.static_band {
                        Some(b) => format!(
                            "move it out of {}, or into the pool's static band {b}",
                            p.range
                        ),
                        None => format!(
                            "move it out of {}, or give the pool a `static` band",
                            p.range
                        ),
                    };
                    cx.err_help(
                        at.clone(),
                        format!(
                            "fixed port {spec} of service `{}` lies inside pool `{}`",
                            s.name, p.name
                        ),
                        help,
                    );
                }
            }
        }
    }

    // Balancer listeners are ports too: the first service claiming one is named.
    for (b, span) in balance {
        let Some(port) = Port::new(b.listen.port()) else {
            continue;
        };
        let spec = PortSpec {
            range: PortRange::single(port),
            protocol: Protocol::Tcp,
        };
        if let Some(t) = claims.first(spec) {
            cx.err(
                span.clone(),
                format!(
                    "balance group `{}` listens on {spec}, already claimed by service `{}`",
                    b.name, services[t].0.name
                ),
            );
        }
    }

    // Compliance settings against the services.
    let forbid: std::collections::HashSet<&str> =
        compliance.forbid.iter().map(String::as_str).collect();
    let require_tls: std::collections::HashSet<&str> =
        compliance.require_tls.iter().map(String::as_str).collect();
    for (s, ss) in services {
        let Some(cat) = &s.catalog else { continue };
        let at = ss.catalog.clone().unwrap_or(ss.header.clone());
        if forbid.contains(cat.as_str()) {
            cx.err_help(
                at.clone(),
                format!(
                    "service `{}` is `{cat}`, which [compliance] forbid lists",
                    s.name
                ),
                "remove the service or take it out of `forbid`",
            );
        }
        if require_tls.contains(cat.as_str()) && s.tls != TlsRequirement::Required {
            cx.err_help(
                ss.tls.clone().unwrap_or(at),
                format!(
                    "service `{}` is `{cat}`, which [compliance] require_tls lists, but its tls is \"{}\"",
                    s.name,
                    s.tls.as_str()
                ),
                "set tls = \"required\"",
            );
        }
    }
    for (s, ss) in services {
        for p in &s.protocols {
            if !compliance.protocols.contains(p) {
                cx.err(
                    ss.port
                        .clone()
                        .or(ss.pool.clone())
                        .unwrap_or(ss.header.clone()),
                    format!(
                        "service `{}` uses {p}, which [compliance] protocols does not allow",
                        s.name
                    ),
                );
            }
        }
        if s.zone == ZoneKind::Internal && !zones.contains_key(&ZoneKind::Internal) {
            cx.err_help(
                ss.zone.clone(),
                format!("service `{}` is in zone `internal`, which [zones] does not define", s.name),
                "add `internal = { interfaces = [\"eth1\"], cidrs = [\"10.0.0.0/8\"] }` under [zones]",
            );
        }
    }
}

/// A service that claims a management port must not admit more than `management.from`:
/// the management path is always admitted from its own networks, and a service on the
/// same port with wider sources would silently widen it.
fn management_claims(
    cx: &mut Cx<'_>,
    host: &Host,
    services: &[(Service, ServiceSpans)],
    balance: &[(Balance, Span)],
    zones: &BTreeMap<ZoneKind, Zone>,
) {
    let mgmt = &host.management;
    let wider_than_mgmt = |sources: &AddrSet| -> Vec<String> {
        sources
            .cidrs()
            .iter()
            .filter(|c| !mgmt.from.cidrs().iter().any(|m| m.covers(**c)))
            .map(|c| c.to_string())
            .collect()
    };
    // A balancer listener is admitted from anywhere.
    for (b, span) in balance {
        let Some(port) = Port::new(b.listen.port()) else {
            continue;
        };
        let spec = PortSpec {
            protocol: Protocol::Tcp,
            range: PortRange::single(port),
        };
        if !mgmt.ports.iter().any(|m| m.overlaps(spec)) {
            continue;
        }
        let wider = wider_than_mgmt(&AddrSet::any());
        if wider.is_empty() {
            continue;
        }
        cx.err_help(
            span.clone(),
            format!(
                "balance group `{}` listens on management port {spec}, which it would admit from {}, beyond management `from`",
                b.name,
                wider.join(", ")
            ),
            "a balancer listener is open to every source; move it to another port",
        );
    }
    for (s, ss) in services {
        let Some(claimed) = s
            .fixed_ports()
            .iter()
            .find(|p| mgmt.ports.iter().any(|m| m.overlaps(**p)))
        else {
            continue;
        };
        let Some(sources) = super::service_sources(s, zones) else {
            continue;
        };
        let wider = wider_than_mgmt(&sources);
        if wider.is_empty() {
            continue;
        }
        let at = ss
            .port
            .clone()
            .or(ss.catalog.clone())
            .unwrap_or(ss.header.clone());
        cx.err_help(
            at,
            format!(
                "service `{}` claims management port {claimed} and admits {}, beyond management `from`",
                s.name,
                wider.join(", ")
            ),
            "the management path is admitted from [host] management.from; narrow the service's `allow_from` to those networks, or remove the service",
        );
    }
}

/// Every pair of overlapping specs as (later index, earlier index), sorted: an interval
/// sweep by range start, O(n log n) plus the pairs found.
fn overlapping_pairs(specs: &[PortSpec]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| (specs[i].protocol, specs[i].range.start()));
    let mut pairs = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut protocol = None;
    for i in order {
        let s = specs[i];
        if protocol != Some(s.protocol) {
            open.clear();
            protocol = Some(s.protocol);
        }
        // What is still open at this start overlaps it (its start is not later).
        open.retain(|&o| specs[o].range.end() >= s.range.start());
        pairs.extend(open.iter().map(|&o| (i.max(o), i.min(o))));
        open.push(i);
    }
    pairs.sort_unstable();
    pairs
}

/// Ranges sorted by start per protocol, with the running largest end, answering "which
/// ranges overlap this spec" without a pass over all of them.
struct RangeIndex {
    /// (protocol, start, end, index), sorted.
    sorted: Vec<(Protocol, Port, Port, usize)>,
    /// The largest end among `sorted[..=k]` of the same protocol.
    max_end: Vec<Port>,
}

impl RangeIndex {
    fn new(specs: &[PortSpec]) -> RangeIndex {
        let mut sorted: Vec<(Protocol, Port, Port, usize)> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.protocol, s.range.start(), s.range.end(), i))
            .collect();
        sorted.sort_unstable();
        let mut max_end = Vec::with_capacity(sorted.len());
        for (k, &(protocol, _, end, _)) in sorted.iter().enumerate() {
            let prev = k
                .checked_sub(1)
                .filter(|&p| sorted[p].0 == protocol)
                .map(|p| max_end[p]);
            max_end.push(prev.map_or(end, |m: Port| m.max(end)));
        }
        RangeIndex { sorted, max_end }
    }

    /// Indices of the ranges overlapping `spec`, ascending.
    fn overlapping(&self, spec: PortSpec) -> Vec<usize> {
        let (lo, hi) = (spec.range.start(), spec.range.end());
        // Ranges of this protocol starting at or before `hi`.
        let first = self.sorted.partition_point(|e| e.0 < spec.protocol);
        let past = self
            .sorted
            .partition_point(|e| (e.0, e.1) <= (spec.protocol, hi));
        let mut out = Vec::new();
        for k in (first..past).rev() {
            if self.max_end[k] < lo {
                break;
            }
            if self.sorted[k].2 >= lo {
                out.push(self.sorted[k].3);
            }
        }
        out.sort_unstable();
        out
    }
}

/// The lowest-numbered owner of every port, per protocol: a segment tree over the
/// compressed range ends where each owner paints its ranges with its number (keeping the
/// minimum) and a query returns the lowest number painted anywhere in a range. The
/// points are the ends of every painted and every queried range, so two ranges overlap
/// exactly when they share a point (the later of their starts); the tree has O(n)
/// leaves and both operations cost O(log n).
struct FirstClaim {
    trees: [MinTree; 2],
}

impl FirstClaim {
    /// Owner `i` holds the specs `owners[i]`; `queries` are the specs that will be asked
    /// about besides the owners' own.
    fn new<'a>(
        owners: impl Iterator<Item = &'a [PortSpec]> + Clone,
        queries: &'a [PortSpec],
    ) -> FirstClaim {
        let tree = |protocol: Protocol| {
            let mut t = MinTree::new(
                owners
                    .clone()
                    .flatten()
                    .chain(queries)
                    .filter(|s| s.protocol == protocol)
                    .flat_map(|s| [s.range.start().get(), s.range.end().get()])
                    .collect(),
            );
            for (i, specs) in owners.clone().enumerate() {
                for s in specs.iter().filter(|s| s.protocol == protocol) {
                    t.paint(s.range, i);
                }
            }
            t
        };
        FirstClaim {
            trees: [tree(Protocol::Tcp), tree(Protocol::Udp)],
        }
    }

    /// The lowest owner holding a port of `spec` (an owner's spec or one of `queries`).
    fn first(&self, spec: PortSpec) -> Option<usize> {
        let t = match spec.protocol {
            Protocol::Tcp => &self.trees[0],
            Protocol::Udp => &self.trees[1],
        };
        t.lowest(spec.range)
    }
}

/// Range "keep the minimum" updates and range minimum queries over compressed points.
struct MinTree {
    points: Vec<u16>,
    leaves: usize,
    /// The minimum painted over a node's whole span.
    tag: Vec<usize>,
    /// The minimum painted anywhere under a node.
    low: Vec<usize>,
}

impl MinTree {
    fn new(mut points: Vec<u16>) -> MinTree {
        points.sort_unstable();
        points.dedup();
        let leaves = points.len().next_power_of_two();
        MinTree {
            points,
            leaves,
            tag: vec![usize::MAX; 2 * leaves],
            low: vec![usize::MAX; 2 * leaves],
        }
    }

    /// The compressed leaves covered by `r`, if any.
    fn leaves_of(&self, r: PortRange) -> Option<(usize, usize)> {
        let l = self.points.partition_point(|&p| p < r.start().get());
        let h = self.points.partition_point(|&p| p <= r.end().get());
        (l < h).then(|| (l, h - 1))
    }

    fn paint(&mut self, r: PortRange, v: usize) {
        if let Some((l, h)) = self.leaves_of(r) {
            self.paint_node(1, 0, self.leaves - 1, l, h, v);
        }
    }

    fn paint_node(&mut self, node: usize, nl: usize, nr: usize, l: usize, h: usize, v: usize) {
        if h < nl || nr < l {
            return;
        }
        if l <= nl && nr <= h {
            self.tag[node] = self.tag[node].min(v);
            self.low[node] = self.low[node].min(v);
            return;
        }
        let mid = (nl + nr) / 2;
        self.paint_node(2 * node, nl, mid, l, h, v);
        self.paint_node(2 * node + 1, mid + 1, nr, l, h, v);
        self.low[node] = self.tag[node]
            .min(self.low[2 * node])
            .min(self.low[2 * node + 1]);
    }

    fn lowest(&self, r: PortRange) -> Option<usize> {
        let (l, h) = self.leaves_of(r)?;
        let v = self.lowest_node(1, 0, self.leaves - 1, l, h);
        (v != usize::MAX).then_some(v)
    }

    fn lowest_node(&self, node: usize, nl: usize, nr: usize, l: usize, h: usize) -> usize {
        if h < nl || nr < l {
            return usize::MAX;
        }
        if l <= nl && nr <= h {
            return self.low[node];
        }
        let mid = (nl + nr) / 2;
        self.tag[node]
            .min(self.lowest_node(2 * node, nl, mid, l, h))
            .min(self.lowest_node(2 * node + 1, mid + 1, nr, l, h))
    }
}
