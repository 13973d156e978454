//! Programs left running in a namespace while a test makes changes:
//! [`Background`], its output files, and how it is stopped.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Output, command::exit_code, poll_until};

/// A program started with [`Netns::spawn`](crate::Netns::spawn); killed
/// (SIGKILL) and its output files removed on drop.
pub struct Background {
    command: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    status: Option<i32>,
}

impl Background {
    /// Starts `cmd` with stdin closed and stdout and stderr going to
    /// `<base>.out` and `<base>.err`; `command` names it in messages.
    #[track_caller]
    pub(crate) fn start(mut cmd: Command, command: String, base: &Path) -> Self {
        let stdout_path = base.with_extension("out");
        let stderr_path = base.with_extension("err");
        let create = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        Background {
            command,
            child,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            status: None,
        }
    }

    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Where its stdout goes (for outputs too big to hold as one string).
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Sends `sig` to the program.
    #[track_caller]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("kill -s {sig} {pid} ({}): {e}", self.command));
    }

    /// Whether the program has not exited yet.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.status = Some(exit_code(st));
                false
            }
            Err(e) => panic!("wait for `{}`: {e}", self.command),
        }
    }

    /// Its stdout so far.
    pub fn stdout_now(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Waits up to `timeout` for the program to exit by itself; its output
    /// then, or `None` while it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Output> {
        if !poll_until(timeout, || !self.is_running()) {
            return None;
        }
        Some(self.output())
    }

    /// Time since it was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends `sig` and waits up to 5 s for the exit; panics (showing what
    /// it printed) if it does not exit.
    #[track_caller]
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Output {
        if self.is_running() {
            self.signal(sig);
        }
        match self.wait_timeout(Duration::from_secs(5)) {
            Some(out) => out,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not exit within 5 s of {sig}\n--- stderr ---\n{}",
                    self.command,
                    read_lossy(&self.stderr_path)
                );
            }
        }
    }

    /// What it printed, with its exit code (-1 while it runs).
    fn output(&self) -> Output {
        Output {
            command: self.command.clone(),
            code: self.status.unwrap_or(-1),
            stdout: read_lossy(&self.stdout_path),
            stderr: read_lossy(&self.stderr_path),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stdout_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A file's text so far (invalid UTF-8 replaced); empty if it cannot be read.
fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
