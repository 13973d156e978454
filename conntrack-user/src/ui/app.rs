//! The `top` screen's state and its keys, iptstate's where they do not
//! clash with ctscope's own (`p` pauses here; iptstate's scrolling
//! toggle has no use on a screen that always scrolls).
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{resolve::Resolver, view::View};
use crate::{ct::Conntrack, table::Tracked};

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
    /// `R`: seconds between frames.
    Refresh(String),
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

/// Time between frames unless `--refresh` says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_millis(500);
/// The shortest refresh `--refresh` and `R` take, in seconds.
pub const REFRESH_MIN: f64 = 0.1;
/// The longest, in seconds.
pub const REFRESH_MAX: f64 = 3600.0;

/// A refresh interval in seconds (fractions allowed), within
/// [`REFRESH_MIN`] and [`REFRESH_MAX`].
pub fn parse_refresh(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (REFRESH_MIN..=REFRESH_MAX).contains(v))
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("invalid refresh `{s}' (seconds, {REFRESH_MIN} to {REFRESH_MAX})"))
}

/// The screen's settings at start (flags); keys change them later.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `-C`: bytes, packets and rate columns.
    pub counters: bool,
    /// Rows coloured by protocol (on unless `--no-color`, as in iptstate).
    pub color: bool,
    /// `--totals`: iptstate's totals line.
    pub totals: bool,
    /// `--lookup`: host and service names.
    pub lookup: bool,
    /// `--mark-truncated`: a `+` where a name or address was cut.
    pub mark_truncated: bool,
    /// `--refresh`: time between frames.
    pub refresh: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            counters: false,
            color: true,
            totals: false,
            lookup: false,
            mark_truncated: false,
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// The screen's state.
#[derive(Clone, Debug)]
pub struct App {
    /// Sort, filters, switches, names.
    pub view: View,
    /// Bytes/packets/rate columns (`C`).
    pub counters: bool,
    /// Rows coloured by protocol (`c`).
    pub color: bool,
    /// iptstate's totals line (`t`).
    pub totals: bool,
    /// Names in place of addresses and ports (`l`).
    pub lookup: bool,
    /// A `+` where a name or address was cut to fit (`m`).
    pub mark_truncated: bool,
    /// Time between frames (`R`).
    pub refresh: Duration,
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
    /// `H`: histogram charts in the table's place, rate sparklines in the
    /// header.
    pub charts: bool,
    /// A one-line message (errors, results).
    pub message: Option<String>,
    /// Where names come from (asked only while `lookup` is on).
    pub resolver: Resolver,
}

/// "on" or "off".
fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

impl App {
    /// A screen with this view and settings, naming hosts with `resolver`.
    pub fn new(view: View, settings: Settings, resolver: Resolver) -> Self {
        Self {
            view,
            counters: settings.counters,
            color: settings.color,
            totals: settings.totals,
            lookup: settings.lookup,
            mark_truncated: settings.mark_truncated,
            refresh: settings.refresh,
            offset: 0,
            selected: 0,
            paused: false,
            prompt: None,
            confirm_delete: None,
            show_help: false,
            charts: false,
            message: None,
            resolver,
        }
    }

    /// Lines above the table: the status panel, and the totals when shown.
    pub fn head_lines(&self) -> u16 {
        5 + u16::from(self.totals)
            + if self.charts {
                super::charts::SPARKLINE_LINES
            } else {
                0
            }
    }

    /// Rows that fit a terminal `height` lines high.
    pub fn page(&self, height: u16) -> usize {
        usize::from(height.saturating_sub(self.head_lines() + 2)).max(1)
    }

    /// Before a frame is selected: the names known so far, while `lookup`
    /// is on (so the `/` filter searches them too).
    pub fn take_names(&mut self) {
        self.view.names = self.lookup.then(|| self.resolver.names());
    }

    /// After a frame is selected: asks for the names of the rows on
    /// screen; they show in a later frame. Never waits.
    pub fn request_names(&self, shown: &[&Tracked]) {
        if self.lookup {
            self.resolver.request(
                shown
                    .iter()
                    .flat_map(|t| [t.ct.orig.src, t.ct.orig.dst])
                    .flatten(),
            );
        }
    }

    /// The keys and the settings they change, as the help screen lists
    /// them.
    pub fn help_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = [
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
        ]
        .map(String::from)
        .to_vec();
        v.extend([
            format!("c colours {}", on(self.color)),
            format!("t totals {}", on(self.totals)),
            format!("l names {}", on(self.lookup)),
            format!("L no DNS {}", on(self.view.no_dns)),
            format!("f no loopback {}", on(self.view.no_loopback)),
            format!("i invert {}", on(self.view.invert)),
            format!("m mark cut {}", on(self.mark_truncated)),
            format!("R rate {}s", self.refresh.as_secs_f64()),
            format!("H charts {}", on(self.charts)),
        ]);
        v
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
            // Blank keeps the rate, as in iptstate.
            Prompt::Refresh(s) if s.trim().is_empty() => Ok(()),
            Prompt::Refresh(s) => parse_refresh(&s).map(|r| {
                self.refresh = r;
                self.message = Some(format!("refresh every {}s", r.as_secs_f64()));
            }),
        };
        match result {
            Ok(()) => {}
            Err(e) => self.message = Some(e),
        }
        self.offset = 0;
        self.selected = 0;
    }

    /// Toggles one of iptstate's switches, saying what it is now.
    fn toggle(&mut self, key: char) {
        let said = match key {
            'c' => {
                self.color = !self.color;
                format!("colours {}", on(self.color))
            }
            't' => {
                self.totals = !self.totals;
                format!("totals {}", on(self.totals))
            }
            'l' => {
                self.lookup = !self.lookup;
                // As iptstate: names on hides DNS flows too, so the
                // lookups do not feed on themselves.
                if self.lookup {
                    self.view.no_dns = true;
                    "names on, DNS flows hidden (L shows them)".to_string()
                } else {
                    "names off".to_string()
                }
            }
            'L' => {
                self.view.no_dns = !self.view.no_dns;
                format!(
                    "DNS flows {}",
                    if self.view.no_dns { "hidden" } else { "shown" }
                )
            }
            'f' => {
                self.view.no_loopback = !self.view.no_loopback;
                format!(
                    "loopback flows {}",
                    if self.view.no_loopback {
                        "hidden"
                    } else {
                        "shown"
                    }
                )
            }
            'i' => {
                self.view.invert = !self.view.invert;
                format!(
                    "filters {}",
                    if self.view.invert {
                        "inverted"
                    } else {
                        "as given"
                    }
                )
            }
            'm' => {
                self.mark_truncated = !self.mark_truncated;
                format!("cut names marked with + {}", on(self.mark_truncated))
            }
            _ => return,
        };
        self.message = Some(said);
        if matches!(key, 'l' | 'L' | 'f' | 'i') {
            self.offset = 0;
            self.selected = 0;
        }
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
                | Prompt::DestinationPort(b)
                | Prompt::Refresh(b) => b,
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
            KeyCode::Char('H') => self.charts = !self.charts,
            KeyCode::Char(' ') => return Action::Refresh,
            KeyCode::Char(c @ ('c' | 't' | 'l' | 'L' | 'f' | 'i' | 'm')) => self.toggle(c),
            // Opens empty, as iptstate does: Enter on nothing clears the filter.
            KeyCode::Char('/') => self.prompt = Some(Prompt::Text(String::new())),
            KeyCode::Char('s') => self.prompt = Some(Prompt::Source(String::new())),
            KeyCode::Char('d') => self.prompt = Some(Prompt::Destination(String::new())),
            KeyCode::Char('S') => self.prompt = Some(Prompt::SourcePort(String::new())),
            KeyCode::Char('D') => self.prompt = Some(Prompt::DestinationPort(String::new())),
            KeyCode::Char('R') => self.prompt = Some(Prompt::Refresh(String::new())),
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
