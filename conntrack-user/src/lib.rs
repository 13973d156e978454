//! ctscope: shows what the Linux connection tracker is doing.
//!
//! Data flows one way: sources (`netlink`, `tracer`) -> `table` -> views
//! (`format`, `tui`).
pub mod btf;
pub mod cli;
pub mod filter;
pub mod format;
pub mod netlink;
pub mod netns;
pub mod profile;
pub mod progname;
pub mod table;
pub mod top;
pub mod tracer;
pub mod tui;
