//! Property test: random mutations of valid policies never panic the parser or the
//! validator, and every error they produce points inside the file.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests read their fixtures

use portwarden_core::findings::policy_findings;
use portwarden_core::{Catalog, Policy};
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    include_str!("../../../examples/mirror-01.toml"),
    include_str!("../../../examples/db-replica.toml"),
    include_str!("../data/starter.toml"),
    include_str!("../data/baseline.toml"),
];

const TOKENS: &[&str] = &[
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "\"",
    "'",
    ",",
    ".",
    "\n",
    "#",
    " ",
    "0",
    "-1",
    "70000",
    "65535",
    "1-0",
    "/",
    "tcp",
    "udp",
    "sctp",
    "\"22/tcp\"",
    "true",
    "1e400",
    "\"0s\"",
    "\"::/0\"",
    "\"10.0.0.1/8\"",
    "é",
    "\\u0000",
    "port",
    "pool",
    "zone",
    "service",
    "catalog",
    "static",
    "range",
    "[[service]]\n",
    "[host]\n",
    "version = 2\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    SwapLines { a: usize, b: usize },
    DuplicateLine { a: usize },
    ReplaceNumber { nth: usize, value: i64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|a| Mutation::DuplicateLine { a }),
        (any::<usize>(), any::<i64>())
            .prop_map(|(nth, value)| Mutation::ReplaceNumber { nth, value }),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, m: &Mutation) -> String {
    match *m {
        Mutation::Delete { at, len } => {
            let a = boundary(&s, at);
            let b = boundary(&s, a + len.min(s.len() - a));
            s.replace_range(a..b.max(a), "");
            s
        }
        Mutation::Insert { at, token } => {
            let a = boundary(&s, at);
            s.insert_str(a, TOKENS[token]);
            s
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(a % n, b % n);
            }
            lines.join("\n")
        }
        Mutation::DuplicateLine { a } => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let i = a % lines.len();
                lines.insert(i, lines[i]);
            }
            lines.join("\n")
        }
        Mutation::ReplaceNumber { nth, value } => {
            let starts: Vec<usize> = s
                .char_indices()
                .filter(|(i, c)| {
                    c.is_ascii_digit() && (*i == 0 || !s.as_bytes()[i - 1].is_ascii_digit())
                })
                .map(|(i, _)| i)
                .collect();
            if starts.is_empty() {
                return s;
            }
            let a = starts[nth % starts.len()];
            let b = s[a..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(s.len(), |e| a + e);
            s.replace_range(a..b, &value.to_string());
            s
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_policies_never_panic(
        seed in 0..SEEDS.len(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut text = SEEDS[seed].to_string();
        for m in &muts {
            text = apply(text, m);
        }
        match Policy::parse("m.toml", &text, Catalog::builtin()) {
            Ok(p) => {
                let _ = policy_findings(&p, Catalog::builtin());
            }
            Err(e) => {
                prop_assert!(!e.errors.is_empty());
                let lines = text.lines().count().max(1) + 1;
                for l in &e.errors {
                    prop_assert!(l.line >= 1 && l.line <= lines, "{l} outside file");
                    prop_assert!(l.col >= 1);
                    prop_assert!(!l.message.is_empty());
                    let _ = e.to_string();
                }
            }
        }
    }
}
