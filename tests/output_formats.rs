//! `-o xml` and `-o save` against conntrack 1.4.7: the same XML document
//! lines and flows, and the same save lines, for list, get, delete and
//! events; the same refusals of `save` with other output types; and save
//! lines that `conntrack -I` (and `conntrack -R`) take back, giving the
//! same table.
//!
//! Records are compared as multisets after masking what changes between
//! two runs ([`normalise_xml`]: `<timeout>`, `<deltatime>`, `<when>`;
//! [`normalise_save`]: `-t`); the XML document lines are compared exactly,
//! in place.

use std::{net::UdpSocket, path::PathBuf, time::Duration};

use ctscope_e2e::{
    Background, INSERTED, Netns, Output, ctscope_bin_str, mask_element, multiset_diff,
    normalise_save, normalise_xml, poll_until, report, same_exit,
};
use nix::sys::signal::Signal;

/// Whether a stdout line is a record (an XML flow or a save line) rather
/// than an XML document line.
fn is_record(line: &str) -> bool {
    line.starts_with("<flow") || line.starts_with('-')
}

/// The stdout lines with every record replaced by `FLOW`: the document
/// lines and where they stand.
fn skeleton(out: &Output) -> Vec<String> {
    out.stdout
        .lines()
        .map(|l| {
            if is_record(l) {
                "FLOW".to_string()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// The records, masked and sorted.
fn records(out: &Output, mask: fn(&str) -> String) -> Vec<String> {
    let mut v: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| is_record(l))
        .map(mask)
        .collect();
    v.sort();
    v
}

/// [`normalise_xml`], and the kernel id (deleted entries are made again
/// between the two runs, with new ids).
fn normalise_xml_id(line: &str) -> String {
    mask_element(&normalise_xml(line), "id")
}

/// How a run reports its count on stderr.
type Count = fn(&Output) -> Option<u64>;

fn shown(out: &Output) -> Option<u64> {
    out.entries_reported("shown")
}

fn deleted(out: &Output) -> Option<u64> {
    out.entries_reported("deleted")
}

fn events(out: &Output) -> Option<u64> {
    out.events_shown()
}

/// Compares a conntrack run with the matching ctscope run: exit code, the
/// document lines in place, the masked records, and the stderr count.
/// Returns how many records conntrack printed.
fn compare(
    ct: &Output,
    cs: &Output,
    mask: fn(&str) -> String,
    count: Count,
) -> Result<usize, String> {
    same_exit(ct, cs)?;
    let (want, got) = (skeleton(ct), skeleton(cs));
    if want != got {
        return Err(format!(
            "the document lines differ:\nconntrack: {want:?}\nctscope:   {got:?}\n{ct}\n{cs}"
        ));
    }
    let want = records(ct, mask);
    if let Some(d) = multiset_diff("conntrack", &want, "ctscope", &records(cs, mask)) {
        return Err(format!("`{}` vs `{}`: {d}", ct.command, cs.command));
    }
    if count(ct) != count(cs) {
        return Err(format!(
            "the counts on stderr differ: conntrack {:?}, ctscope {:?}\n{}\n{}",
            count(ct),
            count(cs),
            ct.stderr.trim_end(),
            cs.stderr.trim_end()
        ));
    }
    Ok(want.len())
}

/// Fails unless conntrack's output holds each of `needles`, so that a
/// comparison cannot pass on a thin table.
fn assert_holds(out: &Output, needles: &[&str]) {
    for needle in needles {
        assert!(
            out.stdout.contains(needle),
            "conntrack's output lacks {needle:?}: the table is not what the test made\n{out}"
        );
    }
}

/// `ctscope list ARGS` against `conntrack -L ARGS` for each case.
fn list_cases(ns: &Netns, cases: &[&[&str]], mask: fn(&str) -> String) -> Vec<String> {
    let mut failures = Vec::new();
    for args in cases {
        let ct = ns.conntrack(&[&["-L"], *args].concat());
        let cs = ns.ctscope(&[&["list"], *args].concat());
        match compare(&ct, &cs, mask, shown) {
            Ok(n) => eprintln!("list {args:?}: {n} records, the same as conntrack's"),
            Err(e) => failures.push(format!("list {args:?}:\n{e}")),
        }
    }
    failures
}

#[test]
fn list_xml() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let ct = ns.conntrack(&["-L", "-o", "xml"]);
    assert_holds(
        &ct,
        &[
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<conntrack>\n<flow>",
            "</flow>\n</conntrack>\n",
            "protoname=\"ipv6\"",
            "protoname=\"sctp\"",
            "protoname=\"gre\"><srckey>",
            "protoname=\"icmp\"></layer4>",
            "protoname=\"icmpv6\"",
            "protoname=\"udplite\"",
            "</layer4><zone>8</zone>",
            "<zone>7</zone>",
            "<mark>4660</mark>",
            "<counters><packets>",
            "<assured/>",
            "<unreplied/>",
            "<state>TIME_WAIT</state>",
        ],
    );
    let cases: &[&[&str]] = &[
        &["-o", "xml"],
        &["-o", "xml,ktimestamp"],
        &["-o", "xml,extended,id"],
        &["-o", "userspace,xml", "-o", "timestamp"],
        // conntrack takes any prefix, in any case.
        &["-o", "XML"],
        &["-o", "x"],
        &["-o", "xml", "-f", "ipv6"],
        &["-o", "xml", "-p", "tcp"],
        &["-o", "xml", "-m", "4660"],
        // Nothing matches: no document at all.
        &["-o", "xml", "-s", "192.0.2.1"],
    ];
    let failures = list_cases(&ns, cases, normalise_xml);
    let empty = ns.ctscope(&["list", "-o", "xml", "-s", "192.0.2.1"]);
    assert!(
        empty.stdout.is_empty(),
        "an empty XML listing prints nothing\n{empty}"
    );
    report(cases.len(), &failures);
}

#[test]
fn list_save() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let ct = ns.conntrack(&["-L", "-o", "save"]);
    assert_holds(
        &ct,
        &[
            "-A -t ",
            " -g 127.0.0.2 ",
            " -n 127.0.0.3 ",
            " -w 7 ",
            " --orig-zone 8 ",
            " --reply-zone 4 ",
            " -u SEEN_REPLY,ASSURED ",
            " -u UNSET ",
            " -s 2001:db8::1 ",
            " -p sctp --sport 1000 --dport 2000 --reply-port-src 2000 --reply-port-dst 1000 \
             --state ESTABLISHED --orig-vtag 1 --reply-vtag 2\n",
            " -p gre --srckey 1 --dstkey 2 --reply-key-src 2 --reply-key-dst 1\n",
            " -p icmpv6 --icmpv6-type 128 ",
            " -p udplite ",
            " --state TIME_WAIT\n",
        ],
    );
    let cases: &[&[&str]] = &[
        &["-o", "save"],
        &["-o", "SA"],
        &["-o", "save,userspace"],
        &["-o", "save", "-f", "ipv6"],
        &["-o", "save", "-p", "udp"],
        &["-o", "save", "-g"],
        &["-o", "save", "-s", "192.0.2.1"],
    ];
    report(cases.len(), &list_cases(&ns, cases, normalise_save));
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ctscope-{name}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Empties the table, then makes it again from save lines with
/// `conntrack -R`; returns the new table's save lines.
fn reload(ns: &Netns, name: &str, saved: &str) -> Output {
    ns.conntrack(&["-F"]).expect_code(0);
    let file = TempFile::new(name, saved);
    ns.conntrack(&["-R", file.path()]).expect_code(0);
    ns.conntrack(&["-L", "-o", "save"])
}

/// Whether a save line is one that conntrack cannot take back on this
/// kernel: since Linux 6.16 a DCCP entry is kept as a generic protocol-33
/// entry, without ports or state, and conntrack's DCCP extension wants
/// `--state` to create one. conntrack's own line is the same.
fn generic_dccp(line: &str) -> bool {
    line.ends_with(" -p dccp")
}

/// ctscope's save lines, fed one by one to `conntrack -I` (without their
/// `-A`) after a flush, make the same table again, line for line; so does
/// the whole listing given to `conntrack -R`; and both make what
/// conntrack's own save lines make.
#[test]
fn save_lines_are_accepted_by_conntrack() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let ct_saved = ns.conntrack(&["-L", "-o", "save"]);
    let cs_saved = ns.ctscope(&["list", "-o", "save"]);
    let n = compare(&ct_saved, &cs_saved, normalise_save, shown)
        .unwrap_or_else(|e| panic!("ctscope list -o save differs from conntrack -L -o save:\n{e}"));
    assert!(n > 20, "only {n} entries to save\n{ct_saved}");

    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    ns.conntrack(&["-F"]).expect_code(0);
    for line in cs_saved.lines() {
        let Some(args) = line.strip_prefix("-A ") else {
            failures.push(format!(
                "a listed entry's save line does not start with -A: {line}"
            ));
            continue;
        };
        let args: Vec<&str> = args.split(' ').collect();
        let out = ns.conntrack(&[&["-I"], &args[..]].concat());
        if out.code == 0 {
            accepted.push(line);
        } else if generic_dccp(&line) {
            eprintln!("conntrack cannot make a DCCP entry again on this kernel: {line}");
        } else {
            failures.push(format!(
                "conntrack -I refused a save line of ctscope\n{out}"
            ));
        }
    }
    let mut before: Vec<String> = accepted.iter().map(|l| normalise_save(l)).collect();
    before.sort();
    let again = ns.conntrack(&["-L", "-o", "save"]);
    if let Some(d) = multiset_diff(
        "saved by ctscope",
        &before,
        "after conntrack -I of each line",
        &records(&again, normalise_save),
    ) {
        failures.push(d);
    }
    let keep = |out: &Output| -> String {
        let lines = out.lines().into_iter().filter(|l| !generic_dccp(l));
        lines.map(|l| l + "\n").collect()
    };
    let loaded = reload(&ns, "cs-save", &keep(&cs_saved));
    if let Some(d) = multiset_diff(
        "saved by ctscope",
        &before,
        "after conntrack -R of ctscope's lines",
        &records(&loaded, normalise_save),
    ) {
        failures.push(d);
    }
    let reference = reload(&ns, "ct-save", &keep(&ct_saved));
    if let Some(d) = multiset_diff(
        "conntrack -R of conntrack's lines",
        &records(&reference, normalise_save),
        "conntrack -R of ctscope's lines",
        &records(&loaded, normalise_save),
    ) {
        failures.push(d);
    }
    report(3, &failures);
}

#[test]
fn get_xml_and_save() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let v6 = "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80";
    let sctp = "-p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 1000 --dport 2000";
    let icmp = "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 8 --icmp-code 0 --icmp-id 77";
    let missing = "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 81";
    // (tuple, -o, exit code)
    let cases: &[(&str, &str, i32)] = &[
        (v6, "xml", 0),
        (v6, "xml,ktimestamp,extended", 0),
        (sctp, "xml", 0),
        (icmp, "xml", 0),
        (v6, "save", 0),
        (sctp, "save", 0),
        (icmp, "save", 0),
        (missing, "xml", 1),
        (missing, "save", 1),
    ];
    let mut failures = Vec::new();
    for &(tuple, output, code) in cases {
        let args: Vec<&str> = tuple.split(' ').chain(["-o", output]).collect();
        let ct = ns.conntrack(&[&["-G"], &args[..]].concat());
        if ct.code != code {
            failures.push(format!("test expects conntrack to exit {code}\n{ct}"));
            continue;
        }
        let mask = if output == "save" {
            normalise_save
        } else {
            normalise_xml
        };
        for verb in ["get", "-G"] {
            let cs = ns.ctscope(&[&[verb], &args[..]].concat());
            if let Err(e) = compare(&ct, &cs, mask, shown) {
                failures.push(format!("{verb} {args:?}:\n{e}"));
            }
        }
    }
    // conntrack -G prints the XML header and no footer.
    let args: Vec<&str> = ["-G"]
        .into_iter()
        .chain(v6.split(' '))
        .chain(["-o", "xml"])
        .collect();
    let ct = ns.conntrack(&args);
    assert_eq!(
        skeleton(&ct)[..2],
        ["<?xml version=\"1.0\" encoding=\"utf-8\"?>", "<conntrack>"]
    );
    assert_eq!(skeleton(&ct).len(), 3, "{ct}");
    report(cases.len() * 2, &failures);
}

/// Empties the table and fills it with [`INSERTED`] again.
fn refill(ns: &Netns) {
    ns.conntrack(&["-F"]).expect_code(0);
    for entry in INSERTED {
        ns.insert(entry);
    }
}

#[test]
fn delete_xml_and_save() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let cases: &[&[&str]] = &[
        &["-p", "udp", "-o", "xml"],
        &["-f", "ipv6", "-o", "xml"],
        &["-s", "10.0.0.0/24", "-o", "xml,extended,id"],
        // conntrack -D prints no <timestamp>, even with ktimestamp.
        &["-p", "tcp", "-o", "xml,ktimestamp"],
        &["-p", "udp", "-o", "save"],
        &["-s", "10.0.0.0/24", "-o", "save"],
        &["-f", "ipv6", "-o", "save"],
        // Nothing matches: exit 1, nothing printed.
        &["-s", "192.0.2.1", "-o", "xml"],
        &["-s", "192.0.2.1", "-o", "save"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        refill(&ns);
        let ct = ns.conntrack(&[&["-D"], *args].concat());
        refill(&ns);
        let cs = ns.ctscope(&[&["delete"], *args].concat());
        let mask = if args.contains(&"save") {
            normalise_save
        } else {
            normalise_xml_id
        };
        match compare(&ct, &cs, mask, deleted) {
            Ok(0) if ct.code == 0 => failures.push(format!("-D {args:?} deleted nothing\n{ct}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("delete {args:?}:\n{e}")),
        }
        if args.contains(&"xml") && ct.stdout.contains("<conntrack>") {
            failures.push(format!("conntrack -D printed an XML header\n{ct}"));
        }
        if args.contains(&"save") && ct.code == 0 && !ct.stdout.starts_with("-D -t ") {
            failures.push(format!(
                "conntrack -D's save lines do not start with -D\n{ct}"
            ));
        }
    }
    report(cases.len(), &failures);
}

/// One UDP exchange on loopback, port 4200: NEW and UPDATE events with
/// counters, made by the kernel (no [USERSPACE]).
fn udp_exchange() {
    let wait = Some(Duration::from_secs(3));
    let mut buf = [0u8; 16];
    let server = UdpSocket::bind("127.0.0.1:4200").expect("bind udp 127.0.0.1:4200");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    server.set_read_timeout(wait).expect("set_read_timeout");
    client.set_read_timeout(wait).expect("set_read_timeout");
    client.send_to(b"ping", "127.0.0.1:4200").expect("send udp");
    let (_, peer) = server.recv_from(&mut buf).expect("recv udp");
    server.send_to(b"pong", peer).expect("send udp reply");
    client.recv_from(&mut buf).expect("recv udp reply");
}

/// The source address of the last change of an events run.
const SENTINEL: &str = "10.9.9.9";

/// Events of every kind and several protocols, by the kernel and by
/// conntrack, ending with the sentinel entry.
fn make_changes(ns: &Netns) {
    ns.in_netns(udp_exchange);
    for entry in [
        "-I -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 3 --dport 4 --state ESTABLISHED -u ASSURED -t 100",
        "-I -p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 5 --dport 6 --orig-vtag 7 --reply-vtag 8 \
         --state ESTABLISHED -t 100",
        "-I -p icmpv6 -s 2001:db8::1 -d 2001:db8::2 --icmpv6-type 128 --icmpv6-code 0 \
         --icmpv6-id 9 -t 100",
        "-I -p gre -s 10.0.0.1 -d 10.0.0.2 --srckey 1 --dstkey 2 -w 3 -t 100",
        "-U -p tcp -s 10.0.0.1 -m 5",
        "-D -p tcp -s 10.0.0.1",
        "-D -p udp --orig-port-dst 4200",
        "-I -p udp -s 10.9.9.9 -d 10.9.9.8 --sport 9 --dport 9 -t 100",
    ] {
        let args: Vec<&str> = entry.split_whitespace().collect();
        ns.conntrack(&args).expect_code(0);
    }
}

/// Waits (up to 5 s) until `bg` has printed a line holding `needle`.
fn wait_for(bg: &Background, needle: &str) -> Result<(), String> {
    if poll_until(Duration::from_secs(5), || bg.stdout_now().contains(needle)) {
        Ok(())
    } else {
        Err(format!(
            "`{}` printed no {needle:?} within 5 s; stdout so far:\n{}",
            bg.command(),
            bg.stdout_now().trim_end()
        ))
    }
}

#[test]
fn events_xml_and_save() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let formats: [&[&str]; 4] = [
        &["-o", "xml"],
        &["-o", "xml,timestamp,id"],
        &["-o", "save"],
        &["-o", "save,userspace", "-e", "NEW,DESTROY"],
    ];
    let mut runs: Vec<(&[&str], Background, Background)> = formats
        .iter()
        .map(|f| {
            let (cs, ct) = ns.spawn_events(f);
            (*f, cs, ct)
        })
        .collect();
    ns.wait_for_listeners(2 * runs.len())
        .unwrap_or_else(|e| panic!("{e}"));
    make_changes(&ns);
    // Whether a format's -o holds this word.
    let has = |format: &[&str], word: &str| format.iter().any(|a| a.contains(word));
    for (format, cs, ct) in &runs {
        let needle = if has(format, "save") {
            format!("-s {SENTINEL} ")
        } else {
            format!("<src>{SENTINEL}</src>")
        };
        for bg in [cs, ct] {
            wait_for(bg, &needle).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut failures = Vec::new();
    for (format, cs, ct) in &mut runs {
        let cs = cs.stop(Signal::SIGINT);
        let ct = ct.stop(Signal::SIGINT);
        let (mask, needles): (fn(&str) -> String, &[&str]) = if has(format, "save") {
            (
                normalise_save,
                &["-A -t ", "-D -t ", "[USERSPACE] portid=", "--orig-vtag 7"],
            )
        } else {
            (
                normalise_xml,
                &[
                    "<flow type=\"new\">",
                    "<flow type=\"update\">",
                    "<flow type=\"destroy\">",
                    "</flow> [USERSPACE] portid=",
                    "<counters><packets>1</packets>",
                    "\n</conntrack>\n",
                ],
            )
        };
        assert_holds(&ct, needles);
        if has(format, "timestamp") {
            assert_holds(&ct, &["</meta><when><hour>"]);
        }
        if has(format, "-e") {
            assert!(
                !ct.stdout.lines().any(|l| l.starts_with("-U ")),
                "conntrack -E -e NEW,DESTROY showed an UPDATE\n{ct}"
            );
        }
        match compare(&ct, &cs, mask, events) {
            Ok(n) => eprintln!("events {format:?}: {n} records, the same as conntrack -E's"),
            Err(e) => failures.push(format!("events {format:?}:\n{e}")),
        }
    }
    report(formats.len(), &failures);
}

/// An XML event run that sees no event prints nothing, not even the
/// document lines.
#[test]
fn events_xml_without_events() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let (mut cs, mut ct) = ns.spawn_events(&["-o", "xml"]);
    ns.wait_for_listeners(2).unwrap_or_else(|e| panic!("{e}"));
    let (cs, ct) = (cs.stop(Signal::SIGINT), ct.stop(Signal::SIGINT));
    assert!(ct.stdout.is_empty(), "{ct}");
    if let Err(e) = compare(&ct, &cs, normalise_xml, events) {
        panic!("{e}");
    }
    assert!(cs.stdout.is_empty(), "{cs}");
}

/// `save` with any other output type is refused as conntrack refuses it
/// (exit 1, also across repeated -o and for every command), a bad word is
/// a bad parameter (exit 2); ctscope says so in one line.
#[test]
fn refused_combinations() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let get = "-G -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2";
    let cases: &[(&str, i32)] = &[
        ("-L -o save,extended", 1),
        ("-L -o xml,save", 1),
        ("-L -o save -o id", 1),
        ("-L -o ktimestamp -o save", 1),
        ("-L -o save,labels", 1),
        ("-E -o save,timestamp", 1),
        ("-E -o xml -o save", 1),
        ("-D -p udp -o save,extended", 1),
        ("-L -o bogus,xml", 2),
        ("-L -o xml,", 2),
        ("-E -o savex", 2),
    ];
    let mut failures = Vec::new();
    let mut all: Vec<(String, i32)> = cases.iter().map(|(a, c)| (a.to_string(), *c)).collect();
    all.push((format!("{get} -o save,id"), 1));
    for (args, code) in &all {
        let args: Vec<&str> = args.split(' ').collect();
        // An accepted -E would wait for events: bounded by timeout(1).
        let ct = ns.exec(&[&["timeout", "5", "conntrack"], &args[..]].concat());
        if ct.code != *code {
            failures.push(format!("test expects conntrack to exit {code}\n{ct}"));
            continue;
        }
        let bin = ctscope_bin_str();
        let cs = ns.exec(&[&["timeout", "5", bin.as_str()], &args[..]].concat());
        if let Err(e) = cs.one_line_error(*code) {
            failures.push(format!("ctscope {args:?}: {e}"));
        }
    }
    // ctscope's own JSON does not mix with XML either.
    let cs = ns.ctscope(&["list", "-o", "json,xml"]);
    if let Err(e) = cs.one_line_error(2) {
        failures.push(format!("list -o json,xml: {e}"));
    }
    report(all.len() + 1, &failures);
}
