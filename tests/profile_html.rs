//! `ctscope profile --html FILE` in a real browser: headless Chromium loads
//! the page made from real churn in a namespace, with no console errors and
//! nothing fetched; each chart's SVG has its data drawn and the labels and
//! legends of this run (checked against the `-o json` report of the same
//! run); the screenshot is a real PNG. With `CTSCOPE_UPDATE_SCREENSHOT=1`
//! the screenshot is also copied to docs/profile-html.png, README's picture.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use ctscope_e2e::{Chromium, Netns, png_size};

/// The `<figure id="ID">` element of the page, whole.
fn figure<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<figure id=\"{id}\""))
        .unwrap_or_else(|| panic!("no figure {id}"));
    let len = dom[start..].find("</figure>").expect("figure closed");
    &dom[start..start + len]
}

/// The value of `name="..."` in one element's text.
fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let at = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = element[at..].find('"')?;
    Some(&element[at..at + len])
}

/// The `<text>` elements of an SVG: (text-anchor, text trimmed).
fn anchored_texts(svg: &str) -> Vec<(String, String)> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let open = &t[..t.find('>')?];
            let body = &t[open.len() + 1..];
            Some((
                attr(open, "text-anchor").unwrap_or("").to_string(),
                body[..body.find("</text>")?].trim().to_string(),
            ))
        })
        .collect()
}

/// The texts of the `<text>` elements of an SVG, trimmed.
fn texts(svg: &str) -> Vec<String> {
    anchored_texts(svg).into_iter().map(|t| t.1).collect()
}

/// The data lines of a chart: polylines in a colour other than the black
/// of axes and ticks, as (stroke, number of points).
fn data_lines(svg: &str) -> Vec<(String, usize)> {
    svg.split("<polyline")
        .skip(1)
        .filter_map(|p| {
            let element = &p[..p.find('>')?];
            let stroke = attr(element, "stroke")?;
            let points = attr(element, "points")?.split_whitespace().count();
            (stroke != "#000000").then(|| (stroke.to_string(), points))
        })
        .collect()
}

/// The `<dd id="run-TERM">` text of the page's header.
fn header<'a>(dom: &'a str, term: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"run-{term}\">"))
        .unwrap_or_else(|| panic!("no {term} in the header"))
        + term.len()
        + 10;
    &dom[at..at + dom[at..].find("</dd>").expect("dd closed")]
}

/// Real TCP connections on lo in the namespace (NEW then ESTABLISHED: set-up
/// times), each closed after a request.
fn tcp_connections(ns: &Netns, n: usize) {
    ns.in_netns(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("address");
        for _ in 0..n {
            let mut client = TcpStream::connect(addr).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            client.write_all(b"x").expect("write");
            let mut byte = [0u8];
            server.read_exact(&mut byte).expect("read");
        }
    });
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

#[test]
fn html_report_loads_clean_in_chromium_with_every_chart_drawn() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let base = std::env::temp_dir().join(format!("{}-html", ns.name()));
    let page = base.with_extension("html");
    let mut profile = ns.spawn_ctscope(&[
        "profile",
        "--duration",
        "5",
        "-o",
        "json",
        "--html",
        page.to_str().expect("utf-8 path"),
    ]);
    ns.wait_for_listeners(1).expect("profile listening");
    std::thread::sleep(Duration::from_millis(300));
    tcp_connections(&ns, 50);
    ctscope_e2e::spread_lifetimes(&ns);
    let out = profile
        .wait_timeout(Duration::from_secs(20))
        .expect("profile ends");
    assert_eq!(out.code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    let html = std::fs::read_to_string(&page).expect("the HTML file");
    // Self-contained: nothing to fetch, no script.
    for fetch in [
        "<script", "<link", "<img", "src=", "href=", "url(", "@import",
    ] {
        assert!(!html.contains(fetch), "the page has {fetch}");
    }

    let browser = Chromium::new(&base);
    // The console check itself: a page with a console error and an uncaught
    // exception must show both, or a clean result below would prove nothing.
    let control = base.with_extension("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><p>x</p><script>console.error('control-error'); nothere();</script>",
    )
    .expect("control page");
    let bad = browser.load(&control);
    let _ = std::fs::remove_file(&control);
    assert!(
        bad.console.iter().any(|l| l.contains("control-error"))
            && bad.console.iter().any(|l| l.contains("nothere")),
        "chromium did not report the control page's console errors: {:?}",
        bad.console
    );

    let loaded = browser.load(&page);
    assert!(loaded.console.is_empty(), "console: {:?}", loaded.console);
    let dom = &loaded.dom;
    assert!(dom.contains("<h1>ctscope profile</h1>"), "{dom}");

    // The header: the source, kernel, duration and loss of this run.
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(
        header(dom, "source"),
        report["source"].as_str().expect("source")
    );
    assert_eq!(header(dom, "kernel"), kernel.trim());
    let secs = report["duration_secs"].as_f64().expect("duration");
    assert_eq!(header(dom, "duration"), format!("{secs:.1} s"));
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(header(dom, "loss"), "none");
    let new = report["new"].as_u64().expect("new");
    assert!(new >= 80, "{report}");
    assert!(header(dom, "NEW").starts_with(&format!("{new} (")), "{dom}");

    // Each chart: an SVG with data drawn and this run's labels.
    let churn = figure(dom, "churn");
    let lines = data_lines(churn);
    assert_eq!(lines.len(), 2, "NEW and DESTROY lines: {lines:?}");
    assert!(
        lines.iter().all(|l| l.1 >= 4),
        "a point a second: {lines:?}"
    );
    let labels = texts(churn);
    for want in [
        "seconds into the run".to_string(),
        "events per second".to_string(),
        format!("NEW ({new} in all)"),
        format!("DESTROY ({} in all)", report["destroy"]),
    ] {
        assert!(labels.contains(&want), "churn lacks {want:?}: {labels:?}");
    }
    // The time axis (its ticks centred under it; the y axis's are
    // right-aligned) ends at the run's length.
    let last_tick = anchored_texts(churn)
        .iter()
        .filter(|t| t.0 == "middle")
        .filter_map(|t| t.1.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!((last_tick - secs).abs() < 1.0, "{labels:?}");

    let entries = figure(dom, "entries");
    assert_eq!(data_lines(entries).len(), 2, "{entries}");
    let max = report["pressure"]["max"]
        .as_u64()
        .expect("nf_conntrack_max");
    let labels = texts(entries);
    assert!(
        labels.contains(&format!("nf_conntrack_max ({max})")),
        "{labels:?}"
    );

    let lifetime = figure(dom, "lifetime");
    let lines = data_lines(lifetime);
    let labels = texts(lifetime);
    let lifetimes = report["lifetime_ms"].as_array().expect("lifetimes");
    assert_eq!(lines.len(), lifetimes.len(), "{lines:?}");
    assert!(lines.iter().all(|l| l.1 >= 2), "{lines:?}");
    for pair in lifetimes {
        let want = format!(
            "{} ({})",
            pair[0].as_str().expect("proto"),
            pair[1]["count"]
        );
        assert!(
            labels.contains(&want),
            "lifetime lacks {want:?}: {labels:?}"
        );
    }
    assert!(
        labels.contains(&"lifetime, ms (log scale)".to_string()),
        "{labels:?}"
    );

    let setup = figure(dom, "tcp-setup");
    let q = &report["tcp_setup_us"];
    assert!(q["count"].as_u64().expect("count") >= 50, "{report}");
    assert_eq!(data_lines(setup).len(), 1, "{setup}");
    let labels = texts(setup);
    let want = format!("TCP set-up ({} samples, max {} us)", q["count"], q["max"]);
    assert!(labels.contains(&want), "{want:?}: {labels:?}");
    assert!(labels.contains(&"90%".to_string()), "{labels:?}");

    // ctnetlink has no kernel timestamps: no delivery chart, and why.
    let delivery = figure(dom, "delivery");
    assert!(!delivery.contains("<svg"), "{delivery}");
    assert!(delivery.contains("needs the eBPF source"), "{delivery}");

    // The talkers' tables.
    let dport = report["top_dports"][0]["key"].as_str().expect("a port");
    assert!(dom.contains(&format!("<td>{dport}</td>")), "{dport}");

    // The screenshot: a real PNG of the window's size.
    let png = base.with_extension("png");
    browser.screenshot(&page, &png, 1600, 1450);
    let _ = std::fs::remove_file(&page);
    let bytes = std::fs::read(&png).expect("the screenshot");
    let _ = std::fs::remove_file(&png);
    assert_eq!(png_size(&bytes), Some((1600, 1450)));
    // A blank page compresses to a few kB; charts and text do not.
    assert!(bytes.len() > 50_000, "{} bytes", bytes.len());
    if std::env::var_os("CTSCOPE_UPDATE_SCREENSHOT").is_some() {
        let docs = workspace().join("docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::write(docs.join("profile-html.png"), &bytes).expect("docs/profile-html.png");
    }
}

/// An --html file that cannot be written ends profile at once, before the
/// run, with one line naming it: exit 1.
#[test]
fn an_unwritable_html_file_fails_at_once() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let started = std::time::Instant::now();
    let out = ns.ctscope(&[
        "profile",
        "--duration",
        "30",
        "--html",
        "/nonexistent-dir/report.html",
    ]);
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    out.one_line_error(1)
        .unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(out.stderr.contains("/nonexistent-dir/report.html"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}
