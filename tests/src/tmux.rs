//! Driving an interactive screen (`ctscope top`, `iptstate`) through
//! tmux: send-keys in, capture-pane out.

use std::{
    fmt,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{Output, poll_until, run};

static SESSIONS: AtomicU32 = AtomicU32::new(0);

/// A tmux server of its own (`-L`, no config) holding one session; the
/// server is killed on drop, so nothing outlives the test.
pub struct Tmux {
    /// The `-L` socket name, unique to the test process and session.
    socket: String,
}

/// One `tmux capture-pane`, trailing spaces stripped.
pub struct Screen {
    /// The pane's lines, top to bottom.
    pub lines: Vec<String>,
}

impl Screen {
    /// The first line (top's header).
    pub fn header(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// The last line (top's footer: prompts, questions, status).
    pub fn footer(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    /// The table's rows, as whitespace-split cells (Source and Destination
    /// first, then Prt, State...).
    pub fn rows(&self) -> Vec<Vec<String>> {
        let Some(title) = self.lines.iter().position(|l| l.starts_with("Source")) else {
            return Vec::new();
        };
        let body_end = self.lines.len().saturating_sub(1);
        self.lines
            .get(title + 1..body_end)
            .unwrap_or_default()
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    /// "SRC -> DST" of each row.
    pub fn pairs(&self) -> Vec<String> {
        self.rows()
            .iter()
            .map(|r| format!("{} -> {}", r[0], r.get(1).map_or("", String::as_str)))
            .collect()
    }

    /// Non-empty lines.
    pub fn content(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Whether a line starts with `prefix` (a marker the pane's shell
    /// echoes, such as `EXITED=`).
    pub fn has_line_starting(&self, prefix: &str) -> bool {
        self.lines.iter().any(|l| l.starts_with(prefix))
    }
}

impl fmt::Display for Screen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- screen ---")?;
        for l in &self.lines {
            writeln!(f, "|{l}")?;
        }
        write!(f, "--------------")
    }
}

impl Tmux {
    /// Starts `shell_cmd` in a detached session, `width` x 40.
    #[track_caller]
    pub fn start(shell_cmd: &str, width: u16) -> Self {
        let socket = format!(
            "ctscope-e2e-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::SeqCst)
        );
        let t = Tmux { socket };
        let out = t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            "40",
            shell_cmd,
        ]);
        assert_eq!(
            out.code, 0,
            "cannot start tmux (needed to drive the screen)\n{out}"
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]).args(args);
        run(&mut cmd)
    }

    /// The visible pane.
    pub fn capture(&self) -> Screen {
        self.capture_with(&[])
    }

    fn capture_with(&self, extra: &[&str]) -> Screen {
        let out = self.tmux(&[&["capture-pane", "-p", "-t", "top"], extra].concat());
        Screen {
            lines: out
                .stdout
                .lines()
                .map(|l| l.trim_end().to_string())
                .collect(),
        }
    }

    /// tmux key names (`r`, `Enter`, `Down`...).
    #[track_caller]
    pub fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", "top"], keys].concat())
            .expect_code(0);
    }

    /// Text typed as is.
    #[track_caller]
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", text])
            .expect_code(0);
    }

    /// Captures until `done` holds, for up to `timeout`; the last capture
    /// either way.
    pub fn wait(&self, timeout: Duration, done: impl FnMut(&Screen) -> bool) -> (bool, Screen) {
        self.wait_capturing(&[], timeout, done)
    }

    /// Like [`Tmux::wait`], over the history too, wrapped lines joined.
    pub fn wait_all(&self, timeout: Duration, done: impl FnMut(&Screen) -> bool) -> (bool, Screen) {
        self.wait_capturing(&["-J", "-S", "-"], timeout, done)
    }

    /// Like [`Tmux::wait`], the lines keeping the terminal's escape
    /// sequences (colours, attributes), as `capture-pane -e` gives them.
    pub fn wait_escaped(
        &self,
        timeout: Duration,
        done: impl FnMut(&Screen) -> bool,
    ) -> (bool, Screen) {
        self.wait_capturing(&["-e"], timeout, done)
    }

    /// [`Tmux::wait`] with `extra` capture-pane arguments.
    fn wait_capturing(
        &self,
        extra: &[&str],
        timeout: Duration,
        mut done: impl FnMut(&Screen) -> bool,
    ) -> (bool, Screen) {
        let mut last = Screen { lines: Vec::new() };
        let ok = poll_until(timeout, || {
            last = self.capture_with(extra);
            done(&last)
        });
        (ok, last)
    }

    /// The pane's terminal device (/dev/pts/N).
    pub fn pane_tty(&self) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", "top", "#{pane_tty}"]);
        let tty = out.stdout.trim().to_string();
        assert!(tty.starts_with("/dev/"), "no pane tty\n{out}");
        tty
    }

    /// The pid of the pane's shell.
    pub fn pane_pid(&self) -> i32 {
        let out = self.tmux(&["display-message", "-p", "-t", "top", "#{pane_pid}"]);
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pane pid\n{out}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // tmux leaves its socket file behind after kill-server.
        let socket = self.tmux(&["display-message", "-p", "#{socket_path}"]);
        let _ = self.tmux(&["kill-server"]);
        let path = socket.stdout.trim();
        if socket.code == 0 && path.ends_with(&self.socket) {
            let _ = std::fs::remove_file(path);
        }
    }
}
