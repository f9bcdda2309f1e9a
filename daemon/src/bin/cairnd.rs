//! `cairnd`: the Cairn daemon.
//!
//! Opens the engine on the data dir (embedded defaults: `./cairn-data`, io_uring when
//! available) and serves until SIGINT or SIGTERM, then shuts down cleanly so change tracking
//! stays trusted. Serves every live disk over NBD (`--nbd`); the gRPC and HTTP listeners
//! attach to this process as they land.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cairn_daemon::nbd::{Listener, LiveDisks, NbdAddr, Server, ServerConfig};
use cairn_engine::{Engine, EngineConfig, IoBackendKind};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The Cairn block-level snapshot storage daemon.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Root of all state: catalog (RocksDB) and disks.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
    data_dir: PathBuf,

    /// I/O backend for live disks: auto (io_uring when available), uring or blocking.
    #[arg(long, env = "CAIRN_IO", default_value = "auto")]
    io_backend: String,

    /// NBD listen address: `unix:PATH` or `HOST:PORT` (default `unix:<data-dir>/nbd.sock`).
    /// Every live disk is an export by its name.
    #[arg(long, env = "CAIRN_NBD")]
    nbd: Option<String>,

    /// Allow NBD over TCP on a non-loopback address without TLS (not implemented yet).
    #[arg(long)]
    allow_plaintext: bool,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let io_backend: IoBackendKind = args.io_backend.parse().context("--io-backend")?;
    let nbd_addr: NbdAddr = match &args.nbd {
        Some(a) => a.parse().context("--nbd")?,
        None => NbdAddr::Unix(args.data_dir.join("nbd.sock")),
    };
    let config = EngineConfig { io_backend, ..EngineConfig::new(&args.data_dir) };
    let engine = Engine::open(config).await.with_context(|| format!("opening data dir {}", args.data_dir.display()))?;

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    // Bound only once the engine holds the data dir lock: a stale socket file in the data dir
    // can then be replaced safely. A failure still closes the engine cleanly.
    let listener = match Listener::bind(&nbd_addr, args.allow_plaintext).await {
        Ok(l) => l,
        Err(e) => {
            engine.close().await.context("closing the engine")?;
            return Err(e).context("starting the NBD listener");
        }
    };
    tracing::info!(addr = %listener.local_addr(), "nbd listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = Arc::new(Server::new(Arc::new(LiveDisks(engine.clone())), ServerConfig::default()));
    let nbd = tokio::spawn(listener.run(server, stopped));

    tracing::info!(data_dir = %args.data_dir.display(), io = engine.io_backend(), "cairnd ready");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    // Stop accepting, let requests in flight finish and reply, then close the engine.
    let _ = stop.send(true);
    if let Err(e) = nbd.await {
        tracing::error!(error = %e, "nbd listener task failed");
    }
    engine.close().await.context("closing the engine")?;
    Ok(())
}
