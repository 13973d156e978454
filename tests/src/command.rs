//! Running ctscope, conntrack and other tools to completion, and what
//! they printed: [`Output`] and its "N flow entries have been ..." counts.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `128 + signal` when killed by a signal.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}  (exit {})", self.command, self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

impl Output {
    /// Panics (showing the whole output) unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    /// The non-empty stdout lines.
    pub fn lines(&self) -> Vec<String> {
        non_empty_lines(&self.stdout)
    }

    /// The non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        non_empty_lines(&self.stderr)
    }

    /// The N of "N flow entries have been VERB." on stderr.
    pub fn entries_reported(&self, verb: &str) -> Option<u64> {
        count_before(&self.stderr, &format!(" flow entries have been {verb}."))
    }

    /// The N of "N flow events have been shown." on stderr (`-E`).
    pub fn events_shown(&self) -> Option<u64> {
        count_before(&self.stderr, " flow events have been shown.")
    }

    /// `Ok` when the run failed as a bad argument or a missing privilege
    /// should: exit `code`, exactly one stderr line, nothing on stdout, no
    /// panic; else what went wrong, with the output.
    pub fn one_line_error(&self, code: i32) -> Result<(), String> {
        if self.code != code
            || self.stderr_lines().len() != 1
            || !self.stdout.trim().is_empty()
            || self.stderr.contains("panicked")
        {
            return Err(format!(
                "want exit {code}, one stderr line, empty stdout, no panic\n{self}"
            ));
        }
        Ok(())
    }

    /// Panics if the stderr shows a Rust panic.
    #[track_caller]
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the program panicked\n{self}"
        );
        self
    }
}

/// The lines of `text` that hold more than white space.
fn non_empty_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The number that ends the text before `needle`, in the first line of
/// `text` where there is one (the N of "N flow entries have been shown.").
fn count_before(text: &str, needle: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let head = &l[..l.find(needle)?];
        let digits = &head[head.trim_end_matches(|c: char| c.is_ascii_digit()).len()..];
        digits.parse().ok()
    })
}

/// Runs a command to completion and captures everything.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run `{command}`: {e} (is the tool installed?)"),
    };
    Output {
        command,
        code: exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `argv` in the host namespace.
#[track_caller]
pub fn host(argv: &[&str]) -> Output {
    let (prog, rest) = argv.split_first().expect("empty argv");
    run(Command::new(prog).args(rest))
}

/// The ctscope binary under test.
pub fn ctscope_bin() -> PathBuf {
    let path = match std::env::var_os("CTSCOPE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .join("target/debug/ctscope"),
    };
    assert!(
        path.is_file(),
        "ctscope binary not found at {}: build ctscope first: cargo build -p conntrack-user \
         (or point CTSCOPE_BIN at it)",
        path.display()
    );
    path
}

/// [`ctscope_bin`] as a string, for an argv or a shell line.
pub fn ctscope_bin_str() -> String {
    ctscope_bin().to_str().expect("utf-8 path").to_string()
}

/// Exit code; `128 + signal` when killed by a signal.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse() {
        let out = Output {
            command: String::new(),
            code: 0,
            stdout: String::new(),
            stderr: "conntrack v1.4.7 (conntrack-tools): 15 flow entries have been shown.\n".into(),
        };
        assert_eq!(out.entries_reported("shown"), Some(15));
        assert_eq!(out.entries_reported("deleted"), None);
    }

    #[test]
    fn events_shown_parses() {
        let out = Output {
            command: String::new(),
            code: 0,
            stdout: String::new(),
            stderr: "ctscope: eBPF source unavailable\n\
                     ctscope v0.1.0 (conntrack-tools compatible): 14 flow events have been shown.\n"
                .into(),
        };
        assert_eq!(out.events_shown(), Some(14));
    }

    #[test]
    fn counts_on_odd_lines() {
        let out = |stderr: &str| Output {
            command: String::new(),
            code: 0,
            stdout: String::new(),
            stderr: stderr.into(),
        };
        // Digits right after a multi-byte character; no digits at all.
        assert_eq!(
            out("é7 flow events have been shown.").events_shown(),
            Some(7)
        );
        assert_eq!(out("é flow events have been shown.").events_shown(), None);
        assert_eq!(
            out(" flow entries have been shown.").entries_reported("shown"),
            None
        );
        // The first line that has a number counts.
        assert_eq!(
            out("x flow entries have been deleted.\n3 flow entries have been deleted.")
                .entries_reported("deleted"),
            Some(3)
        );
    }
}
