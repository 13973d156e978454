//! Comparing ctscope's output with conntrack's: normalising what changes
//! between two runs, multiset differences, and reporting failed cases.

use std::collections::BTreeMap;

use crate::{Netns, Output};

/// [`normalise`] for a `conntrack -E` line: also drops the padding before
/// the `[NEW]`-style tag and the ` progname=X` that ends `[USERSPACE]` (it is
/// looked up in /proc when the line is printed, so it is there or not
/// depending on whether the program has exited yet); keeps `portid=N`.
pub fn normalise_event(line: &str) -> String {
    let line = line.trim_start();
    let (tag, rest) = match line.find(']') {
        Some(i) if line.starts_with('[') => line.split_at(i + 1),
        _ => ("", line),
    };
    let rest = rest.find(" progname=").map_or(rest, |i| &rest[..i]);
    let body = normalise(rest.trim_start());
    if tag.is_empty() {
        body
    } else {
        format!("{tag} {body}")
    }
}

/// Normalised ([`normalise_event`]), sorted stdout lines of an events run.
pub fn normalised_events(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = out.lines().iter().map(|l| normalise_event(l)).collect();
    v.sort();
    v
}

/// Masks what changes between two listings of the same table: the timeout
/// countdown (the number after the protocol number) and `delta-time=N`.
pub fn normalise(line: &str) -> String {
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                tokens.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        tokens.push((s, line.len()));
    }
    let tok = |i: usize| tokens.get(i).map(|&(s, e)| &line[s..e]);
    let extended = matches!(tok(0), Some("ipv4" | "ipv6" | "unknown"));
    let timeout_at = if extended { 4 } else { 2 };
    let mut out = String::with_capacity(line.len());
    let mut last = 0;
    for (i, &(s, e)) in tokens.iter().enumerate() {
        let t = &line[s..e];
        let replacement = if i == timeout_at && t.chars().all(|c| c.is_ascii_digit()) {
            Some("<timeout>")
        } else if t.starts_with("delta-time=") {
            Some("delta-time=<d>")
        } else {
            None
        };
        if let Some(r) = replacement {
            out.push_str(&line[last..s]);
            out.push_str(r);
            last = e;
        }
    }
    out.push_str(&line[last..]);
    out.trim_end().to_string()
}

/// Replaces the text of every `<name>...</name>` element in `line` with
/// `*` (for values that differ between two runs, such as `id`).
pub fn mask_element(line: &str, name: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(&open) {
        let body = start + open.len();
        let Some(len) = rest[body..].find(&close) else {
            break;
        };
        out.push_str(&rest[..body]);
        out.push('*');
        rest = &rest[body + len..];
    }
    out.push_str(rest);
    out
}

/// The text before ` progname=`: conntrack looks the program up in /proc
/// when it prints the line, so the name is there or not depending on
/// whether the program has exited yet (`portid=N` stays).
fn without_progname(line: &str) -> &str {
    line.find(" progname=").map_or(line, |i| &line[..i])
}

/// Masks what changes between two `-o xml` listings of the same table (or
/// two listeners of the same events): the text of `<timeout>`,
/// `<deltatime>` and `<when>`, and the `progname=` of `[USERSPACE]`.
pub fn normalise_xml(line: &str) -> String {
    let mut line = without_progname(line.trim_end()).to_string();
    for name in ["timeout", "deltatime", "when"] {
        line = mask_element(&line, name);
    }
    line
}

/// Masks what changes between two `-o save` listings: the `-t` timeout,
/// and the `progname=` of `[USERSPACE]`.
pub fn normalise_save(line: &str) -> String {
    let mut words: Vec<&str> = without_progname(line.trim_end()).split(' ').collect();
    if let Some(i) = words.iter().position(|w| *w == "-t")
        && let Some(t) = words.get_mut(i + 1)
    {
        *t = "*";
    }
    words.join(" ")
}

/// Normalised, sorted stdout lines.
pub fn normalised_lines(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = out.lines().iter().map(|l| normalise(l)).collect();
    v.sort();
    v
}

/// Describes how two multisets of lines differ; `None` when equal.
pub fn multiset_diff(a_name: &str, a: &[String], b_name: &str, b: &[String]) -> Option<String> {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for l in a {
        *count.entry(l).or_default() += 1;
    }
    for l in b {
        *count.entry(l).or_default() -= 1;
    }
    let only_a: Vec<String> = count
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(l, n)| format!("  {n}x {l}"))
        .collect();
    let only_b: Vec<String> = count
        .iter()
        .filter(|&(_, &n)| n < 0)
        .map(|(l, n)| format!("  {}x {l}", -n))
        .collect();
    if only_a.is_empty() && only_b.is_empty() {
        return None;
    }
    Some(format!(
        "{} lines vs {} lines\nonly in {a_name}:\n{}\nonly in {b_name}:\n{}",
        a.len(),
        b.len(),
        only_a.join("\n"),
        only_b.join("\n")
    ))
}

/// Runs `conntrack -L ARGS` and `ctscope list ARGS` in `ns` and explains
/// every difference; returns conntrack's normalised lines when they agree.
pub fn compare_list(ns: &Netns, args: &[&str]) -> Result<Vec<String>, String> {
    let ct = ns.conntrack(&[&["-L"], args].concat());
    compare_list_to(ns, &ct, args)
}

/// Like [`compare_list`], with conntrack's `-L ARGS` output already at hand.
pub fn compare_list_to(ns: &Netns, ct: &Output, args: &[&str]) -> Result<Vec<String>, String> {
    let cs = ns.ctscope(&[&["list"], args].concat());
    compare_outputs(ct, &cs, "shown")
}

/// The first check of every comparison: ctscope did not panic and exited
/// as conntrack did.
pub fn same_exit(ct: &Output, cs: &Output) -> Result<(), String> {
    if cs.stderr.contains("panicked") {
        return Err(format!("ctscope panicked\n{cs}"));
    }
    if ct.code != cs.code {
        return Err(format!(
            "exit codes differ: conntrack {} vs ctscope {}\n{ct}\n{cs}",
            ct.code, cs.code
        ));
    }
    Ok(())
}

/// Compares a conntrack run with the matching ctscope run: exit code,
/// normalised stdout multiset, and the "N flow entries have been VERB." count.
pub fn compare_outputs(ct: &Output, cs: &Output, verb: &str) -> Result<Vec<String>, String> {
    same_exit(ct, cs)?;
    if ct.code == 2 {
        return Ok(Vec::new());
    }
    let a = normalised_lines(ct);
    let b = normalised_lines(cs);
    if let Some(d) = runs_diff(ct, &a, cs, &b) {
        return Err(d);
    }
    let want = ct.entries_reported(verb);
    let got = cs.entries_reported(verb);
    if want.is_some() && want != got {
        return Err(format!(
            "\"N flow entries have been {verb}.\": conntrack says {want:?}, ctscope {got:?}\n\
             conntrack stderr: {}\nctscope stderr: {}",
            ct.stderr.trim_end(),
            cs.stderr.trim_end()
        ));
    }
    Ok(a)
}

/// How the normalised event lines ([`normalised_events`]) of a
/// `conntrack -E` run and a `ctscope events` run differ; `None` when equal.
pub fn events_diff(ct: &Output, cs: &Output) -> Option<String> {
    runs_diff(ct, &normalised_events(ct), cs, &normalised_events(cs))
}

/// [`multiset_diff`] of conntrack's lines `a` and ctscope's `b`, headed by
/// both command lines.
fn runs_diff(ct: &Output, a: &[String], cs: &Output, b: &[String]) -> Option<String> {
    let d = multiset_diff("conntrack", a, "ctscope", b)?;
    Some(format!("`{}` vs `{}`: {d}", ct.command, cs.command))
}

/// Panics listing every failure, or does nothing when there are none.
#[track_caller]
pub fn report(total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Splits a conntrack line into its `key=value` tokens, in order.
pub fn key_values(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_masks_timeout_and_delta() {
        assert_eq!(
            normalise("tcp      6 431999 ESTABLISHED src=1 delta-time=12 use=1"),
            "tcp      6 <timeout> ESTABLISHED src=1 delta-time=<d> use=1"
        );
        assert_eq!(
            normalise("ipv4     2 udp      17 29 src=1 mark=0 delta-time=3 use=1 id=7"),
            "ipv4     2 udp      17 <timeout> src=1 mark=0 delta-time=<d> use=1 id=7"
        );
    }

    #[test]
    fn normalise_event_masks_progname_and_timeout() {
        assert_eq!(
            normalise_event(
                "    [NEW] udp      17 100 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 \
                 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=0 \
                 [USERSPACE] portid=4503 progname=conntrack"
            ),
            "[NEW] udp      17 <timeout> src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 \
             [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=0 \
             [USERSPACE] portid=4503"
        );
        assert_eq!(
            normalise_event("[DESTROY] ipv4     2 tcp      6 119 TIME_WAIT src=1 delta-time=4"),
            "[DESTROY] ipv4     2 tcp      6 <timeout> TIME_WAIT src=1 delta-time=<d>"
        );
    }

    #[test]
    fn xml_and_save_masks() {
        assert_eq!(
            normalise_xml(
                "<flow type=\"new\"><timeout>99</timeout><id>7</id><deltatime>3</deltatime>\
                 <when><hour>1</hour></when></flow> [USERSPACE] portid=4 progname=conntrack"
            ),
            "<flow type=\"new\"><timeout>*</timeout><id>7</id><deltatime>*</deltatime>\
             <when>*</when></flow> [USERSPACE] portid=4"
        );
        assert_eq!(
            mask_element("<id>1</id><id>2</id><id>", "id"),
            "<id>*</id><id>*</id><id>"
        );
        assert_eq!(
            normalise_save("-A -t 431999 -u ASSURED -s 10.0.0.1 -p tcp"),
            "-A -t * -u ASSURED -s 10.0.0.1 -p tcp"
        );
        assert_eq!(
            normalise_save("-D -p 99 [USERSPACE] portid=1 progname=x"),
            "-D -p 99 [USERSPACE] portid=1"
        );
    }

    #[test]
    fn diff_counts_duplicates() {
        let a = vec!["x".to_string(), "x".to_string()];
        let b = vec!["x".to_string()];
        assert!(multiset_diff("a", &a, "b", &b).is_some());
        assert!(multiset_diff("a", &a, "b", &a).is_none());
    }
}
