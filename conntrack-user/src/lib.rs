//! ctscope: shows what the Linux connection tracker is doing.
//!
//! Data flows one way: an event is born in the kernel and reaches a
//! [`source`] (the eBPF tracer's ring buffer, [`ebpf`], or ctnetlink's
//! multicast groups, [`netlink`]), which decodes it into a [`ct::Conntrack`];
//! the commands ([`cmd`]) merge events and dumps into the live [`table`] and
//! draw it ([`ui`]), print it ([`output`]), summarise it ([`report`]) or
//! export it to Prometheus ([`metrics`]).
//! [`cli`] parses the command line. Nothing below a view imports a view.
pub mod cli;
pub mod cmd;
pub mod ct;
pub mod ebpf;
pub mod expect;
pub mod fault;
pub mod filter;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod output;
pub mod release;
pub mod report;
pub mod source;
pub mod table;
pub mod ui;
