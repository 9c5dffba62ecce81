use clap::Parser;
use tessera_router::config::Args;
use tessera_router::Listeners;
use tokio::net::TcpListener;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tessera_telemetry::release_freed_memory_promptly();
    let args = Args::parse();
    tessera_telemetry::runtime(args.process.worker_threads)?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tessera_telemetry::init_tracing(args.process.log_format);
    args.cluster_tls.install().map_err(anyhow::Error::msg)?;
    let config = args.config()?;
    let metrics = tessera_telemetry::install_metrics()?;
    let listeners = Listeners::bind(&args).await?;
    let metrics_listener = TcpListener::bind(args.metrics_listen).await?;
    if args.process.print_ready {
        println!("READY {} metrics={}", listeners.ready_fields()?, metrics_listener.local_addr()?);
    }
    let ready = tessera_telemetry::Readiness::default();
    tokio::spawn(tessera_telemetry::serve_metrics(metrics_listener, metrics, ready.clone(), std::future::pending()));
    tessera_router::run(config, listeners, ready, tessera_telemetry::shutdown_signal()).await
}
