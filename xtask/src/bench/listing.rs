//! The listing benchmark: ctscope list against conntrack -L on tables of
//! growing size.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use super::{
    Ctx, Section,
    measure::{Sample, Spread, Stdout, measure},
    netns::{
        Fill, HostSysctl, check_interrupted, fill_to, foreign_entries, read_sysctl, table_netns,
    },
    report::{mib, ratio_to, secs, thousands},
    rotated, tolerance,
};

/// One command the listing benchmark times.
struct Lister {
    /// How the report names it.
    label: &'static str,
    program: PathBuf,
    args: &'static [&'static str],
    /// Its line count must equal conntrack -L's.
    checked: bool,
}

/// The reference every ratio is taken against.
const REFERENCE: &str = "conntrack -L";

/// What one table size measured.
struct SizeResult {
    size: u64,
    fill: Fill,
    count_after: u64,
    lines: Vec<(&'static str, u64)>,
    /// Samples per lister, in `listers` order.
    samples: Vec<Vec<Sample>>,
}

/// ctscope list (text and JSON), conntrack -L and cat /proc/net/nf_conntrack
/// on tables of growing size.
pub(super) fn listing(ctx: &Ctx) -> Result<Section> {
    let sizes = ctx.args.sizes();
    let runs = ctx.args.runs();
    let largest = sizes.last().copied().unwrap_or(0);
    let listers = [
        Lister {
            label: "ctscope list",
            program: ctx.ctscope.clone(),
            args: &["list"],
            checked: true,
        },
        Lister {
            label: "ctscope list -o json",
            program: ctx.ctscope.clone(),
            args: &["list", "-o", "json"],
            checked: true,
        },
        Lister {
            label: REFERENCE,
            program: "conntrack".into(),
            args: &["-L"],
            checked: true,
        },
        Lister {
            label: "cat /proc/net/nf_conntrack",
            program: "cat".into(),
            args: &["/proc/net/nf_conntrack"],
            checked: false,
        },
    ];

    let (max_guard, netns) = table_netns(largest)?;
    let foreign_before = foreign_entries(&netns.name);
    eprintln!(
        "xtask: listing bench in netns {} (nf_conntrack_max {}, buckets {}), sizes {sizes:?}, {runs} runs",
        netns.name,
        read_sysctl("net.netfilter.nf_conntrack_max"),
        read_sysctl("net.netfilter.nf_conntrack_buckets"),
    );
    if foreign_before > 0 {
        eprintln!(
            "xtask: other namespaces hold {foreign_before} conntrack entries; every dump walks them too, \
             so the timings are higher than on an idle machine"
        );
    }

    let stderr_path = ctx.scratch.join("listing.stderr");
    let mut results = Vec::new();
    for (step, &size) in sizes.iter().enumerate() {
        check_interrupted()?;
        let fill = fill_to(ctx, &netns, size, step)?;
        eprintln!(
            "xtask: {size} entries ({} new flows in {:.2} s); checking the listers agree",
            fill.flows,
            fill.elapsed.as_secs_f64()
        );

        // One untimed pass that counts lines: the listers must agree, and it
        // warms caches for the timed runs.
        let mut lines = Vec::new();
        for lister in &listers {
            check_interrupted()?;
            let outcome = measure(
                netns.command(&lister.program).args(lister.args),
                Stdout::CountLines,
                &stderr_path,
            )?;
            lines.push((lister.label, outcome.lines.unwrap_or(0)));
        }
        let reference = lines
            .iter()
            .find(|(label, _)| *label == REFERENCE)
            .map_or(0, |(_, n)| *n);
        for (lister, (label, n)) in listers.iter().zip(&lines) {
            if lister.checked && *n != reference {
                bail!(
                    "{label} printed {n} lines but {REFERENCE} printed {reference}, on a table of {} entries",
                    fill.count
                );
            }
        }
        let slack = tolerance(size);
        if reference.abs_diff(size) > slack {
            bail!("{REFERENCE} printed {reference} lines, the table should hold about {size}");
        }

        let mut samples: Vec<Vec<Sample>> = listers.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            for i in rotated(run, listers.len()) {
                check_interrupted()?;
                let lister = &listers[i];
                let outcome = measure(
                    netns.command(&lister.program).args(lister.args),
                    Stdout::Null,
                    &stderr_path,
                )?;
                samples[i].push(outcome.sample);
            }
            eprintln!("xtask: {size} entries: round {}/{runs} done", run + 1);
        }
        let count_after = netns.count()?;
        if count_after.abs_diff(fill.count) > slack {
            bail!(
                "the table went from {} to {count_after} entries during the runs (entries expiring?)",
                fill.count
            );
        }
        let result = SizeResult {
            size,
            fill,
            count_after,
            lines,
            samples,
        };
        println!("{}", size_table(&listers, &result));
        results.push(result);
    }
    let foreign = (foreign_before, foreign_entries(&netns.name));
    let markdown = listing_report(ctx, &listers, &results, runs, &max_guard, foreign);
    drop(netns);
    Ok(Section {
        name: "listing",
        markdown,
    })
}

/// The Markdown table of one size (also what stdout shows).
fn size_table(listers: &[Lister], result: &SizeResult) -> String {
    let reference = listers
        .iter()
        .position(|l| l.label == REFERENCE)
        .and_then(|i| Spread::of(result.samples[i].iter().map(|s| s.wall)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#### {} entries\n\n| command | median | min | max | user CPU (median) | system CPU (median) | peak RSS | median / conntrack -L |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        thousands(result.size)
    );
    for (lister, samples) in listers.iter().zip(&result.samples) {
        let Some(wall) = Spread::of(samples.iter().map(|s| s.wall)) else {
            continue;
        };
        let median_of = |f: fn(&Sample) -> Duration| {
            Spread::of(samples.iter().map(f)).map_or(Duration::ZERO, |s| s.median)
        };
        let (user, sys) = (median_of(|s| s.user), median_of(|s| s.sys));
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        let ratio = reference.map_or_else(
            || "-".to_owned(),
            |r| format!("{:.2}", ratio_to(wall.median, r.median)),
        );
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {ratio} |",
            lister.label,
            secs(wall.median),
            secs(wall.min),
            secs(wall.max),
            secs(user),
            secs(sys),
            mib(rss),
        );
    }
    let lines: Vec<String> = result
        .lines
        .iter()
        .map(|(label, n)| format!("{label} {}", thousands(*n)))
        .collect();
    let _ = writeln!(
        out,
        "\nEntries (conntrack -C): {} after the fill, {} after the runs. Lines printed in the check pass: {}.",
        thousands(result.fill.count),
        thousands(result.count_after),
        lines.join(", ")
    );
    out
}

/// The listing section of the report.
fn listing_report(
    ctx: &Ctx,
    listers: &[Lister],
    results: &[SizeResult],
    runs: usize,
    max: &HostSysctl,
    foreign: (u64, u64),
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Listing the table: ctscope list vs conntrack -L\n");
    let _ = writeln!(out, "{}\n", ctx.command_sentence());
    let _ = writeln!(
        out,
        "{}\n",
        ctx.machine_sentence(&ctx.machine.conntrack_version)
    );
    for result in results {
        let _ = writeln!(out, "{}", size_table(listers, result));
    }

    // Peak RSS per size, side by side: ctscope streams the dump, so its
    // memory should not grow with the table.
    let _ = write!(
        out,
        "Peak RSS (largest ru_maxrss over the runs):\n\n| command |"
    );
    for r in results {
        let _ = write!(out, " {} entries |", thousands(r.size));
    }
    let _ = write!(out, "\n|---|");
    for _ in results {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for (i, lister) in listers.iter().enumerate() {
        let _ = write!(out, "| `{}` |", lister.label);
        for r in results {
            let rss = r.samples[i]
                .iter()
                .map(|s| s.max_rss_kib)
                .max()
                .unwrap_or(0);
            let _ = write!(out, " {} |", mib(rss));
        }
        out.push('\n');
    }

    let fills: Vec<String> = results
        .iter()
        .filter(|r| r.fill.flows > 0)
        .map(|r| {
            format!(
                "{} flows in {:.2} s ({}/s)",
                thousands(r.fill.flows),
                r.fill.elapsed.as_secs_f64(),
                thousands((r.fill.flows as f64 / r.fill.elapsed.as_secs_f64().max(1e-9)) as u64)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nHow it was measured: one network namespace made for the run (lo up, an nftables \
         input chain with `ct state new counter`), filled by `ctchurn --proto udp` (one datagram \
         per new tuple from 127.x sources to 127.0.0.1, sendmmsg; each table grows from the \
         previous one: {}), so the entries are unreplied UDP flows. \
         `nf_conntrack_udp_timeout` and `_stream` were set to 3600 s in the namespace so no entry \
         expires during the runs; `nf_conntrack_max` (host-wide) was {} during the runs ({} \
         before; put back afterwards); `nf_conntrack_buckets` was left at {}. The hash table is \
         shared by all namespaces and a dump walks all of it: other namespaces (the host's and \
         those under /run/netns) held {} entries at the start and {} at the end. Each command ran inside the namespace \
         (entered with setns(2) between fork and exec, no `ip netns exec` in the timing) with stdout \
         to /dev/null, {runs} times per size, interleaved (each round starts with the next \
         command), after one untimed pass that counts the lines each prints: ctscope's text and \
         JSON line counts must equal conntrack -L's or the bench fails. Wall time is from spawn to \
         wait4(2); user and system CPU are the child's ru_utime and ru_stime (system time is \
         mostly the kernel walking the conntrack hash table for the dump) and peak RSS its \
         ru_maxrss, all from wait4. The ratio is the command's median wall time over conntrack -L's median in the \
         same run (below 1 is faster).",
        fills.join("; "),
        thousands(max.value),
        max.old,
        read_sysctl("net.netfilter.nf_conntrack_buckets"),
        thousands(foreign.0),
        thousands(foreign.1),
    );
    out
}
