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
    let config = args.config()?;
    let metrics = tessera_telemetry::install_metrics()?;
    let plain = TcpListener::bind(args.listen).await?;
    let mut cluster = Vec::new();
    for a in &args.cluster_listen {
        cluster.push(TcpListener::bind(a).await?);
    }
    let metrics_listener = TcpListener::bind(args.metrics_listen).await?;
    if args.process.print_ready {
        let addrs: Vec<String> = cluster.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect();
        println!(
            "READY plain={} cluster={} metrics={}",
            plain.local_addr()?,
            addrs.join(","),
            metrics_listener.local_addr()?
        );
    }
    let ready = tessera_telemetry::Readiness::default();
    tokio::spawn(tessera_telemetry::serve_metrics(metrics_listener, metrics, ready.clone(), std::future::pending()));
    tessera_router::run(config, Listeners { plain, cluster }, ready, tessera_telemetry::shutdown_signal()).await
}
