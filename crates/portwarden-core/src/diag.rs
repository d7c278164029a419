//! Diagnostics that point into a source text: `file:line:col: message` with a caret snippet.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// A byte range in a source text.
pub type Span = Range<usize>;

/// One problem found in a source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where, in bytes.
    pub span: Span,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without help.
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// A diagnostic resolved to a line and column of a named file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    /// File name as the user gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The caret snippet (without the first line).
    #[serde(skip)]
    pub snippet: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// 1-based (line, column) of a byte offset; the column counts characters.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Resolves a diagnostic against its source and renders its snippet:
///
/// ```text
///    |
/// 14 | port = 70000
///    |        ^^^^^
///    = help: ...
/// ```
pub fn locate(file: &str, src: &str, d: &Diagnostic) -> Located {
    let (line, col) = line_col(src, d.span.start);
    let line_start = src[..floor_char_boundary(src, d.span.start.min(src.len()))]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line_text = src[line_start..].lines().next().unwrap_or("");
    let end = floor_char_boundary(src, d.span.end.min(src.len()));
    let start = floor_char_boundary(src, d.span.start.min(src.len()));
    let span_chars = src[start..end.max(start)]
        .lines()
        .next()
        .map_or(0, |s| s.chars().count());
    let remaining = line_text.chars().count().saturating_sub(col - 1);
    let carets = span_chars.clamp(1, remaining.max(1));
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let mut snippet = format!(
        "{pad} |\n{line} | {line_text}\n{pad} | {}{}",
        " ".repeat(col - 1),
        "^".repeat(carets)
    );
    if let Some(h) = &d.help {
        snippet.push_str(&format!("\n{pad} = help: {h}"));
    }
    Located {
        file: file.to_string(),
        line,
        col,
        message: d.message.clone(),
        help: d.help.clone(),
        snippet,
    }
}

/// Every problem found in one file, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceErrors {
    /// The problems, sorted by position.
    pub errors: Vec<Located>,
}

impl SourceErrors {
    /// Resolves and sorts raw diagnostics.
    pub fn new(file: &str, src: &str, mut diags: Vec<Diagnostic>) -> SourceErrors {
        diags.sort_by_key(|d| (d.span.start, d.span.end));
        diags.dedup();
        SourceErrors {
            errors: diags.iter().map(|d| locate(file, src, d)).collect(),
        }
    }
}

impl fmt::Display for SourceErrors {
    /// One block per error: the `file:line:col: message` line, then its snippet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}\n{}", e.snippet)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let src = "a = 1\nport = 70000\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 13), (2, 8));
        assert_eq!(line_col("é = 1\nx", 7), (2, 1));
    }

    #[test]
    fn renders_a_caret_under_the_span() {
        let src = "version = 1\nport = 70000\n";
        let d =
            Diagnostic::new(19..24, "port 70000 is out of range 1-65535").with_help("pick 1-65535");
        let l = locate("policy.toml", src, &d);
        assert_eq!(
            l.to_string(),
            "policy.toml:2:8: port 70000 is out of range 1-65535"
        );
        assert_eq!(
            l.snippet,
            "  |\n2 | port = 70000\n  |        ^^^^^\n  = help: pick 1-65535"
        );
    }
}
