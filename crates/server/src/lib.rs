//! deeptune's HTTP API, shaped after Clarifai's v2 REST API, and the `serve` loop that runs it on
//! the embedded default (SQLite + a local blob folder under one data directory).

pub mod auth;
pub mod config;
pub mod error;
pub mod portal;
pub mod predict;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use deeptune_blob::LocalBlobStore;
use deeptune_core::scope::Scope;
use deeptune_media::{FetchConfig, ImageLimits, UrlFetcher};
use deeptune_store::Store;
use tokio::net::TcpListener;
use tokio::sync::RwLock;

pub use config::{Config, ConfigError, ConfigLayer, LogFormat};
pub use state::AppState;

/// Opens the data directory: database (migrated), blob folder, first admin token; sweeps blobs
/// that a crash left unreferenced.
pub async fn open_state(config: &Config) -> anyhow::Result<(AppState, Option<String>)> {
    let state = open_storage(config).await?;
    let admin_token = bootstrap_admin_token(&state).await?;
    let swept = state.sweep_orphan_blobs().await.map_err(|e| anyhow::anyhow!("{}", e.details))?;
    if swept > 0 {
        tracing::warn!(swept, "removed blobs that no metadata referred to (left by an earlier crash)");
    }
    Ok((state, admin_token))
}

/// Opens the database and blob folder only. A worker process uses this: the orphan sweep must
/// run only where uploads are served (it would race with another process's uploads).
pub async fn open_storage(config: &Config) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = Store::open(&config.database_path()).await.map_err(|e| anyhow::anyhow!("{}", e.details))?;
    let blobs = LocalBlobStore::open(config.blob_dir())
        .with_context(|| format!("cannot open blob folder {}", config.blob_dir().display()))?;
    let image_limits = ImageLimits { max_pixels: config.max_image_pixels, ..ImageLimits::default() };
    let fetcher = UrlFetcher::new(FetchConfig {
        allowlist: config.url_allowlist.clone(),
        max_bytes: image_limits.max_bytes,
        ..FetchConfig::default()
    });
    let state = AppState {
        store,
        blobs: Arc::new(blobs),
        fetcher,
        image_limits,
        config: Arc::new(config.clone()),
        blob_lock: Arc::new(RwLock::new(())),
        models: Arc::default(),
    };
    Ok(state)
}

/// On the very first start, creates an admin token, writes it to `<data_dir>/admin-token`
/// (readable by the owner only) and returns it so it can be printed once.
async fn bootstrap_admin_token(state: &AppState) -> anyhow::Result<Option<String>> {
    if state.store.count_tokens().await.map_err(|e| anyhow::anyhow!("{}", e.details))? > 0 {
        return Ok(None);
    }
    let key = state
        .store
        .create_token(&state.config.user_id, &[Scope::Admin], None, "created at first start")
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.details))?;
    let secret = key.token.expect("a new key carries its secret");
    let path = state.config.admin_token_path();
    write_private_file(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(secret))
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A server listening on its socket; `serve` runs it until `shutdown` resolves.
pub struct Server {
    pub state: AppState,
    pub listener: TcpListener,
    /// The admin token, when this start created it.
    pub new_admin_token: Option<String>,
}

impl Server {
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let (state, new_admin_token) = open_state(config).await?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Server { state, listener, new_admin_token })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    /// Serves the API, with a training worker in the same process (the embedded default),
    /// until `shutdown` resolves. A training run in progress stops at its next step and keeps
    /// its checkpoint; the next start resumes it.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let router = routes::router(self.state.clone());
        let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
        let worker = self.state.config.embedded_worker.then(|| tokio::spawn(worker(&self.state).run(worker_stopped)));
        let result = axum::serve(self.listener, router).with_graceful_shutdown(shutdown).await;
        let _ = stop_worker.send(true);
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        self.state.store.close().await;
        Ok(result?)
    }
}

/// A training worker over this server's store, blobs and data directory.
pub fn worker(state: &AppState) -> deeptune_worker::Worker {
    let mut worker =
        deeptune_worker::Worker::new(state.store.clone(), state.blobs.clone(), state.config.data_dir.clone());
    worker.lease = state.config.worker_lease;
    worker.fetch_weights = state.config.fetch_weights;
    worker
}

/// Runs only a worker (`deeptune worker`): another process beside `serve`, on the same data
/// directory, until `shutdown` resolves.
pub async fn run_worker(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let state = open_storage(config).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(worker(&state).run(stopped));
    shutdown.await;
    let _ = stop.send(true);
    let _ = handle.await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Sets up tracing in the configured format; `RUST_LOG` tunes levels.
pub fn init_logging(format: LogFormat) {
    init_logging_with(format, "info,sqlx=warn,tower_http=info")
}

/// [`init_logging`] with another default filter (`RUST_LOG` still wins).
pub fn init_logging_with(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
