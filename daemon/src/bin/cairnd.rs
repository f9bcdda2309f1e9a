//! `cairnd`: the Cairn daemon.
//!
//! Opens the engine on the data dir (embedded defaults: `./cairn-data`, io_uring when
//! available) and serves until SIGINT or SIGTERM, then shuts down cleanly so change tracking
//! stays trusted. Serves the gRPC API (`--grpc`, default a mode-0600 unix socket in the data
//! dir), every live disk over NBD (`--nbd`), and `/metrics` and `/healthz` over HTTP
//! (`--http`, default `127.0.0.1:9633`).
//! Flags win over the optional TOML config file (`--config`).
//!
//! TLS (`--tls-cert`, `--tls-key`) covers every TCP listener; client certificates
//! (`--tls-client-ca`) or a bearer token (`--grpc-token-file`) authenticate gRPC clients.
//! The rules for non-loopback addresses are in `cairn_daemon::net::security`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cairn_daemon::config::Config;
use cairn_daemon::grpc::{self, GrpcAddr, GrpcListener};
use cairn_daemon::http::{DEFAULT_HTTP_ADDR, HttpListener};
use cairn_daemon::nbd::{EngineExports, Listener, NbdAddr, Server, ServerConfig};
use cairn_daemon::net::security::Security;
use cairn_daemon::net::token::RequireToken;
use cairn_engine::{Engine, EngineConfig, IoBackendKind, Name};
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
    /// Root of all state: catalog (RocksDB) and disks [default: ./cairn-data].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// TOML config file; its keys are the long flags' names with `_` (flags win over it).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,

    /// I/O backend for live disks: auto (io_uring when available), uring or blocking [default: auto].
    #[arg(long, env = "CAIRN_IO")]
    io_backend: Option<String>,

    /// gRPC listen address: `unix:PATH` or `HOST:PORT` (default `unix:<data-dir>/cairn.sock`,
    /// created with mode 0600).
    #[arg(long, env = "CAIRN_GRPC")]
    grpc: Option<String>,

    /// This daemon's region name [default: local].
    #[arg(long, env = "CAIRN_REGION")]
    region: Option<String>,

    /// NBD listen address: `unix:PATH` or `HOST:PORT` (default `unix:<data-dir>/nbd.sock`);
    /// repeat it to serve on several (a unix socket and TCP, say). Every live disk is an
    /// export by its name.
    #[arg(long, env = "CAIRN_NBD", value_delimiter = ',')]
    nbd: Vec<String>,

    /// HTTP listen address for `/metrics` and `/healthz`: `HOST:PORT` (port 0 picks one)
    /// [default: 127.0.0.1:9633].
    #[arg(long, env = "CAIRN_HTTP")]
    http: Option<String>,

    /// Server certificate chain (PEM, leaf first); needs --tls-key. Every TCP listener then
    /// speaks TLS, loopback included: gRPC and HTTP directly, NBD through STARTTLS, required
    /// before any other option. Unix sockets stay plain (mode 0600).
    #[arg(long, env = "CAIRN_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, env = "CAIRN_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// CA certificates (PEM): gRPC and NBD clients over TCP must present a certificate
    /// issued by one of them.
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,

    /// File holding a token every gRPC call must carry as `authorization: Bearer <token>`
    /// (the health service excepted), on every gRPC listener.
    #[arg(long, env = "CAIRN_GRPC_TOKEN_FILE", value_name = "FILE")]
    grpc_token_file: Option<PathBuf>,

    /// Serve on a non-loopback TCP address without TLS, or gRPC and NBD there without
    /// authenticating clients (by client certificate, or for gRPC a token). Refused
    /// otherwise: use it only on a private network or behind a tunnel.
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
    let file = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // Engine settings are applied once the data dir is known (the fields below move out).
    let tuning = file.clone();
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./cairn-data"));
    let io_backend: IoBackendKind =
        args.io_backend.or(file.io_backend).as_deref().unwrap_or("auto").parse().context("io_backend")?;
    let nbd_addrs: Vec<String> =
        if args.nbd.is_empty() { file.nbd.map(Into::into).unwrap_or_default() } else { args.nbd };
    let mut nbd_addrs: Vec<NbdAddr> =
        nbd_addrs.iter().map(|a| a.parse().with_context(|| format!("nbd {a:?}"))).collect::<anyhow::Result<_>>()?;
    if nbd_addrs.is_empty() {
        nbd_addrs.push(NbdAddr::Unix(data_dir.join("nbd.sock")));
    }
    let grpc_addr: GrpcAddr = match args.grpc.or(file.grpc) {
        Some(a) => a.parse().context("grpc")?,
        None => GrpcAddr::Unix(data_dir.join("cairn.sock")),
    };
    let http_addr = args.http.or(file.http).unwrap_or_else(|| DEFAULT_HTTP_ADDR.into());
    let region = args.region.or(file.region).unwrap_or_else(|| "local".into());
    Name::new(region.as_str()).with_context(|| format!("region {region:?}"))?;
    let allow_plaintext = args.allow_plaintext || file.allow_plaintext.unwrap_or(false);
    let token_file = args.grpc_token_file.or(file.grpc_token_file);
    let security = Security::load(
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.tls_client_ca.or(file.tls_client_ca),
        token_file.as_deref(),
        allow_plaintext,
    )?;
    let peers = cairn_daemon::replication::Peers::load(&file.peers).context("config file: peers")?;
    let replication_addr: Option<GrpcAddr> =
        file.replication_listen.as_deref().map(str::parse).transpose().context("replication_listen")?;
    if replication_addr.is_some() && security.tls.is_none() {
        anyhow::bail!("replication_listen needs tls_cert and tls_key: peers always reach it over TLS");
    }
    let config = tuning
        .apply_engine(EngineConfig { io_backend, region, ..EngineConfig::new(&data_dir) })
        .map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    let engine = Engine::open(config).await.with_context(|| format!("opening data dir {}", data_dir.display()))?;

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    // Bound only once the engine holds the data dir lock: a stale socket file in the data dir
    // can then be replaced safely. A failure still closes the engine cleanly.
    let mut listeners = Vec::new();
    for addr in &nbd_addrs {
        match Listener::bind(addr, &security).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                engine.close().await.context("closing the engine")?;
                return Err(e).context("starting the NBD listener");
            }
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // One server (one export cache) behind every NBD listener.
    let server = Arc::new(Server::new(Arc::new(EngineExports::new(engine.clone())), ServerConfig::default()));
    let nbd: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tracing::info!(addr = %listener.local_addr(), starttls = listener.requires_tls(), "nbd listening");
            tokio::spawn(listener.run(server.clone(), stopped.clone()))
        })
        .collect();
    let nbd = futures::future::join_all(nbd);

    let grpc_ctx = grpc::Context { engine: engine.clone(), peers: peers.clone(), shutdown: stopped.clone() };
    let grpc_listener = match GrpcListener::bind(&grpc_addr, &security).await {
        Ok(l) => l,
        Err(e) => {
            let _ = stop.send(true);
            let _ = nbd.await;
            engine.close().await.context("closing the engine")?;
            return Err(e).context("starting the gRPC listener");
        }
    };
    let routes = match grpc::routes(&grpc_ctx, RequireToken(security.grpc_token.clone())).await {
        Ok(r) => r,
        Err(e) => {
            let _ = stop.send(true);
            let _ = nbd.await;
            engine.close().await.context("closing the engine")?;
            return Err(e).context("building the gRPC services");
        }
    };
    let http_listener = match HttpListener::bind(&http_addr, &security).await {
        Ok(l) => l,
        Err(e) => {
            let _ = stop.send(true);
            let _ = nbd.await;
            engine.close().await.context("closing the engine")?;
            return Err(e).context("starting the HTTP listener");
        }
    };
    let replication = match &replication_addr {
        Some(addr) => match GrpcListener::bind(addr, &security).await {
            Ok(l) => {
                tracing::info!(addr = %l.local_addr(), peers_accepted = peers.accepts_any(), "replication listening");
                let service = cairn_daemon::replication::ReplicationService::new(engine.clone(), peers.clone());
                let server = cairn_proto::v1::replication_server::ReplicationServer::new(service)
                    .max_decoding_message_size(cairn_daemon::replication::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(cairn_daemon::replication::MAX_MESSAGE_BYTES);
                let mut routes = tonic::service::Routes::builder();
                routes.add_service(server);
                Some(tokio::spawn(l.run(routes.routes(), stopped.clone())))
            }
            Err(e) => {
                let _ = stop.send(true);
                let _ = nbd.await;
                engine.close().await.context("closing the engine")?;
                return Err(e).context("starting the replication listener");
            }
        },
        None => None,
    };
    tracing::info!(addr = %grpc_listener.local_addr(), "grpc listening");
    let grpc_server = tokio::spawn(grpc_listener.run(routes, stopped.clone()));
    tracing::info!(addr = %http_listener.local_addr(), tls = http_listener.is_tls(), "http listening");
    let http_server = tokio::spawn(http_listener.run(engine.clone(), stopped));

    tracing::info!(data_dir = %data_dir.display(), io = engine.io_backend(), region = engine.region(), "cairnd ready");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    // Stop accepting, let requests in flight finish and reply, then close the engine.
    let _ = stop.send(true);
    for done in nbd.await {
        if let Err(e) = done {
            tracing::error!(error = %e, "nbd listener task failed");
        }
    }
    if let Err(e) = grpc_server.await {
        tracing::error!(error = %e, "grpc server task failed");
    }
    if let Err(e) = http_server.await {
        tracing::error!(error = %e, "http server task failed");
    }
    if let Some(r) = replication
        && let Err(e) = r.await
    {
        tracing::error!(error = %e, "replication server task failed");
    }
    engine.close().await.context("closing the engine")?;
    Ok(())
}
