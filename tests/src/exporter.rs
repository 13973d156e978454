//! Running `ctscope serve`, Prometheus and node_exporter in a test's
//! namespace and looking at what they answer: [`start_serve`], [`get`],
//! [`promtool_check`], [`check_histograms`].

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Background, HttpResponse, Netns, http_get, poll_until};

/// serve's default address.
pub const SERVE: &str = "127.0.0.1:10318";
/// Where the tests' Prometheus listens.
pub const PROMETHEUS: &str = "127.0.0.1:9090";
/// Where the tests' node_exporter listens.
pub const NODE_EXPORTER: &str = "127.0.0.1:9100";

/// The HTTP traffic of the tests makes no conntrack entries, so the table
/// holds only what a test made and `conntrack -C` stays still.
pub const NOTRACK_HTTP: &str = "
table inet ctscope_serve_http {
    chain pre {
        type filter hook prerouting priority raw; policy accept;
        tcp dport { 9090, 9100, 10318 } notrack
        tcp sport { 9090, 9100, 10318 } notrack
    }
    chain out {
        type filter hook output priority raw; policy accept;
        tcp dport { 9090, 9100, 10318 } notrack
        tcp sport { 9090, 9100, 10318 } notrack
    }
}
";

/// A socket address written in a test.
#[track_caller]
pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A namespace whose HTTP traffic is not tracked.
pub fn quiet_netns() -> Option<Netns> {
    let ns = Netns::new()?;
    ns.nft(NOTRACK_HTTP);
    Some(ns)
}

/// `GET path` inside the namespace.
#[track_caller]
pub fn get(ns: &Netns, at: &str, path: &str, accept: Option<&str>) -> HttpResponse {
    let target = addr(at);
    ns.in_netns(|| http_get(target, path, accept))
        .unwrap_or_else(|e| panic!("GET http://{at}{path}: {e}"))
}

/// Waits up to 20 s until `GET http://at/path` answers 200; `Err` with
/// what the program printed if it does not (or exits).
pub fn wait_ready(
    ns: &Netns,
    program: &mut Background,
    at: &str,
    path: &str,
) -> Result<(), String> {
    let target = addr(at);
    let ready = poll_until(Duration::from_secs(20), || {
        !program.is_running()
            || ns
                .in_netns(|| http_get(target, path, None))
                .is_ok_and(|r| r.status == 200)
    });
    if ready && program.is_running() {
        return Ok(());
    }
    let out = program.stop(nix::sys::signal::Signal::SIGKILL);
    Err(format!(
        "{} did not answer on http://{at}{path}\n{out}",
        program.command()
    ))
}

/// Starts `ctscope serve ARGS` and waits until /healthz answers.
#[track_caller]
pub fn start_serve(ns: &Netns, args: &[&str]) -> Background {
    let mut serve = ns.spawn_ctscope(&[&["serve"], args].concat());
    if let Err(e) = wait_ready(ns, &mut serve, SERVE, "/healthz") {
        panic!("{e}");
    }
    serve
}

/// `promtool check metrics` on a scrape's body: `Err` with its complaints.
pub fn promtool_check(body: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (apt-get install prometheus): {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `Err` unless every histogram's buckets only grow and end with a `+Inf`
/// bucket equal to its count (series told apart by their labels but
/// `le`; the count may come before or after the buckets). The number of
/// histogram series.
pub fn check_histograms(body: &str) -> Result<usize, String> {
    /// One histogram series: its buckets' `(le, cumulative count)`, its count.
    #[derive(Default)]
    struct Series {
        key: String,
        buckets: Vec<(String, f64)>,
        count: Option<f64>,
    }
    let mut series: Vec<Series> = Vec::new();
    let entry =
        |series: &mut Vec<Series>, key: String| match series.iter().position(|s| s.key == key) {
            Some(at) => at,
            None => {
                series.push(Series {
                    key,
                    ..Series::default()
                });
                series.len() - 1
            }
        };
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().map_err(|_| format!("bad value in `{l}`"))?;
        if let Some(at) = head.find("_bucket{") {
            // The family and its labels without le="...".
            let mut le = None;
            let labels: Vec<&str> = head[at + 8..]
                .trim_end_matches('}')
                .split(',')
                .filter(|p| match p.strip_prefix("le=") {
                    Some(v) => {
                        le = Some(v.trim_matches('"').to_string());
                        false
                    }
                    None => true,
                })
                .collect();
            let le = le.ok_or_else(|| format!("a bucket without le: {l}"))?;
            let i = entry(
                &mut series,
                format!("{}{{{}}}", &head[..at], labels.join(",")),
            );
            let buckets = &mut series[i].buckets;
            if buckets.last().is_some_and(|(_, last)| value < *last) {
                return Err(format!("a bucket shrinks: {l}"));
            }
            buckets.push((le, value));
        } else if let Some(at) = head.find("_count") {
            let labels = head[at + 6..].trim_start_matches('{').trim_end_matches('}');
            let i = entry(&mut series, format!("{}{{{labels}}}", &head[..at]));
            series[i].count = Some(value);
        }
    }
    for Series {
        key,
        buckets,
        count,
    } in &series
    {
        // A `_count` without buckets is a summary's, or another counter's.
        if buckets.is_empty() {
            continue;
        }
        match (buckets.last(), count) {
            (Some((le, n)), Some(count)) if le == "+Inf" && n == count => {}
            (last, count) => {
                return Err(format!(
                    "{key}: the last bucket is {last:?}, the count {count:?}: want le=\"+Inf\" equal to the count"
                ));
            }
        }
    }
    Ok(series.iter().filter(|s| !s.buckets.is_empty()).count())
}
