//! The printer: the only writer of command results. A command hands it one `api`
//! document; `--json` serialises exactly that document, the table is the document's
//! [`Render`], and `-q` its [`Render::quiet`] form. Generic over the writer, so every
//! renderer is tested into a `Vec<u8>`.

use std::io::{self, Write};
use std::sync::Mutex;

use serde::Serialize;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tables and sentences.
    Human,
    /// The document as pretty JSON.
    Json,
    /// What a script needs, or nothing (`-q`).
    Quiet,
}

/// A document's human forms.
pub trait Render {
    /// The table or sentences, at verbosity `verbose` (`-v` counts).
    fn human(&self, verbose: u8) -> String;
    /// What `-q` prints: nothing, unless the document is itself the answer.
    fn quiet(&self) -> String {
        String::new()
    }
}

/// Writes documents to `W` in one [`Mode`].
pub struct Printer<W: Write> {
    mode: Mode,
    verbose: u8,
    w: Mutex<W>,
}

impl Printer<io::Stdout> {
    /// The printer of this invocation's stdout, in the mode its flags ask for.
    pub fn stdout(g: &crate::cli::Global) -> Printer<io::Stdout> {
        let mode = if g.json {
            Mode::Json
        } else if g.quiet {
            Mode::Quiet
        } else {
            Mode::Human
        };
        Printer::new(mode, g.verbose, io::stdout())
    }
}

impl Printer<io::Stdout> {
    /// Stdout for text that is the answer whatever the flags: a completion script, the
    /// man page, an `-o -` output.
    pub fn plain() -> Printer<io::Stdout> {
        Printer::new(Mode::Human, 0, io::stdout())
    }
}

impl<W: Write> Printer<W> {
    /// A printer into `w`.
    pub fn new(mode: Mode, verbose: u8, w: W) -> Printer<W> {
        Printer {
            mode,
            verbose,
            w: Mutex::new(w),
        }
    }

    /// Whether documents go out as JSON.
    pub fn json(&self) -> bool {
        self.mode == Mode::Json
    }

    /// Writes one document.
    pub fn doc<D: Render + Serialize>(&self, d: &D) -> io::Result<()> {
        match self.mode {
            Mode::Json => self.json_value(d),
            Mode::Human => self.text(&d.human(self.verbose)),
            Mode::Quiet => self.text(&d.quiet()),
        }
    }

    /// Writes a value as pretty JSON and a newline.
    pub fn json_value<T: Serialize + ?Sized>(&self, v: &T) -> io::Result<()> {
        let mut w = self.lock();
        serde_json::to_writer_pretty(&mut *w, v).map_err(io::Error::from)?;
        writeln!(w)?;
        w.flush()
    }

    /// Writes one compact JSON object per line (a stream for log shippers: no envelope).
    pub fn jsonl<T: Serialize>(&self, items: &[T]) -> io::Result<()> {
        let mut w = self.lock();
        let mut b = io::BufWriter::new(&mut *w);
        for i in items {
            serde_json::to_writer(&mut b, i).map_err(io::Error::from)?;
            writeln!(b)?;
        }
        b.flush()
    }

    /// Writes text, control characters other than newline and tab escaped.
    pub fn text(&self, s: &str) -> io::Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        let mut w = self.lock();
        w.write_all(super::clean(s, true).as_bytes())?;
        w.flush()
    }

    /// The writer, back (tests read what was written).
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.w.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, W> {
        // A panic mid-write leaves nothing a later write could make worse.
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// What `d` prints in `mode`.
    pub fn printed<D: Render + Serialize>(d: &D, mode: Mode) -> String {
        let p = Printer::new(mode, 0, Vec::new());
        p.doc(d).unwrap();
        String::from_utf8(p.into_inner()).unwrap()
    }

    struct Doc {
        line: &'static str,
    }
    impl Serialize for Doc {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.line)
        }
    }
    impl Render for Doc {
        fn human(&self, _: u8) -> String {
            format!("{}\n", self.line)
        }
    }

    #[test]
    fn each_mode_writes_its_form_and_escapes_controls() {
        let d = Doc { line: "a\x1b[2Jb" };
        assert_eq!(printed(&d, Mode::Human), "a\\x1b[2Jb\n");
        assert_eq!(printed(&d, Mode::Quiet), "");
        assert_eq!(printed(&d, Mode::Json), "\"a\\u001b[2Jb\"\n");
    }
}
