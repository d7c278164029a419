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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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

/// A character as a terminal should show it: control characters (C0, DEL, C1) as
/// `\x1b`-style escapes, everything else as itself. The one escaping rule for text meant
/// for a terminal; the binary's output module applies it to everything it prints.
pub fn show_char(c: char, out: &mut String) {
    if !is_unsafe_char(c) {
        out.push(c);
    } else if u32::from(c) <= 0xff {
        out.push_str(&format!("\\x{:02x}", u32::from(c)));
    } else {
        out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
    }
}

/// Characters never written raw to a terminal or a document: control characters, the
/// format characters that reorder or hide text (bidi overrides and isolates, zero-width
/// marks, the BOM), and U+FFFE/U+FFFF, which XML forbids.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{fffe}'
                | '\u{ffff}'
        )
}

/// At most `max` characters of `s`, without the [unsafe](is_unsafe_char) ones: for
/// text from elsewhere (a peer's banner, a database file, the environment) kept as a
/// label rather than shown escaped.
pub fn strip_unsafe(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !is_unsafe_char(*c))
        .take(max)
        .collect()
}

/// `s` with every control character escaped as [`show_char`] does, except those in
/// `keep` (newlines, for multi-line text).
pub fn escape_controls<'a>(s: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    // Printable ASCII (the socket table's 40,000 rows) needs no decoding to be judged.
    let printable = |b: u8| (0x20..0x7f).contains(&b) || keep.contains(&char::from(b));
    if s.bytes().all(|b| b < 0x80 && printable(b)) {
        return std::borrow::Cow::Borrowed(s);
    }
    if !s.chars().any(|c| is_unsafe_char(c) && !keep.contains(&c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if keep.contains(&c) {
            out.push(c);
        } else {
            show_char(c, &mut out);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Characters of a snippet line shown before and after the start of a span; longer
/// lines are cut with `…` so a huge one-line file cannot make every snippet huge.
const SNIPPET_BEFORE: usize = 80;
const SNIPPET_AFTER: usize = 120;

/// Where each line of a source starts, to resolve many diagnostics without rescanning.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(src: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line of a byte offset, with the offsets where that line starts and ends
    /// (the end excludes the newline and a carriage return before it).
    fn line(&self, src: &str, offset: usize) -> (usize, usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let mut end = self.starts.get(line).map_or(src.len(), |&s| s - 1);
        if end > start && src.as_bytes()[end - 1] == b'\r' && end < src.len() {
            end -= 1;
        }
        (line, start, end)
    }
}

/// Resolves a diagnostic against its source and renders its snippet:
///
/// ```text
///    |
/// 14 | port = 70000
///    |        ^^^^^
///    = help: ...
/// ```
///
/// Control characters in the line are shown escaped (`\x1b`; a tab as one space) with
/// the carets under the escaped text.
pub fn locate(file: &str, src: &str, d: &Diagnostic) -> Located {
    locate_in(&LineIndex::new(src), &mut Cursor::default(), file, src, d)
}

/// The column counted so far on one line, so diagnostics in source order cost the
/// characters between them rather than the whole prefix of their line each.
#[derive(Default)]
struct Cursor {
    line_start: usize,
    offset: usize,
    col: usize,
}

fn locate_in(
    lines: &LineIndex,
    cur: &mut Cursor,
    file: &str,
    src: &str,
    d: &Diagnostic,
) -> Located {
    let start = floor_char_boundary(src, d.span.start.min(src.len()));
    let end = floor_char_boundary(src, d.span.end.min(src.len())).max(start);
    let (line, line_start, line_end) = lines.line(src, start);
    let start = start.min(line_end.max(line_start));
    if cur.line_start != line_start || cur.offset > start || cur.col == 0 {
        *cur = Cursor {
            line_start,
            offset: line_start,
            col: 1,
        };
    }
    cur.col += src[cur.offset..start].chars().count();
    cur.offset = start;
    let col = cur.col;

    // The shown part of the line: up to SNIPPET_BEFORE characters before the span's
    // start and SNIPPET_AFTER from it.
    let before: Vec<char> = src[line_start..start]
        .chars()
        .rev()
        .take(SNIPPET_BEFORE + 1)
        .collect();
    let after: Vec<char> = src[start..line_end]
        .chars()
        .take(SNIPPET_AFTER + 1)
        .collect();
    let mut shown = String::new();
    if before.len() > SNIPPET_BEFORE {
        shown.push('…');
    }
    for &c in before.iter().take(SNIPPET_BEFORE).rev() {
        push_shown(c, &mut shown);
    }
    let caret_col = shown.chars().count();
    let span_end = end.min(line_end);
    let span_chars = src[start..span_end.max(start)].chars().count();
    let mut carets = 0;
    for (i, &c) in after.iter().take(SNIPPET_AFTER).enumerate() {
        let was = shown.chars().count();
        push_shown(c, &mut shown);
        if i < span_chars {
            carets += shown.chars().count() - was;
        }
    }
    if after.len() > SNIPPET_AFTER {
        shown.push('…');
    }
    let carets = carets.max(1);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let mut snippet = format!(
        "{pad} |\n{line} | {shown}\n{pad} | {}{}",
        " ".repeat(caret_col),
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

/// One snippet character: a tab as a space (so carets line up), other control
/// characters escaped.
fn push_shown(c: char, out: &mut String) {
    if c == '\t' {
        out.push(' ');
    } else {
        show_char(c, out);
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
        let lines = LineIndex::new(src);
        let mut cur = Cursor::default();
        SourceErrors {
            errors: diags
                .iter()
                .map(|d| locate_in(&lines, &mut cur, file, src, d))
                .collect(),
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

    /// Issue 10, item 14: a snippet never echoes raw ESC or BEL, and its carets stay
    /// under the span once the line is escaped.
    #[test]
    fn r_diag_snippet_escapes_controls() {
        let src = "version = 1\nname = \"\x1b[2J\x07\" ; port = 70000\n";
        let at = src.find("70000").unwrap();
        let l = locate("p.toml", src, &Diagnostic::new(at..at + 5, "bad"));
        assert_eq!(l.col, 25, "the column counts characters of the file");
        assert_eq!(
            l.snippet,
            "  |\n2 | name = \"\\x1b[2J\\x07\" ; port = 70000\n  | ".to_string()
                + &" ".repeat(30)
                + "^^^^^"
        );
        assert!(!l.snippet.chars().any(|c| c.is_control() && c != '\n'));
        // Carets under an escaped character cover its whole escape; a tab is one space.
        let src = "\tkey = \"a\x1bb\"\n";
        let at = src.find('\x1b').unwrap();
        let l = locate("p.toml", src, &Diagnostic::new(at..at + 1, "bad"));
        assert_eq!(l.snippet, "  |\n1 |  key = \"a\\x1bb\"\n  |          ^^^^");
        // A C1 control (U+009B, the one-byte CSI) is escaped too.
        assert_eq!(escape_controls("a\u{9b}b\n", &['\n']), "a\\x9bb\n");
    }

    #[test]
    fn a_huge_line_is_cut_around_the_span() {
        let src = format!("x = [{}70000]\n", "1, ".repeat(100_000));
        let at = src.find("70000").unwrap();
        let l = locate("p.toml", &src, &Diagnostic::new(at..at + 5, "bad"));
        assert_eq!((l.line, l.col), (1, at + 1));
        let shown = l.snippet.lines().nth(1).unwrap();
        assert!(
            shown.starts_with("1 | …") && shown.ends_with("70000]"),
            "{shown}"
        );
        assert!(shown.chars().count() < 100, "{shown}");
        let caret = l.snippet.lines().nth(2).unwrap();
        assert_eq!(
            caret.find('^'),
            shown.find("70000").map(|b| shown[..b].chars().count())
        );
    }
}
