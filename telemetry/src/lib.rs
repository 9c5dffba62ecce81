//! Observability shared by `tessera-router` and `tessera-node`:
//!
//! * [`init_tracing`] — a `tracing` subscriber printing human or JSON lines,
//!   filtered by `RUST_LOG` (default `info,openraft=warn`: openraft logs every vote at info);
//! * [`install_metrics`] — the process-wide Prometheus recorder behind the
//!   `metrics` facade, with latency buckets suited to a cache;
//! * [`serve_metrics`] — the `GET /metrics` endpoint (an axum service);
//! * [`record_command`] — the per-command counter and latency histogram,
//!   through handles cached per thread (it runs for every command);
//! * [`runtime`], [`shutdown_signal`] — process plumbing both binaries share.

#![deny(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Process flags both binaries take (flattened into their `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProcessArgs {
    /// Log line format.
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Async runtime worker threads (default: one per CPU).
    #[arg(long, env = "TESSERA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Print one `READY ...` line with the bound addresses on stdout once
    /// listening (node: `READY <grpc> <metrics>`; router:
    /// `READY plain=<addr> cluster=<a,b> [tls=<addr> tls-cluster=<a,b>] metrics=<addr>`).
    #[arg(long)]
    pub print_ready: bool,
}

/// Installs the global subscriber; later calls are no-ops (tests start many servers).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Installs the Prometheus recorder for this process, with a thread that
/// folds recorded histogram samples into their buckets every few seconds
/// (without it, samples would pile up until the next scrape).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("tessera_router_batch_requests".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(2));
        upkeep.run_upkeep();
    })?;
    Ok(handle)
}

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Whether a process is ready to serve (`GET /readyz`): a check the
/// process installs once it has the state to answer from; until then it is
/// not ready.
#[derive(Clone, Default)]
pub struct Readiness(Arc<parking_lot::RwLock<Option<ReadyCheck>>>);

/// `Ok` when ready, else why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Readiness {
    pub fn set(&self, check: ReadyCheck) {
        *self.0.write() = Some(check);
    }

    pub fn check(&self) -> Result<(), String> {
        match &*self.0.read() {
            Some(c) => c(),
            None => Err("starting".into()),
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format; also at `/`), `GET
/// /livez` (200 while the process serves: it never waits on the cluster)
/// and `GET /readyz` (200 when `ready` says so, else 503 with the reason),
/// until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let readyz = move || {
        let ready = ready.clone();
        async move {
            match ready.check() {
                Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_string()),
                Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(render_metrics))
        .route("/", axum::routing::get(render_metrics))
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(handle);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

async fn render_metrics(
    axum::extract::State(handle): axum::extract::State<PrometheusHandle>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    handle.run_upkeep();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}

type CommandKey = (&'static str, &'static str, &'static str);

thread_local! {
    static COUNTERS: RefCell<HashMap<CommandKey, metrics::Counter>> = RefCell::default();
    static HISTOGRAMS: RefCell<HashMap<(&'static str, &'static str), metrics::Histogram>> = RefCell::default();
}

/// Counts one command in `<prefix>_commands_total{cmd,code}` and records its
/// latency in `<prefix>_command_duration_seconds{cmd}`. Registry lookups hash
/// and clone labels, so each thread keeps the handles it has used (label sets
/// are few and static).
pub fn record_command(prefix: &'static str, cmd: &'static str, code: &'static str, took: Duration) {
    COUNTERS.with(|c| {
        c.borrow_mut()
            .entry((prefix, cmd, code))
            .or_insert_with(|| metrics::counter!(format!("{prefix}_commands_total"), "cmd" => cmd, "code" => code))
            .increment(1)
    });
    HISTOGRAMS.with(|h| {
        h.borrow_mut()
            .entry((prefix, cmd))
            .or_insert_with(|| metrics::histogram!(format!("{prefix}_command_duration_seconds"), "cmd" => cmd))
            .record(took.as_secs_f64())
    });
}

/// The binaries' async runtime: multi-threaded, `worker_threads` workers
/// (default: one per CPU).
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Makes mimalloc (both binaries' allocator) hand freed memory back to the
/// OS at once. By default it waits a second, and purges only when the
/// thread that freed the memory allocates again: after a large model has passed
/// through a node, hundreds of MB it no longer uses could stay resident
/// indefinitely. `MIMALLOC_PURGE_DELAY` (milliseconds) still overrides.
/// Call first thing in `main`.
#[allow(unsafe_code)]
pub fn release_freed_memory_promptly() {
    /// `mi_option_purge_delay` in mimalloc.h (v3, as libmimalloc-sys
    /// 0.1.49 builds it; the version is pinned for this).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it on its
        // next purge decision, from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// What this process has used, as its allocator (mimalloc) and the OS
/// report it: what `INFO memory` and `INFO cpu` print.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessInfo {
    pub user_ms: usize,
    pub system_ms: usize,
    pub rss: usize,
    pub peak_rss: usize,
    /// Memory the allocator has committed (an upper bound on the live heap).
    pub commit: usize,
    pub peak_commit: usize,
}

#[allow(unsafe_code)]
pub fn process_info() -> ProcessInfo {
    let (mut elapsed, mut faults) = (0usize, 0usize);
    let mut p = ProcessInfo::default();
    // SAFETY: every pointer is to a live local `usize`, which mimalloc only
    // writes.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut p.user_ms,
            &mut p.system_ms,
            &mut p.rss,
            &mut p.peak_rss,
            &mut p.commit,
            &mut p.peak_commit,
            &mut faults,
        )
    };
    p
}

/// The allocator's name and version, as `INFO memory` prints it.
#[allow(unsafe_code)]
pub fn allocator() -> String {
    // SAFETY: returns a constant.
    let v = unsafe { libmimalloc_sys::mi_version() };
    format!("mimalloc-{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

#[cfg(test)]
mod alloc_tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc v3's own default purge delay is 1000 ms: the index named
        // in `release_freed_memory_promptly` reads that before it is set.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets plain integer options.
        let before = unsafe { libmimalloc_sys::mi_option_get(15) };
        assert_eq!(before, 1000, "option 15 is not mimalloc's purge_delay");
        super::release_freed_memory_promptly();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(15) }, 0);
    }
}
