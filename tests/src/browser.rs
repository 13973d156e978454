//! A real browser for the HTML report: Debian's headless Chromium loads a
//! page from a file, dumps its DOM, logs its console to stderr and takes
//! screenshots.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Output, run};

/// A page as Chromium loaded it.
pub struct LoadedPage {
    /// The DOM after loading (`--dump-dom`).
    pub dom: String,
    /// The console messages and uncaught errors Chromium logged
    /// (`INFO:CONSOLE` lines of `--enable-logging=stderr`).
    pub console: Vec<String>,
}

/// Headless Chromium with a profile directory of its own (removed on
/// drop), so runs share nothing and leave nothing in $HOME.
pub struct Chromium {
    profile: PathBuf,
}

impl Chromium {
    /// A browser whose profile lives under `base` + `.chromium`.
    pub fn new(base: &Path) -> Self {
        let profile = base.with_extension("chromium");
        std::fs::create_dir_all(&profile).expect("chromium profile dir");
        Chromium { profile }
    }

    #[track_caller]
    fn run(&self, args: &[&str], page: &Path) -> Output {
        let url = format!("file://{}", page.display());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            // Root in a container: Chromium's sandbox needs user namespaces
            // it may not get; the page is our own file.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            // Any network fetch the page tried would fail (it must make none).
            "--host-resolver-rules=MAP * ~NOTFOUND",
            &format!("--user-data-dir={}", self.profile.display()),
        ])
        .args(args)
        .arg(&url);
        let out = run(&mut cmd);
        assert_eq!(out.code, 0, "chromium failed on {url}\n{out}");
        out
    }

    /// Loads `page` and returns its DOM and console messages.
    #[track_caller]
    pub fn load(&self, page: &Path) -> LoadedPage {
        let out = self.run(&["--enable-logging=stderr", "--v=0", "--dump-dom"], page);
        LoadedPage {
            dom: out.stdout,
            console: out
                .stderr
                .lines()
                .filter(|l| l.contains(":CONSOLE"))
                .map(str::to_string)
                .collect(),
        }
    }

    /// Screenshots `page` in a `width` x `height` window into `png`.
    #[track_caller]
    pub fn screenshot(&self, page: &Path, png: &Path, width: u32, height: u32) {
        self.run(
            &[
                &format!("--window-size={width},{height}"),
                &format!("--screenshot={}", png.display()),
            ],
            page,
        );
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Width and height from a PNG's IHDR chunk, if `bytes` is a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.get(..8)? != SIGNATURE || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((word(16)?, word(20)?))
}
