use clap::Parser;
use tessera_node::config::Args;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tessera_telemetry::init_tracing(args.log_format);
    let config = args.config()?;
    let metrics = tessera_telemetry::install_metrics()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    if args.print_ready {
        println!("READY {} {}", listener.local_addr()?, metrics_listener.local_addr()?);
    }
    tokio::spawn(tessera_telemetry::serve_metrics(metrics_listener, metrics, std::future::pending()));
    tessera_node::run(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
