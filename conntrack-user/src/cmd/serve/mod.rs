//! serve: a Prometheus/OpenMetrics exporter. One process keeps the live
//! table ([`feed`]: events, periodic resyncs by dump, and one at once after
//! a loss) and answers `GET /metrics` and `GET /healthz` ([`http`]), the
//! two on one tokio runtime: the event loop on the main thread, the HTTP
//! connections and the scrapes on its workers and blocking threads. It
//! changes nothing in the kernel and offers no delete or flush.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    cli::{CliError, Result, args::ServeArgs, signals::stop_on_signals, usage},
    ebpf::Updates,
    metrics::{FeedCounters, Snapshot, exposition::ExporterInfo},
    netlink::events::EventMask,
    source::{Source, SourceChoice},
    table::Table,
};

pub mod feed;
pub mod http;

use self::http::{KernelSource, Shared};

/// The default port: conntrack_exporter has 9318 on Prometheus's list of
/// exporter default ports, whose 9100-9999 range is full; 10318 is above
/// the allocations past 9999 known when this was written (to 10049).
pub const DEFAULT_PORT: u16 = 10318;

/// The error text of an io error, without Rust's "(os error N)".
fn io_reason(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(
        || e.to_string(),
        |n| nix::errno::Errno::from_raw(n).desc().to_string(),
    )
}

fn choice_name(choice: SourceChoice) -> &'static str {
    match choice {
        SourceChoice::Auto => "auto",
        SourceChoice::Ebpf => "ebpf",
        SourceChoice::Netlink => "netlink",
    }
}

/// Binds the listening socket (before anything touches the kernel, so a
/// port in use costs nothing).
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let failed =
        |e: std::io::Error| CliError::Failed(format!("cannot listen on {addr}: {}", io_reason(&e)));
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// Runs `ctscope serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    if args.source.all_netns {
        return Err(usage(
            "--all-netns is for `events`: serve reconciles its table with dumps of one namespace",
        ));
    }
    let filter = args.filter.to_filter()?;
    let listener = bind(args.listen)?;
    let local = listener.local_addr().unwrap_or(args.listen);
    let stop = stop_on_signals(true)?;
    // Subscribe before the first dump, so nothing falls between them.
    let source = Source::open(&args.source.config(
        EventMask::default(),
        Updates::IfAvailable,
        false,
    ))?;
    if let Some(line) = source.startup_line() {
        eprintln!("{line}");
    }
    let mut table = Table::new();
    if args.top_talkers > 0 {
        table.track_talkers();
    }
    feed::initial(&mut table, &filter)?;
    let ebpf = source.name() == "ebpf";
    let info = ExporterInfo {
        source: source.name(),
        requested: choice_name(args.source.source),
        ring_size: ebpf.then_some(u64::from(args.source.ring_size)),
        rcvbuf: (!ebpf).then_some(args.source.buffer_size as u64),
        probes_attached: source.probes_attached() as u64,
        node_exporter_names: args.node_exporter_names,
    };
    let shared = Arc::new(Shared::new(info, KernelSource::Netlink));
    shared.publish(Snapshot::of(
        &table,
        FeedCounters::default(),
        args.top_talkers,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ctscope-serve")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let config = feed::FeedConfig {
        filter,
        resync_every: Duration::from_secs(args.resync),
        top_talkers: args.top_talkers,
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot listen on {local}: {}", io_reason(&e)))?;
        let server = tokio::spawn(http::serve(listener, Arc::clone(&shared)));
        eprintln!("ctscope: serving http://{local}/metrics");
        let reader = source.reader().map_err(|e| e.to_string());
        let fed = match reader {
            Ok(reader) => feed::run(reader, table, &shared, &stop, &config).await,
            Err(e) => Err(e),
        };
        server.abort();
        fed
    });
    // A resync still dumping is left to finish on its own thread.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map_err(CliError::Failed)
}
