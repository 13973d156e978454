//! The report: what it says about the machine, the number formats, and
//! BENCHMARKS.md's sections between their markers.
use std::{
    fs, io,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::netns::read_sysctl;
use crate::workspace_root;

/// What the report says about the machine.
pub(super) struct Machine {
    pub(super) nproc: usize,
    pub(super) cpu_model: String,
    pub(super) memory: String,
    pub(super) kernel: String,
    pub(super) date: String,
    pub(super) conntrack_version: String,
}

impl Machine {
    pub(super) fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "?".into(),
                |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
            );
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory,
            kernel: read_sysctl("kernel.osrelease"),
            date: output_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_else(|| "date unknown".into()),
            conntrack_version: output_line(Command::new("conntrack").arg("--version"))
                .unwrap_or_else(|| "conntrack (version unknown)".into()),
        }
    }

    pub(super) fn ctscope_version(&self, ctscope: &Path) -> String {
        let version = output_line(Command::new(ctscope).arg("--version"))
            .unwrap_or_else(|| "(version unknown)".into());
        let commit = output_line(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(workspace_root()),
        );
        // Uncommitted changes to the sources make the commit an approximation.
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(workspace_root())
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        match (commit, dirty) {
            (Some(commit), false) => format!("{version}, commit {commit}"),
            (Some(commit), true) => format!("{version}, commit {commit} plus uncommitted changes"),
            (None, _) => version,
        }
    }
}

/// The first line a command prints (stdout, else stderr), if it exits 0.
pub(super) fn output_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Puts `body` between the section's markers in the report at `path`,
/// keeping everything else; creates the file (with a title) if missing.
pub(super) fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let merged = merge_section(&text, name, body);
    let tmp = path.with_extension("md.tmp");
    fs::write(&tmp, merged).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn merge_section(text: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let block = format!("{begin}\n{}\n{end}\n", body.trim_end());
    if let Some(b) = text.find(&begin)
        && let Some(e) = text[b..].find(&end).map(|e| b + e)
    {
        let rest = &text[e + end.len()..];
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        return format!("{}{block}{rest}", &text[..b]);
    }
    if text.trim().is_empty() {
        return format!("# ctscope benchmarks\n\n{block}");
    }
    format!("{}\n\n{block}", text.trim_end())
}

/// Seconds with three decimals: `1.234 s`.
pub(super) fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `time` over `reference` (below 1 is faster), never dividing by zero.
pub(super) fn ratio_to(time: Duration, reference: Duration) -> f64 {
    time.as_secs_f64() / reference.as_secs_f64().max(1e-9)
}

/// KiB as MiB with one decimal: `1.5 MiB`.
pub(super) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 1234567 -> "1,234,567".
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part` as a percentage of `whole`.
pub(super) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / whole as f64
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_gets_a_title() {
        let out = merge_section("", "listing", "body");
        assert_eq!(
            out,
            "# ctscope benchmarks\n\n<!-- bench:listing:begin -->\nbody\n<!-- bench:listing:end -->\n"
        );
    }

    #[test]
    fn section_is_replaced_and_the_rest_kept() {
        let text = "# T\n\nintro\n\n<!-- bench:listing:begin -->\nold\n<!-- bench:listing:end -->\n\n## Other\nkeep\n";
        let out = merge_section(text, "listing", "new\n");
        assert_eq!(
            out,
            "# T\n\nintro\n\n<!-- bench:listing:begin -->\nnew\n<!-- bench:listing:end -->\n\n## Other\nkeep\n"
        );
    }

    #[test]
    fn missing_section_is_appended() {
        let out = merge_section(
            "# T\n\n<!-- bench:events:begin -->\nx\n<!-- bench:events:end -->\n",
            "listing",
            "y",
        );
        assert!(out.starts_with("# T\n\n<!-- bench:events:begin -->\nx\n<!-- bench:events:end -->\n\n<!-- bench:listing:begin -->\ny\n"));
    }

    #[test]
    fn end_marker_before_begin_is_not_a_section() {
        let text = "<!-- bench:listing:end -->\n";
        let out = merge_section(text, "listing", "y");
        assert!(out.ends_with("<!-- bench:listing:begin -->\ny\n<!-- bench:listing:end -->\n"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
