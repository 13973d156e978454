//! The live table's views: [`view`] (what a view asks for: sort, filters,
//! iptstate's switches, totals), [`rows`] (selecting, sorting and the text
//! of each row, shared by the screen and `top --once`), [`once`] (the
//! `--once` snapshot), [`resolve`] (host and service names for
//! `--lookup`), [`app`] (the screen's state and keys), [`fit`] (columns
//! cut to the terminal's width), [`charts`] (the `H` panel: histograms
//! and rate sparklines) and [`screen`] (the ratatui terminal: drawing, the
//! loop, restore on every exit).
pub mod app;
pub mod charts;
pub mod fit;
pub mod once;
pub mod resolve;
pub mod rows;
pub mod screen;
pub mod view;
