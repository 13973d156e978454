//! The screen drawn on ratatui's TestBackend, keys pressed on its App.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Condvar},
    time::Instant,
};

use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
};

use super::*;
use crate::{
    ct::{EventKind, ips, proto, samples::flow},
    ui::{
        app::Settings,
        resolve::{Limits, Resolver, ReverseLookup, Services},
        view::View,
    },
};

fn entry(src: &str, sport: u16) -> Conntrack {
    Conntrack {
        status: Some(ips::CONFIRMED),
        timeout: Some(30),
        ..flow(src, "10.9.9.9", proto::UDP, sport, 53)
    }
}

/// Names from a table, each lookup held until `gate` opens: the screen
/// must draw meanwhile.
struct Fake {
    names: HashMap<IpAddr, String>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl ReverseLookup for Fake {
    fn name(&self, addr: IpAddr) -> Option<String> {
        let (open, cv) = &*self.gate;
        let mut o = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*o {
            o = cv
                .wait(o)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        self.names.get(&addr).cloned()
    }
}

fn services() -> Services {
    Services::parse("domain 53/udp\nhttps 443/tcp\n")
}

/// A resolver answering from `names` once the returned gate opens.
fn resolver(names: &[(&str, &str)]) -> (Resolver, Arc<(Mutex<bool>, Condvar)>) {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let fake = Fake {
        names: names
            .iter()
            .map(|(a, n)| (a.parse().expect("addr"), (*n).to_string()))
            .collect(),
        gate: Arc::clone(&gate),
    };
    (Resolver::new(fake, Limits::default(), services), gate)
}

fn open(gate: &(Mutex<bool>, Condvar)) {
    *gate
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    gate.1.notify_all();
}

fn app_with(view: View, settings: Settings) -> App {
    App::new(view, settings, resolver(&[]).0)
}

fn app(counters: bool) -> App {
    app_with(
        View::default(),
        Settings {
            counters,
            ..Settings::default()
        },
    )
}

fn screen(app: &mut App, t: &table::Table) -> String {
    screen_sized(app, t, 120, 14)
}

/// One frame as `run` makes it: names taken, rows selected, names asked
/// for, totals counted, drawn.
fn frame_buffer(app: &mut App, t: &table::Table, width: u16, height: u16) -> Buffer {
    let mut term = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    let page = app.page(height);
    app.take_names();
    let (rows, total) = top::select(t.entries(), &app.view, app.offset + page);
    let shown: Vec<&Tracked> = rows.iter().skip(app.offset).copied().collect();
    app.request_names(&shown);
    let totals = app.totals.then(|| Totals::count(t.entries(), total));
    let status = Status {
        updates: "events",
        source: "netlink",
        ..Status::default()
    };
    let frame = Shown {
        rows: &shown,
        total,
        totals,
    };
    term.draw(|f| draw(f, app, frame, t, &status))
        .expect("draw");
    term.backend().buffer().clone()
}

fn text(buf: &Buffer) -> String {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn screen_sized(app: &mut App, t: &table::Table, width: u16, height: u16) -> String {
    text(&frame_buffer(app, t, width, height))
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn sample() -> table::Table {
    let mut t = table::Table::new();
    for (src, port) in [("10.0.0.3", 3), ("10.0.0.1", 1), ("10.0.0.2", 2)] {
        t.apply(EventKind::New, &entry(src, port), Instant::now(), None);
    }
    t
}

#[test]
fn renders_sorted_rows_and_reverses_on_r() {
    let t = sample();
    let mut app = app(false);
    let s = screen(&mut app, &t);
    let a = s.find("10.0.0.1:1").expect("row 1");
    let b = s.find("10.0.0.2:2").expect("row 2");
    let c = s.find("10.0.0.3:3").expect("row 3");
    assert!(a < b && b < c, "{s}");
    assert!(s.contains("source netlink -- 3 entries"), "{s}");
    assert!(s.contains("tcp set-up: n=0 "), "{s}");
    assert!(s.contains("delivery: needs the eBPF source"), "{s}");
    app.on_key(key(KeyCode::Char('r')), &[], 3, 7);
    let s = screen(&mut app, &t);
    assert!(s.find("10.0.0.3:3") < s.find("10.0.0.1:1"), "{s}");
}

#[test]
fn columns_fit_their_cells_and_empty_ones_go() {
    let mut t = table::Table::new();
    let mut tcp = Conntrack {
        status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
        timeout: Some(3215),
        proto_state: Some(crate::ct::ProtoState::Tcp(3)),
        ..flow(
            "2001:db8:aaaa:bbbb::1",
            "2001:db8:cccc:dddd::2",
            proto::TCP,
            40000,
            443,
        )
    };
    tcp.counters_orig = Some(crate::ct::Counters {
        packets: 12,
        bytes: 123_456_789,
    });
    t.apply(EventKind::New, &tcp, Instant::now(), None);
    // A protocol conntrack has no name for shows its number.
    let other = Conntrack {
        timeout: Some(30),
        ..flow("10.0.0.1", "10.0.0.2", 99, 0, 0)
    };
    t.apply(EventKind::New, &other, Instant::now(), None);
    let mut app = app(true);
    let s = screen(&mut app, &t);
    assert!(s.contains(" ESTABLISHED "), "state cut:\n{s}");
    assert!(s.contains(" 0:53:35"), "TTL cut:\n{s}");
    assert!(
        s.contains("[2001:db8:aaaa:bbbb::1]:40000"),
        "address cut:\n{s}"
    );
    assert!(s.contains(" 99 "), "protocol 99 not shown by number:\n{s}");
    assert!(!s.contains("unknown"), "{s}");
    // No NAT, mark or zone on screen: no blank columns for them.
    assert!(
        !s.contains("NAT") && !s.contains("Mark") && !s.contains("Zone"),
        "{s}"
    );
}

#[test]
fn help_fits_any_terminal() {
    let t = sample();
    let mut app = app(false);
    app.on_key(key(KeyCode::Char('h')), &[], 3, 7);
    for (w, h) in [(120, 14), (40, 12), (20, 5)] {
        let s = screen_sized(&mut app, &t, w, h);
        assert!(s.contains("q quit"), "{w}x{h}:\n{s}");
    }
    // Every key is on a screen wide enough, none cut.
    let s = screen_sized(&mut app, &t, 40, 12);
    for k in ["End", "Ctrl-Z suspend", "x delete"] {
        assert!(s.contains(k), "{k} missing at 40x12:\n{s}");
    }
    app.on_key(key(KeyCode::Char('h')), &[], 3, 7);
    assert!(screen(&mut app, &t).contains("10.0.0.1:1"));
}

#[test]
fn text_filter_prompt() {
    let t = sample();
    let mut app = app(false);
    app.on_key(key(KeyCode::Char('/')), &[], 3, 7);
    for c in "10.0.0.2".chars() {
        app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
    }
    assert!(screen(&mut app, &t).contains("filter text: 10.0.0.2_"));
    app.on_key(key(KeyCode::Enter), &[], 3, 7);
    let s = screen(&mut app, &t);
    assert!(s.contains("10.0.0.2:2") && !s.contains("10.0.0.1:1"), "{s}");
    // `/` opens empty; Enter on nothing clears the filter.
    app.on_key(key(KeyCode::Char('/')), &[], 1, 7);
    assert!(screen(&mut app, &t).contains("filter text: _"));
    app.on_key(key(KeyCode::Enter), &[], 1, 7);
    assert!(app.view.text.is_empty());
    assert!(screen(&mut app, &t).contains("10.0.0.1:1"));
    // s: source filter with a prefix.
    app.view.text.clear();
    app.on_key(key(KeyCode::Char('s')), &[], 3, 7);
    for c in "10.0.0.3/32".chars() {
        app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
    }
    app.on_key(key(KeyCode::Enter), &[], 3, 7);
    let s = screen(&mut app, &t);
    assert!(s.contains("10.0.0.3:3") && !s.contains("10.0.0.2:2"), "{s}");
}

#[test]
fn delete_needs_confirmation() {
    let t = sample();
    let mut app = app(false);
    let (rows, total) = top::select(t.entries(), &app.view, 7);
    app.on_key(key(KeyCode::Down), &rows, total, 7);
    assert_eq!(
        app.on_key(key(KeyCode::Char('x')), &rows, total, 7),
        Action::None
    );
    assert!(screen(&mut app, &t).contains("Delete 10.0.0.2 -> 10.9.9.9? (y/n)"));
    match app.on_key(key(KeyCode::Char('y')), &rows, total, 7) {
        Action::Delete(ct) => assert_eq!(ct.orig.sport, Some(2)),
        other => panic!("expected a delete, got {other:?}"),
    }
    app.on_key(key(KeyCode::Char('x')), &rows, total, 7);
    assert_eq!(
        app.on_key(key(KeyCode::Char('n')), &rows, total, 7),
        Action::None
    );
    assert_eq!(app.message.as_deref(), Some("delete cancelled"));
    assert_eq!(
        app.on_key(key(KeyCode::Char('q')), &rows, total, 7),
        Action::Quit
    );
}

/// One flow per protocol iptstate colours (and one it does not), plus DNS
/// and loopback flows.
fn mixed() -> table::Table {
    let mut t = table::Table::new();
    let now = Instant::now();
    let flows = [
        ("10.0.0.1", "10.8.0.1", proto::TCP, 1001, 443),
        ("10.0.0.2", "10.8.0.2", proto::UDP, 1002, 53),
        ("10.0.0.3", "10.8.0.3", proto::ICMP, 0, 0),
        ("10.0.0.4", "10.8.0.4", proto::GRE, 0, 0),
        ("127.0.0.1", "127.0.0.1", proto::UDP, 1005, 6000),
    ];
    for (src, dst, l4, sport, dport) in flows {
        let ct = Conntrack {
            status: Some(ips::CONFIRMED),
            timeout: Some(30),
            ..flow(src, dst, l4, sport, dport)
        };
        t.apply(EventKind::New, &ct, now, None);
    }
    t
}

/// The cells of the row starting with `start`.
fn row<'a>(screen: &'a str, start: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|l| l.starts_with(start))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

/// The row whose text starts with `start`, and its first cell's style.
fn row_color(buf: &Buffer, start: &str) -> Option<Color> {
    let lines = text(buf);
    let y = lines.lines().position(|l| l.starts_with(start))?;
    buf[(0, u16::try_from(y).ok()?)].style().fg
}

#[test]
fn rows_are_coloured_by_protocol_until_c() {
    let t = mixed();
    let mut app = app(false);
    // Selected (first) row aside: it is reversed as well.
    app.selected = 4;
    let buf = frame_buffer(&mut app, &t, 120, 14);
    assert_eq!(row_color(&buf, "10.0.0.1:1001"), Some(Color::Green));
    assert_eq!(row_color(&buf, "10.0.0.2:1002"), Some(Color::Yellow));
    assert_eq!(row_color(&buf, "10.0.0.3 "), Some(Color::Red));
    assert_eq!(row_color(&buf, "10.0.0.4 "), Some(Color::Reset));
    app.on_key(key(KeyCode::Char('c')), &[], 5, 7);
    assert!(!app.color);
    assert_eq!(app.message.as_deref(), Some("colours off"));
    let buf = frame_buffer(&mut app, &t, 120, 14);
    assert_eq!(row_color(&buf, "10.0.0.1:1001"), Some(Color::Reset));
    // --no-color starts without.
    let mut plain = app_with(
        View::default(),
        Settings {
            color: false,
            ..Settings::default()
        },
    );
    let buf = frame_buffer(&mut plain, &t, 120, 14);
    assert_eq!(row_color(&buf, "10.0.0.2:1002"), Some(Color::Reset));
}

#[test]
fn t_shows_iptstate_s_totals_line() {
    let t = mixed();
    let mut app = app(false);
    let before = screen(&mut app, &t);
    assert!(!before.contains("Total States"), "{before}");
    app.on_key(key(KeyCode::Char('f')), &[], 5, 7);
    app.on_key(key(KeyCode::Char('t')), &[], 4, 7);
    let s = screen(&mut app, &t);
    let line = s.lines().nth(5).unwrap_or_default();
    assert_eq!(
        line, "Total States: 5 -- TCP: 1 UDP: 2 ICMP: 1 Other: 1 (Filtered: 1)",
        "{s}"
    );
    // The table moves down a line; a page holds one row less.
    assert_eq!(app.page(14), 6);
    assert_eq!(app_with(View::default(), Settings::default()).page(14), 7);
}

#[test]
fn switch_keys_change_the_rows_and_say_so() {
    let t = mixed();
    let mut app = app(false);
    assert_eq!(screen(&mut app, &t).matches("10.8.0.").count(), 4);
    // L: no UDP/TCP to port 53.
    app.on_key(key(KeyCode::Char('L')), &[], 5, 7);
    let s = screen(&mut app, &t);
    assert!(!s.contains("10.0.0.2:1002"), "{s}");
    assert!(
        s.contains("DNS flows hidden") && s.contains("no DNS"),
        "{s}"
    );
    // f: no loopback.
    app.on_key(key(KeyCode::Char('f')), &[], 4, 7);
    let s = screen(&mut app, &t);
    assert!(!s.contains("127.0.0.1:1005"), "{s}");
    assert!(s.contains("no loopback"), "{s}");
    // s 10.0.0.0/30 then i: what the filter hides, skips still applied.
    app.on_key(key(KeyCode::Char('s')), &[], 3, 7);
    for c in "10.0.0.0/30".chars() {
        app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
    }
    app.on_key(key(KeyCode::Enter), &[], 3, 7);
    let s = screen(&mut app, &t);
    assert!(
        s.contains("10.0.0.1:1001") && !s.contains("10.0.0.4 "),
        "{s}"
    );
    app.on_key(key(KeyCode::Char('i')), &[], 2, 7);
    let s = screen(&mut app, &t);
    assert!(
        s.contains("10.0.0.4 ") && !s.contains("10.0.0.1:1001"),
        "{s}"
    );
    assert!(!s.contains("127.0.0.1"), "the skips are not inverted:\n{s}");
    assert!(s.contains("filters inverted"), "{s}");
    app.on_key(key(KeyCode::Char('i')), &[], 1, 7);
    assert!(screen(&mut app, &t).contains("10.0.0.1:1001"));
}

#[test]
fn names_come_later_and_never_hold_a_frame() {
    let t = mixed();
    let (r, gate) = resolver(&[("10.0.0.1", "web.example.test"), ("10.8.0.2", "ns.test")]);
    let mut app = App::new(View::default(), Settings::default(), r.clone());
    app.on_key(key(KeyCode::Char('l')), &[], 5, 7);
    assert!(app.lookup && app.view.no_dns, "l hides DNS flows too");
    app.on_key(key(KeyCode::Char('L')), &[], 5, 7);
    // The lookups hang; frames come anyway, with addresses (and service
    // names, which need no lookup).
    for _ in 0..3 {
        let s = screen(&mut app, &t);
        assert_eq!(
            row(&s, "10.0.0.1:")[..2],
            ["10.0.0.1:1001", "10.8.0.1:https"],
            "{s}"
        );
        assert!(s.contains("names"), "{s}");
    }
    open(&gate);
    assert!(r.wait_idle(Instant::now() + Duration::from_secs(10)));
    let s = screen(&mut app, &t);
    assert_eq!(
        row(&s, "web.")[..2],
        ["web.example.test:1001", "10.8.0.1:https"],
        "{s}"
    );
    assert_eq!(
        row(&s, "10.0.0.2:")[..2],
        ["10.0.0.2:1002", "ns.test:domain"],
        "{s}"
    );
    // The / filter searches names too.
    app.view.text = "web.example".into();
    let s = screen(&mut app, &t);
    assert!(
        s.contains("-- 1 shown --") && s.contains("web.example.test"),
        "{s}"
    );
    app.view.text.clear();
    app.on_key(key(KeyCode::Char('l')), &[], 5, 7);
    let s = screen(&mut app, &t);
    assert_eq!(
        row(&s, "10.0.0.1:")[..2],
        ["10.0.0.1:1001", "10.8.0.1:443"],
        "{s}"
    );
}

#[test]
fn long_names_are_cut_to_fit_and_marked_on_m() {
    let mut t = table::Table::new();
    let ct = Conntrack {
        status: Some(ips::CONFIRMED),
        timeout: Some(30),
        proto_state: Some(crate::ct::ProtoState::Tcp(3)),
        ..flow("10.0.0.1", "10.8.0.1", proto::TCP, 40000, 443)
    };
    t.apply(EventKind::New, &ct, Instant::now(), None);
    let (r, gate) = resolver(&[
        ("10.0.0.1", "workstation-42.office.example.test"),
        ("10.8.0.1", "images.cdn.provider.example.net"),
    ]);
    open(&gate);
    let settings = Settings {
        lookup: true,
        ..Settings::default()
    };
    let mut app = App::new(View::default(), settings, r.clone());
    let _ = screen_sized(&mut app, &t, 70, 12);
    assert!(r.wait_idle(Instant::now() + Duration::from_secs(10)));
    // 70 columns: Prt (3), State (11), TTL (7) and gaps leave 41 for the
    // two: 21 and 20. The source keeps its start, the destination its end.
    let s = screen_sized(&mut app, &t, 70, 12);
    let line = s
        .lines()
        .find(|l| l.contains(" tcp "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("workstation-42.:40000  er.example.net:https  tcp"),
        "{s}"
    );
    app.on_key(key(KeyCode::Char('m')), &[], 1, 7);
    let s = screen_sized(&mut app, &t, 70, 12);
    assert!(
        s.contains("workstation-42+:40000  +r.example.net:https  tcp"),
        "{s}"
    );
    // Wide enough: nothing cut, nothing marked.
    let s = screen_sized(&mut app, &t, 140, 12);
    assert_eq!(
        row(&s, "work")[..2],
        [
            "workstation-42.office.example.test:40000",
            "images.cdn.provider.example.net:https"
        ],
        "{s}"
    );
}

#[test]
fn r_sets_the_refresh_rate() {
    let t = sample();
    let mut app = app(false);
    assert_eq!(app.refresh, Duration::from_millis(500));
    app.on_key(key(KeyCode::Char('R')), &[], 3, 7);
    for c in "2.5".chars() {
        app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
    }
    assert!(screen(&mut app, &t).contains("refresh every (seconds): 2.5_"));
    app.on_key(key(KeyCode::Enter), &[], 3, 7);
    assert_eq!(app.refresh, Duration::from_millis(2500));
    assert!(screen(&mut app, &t).contains("refresh every 2.5s"));
    for bad in ["0", "x", "5000"] {
        app.on_key(key(KeyCode::Char('R')), &[], 3, 7);
        for c in bad.chars() {
            app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
        }
        app.on_key(key(KeyCode::Enter), &[], 3, 7);
        assert_eq!(app.refresh, Duration::from_millis(2500), "{bad}");
        let msg = app.message.clone().unwrap_or_default();
        assert!(
            msg.starts_with(&format!("invalid refresh `{bad}'")),
            "{msg}"
        );
    }
    // Blank keeps the rate.
    app.on_key(key(KeyCode::Char('R')), &[], 3, 7);
    app.on_key(key(KeyCode::Enter), &[], 3, 7);
    assert_eq!(app.refresh, Duration::from_millis(2500));
    app.on_key(key(KeyCode::Char('h')), &[], 3, 7);
    let s = screen(&mut app, &t);
    assert!(
        s.contains("R rate 2.5s") && s.contains("c colours on"),
        "{s}"
    );
}

/// `H` swaps the table for the histogram charts, with the rate sparklines
/// under the header; `H` again brings the rows back.
#[test]
fn h_swaps_the_table_for_charts() {
    let mut t = table::Table::new();
    let now = Instant::now();
    for sport in 1..=3 {
        t.apply(EventKind::New, &entry("10.0.0.1", sport), now, None);
    }
    t.apply(
        EventKind::Destroy,
        &entry("10.0.0.1", 1),
        now + Duration::from_millis(300),
        None,
    );
    let mut app = app(false);
    let rows = screen_sized(&mut app, &t, 100, 30);
    assert!(rows.contains("\nSource"), "{rows}");
    let before = app.page(30);
    app.on_key(key(KeyCode::Char('H')), &[], 2, 7);
    assert!(app.charts);
    let charts = screen_sized(&mut app, &t, 100, 30);
    assert!(!charts.contains("\nSource"), "{charts}");
    assert!(charts.contains("\nNEW/s     last 60 s"), "{charts}");
    assert!(charts.contains("\nDESTROY/s last 60 s"), "{charts}");
    assert!(charts.contains(" lifetime udp, ms (n=1) "), "{charts}");
    assert!(charts.contains("│200ms..500ms 1█"), "{charts}");
    // The sparklines take two header lines from the page.
    assert_eq!(app.page(30), before - 2);
    app.on_key(key(KeyCode::Char('h')), &[], 2, 7);
    assert!(screen(&mut app, &t).contains("H charts on"));
    app.on_key(key(KeyCode::Char('h')), &[], 2, 7);
    app.on_key(key(KeyCode::Char('H')), &[], 2, 7);
    assert!(screen_sized(&mut app, &t, 100, 30).contains("\nSource"));
}
