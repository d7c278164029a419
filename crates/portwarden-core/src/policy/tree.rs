//! A TOML document as a small tree whose every key and value carries its byte span.

use toml_edit::{Document, Item, Table, Value};

use crate::diag::{Diagnostic, Span};

/// A key with its position.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub span: Span,
}

/// A value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub span: Span,
    pub kind: Kind,
}

/// The shape of a value.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

impl Kind {
    /// The TOML type name, for "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// Parses TOML text; a syntax error is one diagnostic at its position.
pub(crate) fn parse(src: &str) -> Result<Node, Diagnostic> {
    let doc = Document::parse(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().trim_end_matches('.').to_string();
        let first = msg.lines().next().unwrap_or("invalid TOML").to_string();
        Diagnostic::new(span, format!("invalid TOML: {first}"))
    })?;
    Ok(table(doc.as_table(), 0..0))
}

fn table(t: &Table, fallback: Span) -> Node {
    let span = t.span().unwrap_or(fallback);
    let mut entries = Vec::new();
    for (name, item) in t.iter() {
        let key_span = t
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .unwrap_or_else(|| span.clone());
        let key = Key {
            name: name.to_string(),
            span: key_span.clone(),
        };
        entries.push((key, item_node(item, key_span)));
    }
    Node {
        span,
        kind: Kind::Table(entries),
    }
}

fn item_node(item: &Item, fallback: Span) -> Node {
    match item {
        Item::None => Node {
            span: fallback,
            kind: Kind::Table(Vec::new()),
        },
        Item::Value(v) => value(v, fallback),
        Item::Table(t) => table(t, fallback),
        Item::ArrayOfTables(a) => {
            let span = a.span().unwrap_or_else(|| fallback.clone());
            let items = a.iter().map(|t| table(t, fallback.clone())).collect();
            Node {
                span,
                kind: Kind::Array(items),
            }
        }
    }
}

fn value(v: &Value, fallback: Span) -> Node {
    let span = v.span().unwrap_or_else(|| fallback.clone());
    let kind = match v {
        Value::String(s) => Kind::Str(s.value().clone()),
        Value::Integer(i) => Kind::Int(*i.value()),
        Value::Float(f) => Kind::Float(*f.value()),
        Value::Boolean(b) => Kind::Bool(*b.value()),
        Value::Datetime(_) => Kind::Datetime,
        Value::Array(a) => Kind::Array(a.iter().map(|x| value(x, span.clone())).collect()),
        Value::InlineTable(t) => {
            let mut entries = Vec::new();
            for (name, x) in t.iter() {
                let key_span = t
                    .get_key_value(name)
                    .and_then(|(k, _)| k.span())
                    .unwrap_or_else(|| span.clone());
                entries.push((
                    Key {
                        name: name.to_string(),
                        span: key_span.clone(),
                    },
                    value(x, key_span),
                ));
            }
            Kind::Table(entries)
        }
    };
    Node { span, kind }
}
