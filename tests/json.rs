//! `ctscope list -o json`: one object per line, one per entry, with the
//! values conntrack prints for the same entry (matched by id).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use ctscope_e2e::{Netns, Output, report};
use serde_json::Value;

/// One direction of a conntrack line.
#[derive(Debug, Default)]
struct Tuple {
    fields: BTreeMap<String, String>,
    zone: Option<u64>,
}

/// A `conntrack -L -o id` line, taken apart.
#[derive(Debug)]
struct CtLine {
    text: String,
    proto: String,
    protonum: u64,
    timeout: u64,
    state: Option<String>,
    orig: Tuple,
    reply: Tuple,
    unreplied: bool,
    assured: bool,
    top: BTreeMap<String, String>,
}

fn parse_line(line: &str) -> CtLine {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    assert!(tokens.len() > 4, "short conntrack line: {line}");
    let num = |s: &str| -> u64 {
        s.parse()
            .unwrap_or_else(|_| panic!("not a number {s:?} in {line}"))
    };
    let mut rest = 3;
    let state = if tokens[3].contains('=') {
        None
    } else {
        rest = 4;
        Some(tokens[3].to_string())
    };
    let mut ct = CtLine {
        text: line.to_string(),
        proto: tokens[0].to_string(),
        protonum: num(tokens[1]),
        timeout: num(tokens[2]),
        state,
        orig: Tuple::default(),
        reply: Tuple::default(),
        unreplied: false,
        assured: false,
        top: BTreeMap::new(),
    };
    // 0: orig tuple, 1: reply tuple, 2: after the reply's counters.
    let mut part = 0;
    let mut srcs = 0;
    for t in &tokens[rest..] {
        match *t {
            "[UNREPLIED]" => ct.unreplied = true,
            "[ASSURED]" => ct.assured = true,
            _ => {}
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        if k == "src" {
            srcs += 1;
            part = srcs - 1;
        }
        // (Not `id`: icmp tuples have their own id=.)
        if part < 2 && matches!(k, "mark" | "use" | "delta-time" | "zone" | "secctx") {
            part = 2;
        }
        match (part, k) {
            (0, "zone-orig") => ct.orig.zone = Some(num(v)),
            (1, "zone-reply") => ct.reply.zone = Some(num(v)),
            (0, _) => {
                ct.orig.fields.insert(k.to_string(), v.to_string());
            }
            (1, _) => {
                ct.reply.fields.insert(k.to_string(), v.to_string());
            }
            _ => {
                ct.top.insert(k.to_string(), v.to_string());
            }
        }
    }
    ct
}

fn ids_of(out: &Output) -> BTreeSet<u64> {
    out.lines()
        .iter()
        .map(|l| {
            let ct = parse_line(l);
            ct.top
                .get("id")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no id= in {l}"))
        })
        .collect()
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn eq(bad: &mut Vec<String>, what: &str, got: Option<Value>, want: Value) {
    if got.as_ref() != Some(&want) {
        bad.push(format!("{what}: json {got:?}, conntrack {want}"));
    }
}

/// Compares one JSON object with its conntrack line; returns the problems.
fn compare(ct: &CtLine, j: &Value, snat: bool, dnat: bool, now_s: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let family = if ct.orig.fields.get("src").is_some_and(|s| s.contains(':')) {
        "ipv6"
    } else {
        "ipv4"
    };
    eq(&mut bad, "family", j.get("family").cloned(), family.into());
    eq(
        &mut bad,
        "proto",
        j.get("proto").cloned(),
        ct.proto.clone().into(),
    );
    eq(
        &mut bad,
        "protonum",
        j.get("protonum").cloned(),
        ct.protonum.into(),
    );
    eq(
        &mut bad,
        "state",
        Some(j.get("state").cloned().unwrap_or(Value::Null)),
        ct.state.clone().map_or(Value::Null, Value::from),
    );
    for key in ["mark", "use", "id"] {
        let want: u64 = ct
            .top
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {}", ct.text));
        eq(&mut bad, key, j.get(key).cloned(), want.into());
    }
    eq(
        &mut bad,
        "zone",
        Some(j.get("zone").cloned().unwrap_or(Value::Null)),
        ct.top
            .get("zone")
            .and_then(|z| z.parse::<u64>().ok())
            .map_or(Value::Null, Value::from),
    );
    for (dir, tuple) in [("orig", &ct.orig), ("reply", &ct.reply)] {
        let jt = j.get(dir).cloned().unwrap_or(Value::Null);
        for key in ["src", "dst"] {
            eq(
                &mut bad,
                &format!("{dir}.{key}"),
                jt.get(key).cloned(),
                tuple.fields.get(key).cloned().unwrap_or_default().into(),
            );
        }
        let mut numeric = vec!["packets", "bytes"];
        match ct.proto.as_str() {
            "tcp" | "udp" | "udplite" | "sctp" => numeric.extend(["sport", "dport"]),
            "icmp" | "icmpv6" => numeric.extend(["type", "code", "id"]),
            _ => {}
        }
        for key in numeric {
            let want: u64 = tuple
                .fields
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {dir} {key}= in {}", ct.text));
            eq(
                &mut bad,
                &format!("{dir}.{key}"),
                jt.get(key).cloned(),
                want.into(),
            );
        }
        if ct.proto == "dccp" {
            // Ports the kernel no longer sends: absent/null, or 0 as
            // conntrack prints them.
            for key in ["sport", "dport"] {
                let v = jt.get(key).cloned().unwrap_or(Value::Null);
                if !(v.is_null() || v == 0) {
                    bad.push(format!("{dir}.{key}: json {v}, conntrack prints 0"));
                }
            }
        }
        eq(
            &mut bad,
            &format!("{dir}.zone"),
            Some(jt.get("zone").cloned().unwrap_or(Value::Null)),
            tuple.zone.map_or(Value::Null, Value::from),
        );
    }
    let status: Vec<&str> = j
        .get("status")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if status.contains(&"ASSURED") != ct.assured {
        bad.push(format!(
            "status {status:?}: ASSURED disagrees with conntrack's [ASSURED] ({})",
            ct.assured
        ));
    }
    if status.contains(&"SEEN_REPLY") == ct.unreplied {
        bad.push(format!(
            "status {status:?}: SEEN_REPLY disagrees with conntrack's [UNREPLIED] ({})",
            ct.unreplied
        ));
    }
    // conntrack's -n/-g call every ICMP entry that went through a NAT hook
    // both SNAT and DNAT (libnetfilter_conntrack compares the reply's icmp id
    // with the original's type/code as if they were ports); the JSON need
    // not copy that, so ICMP is left out here. filters.rs holds -n/-g to it.
    if !ct.proto.starts_with("icmp") {
        let nat = j.get("nat").cloned().unwrap_or(Value::Null);
        eq(&mut bad, "nat.snat", nat.get("snat").cloned(), snat.into());
        eq(&mut bad, "nat.dnat", nat.get("dnat").cloned(), dnat.into());
    }
    // The countdown: ctscope runs after conntrack, so it may be a little lower.
    match as_u64(j.get("timeout")) {
        Some(t) if t <= ct.timeout && t + 5 >= ct.timeout => {}
        other => bad.push(format!(
            "timeout: json {other:?}, conntrack {} (allowed: up to 5 s less)",
            ct.timeout
        )),
    }
    // Timestamps are on in the namespace: start is wall-clock nanoseconds.
    let start = as_u64(j.get("timestamp").and_then(|t| t.get("start")));
    let delta: Option<u64> = ct.top.get("delta-time").and_then(|d| d.parse().ok());
    match (start, delta) {
        (Some(start), Some(delta)) => {
            let age = now_s.saturating_sub(start / 1_000_000_000);
            if age.abs_diff(delta) > 5 {
                bad.push(format!(
                    "timestamp.start {start} is {age} s ago; conntrack's delta-time={delta}"
                ));
            }
        }
        (None, Some(delta)) => bad.push(format!(
            "timestamp.start missing; conntrack shows delta-time={delta}"
        )),
        _ => {}
    }
    bad
}

/// Runs `ctscope list -o json ARGS` and `conntrack -L -o id ARGS` and
/// compares them entry by entry.
fn check(ns: &Netns, args: &[&str]) -> Vec<String> {
    let ct = ns.conntrack(&[&["-L", "-o", "id"], args].concat());
    ct.expect_code(0);
    // From the whole table: -n/-g do not combine with every filter (-j).
    let nat_ids = |flag: &str| {
        let out = ns.conntrack(&["-L", "-o", "id", flag]);
        out.expect_code(0);
        ids_of(&out)
    };
    let snat = nat_ids("-n");
    let dnat = nat_ids("-g");
    let cs = ns.ctscope(&[&["list", "-o", "json"], args].concat());
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut failures = Vec::new();
    if cs.code != 0 {
        failures.push(format!("ctscope failed\n{cs}"));
        return failures;
    }
    cs.assert_no_panic();
    let lines = ct.lines();
    if lines.is_empty() {
        failures.push(format!("conntrack shows nothing for {args:?}"));
    }
    let mut by_id: BTreeMap<u64, CtLine> = BTreeMap::new();
    for l in &lines {
        let p = parse_line(l);
        let id = p.top.get("id").and_then(|v| v.parse().ok()).unwrap_or(0);
        by_id.insert(id, p);
    }
    let objects = cs.lines();
    if objects.len() != lines.len() {
        failures.push(format!(
            "{args:?}: ctscope printed {} JSON lines, conntrack {} entries",
            objects.len(),
            lines.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for o in &objects {
        let j: Value = match serde_json::from_str(o) {
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                failures.push(format!("not a JSON object per line: {other}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("not JSON ({e}): {o}"));
                continue;
            }
        };
        let Some(id) = as_u64(j.get("id")) else {
            failures.push(format!("no numeric \"id\": {o}"));
            continue;
        };
        if !seen.insert(id) {
            failures.push(format!("id {id} printed twice"));
        }
        let Some(ct) = by_id.get(&id) else {
            failures.push(format!("id {id} is not in conntrack -L -o id: {o}"));
            continue;
        };
        let bad = compare(ct, &j, snat.contains(&id), dnat.contains(&id), now_s);
        if !bad.is_empty() {
            failures.push(format!(
                "conntrack: {}\nctscope:   {o}\n  {}",
                ct.text,
                bad.join("\n  ")
            ));
        }
    }
    failures
}

#[test]
fn json_matches_conntrack() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let failures = check(&ns, &[]);
    report(1, &failures);
}

#[test]
fn json_with_filters() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let mut failures = Vec::new();
    let cases: &[&[&str]] = &[
        &["-p", "tcp"],
        &["-f", "ipv6"],
        &["-s", "127.0.0.0/8"],
        &["-w", "7"],
    ];
    for args in cases {
        failures.extend(
            check(&ns, args)
                .into_iter()
                .map(|f| format!("{args:?}: {f}")),
        );
    }
    report(cases.len(), &failures);
}
