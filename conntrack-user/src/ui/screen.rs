//! The live `ctscope top` screen (ratatui), split as oryx and bandwhich do:
//! [`App`] holds the state and handles keys, `draw` renders, `run` owns
//! the terminal and the loop. The table is fed by a background thread
//! (event source + periodic dumps); a frame selects and sorts only the
//! rows it shows.
use std::{
    collections::VecDeque,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};

pub use super::app::{Action, App, Prompt};
use super::{charts, fit, rows as top, view::Totals};
use crate::{
    ct::{Conntrack, has_ports, is_icmp, proto},
    table::{self, Tracked},
};

/// What the side panel shows about the source and the table.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// "netlink" or "ebpf".
    pub source: &'static str,
    /// Where state changes come from: "events" or "dumps".
    pub updates: &'static str,
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
    /// NEW per second, a value a second, the last minute, oldest first.
    pub new_history: VecDeque<u64>,
    /// DESTROY per second, likewise.
    pub destroy_history: VecDeque<u64>,
}

/// The help entries packed into lines of at most `width` columns, never
/// splitting an entry.
fn help_lines(entries: &[String], width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for entry in entries {
        match lines.last_mut() {
            Some(line) if line.len() + 2 + entry.len() <= width => {
                line.push_str("  ");
                line.push_str(entry);
            }
            _ => lines.push(entry.clone()),
        }
    }
    lines
}

/// iptstate's colours: TCP green, UDP yellow, ICMP red, the rest as the
/// terminal's text.
fn proto_color(l4: u8) -> Option<Color> {
    match l4 {
        proto::TCP => Some(Color::Green),
        proto::UDP => Some(Color::Yellow),
        l4 if is_icmp(l4) => Some(Color::Red),
        _ => None,
    }
}

/// "n=… p50=… p90=… p99=… p99.9=… max=…" with a unit.
fn quantiles(h: &hdrhistogram::Histogram<u64>, unit: &str) -> String {
    let [n, p50, p90, p99, p999, max] = table::summary(h);
    format!(
        "n={n} p50={p50}{unit} p90={p90}{unit} p99={p99}{unit} p99.9={p999}{unit} max={max}{unit}"
    )
}

/// What one frame shows: the rows on screen, how many pass the filters,
/// and the totals when asked.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a> {
    /// The rows on screen, from the app's offset.
    pub rows: &'a [&'a Tracked],
    /// Rows passing the filters.
    pub total: usize,
    /// iptstate's totals line (`t`).
    pub totals: Option<Totals>,
}

/// Renders one frame.
pub fn draw(frame: &mut Frame, app: &App, shown: Shown<'_>, table: &table::Table, status: &Status) {
    let total = shown.total;
    if app.show_help {
        // The keys over the whole screen, wrapped to its width, so a
        // narrow or short terminal shows them all.
        let area = frame.area();
        let mut lines = help_lines(&app.help_entries(), usize::from(area.width));
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
        Constraint::Length(app.head_lines()),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    // `H`: sparklines under the header's text, charts in the table's place.
    let (head, sparks) = if app.charts {
        let [text, sparks] = Layout::vertical([
            Constraint::Min(1),
            Constraint::Length(charts::SPARKLINE_LINES),
        ])
        .areas(head);
        (text, Some(sparks))
    } else {
        (head, None)
    };
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
        if status.updates == "dumps" {
            "needs UPDATE events (nf_conntrack_events=1)".to_string()
        } else {
            quantiles(&s.tcp_setup_us, "us")
        },
        if s.delivery_ns.is_empty() {
            "needs the eBPF source".to_string()
        } else {
            quantiles(&s.delivery_ns, "ns")
        }
    );
    let max = status.max.map(|m| format!("/{m}")).unwrap_or_default();
    let mut header = vec![
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
        Line::from(status_line(app, status)),
    ];
    if let Some(t) = shown.totals {
        header.push(Line::from(t.to_string()));
    }
    frame.render_widget(Paragraph::new(header), head);
    if let Some(sparks) = sparks {
        charts::sparklines(frame, sparks, status);
        charts::histograms(frame, body, s, status.source);
    } else {
        draw_table(frame, app, shown, body);
    }
    draw_footer(frame, app, foot);
}

/// The table of entries in `body`.
fn draw_table(frame: &mut Frame, app: &App, shown: Shown<'_>, body: ratatui::layout::Rect) {
    let shown_rows = shown.rows;

    let titles = top::titles(app.counters);
    let mut cells: Vec<Vec<String>> = shown_rows
        .iter()
        .map(|t| top::cells(t, app.counters, &app.view))
        .collect();
    // Each column as wide as its widest cell on screen, as `--once` lays
    // them out; NAT, Mark and Zone only when a row on screen has one.
    let keep: Vec<usize> = (0..titles.len())
        .filter(|&i| i < titles.len() - 3 || cells.iter().any(|r| !r[i].is_empty()))
        .collect();
    let mut widths: Vec<usize> = keep
        .iter()
        .map(|&i| {
            let widest = cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0);
            widest.max(titles[i].len())
        })
        .collect();
    // Too wide for the terminal: Source and Destination give way, as in
    // iptstate (names and addresses cut at the end that matters least).
    fit::fit_endpoints(&mut widths, usize::from(body.width));
    for (t, r) in shown_rows.iter().zip(cells.iter_mut()) {
        let l4 = t.ct.l4proto();
        let ports = [t.ct.orig.sport, t.ct.orig.dport].map(|p| p.is_some() && has_ports(l4));
        for column in 0..2 {
            r[column] = fit::cut_endpoint(
                &r[column],
                ports[column],
                column,
                widths[column],
                app.mark_truncated,
            );
        }
    }
    let rows: Vec<Row> = shown_rows
        .iter()
        .zip(&cells)
        .map(|(t, r)| {
            let mut style = Style::default();
            if let Some(color) = proto_color(t.ct.l4proto()).filter(|_| app.color) {
                style = style.fg(color);
            }
            if top::is_closing(&t.ct) {
                style = style.add_modifier(Modifier::DIM);
            }
            Row::new(keep.iter().map(|&i| Cell::from(r[i].as_str()))).style(style)
        })
        .collect();
    let widths: Vec<Constraint> = widths
        .iter()
        .map(|w| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)))
        .collect();
    let widget = Table::new(rows, widths)
        .column_spacing(u16::try_from(fit::SPACING).unwrap_or(2))
        .header(
            Row::new(keep.iter().map(|&i| titles[i]))
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::TOP))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state =
        TableState::default().with_selected(Some(app.selected.saturating_sub(app.offset)));
    frame.render_stateful_widget(widget, body, &mut state);
}

/// The last line: a question, a prompt, a message or the key hint.
fn draw_footer(frame: &mut Frame, app: &App, foot: ratatui::layout::Rect) {
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
            Prompt::Refresh(b) => format!("refresh every (seconds): {b}_"),
        }
    } else if let Some(m) = &app.message {
        m.clone()
    } else {
        "h help  q quit".to_string()
    };
    frame.render_widget(Paragraph::new(footer), foot);
}

/// The panel's last line: a note, the `/` text, and iptstate's switches
/// that are on.
fn status_line(app: &App, status: &Status) -> String {
    let mut parts: Vec<String> = status.note.iter().cloned().collect();
    if !app.view.text.is_empty() {
        parts.push(format!("filter: {}", app.view.text));
    }
    let v = &app.view;
    for (on, what) in [
        (v.invert, "filters inverted"),
        (v.no_dns, "no DNS"),
        (v.no_loopback, "no loopback"),
        (app.lookup, "names"),
    ] {
        if on {
            parts.push(what.to_string());
        }
    }
    parts.join("  ")
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
        let page = app.page(size.height);
        let status_now = status.lock().map(|s| s.clone()).unwrap_or_default();
        let guard = table
            .lock()
            .map_err(|_| io::Error::other("table lock poisoned"))?;
        app.view.now_ms = guard.now_ms();
        app.take_names();
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
        app.request_names(&shown);
        let totals = app.totals.then(|| Totals::count(guard.entries(), total));
        let frame = Shown {
            rows: &shown,
            total,
            totals,
        };
        terminal.draw(|f| draw(f, &app, frame, &guard, &status_now))?;
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
            wait_for_input(app.refresh, &stop, &resumed)?;
        }
    }
}

/// Waits up to `refresh` for a key or another terminal event, in short
/// slices, so a signal (`stop`) or a SIGCONT (`resumed`) is seen at once
/// even with a long refresh.
fn wait_for_input(refresh: Duration, stop: &AtomicBool, resumed: &AtomicBool) -> io::Result<()> {
    const SLICE: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + refresh;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) || resumed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if event::poll(left.min(SLICE))? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
