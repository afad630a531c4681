//! Wiring and lifecycle: open the store, build the core, serve HTTP, drain on shutdown.
//!
//! [`run`] takes an already bound listener and a shutdown token (mini-redis style),
//! so tests and embedders choose the port and decide when to stop.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AppState, router};
use crate::broker::LocalBroker;
use crate::config::Config;
use crate::core::Herald;
use crate::hub::{CloseReason, Hub};
use crate::listener::Listener;
use crate::store::Store;
use crate::store::sqlite::{SqliteOptions, SqliteStore};

/// Binds `config.listen_http`. A `0.0.0.0:port` address (ntfy's `:port`) is tried as
/// `[::]:port` first so IPv6 clients are served too.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    if let Some(port) = config.listen_http.strip_prefix("0.0.0.0:")
        && let Ok(listener) = TcpListener::bind(format!("[::]:{port}")).await
    {
        return Ok(listener);
    }
    TcpListener::bind(&config.listen_http)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_http))
}

/// Runs the server on `listener` until `shutdown` is cancelled, then drains:
/// new publishes are refused, streams are ended, in-flight requests finish, the
/// store commits what it has and closes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    if let Some(parent) = config.cache_file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create data directory {}", parent.display()))?;
    }
    let store = SqliteStore::open(
        &config.cache_file,
        SqliteOptions {
            sync: config.store_sync,
            ..SqliteOptions::default()
        },
    )
    .with_context(|| format!("cannot open message store {}", config.cache_file.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);
    let hub = Hub::new(config.subscriber_queue_size);
    let broker = Arc::new(LocalBroker::new(hub.clone()));
    let herald = Herald::new(config.clone(), store.clone(), broker, hub.clone());

    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    herald.spawn_background(&tracker, background.clone());

    let state = AppState::new(herald.clone());
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen_http.clone());
    let connections = TaskTracker::new();
    let accept = Listener {
        router: router(state.clone()),
        state,
        tracker: connections.clone(),
        shutdown: shutdown.clone(),
    };
    let accept_loop = tokio::spawn(accept.run(listener));
    // Tests and scripts wait for this exact line to learn the bound port.
    tracing::info!(store = %config.cache_file.display(), "herald listening on http://{addr}");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining connections");
    herald.start_draining();
    let _ = accept_loop.await;
    // Streams end after what is queued for them; HTTP connections finish their
    // in-flight request (hyper's graceful shutdown), then close.
    hub.close_all(CloseReason::Shutdown);
    connections.close();
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    background.cancel();
    tracker.close();
    tracker.wait().await;
    store.close().await;
    tracing::info!("herald stopped");
    Ok(())
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
