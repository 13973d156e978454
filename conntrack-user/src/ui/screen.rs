//! The live `ctscope top` screen (ratatui), split as oryx and bandwhich do:
//! `App` holds the state and handles keys, `draw` renders, `run` owns the
//! terminal and the loop. The table is fed by a background thread (event
//! source + periodic dumps); a frame selects and sorts only the rows it
//! shows.
use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};

use crate::{
    ct::Conntrack,
    table::{self, Tracked},
    ui::rows::{self as top, View},
};

/// What the screen is waiting for the user to type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// `/`: text filter.
    Text(String),
    /// `s`: source address filter.
    Source(String),
    /// `d`: destination address filter.
    Destination(String),
    /// `S`: source port filter.
    SourcePort(String),
    /// `D`: destination port filter.
    DestinationPort(String),
}

/// What a key asks the caller to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Delete this entry (confirmed).
    Delete(Box<Conntrack>),
    /// Take a fresh snapshot now.
    Refresh,
    /// Leave.
    Quit,
    /// Ctrl-Z: give the terminal back and stop, as a shell job.
    Suspend,
}

/// The screen's state.
#[derive(Clone, Debug)]
pub struct App {
    /// Sort, filters.
    pub view: View,
    /// Bytes/packets/rate columns (`C`).
    pub counters: bool,
    /// First row shown.
    pub offset: usize,
    /// Selected row, absolute.
    pub selected: usize,
    /// `p`: the rows stop changing.
    pub paused: bool,
    /// An open prompt.
    pub prompt: Option<Prompt>,
    /// `x` pressed on this entry: waiting for y/n.
    pub confirm_delete: Option<Box<Conntrack>>,
    /// `h`.
    pub show_help: bool,
    /// A one-line message (errors, results).
    pub message: Option<String>,
}

impl App {
    /// A screen with this view.
    pub fn new(view: View, counters: bool) -> Self {
        Self {
            view,
            counters,
            offset: 0,
            selected: 0,
            paused: false,
            prompt: None,
            confirm_delete: None,
            show_help: false,
            message: None,
        }
    }

    fn finish_prompt(&mut self, p: Prompt) {
        let parse_net = |s: &str| -> Result<Option<ipnet::IpNet>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(Some)
                .map_err(|_| format!("not an address: {s}"))
        };
        let parse_port = |s: &str| -> Result<Option<u16>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse().map(Some).map_err(|_| format!("not a port: {s}"))
        };
        let result = match p {
            Prompt::Text(s) => {
                self.view.text = s;
                Ok(())
            }
            Prompt::Source(s) => parse_net(&s).map(|n| self.view.filter.orig_src = n),
            Prompt::Destination(s) => parse_net(&s).map(|n| self.view.filter.orig_dst = n),
            Prompt::SourcePort(s) => parse_port(&s).map(|n| self.view.filter.orig_sport = n),
            Prompt::DestinationPort(s) => parse_port(&s).map(|n| self.view.filter.orig_dport = n),
        };
        self.message = result.err();
        self.offset = 0;
        self.selected = 0;
    }

    /// Handles one key. `shown` are the rows on screen (from `offset`),
    /// `total` the rows passing the filters, `page` the rows that fit.
    pub fn on_key(
        &mut self,
        key: KeyEvent,
        shown: &[&Tracked],
        total: usize,
        page: usize,
    ) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        // In raw mode the terminal sends Ctrl-Z as a key, not SIGTSTP.
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('z') {
            return Action::Suspend;
        }
        if let Some(ct) = self.confirm_delete.take() {
            return match key.code {
                KeyCode::Char('y' | 'Y') => Action::Delete(ct),
                _ => {
                    self.message = Some("delete cancelled".into());
                    Action::None
                }
            };
        }
        if let Some(prompt) = self.prompt.as_mut() {
            let buf = match prompt {
                Prompt::Text(b)
                | Prompt::Source(b)
                | Prompt::Destination(b)
                | Prompt::SourcePort(b)
                | Prompt::DestinationPort(b) => b,
            };
            match key.code {
                KeyCode::Enter => {
                    if let Some(p) = self.prompt.take() {
                        self.finish_prompt(p);
                    }
                }
                KeyCode::Esc => self.prompt = None,
                KeyCode::Backspace => {
                    buf.pop();
                }
                KeyCode::Char(c) => buf.push(c),
                _ => {}
            }
            return Action::None;
        }
        self.message = None;
        let last = total.saturating_sub(1);
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('b') => self.view.sort = self.view.sort.cycle(true),
            KeyCode::Char('B') => self.view.sort = self.view.sort.cycle(false),
            KeyCode::Char('r') => self.view.reverse = !self.view.reverse,
            KeyCode::Char('C') => self.counters = !self.counters,
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('h') => self.show_help = !self.show_help,
            KeyCode::Char(' ') => return Action::Refresh,
            // Opens empty, as iptstate does: Enter on nothing clears the filter.
            KeyCode::Char('/') => self.prompt = Some(Prompt::Text(String::new())),
            KeyCode::Char('s') => self.prompt = Some(Prompt::Source(String::new())),
            KeyCode::Char('d') => self.prompt = Some(Prompt::Destination(String::new())),
            KeyCode::Char('S') => self.prompt = Some(Prompt::SourcePort(String::new())),
            KeyCode::Char('D') => self.prompt = Some(Prompt::DestinationPort(String::new())),
            KeyCode::Char('x') => {
                if let Some(t) = shown.get(self.selected.saturating_sub(self.offset)) {
                    self.confirm_delete = Some(Box::new(t.ct.clone()));
                }
            }
            KeyCode::Down => self.selected = (self.selected + 1).min(last),
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = (self.selected + page).min(last),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(page),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = last,
            _ => {}
        }
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if page > 0 && self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
        Action::None
    }
}

/// What the side panel shows about the source and the table.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// "netlink" or "ebpf".
    pub source: &'static str,
    /// Events per second lately.
    pub events_per_sec: f64,
    /// NEW per second.
    pub new_per_sec: f64,
    /// DESTROY per second.
    pub destroy_per_sec: f64,
    /// Events or overruns lost.
    pub lost: u64,
    /// nf_conntrack_max.
    pub max: Option<u64>,
    /// A note to show once (e.g. why rates are empty).
    pub note: Option<String>,
}

/// The keys, as the help screen lists them.
const HELP: &[&str] = &[
    "q quit",
    "h help",
    "b/B sort",
    "r reverse",
    "C counters",
    "/ filter",
    "s/d src/dst",
    "S/D ports",
    "x delete",
    "p pause",
    "space refresh",
    "Ctrl-Z suspend",
    "arrows PgUp PgDn Home End",
];

/// The help entries packed into lines of at most `width` columns, never
/// splitting an entry.
fn help_lines(width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for entry in HELP {
        match lines.last_mut() {
            Some(line) if line.len() + 2 + entry.len() <= width => {
                line.push_str("  ");
                line.push_str(entry);
            }
            _ => lines.push((*entry).to_string()),
        }
    }
    lines
}

/// "n=… p50=… p90=… p99=… p99.9=… max=…" with a unit.
fn quantiles(h: &hdrhistogram::Histogram<u64>, unit: &str) -> String {
    let [n, p50, p90, p99, p999, max] = table::summary(h);
    format!(
        "n={n} p50={p50}{unit} p90={p90}{unit} p99={p99}{unit} p99.9={p999}{unit} max={max}{unit}"
    )
}

/// Renders one frame.
pub fn draw(
    frame: &mut Frame,
    app: &App,
    shown: &[&Tracked],
    total: usize,
    table: &table::Table,
    status: &Status,
) {
    if app.show_help {
        // The keys over the whole screen, wrapped to its width, so a
        // narrow or short terminal shows them all.
        let area = frame.area();
        let mut lines = help_lines(usize::from(area.width));
        // The title only where every key still fits under it.
        if lines.len() + 2 <= usize::from(area.height) {
            lines.insert(0, "ctscope top keys (h closes)".into());
            lines.insert(1, String::new());
        }
        let help = Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>())
            .wrap(ratatui::widgets::Wrap { trim: false });
        frame.render_widget(help, area);
        return;
    }
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let s = &table.stats;
    let lifetimes: Vec<String> = {
        let mut v: Vec<_> = s.lifetime_ms.iter().collect();
        v.sort_by_key(|(k, _)| *k);
        v.iter()
            .map(|(k, h)| format!("{k} {}", quantiles(h, "ms")))
            .collect()
    };
    let latency = format!(
        "tcp set-up: {}  delivery: {}",
        quantiles(&s.tcp_setup_us, "us"),
        if s.delivery_ns.is_empty() {
            "needs the eBPF source".to_string()
        } else {
            quantiles(&s.delivery_ns, "ns")
        }
    );
    let max = status.max.map(|m| format!("/{m}")).unwrap_or_default();
    let header = vec![
        Line::from(format!(
            "ctscope top -- source {} -- {} entries{max} -- {} shown -- sort {}{}{}",
            status.source,
            table.len(),
            total,
            app.view.sort.title(),
            if app.view.reverse { " (rev)" } else { "" },
            if app.paused { " -- PAUSED" } else { "" }
        )),
        Line::from(format!(
            "events {:.0}/s  NEW {:.0}/s  DESTROY {:.0}/s  lost {}  resyncs {} drift +{}/-{}",
            status.events_per_sec,
            status.new_per_sec,
            status.destroy_per_sec,
            status.lost,
            s.resyncs,
            s.last_drift.missed,
            s.last_drift.stale
        )),
        Line::from(if lifetimes.is_empty() {
            "lifetime: no connection ended yet".to_string()
        } else {
            format!("lifetime: {}", lifetimes.join("  "))
        }),
        Line::from(latency),
        Line::from(
            status
                .note
                .clone()
                .or_else(|| {
                    (!app.view.text.is_empty()).then(|| format!("filter: {}", app.view.text))
                })
                .unwrap_or_default(),
        ),
    ];
    frame.render_widget(Paragraph::new(header), head);

    let titles = top::titles(app.counters);
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|t| top::cells(t, app.counters, app.view.now_ms))
        .collect();
    // Each column as wide as its widest cell on screen, as `--once` lays
    // them out; NAT, Mark and Zone only when a row on screen has one.
    let keep: Vec<usize> = (0..titles.len())
        .filter(|&i| i < titles.len() - 3 || cells.iter().any(|r| !r[i].is_empty()))
        .collect();
    let widths: Vec<Constraint> = keep
        .iter()
        .map(|&i| {
            let widest = cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0);
            Constraint::Length(u16::try_from(widest.max(titles[i].len())).unwrap_or(u16::MAX))
        })
        .collect();
    let rows: Vec<Row> = shown
        .iter()
        .zip(&cells)
        .map(|(t, r)| {
            let style = if top::is_closing(&t.ct) {
                Style::default().add_modifier(Modifier::DIM)
            } else {
                Style::default()
            };
            Row::new(keep.iter().map(|&i| Cell::from(r[i].as_str()))).style(style)
        })
        .collect();
    let widget = Table::new(rows, widths)
        .column_spacing(2)
        .header(
            Row::new(keep.iter().map(|&i| titles[i]))
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::TOP))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state =
        TableState::default().with_selected(Some(app.selected.saturating_sub(app.offset)));
    frame.render_stateful_widget(widget, body, &mut state);

    let footer = if let Some(ct) = &app.confirm_delete {
        format!(
            "Delete {} -> {}? (y/n)",
            ct.orig.src.map(|a| a.to_string()).unwrap_or_default(),
            ct.orig.dst.map(|a| a.to_string()).unwrap_or_default()
        )
    } else if let Some(p) = &app.prompt {
        match p {
            Prompt::Text(b) => format!("filter text: {b}_"),
            Prompt::Source(b) => format!("source address[/prefix]: {b}_"),
            Prompt::Destination(b) => format!("destination address[/prefix]: {b}_"),
            Prompt::SourcePort(b) => format!("source port: {b}_"),
            Prompt::DestinationPort(b) => format!("destination port: {b}_"),
        }
    } else if let Some(m) = &app.message {
        m.clone()
    } else {
        "h help  q quit".to_string()
    };
    frame.render_widget(Paragraph::new(footer), foot);
}

/// Restores the terminal when dropped: on quit, on error and on unwinding.
struct TerminalGuard;

/// Whether the screen holds the terminal (raw mode, alternate screen).
static SCREEN_UP: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back, once: leaving the alternate screen a second
/// time would move the cursor back over what was printed since.
fn restore_once() {
    if SCREEN_UP.swap(false, Ordering::SeqCst) {
        ratatui::restore();
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_once();
        // Back to the default panic hook, now that no screen is up (not
        // while unwinding: take_hook panics on a panicking thread).
        if !std::thread::panicking() {
            let _ = std::panic::take_hook();
        }
    }
}

/// What a panic on another thread said while the screen was up.
static OTHER_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// The message of a panic on another thread while the screen was up, for
/// the caller to print once the terminal is back.
pub fn take_other_panic() -> Option<String> {
    OTHER_PANIC.lock().ok()?.take()
}

fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    match info.location() {
        Some(at) => format!("{what} at {}:{}", at.file(), at.line()),
        None => what,
    }
}

/// Replaces ratatui's panic hook (which restores the terminal however often
/// it is called). A panic on the screen's own thread restores the terminal
/// once, then prints as usual. A panic on another thread (the feeder) must
/// not pull the terminal from under a screen that is still drawing: it
/// stops the screen, whose exit restores the terminal, and its message
/// waits for [`take_other_panic`].
fn hook_panics(stop: &Arc<AtomicBool>) {
    let screen = std::thread::current().id();
    drop(std::panic::take_hook());
    let print = std::panic::take_hook();
    let stop = Arc::clone(stop);
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == screen {
            restore_once();
            print(info);
        } else {
            if let Ok(mut other) = OTHER_PANIC.lock() {
                other.get_or_insert_with(|| panic_text(info));
            }
            stop.store(true, Ordering::Relaxed);
        }
    }));
}

/// Something that deletes an entry (the kernel, in real use).
pub type Deleter = Box<dyn FnMut(&Conntrack) -> Result<(), String>>;

/// Takes the terminal back after the process was stopped and continued
/// (`kill -STOP`, Ctrl-Z, then `fg`): the shell put it back in cooked mode
/// and on the main screen meanwhile. The next draw repaints everything.
fn retake_terminal(terminal: &mut ratatui::DefaultTerminal) -> io::Result<()> {
    use ratatui::crossterm::terminal::{
        Clear, ClearType, EnterAlternateScreen, disable_raw_mode, enable_raw_mode,
    };
    // crossterm thinks raw mode is still on and would do nothing: switch it
    // off (back to the saved cooked mode, where the terminal is) and on.
    disable_raw_mode()?;
    enable_raw_mode()?;
    ratatui::crossterm::execute!(io::stdout(), EnterAlternateScreen, Clear(ClearType::All))?;
    // A new terminal has empty buffers, so the next draw paints every cell
    // (Terminal::clear would ask the terminal for the cursor position).
    *terminal = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(io::stdout()))?;
    Ok(())
}

/// Runs the screen until `q`, Ctrl-C, SIGINT or SIGTERM (`stop`). The table
/// and status are filled by the caller's feeder thread. `resumed` is
/// raised by SIGCONT.
pub fn run(
    mut app: App,
    table: Arc<Mutex<table::Table>>,
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    resumed: Arc<AtomicBool>,
    mut delete: Deleter,
) -> io::Result<()> {
    let mut terminal = ratatui::init();
    SCREEN_UP.store(true, Ordering::SeqCst);
    let _guard = TerminalGuard;
    hook_panics(&stop);
    let mut frozen: Option<(Vec<Tracked>, usize)> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if resumed.swap(false, Ordering::Relaxed) {
            retake_terminal(&mut terminal)?;
        }
        let size = terminal.size()?;
        let page = usize::from(size.height.saturating_sub(7)).max(1);
        let status_now = status.lock().map(|s| s.clone()).unwrap_or_default();
        let guard = table
            .lock()
            .map_err(|_| io::Error::other("table lock poisoned"))?;
        app.view.now_ms = guard.now_ms();
        let (rows, total) = if app.paused {
            let (rows, total) = frozen.get_or_insert_with(|| {
                let (r, t) = top::select(guard.entries(), &app.view, app.offset + page);
                (r.into_iter().cloned().collect(), t)
            });
            (rows.iter().collect::<Vec<_>>(), *total)
        } else {
            frozen = None;
            top::select(guard.entries(), &app.view, app.offset + page)
        };
        let shown: Vec<&Tracked> = rows.iter().skip(app.offset).copied().collect();
        terminal.draw(|f| draw(f, &app, &shown, total, &guard, &status_now))?;
        crate::fault::panic_at("draw");
        // Keys are handled against what is on screen; the lock is kept so
        // the rows stay valid, and released before waiting.
        let key = if event::poll(Duration::ZERO)? {
            Some(event::read()?)
        } else {
            None
        };
        let action = match key {
            Some(Event::Key(k)) => app.on_key(k, &shown, total, page),
            _ => Action::None,
        };
        drop(shown);
        drop(rows);
        drop(guard);
        match action {
            Action::Quit => return Ok(()),
            Action::Delete(ct) => {
                app.message = Some(match delete(&ct) {
                    Ok(()) => "deleted".into(),
                    Err(e) => format!("delete failed: {e}"),
                });
            }
            Action::Refresh => frozen = None,
            Action::Suspend => {
                ratatui::restore();
                // SAFETY: raise only sends this process a signal. SIGTSTP's
                // default action stops it until SIGCONT; in an orphaned
                // process group (no shell with job control) the kernel
                // discards it and raise returns at once. Either way the
                // terminal is taken back when it returns.
                unsafe { libc::raise(libc::SIGTSTP) };
                retake_terminal(&mut terminal)?;
                continue;
            }
            Action::None => {}
        }
        if key.is_none() {
            let _ = event::poll(Duration::from_millis(500))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        ct::{EventKind, ips, proto, samples::flow},
        filter::Filter,
        ui::rows::SortKey,
    };

    fn entry(src: &str, sport: u16) -> Conntrack {
        Conntrack {
            status: Some(ips::CONFIRMED),
            timeout: Some(30),
            ..flow(src, "10.9.9.9", proto::UDP, sport, 53)
        }
    }

    fn screen(app: &App, t: &table::Table) -> String {
        screen_sized(app, t, 120, 14)
    }

    fn screen_sized(app: &App, t: &table::Table, width: u16, height: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        let (rows, total) = top::select(t.entries(), &app.view, app.offset + 7);
        let shown: Vec<&Tracked> = rows.iter().skip(app.offset).copied().collect();
        let status = Status {
            source: "netlink",
            ..Status::default()
        };
        term.draw(|f| draw(f, app, &shown, total, t, &status))
            .expect("draw");
        let buf = term.backend().buffer().clone();
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
        let view = View {
            sort: SortKey::Src,
            reverse: false,
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
        };
        let mut app = App::new(view, false);
        let s = screen(&app, &t);
        let a = s.find("10.0.0.1:1").expect("row 1");
        let b = s.find("10.0.0.2:2").expect("row 2");
        let c = s.find("10.0.0.3:3").expect("row 3");
        assert!(a < b && b < c, "{s}");
        assert!(s.contains("source netlink -- 3 entries"), "{s}");
        assert!(s.contains("tcp set-up: n=0 "), "{s}");
        assert!(s.contains("delivery: needs the eBPF source"), "{s}");
        app.on_key(key(KeyCode::Char('r')), &[], 3, 7);
        let s = screen(&app, &t);
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
        let view = View {
            sort: SortKey::Src,
            reverse: false,
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
        };
        let app = App::new(view, true);
        let s = screen(&app, &t);
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
        let view = View {
            sort: SortKey::Src,
            reverse: false,
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
        };
        let mut app = App::new(view, false);
        app.on_key(key(KeyCode::Char('h')), &[], 3, 7);
        for (w, h) in [(120, 14), (40, 12), (20, 5)] {
            let s = screen_sized(&app, &t, w, h);
            assert!(s.contains("q quit"), "{w}x{h}:\n{s}");
        }
        // Every key is on a screen wide enough, none cut.
        let s = screen_sized(&app, &t, 40, 12);
        for k in ["End", "Ctrl-Z suspend", "x delete"] {
            assert!(s.contains(k), "{k} missing at 40x12:\n{s}");
        }
        app.on_key(key(KeyCode::Char('h')), &[], 3, 7);
        assert!(screen(&app, &t).contains("10.0.0.1:1"));
    }

    #[test]
    fn text_filter_prompt() {
        let t = sample();
        let view = View {
            sort: SortKey::Src,
            reverse: false,
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
        };
        let mut app = App::new(view, false);
        app.on_key(key(KeyCode::Char('/')), &[], 3, 7);
        for c in "10.0.0.2".chars() {
            app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
        }
        assert!(screen(&app, &t).contains("filter text: 10.0.0.2_"));
        app.on_key(key(KeyCode::Enter), &[], 3, 7);
        let s = screen(&app, &t);
        assert!(s.contains("10.0.0.2:2") && !s.contains("10.0.0.1:1"), "{s}");
        // `/` opens empty; Enter on nothing clears the filter.
        app.on_key(key(KeyCode::Char('/')), &[], 1, 7);
        assert!(screen(&app, &t).contains("filter text: _"));
        app.on_key(key(KeyCode::Enter), &[], 1, 7);
        assert!(app.view.text.is_empty());
        assert!(screen(&app, &t).contains("10.0.0.1:1"));
        // s: source filter with a prefix.
        app.view.text.clear();
        app.on_key(key(KeyCode::Char('s')), &[], 3, 7);
        for c in "10.0.0.3/32".chars() {
            app.on_key(key(KeyCode::Char(c)), &[], 3, 7);
        }
        app.on_key(key(KeyCode::Enter), &[], 3, 7);
        let s = screen(&app, &t);
        assert!(s.contains("10.0.0.3:3") && !s.contains("10.0.0.2:2"), "{s}");
    }

    #[test]
    fn delete_needs_confirmation() {
        let t = sample();
        let view = View {
            sort: SortKey::Src,
            reverse: false,
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
        };
        let mut app = App::new(view, false);
        let (rows, total) = top::select(t.entries(), &app.view, 7);
        app.on_key(key(KeyCode::Down), &rows, total, 7);
        assert_eq!(
            app.on_key(key(KeyCode::Char('x')), &rows, total, 7),
            Action::None
        );
        assert!(screen(&app, &t).contains("Delete 10.0.0.2 -> 10.9.9.9? (y/n)"));
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
}
