//! The live table's views: [`rows`] (sorting, filtering and the text of
//! each row, shared by the screen and `top --once`) and [`screen`] (the
//! ratatui terminal: keys, panel, help, restore on every exit).
pub mod rows;
pub mod screen;
