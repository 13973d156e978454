//! serve's HTTP side (hyper 1 on tokio): `GET /metrics` and `GET /healthz`,
//! and [`Shared`], what the feeder publishes and a scrape reads. A scrape
//! takes the last published snapshot (an `Arc` clone under a mutex held for
//! that only) and reads the kernel's and the process's figures on a
//! blocking thread: it never waits for the table or the event loop.
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::metrics::{
    Format, Scrape, Snapshot, exposition::ExporterInfo, kernel::KernelStats, process::ProcessStats,
};

/// Connections served at once; more are closed at once (a scraper needs
/// one).
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers (also how long
/// an idle keep-alive connection stays open).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `/healthz` fails once the event loop has not turned for this long.
const STALL: Duration = Duration::from_secs(10);

/// Where a scrape takes the kernel's figures from.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// ctnetlink, in the namespace ctscope serves.
    Netlink,
    /// Fixed figures (benchmarks, tests).
    Fixed(KernelStats),
}

/// What the feeder and the HTTP server share.
#[derive(Debug)]
pub struct Shared {
    info: Arc<ExporterInfo>,
    kernel: KernelSource,
    snapshot: Mutex<Arc<Snapshot>>,
    started: Instant,
    /// ms since `started` of the event loop's last turn.
    heartbeat_ms: AtomicU64,
    kernel_read_errors: AtomicU64,
    kernel_warned: AtomicBool,
}

impl Shared {
    /// Shared state with an empty snapshot.
    pub fn new(info: ExporterInfo, kernel: KernelSource) -> Self {
        Self {
            info: Arc::new(info),
            kernel,
            snapshot: Mutex::new(Arc::new(Snapshot::default())),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            kernel_read_errors: AtomicU64::new(0),
            kernel_warned: AtomicBool::new(false),
        }
    }

    /// Replaces the snapshot scrapes read.
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        // A poisoned lock only means a panic elsewhere; the Arc inside is
        // whole either way.
        match self.snapshot.lock() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// The last published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.lock() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The event loop says it is alive.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the event loop's last turn.
    pub fn since_beat(&self) -> Duration {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }

    /// One scrape's body. Blocks briefly (a ctnetlink request, /proc reads):
    /// call on a blocking thread.
    pub fn scrape(&self, format: Format) -> Result<Vec<u8>, std::fmt::Error> {
        let kernel = match &self.kernel {
            KernelSource::Fixed(k) => Some(k.clone()),
            KernelSource::Netlink => match KernelStats::read() {
                Ok(k) => Some(k),
                Err(e) => {
                    self.kernel_read_errors.fetch_add(1, Ordering::Relaxed);
                    if !self.kernel_warned.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "ctscope: cannot read the kernel's conntrack figures: {e} (counted in \
                             ctscope_kernel_read_errors_total; said once)"
                        );
                    }
                    None
                }
            },
        };
        Scrape {
            info: Arc::clone(&self.info),
            snapshot: self.snapshot(),
            kernel,
            kernel_read_errors: self.kernel_read_errors.load(Ordering::Relaxed),
            process: ProcessStats::read(),
        }
        .encode(format)
    }
}

/// Decrements the connection count when a connection ends, however.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections and serves each on a task of its own, until the
/// task running this is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was
            // accepted: wait a little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| handle(req, Arc::clone(&shared)));
            // A client that goes away mid-response ends its connection
            // with an error, and nothing else.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

const INDEX: &str = "ctscope serve: the Linux connection tracker's metrics\n\n\
    /metrics  Prometheus text format; OpenMetrics or protobuf (native histograms) when the Accept header asks\n\
    /healthz  ok while the event loop runs\n";

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let text = "text/plain; charset=utf-8";
    let r = match req.uri().path() {
        "/metrics" | "/healthz" | "/" if !read => {
            let mut r = response(StatusCode::METHOD_NOT_ALLOWED, text, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        "/metrics" => {
            let format = Format::from_accept(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let scraped = tokio::task::spawn_blocking(move || shared.scrape(format)).await;
            match scraped {
                Ok(Ok(body)) => response(StatusCode::OK, format.content_type(), body),
                Ok(Err(_)) | Err(_) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    "the scrape failed\n",
                ),
            }
        }
        "/healthz" => {
            let idle = shared.since_beat();
            if idle < STALL {
                response(StatusCode::OK, text, "ok\n")
            } else {
                response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    format!("the event loop has not run for {} s\n", idle.as_secs()),
                )
            }
        }
        "/" => response(StatusCode::OK, text, INDEX),
        _ => response(StatusCode::NOT_FOUND, text, "not found: try /metrics\n"),
    };
    Ok(r)
}
