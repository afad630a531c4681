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
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, LocalBroker};
use crate::cluster::connector::RedisConnector;
use crate::config::Config;
use crate::config::StoreEngine;
use crate::core::Herald;
use crate::hub::{CloseReason, Hub};
use crate::listener::Listener;
use crate::store::Store;
use crate::store::log::{LogOptions, LogStore};
use crate::store::redis::{Delivered, RedisStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::telemetry::{Metrics, RequestInfo, StoreMetrics};
use crate::webhook::Webhooks;
use crate::webhook::dispatcher::{FeedWake, WakingBroker};
use crate::webhook::metrics::WebhookMetrics;
use crate::webhook::redis::{LogFeed, RedisWebhookStore};
use crate::webhook::sqlite::SqliteWebhookStore;

/// Opens the attachment store (if `attachment-cache-dir` is set), counts what it
/// holds and deletes a previous run's leftovers before the server takes uploads,
/// then sweeps it every `manager-interval` on `tracker` until `stop`.
async fn open_attachments(
    config: &Config,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<crate::attachment::Attachments>>> {
    let Some(attachments) =
        crate::attachment::Attachments::open(&config.attachments, &config.base_url).await?
    else {
        return Ok(None);
    };
    let report = attachments.sweep(true).await;
    tracing::info!(
        store = %attachments.describe(),
        files = attachments.file_count(),
        bytes = attachments.total_size(),
        expired = report.expired,
        orphans = report.orphans,
        "attachments on"
    );
    if config.base_url.is_empty() {
        tracing::warn!(
            "attachment-cache-dir is set but base-url is not: uploads are refused (40014), as in ntfy"
        );
    }
    tracker.spawn(
        attachments
            .clone()
            .run_sweeper(config.manager_interval, stop.clone()),
    );
    Ok(Some(attachments))
}

/// Binds `config.listen_http`. A `0.0.0.0:port` address (ntfy's `:port`) is tried as
/// `[::]:port` first so IPv6 clients are served too.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    bind_addr(&config.listen_http).await
}

/// Binds `addr` if set (an optional listener).
async fn bind_optional(addr: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => Ok(Some(bind_addr(addr).await?)),
        None => Ok(None),
    }
}

async fn bind_addr(addr: &str) -> anyhow::Result<TcpListener> {
    if let Some(port) = addr.strip_prefix("0.0.0.0:")
        && let Ok(listener) = TcpListener::bind(format!("[::]:{port}")).await
    {
        return Ok(listener);
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
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
    // Private (0700): it holds the message cache, and by default the auth and
    // webhook databases (see `datafiles`).
    crate::datafiles::private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create (or make private) data directory {}",
            config.data_dir.display()
        )
    })?;
    // Bound before anything else starts, so a taken port fails start-up cleanly.
    let metrics_listener = bind_optional(config.metrics_listen_http.as_deref()).await?;
    let grpc_listener = bind_optional(config.listen_grpc.as_deref()).await?;
    let store_metrics = Arc::new(StoreMetrics::default());
    let hub = Hub::with_shard_min(config.subscriber_queue_size, config.fanout_shard_size);
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    // Cluster mode's one way to Redis (TLS, Sentinel, failover): every Redis user
    // connects through it (crate::cluster::connector).
    let redis = match config.redis.enabled() {
        true => {
            Some(RedisConnector::new(&config.redis).context("cannot set up the Redis connection")?)
        }
        false => None,
    };
    let (store, broker): (Arc<dyn Store>, Arc<dyn Broker>) = match &redis {
        Some(url) => cluster_backends(&config, url, &hub, &tracker, &background).await?,
        None => {
            let store = open_embedded_store(&config, &store_metrics)?;
            (store, Arc::new(LocalBroker::new(hub.clone())))
        }
    };
    // Publishes wake the webhook feed (see crate::webhook).
    let feed_wake = FeedWake::new();
    let broker: Arc<dyn Broker> = Arc::new(WakingBroker::new(broker, feed_wake.clone()));
    // Publishes wake the Web Push feed too, when it is on (see crate::webpush).
    let push_wake = FeedWake::new();
    let broker: Arc<dyn Broker> = if config.web.push.is_some() {
        Arc::new(WakingBroker::new(broker, push_wake.clone()))
    } else {
        broker
    };
    let herald = Herald::new(config.clone(), store.clone(), broker, hub.clone());
    herald.spawn_background(&tracker, background.clone());

    let webhook_metrics = WebhookMetrics::default();
    let webhooks = if let Some(url) = &redis {
        let webhooks = cluster_webhooks(&config, url, &herald, &webhook_metrics, feed_wake)?;
        webhooks.start().await;
        Some(webhooks)
    } else {
        let webhook_store = SqliteWebhookStore::open(&config.webhooks.file).with_context(|| {
            format!(
                "cannot open webhook store {}",
                config.webhooks.file.display()
            )
        })?;
        let webhooks = Webhooks::new(
            config.webhooks.clone(),
            Arc::new(webhook_store),
            herald.clone(),
            webhook_metrics.clone(),
            feed_wake,
        )?;
        webhooks.start().await;
        Some(webhooks)
    };

    let webpush = match &config.web.push {
        Some(push) => Some(crate::webpush::start(
            &config,
            push,
            &herald,
            push_wake,
            redis.as_ref(),
        )?),
        None => None,
    };
    // E-mail (src/email): the outbox sends `X-Email` mail from its durable queue.
    let email_metrics = crate::email::outgoing::EmailMetrics::default();
    if let Some(sender) = &config.email.sender {
        let queue: Arc<dyn crate::email::outgoing::queue::MailQueue> = match &redis {
            Some(url) => Arc::new(crate::email::outgoing::redis::RedisMailQueue::new(
                url,
                &config.redis_key_prefix,
            )?),
            None => Arc::new(
                crate::email::outgoing::sqlite::SqliteMailQueue::open(&sender.queue_file)
                    .with_context(|| {
                        format!("cannot open mail queue {}", sender.queue_file.display())
                    })?,
            ),
        };
        let outbox = crate::email::Outbox::new(
            sender.clone(),
            &config.base_url,
            queue,
            email_metrics.clone(),
        )?;
        outbox.start(&tracker, background.clone());
        herald.set_outbox(outbox);
        tracing::info!(relay = %sender.addr, "e-mail notifications on");
    }

    let mut metrics = Metrics::new(&herald, &store_metrics);
    metrics.register_source(&webhook_metrics);
    let grpc_metrics = crate::grpc::GrpcMetrics::default();
    metrics.register_source(&grpc_metrics);
    // iOS upstream pokes (`upstream-base-url`): immediate messages from the publish
    // path, scheduled ones from this node's scheduler.
    let upstream_metrics = crate::upstream::UpstreamMetrics::default();
    metrics.register_source(&upstream_metrics);
    let upstream = match &config.upstream {
        Some(up) => {
            let upstream = crate::upstream::Upstream::start(
                up.clone(),
                &config.base_url,
                upstream_metrics,
                &tracker,
                background.clone(),
            )?;
            let hook = upstream.clone();
            herald.on_scheduled_delivery(move |m| hook.poke(m));
            tracing::info!(upstream = %up.base_url, "iOS upstream poll requests on");
            Some(upstream)
        }
        None => None,
    };
    metrics.register_source(&email_metrics);
    if let Some(webpush) = &webpush {
        metrics.register_source(&webpush.metrics);
    }
    let metrics = Arc::new(metrics);
    let auth = match (&config.auth, &redis) {
        // Cluster mode: the users, tokens and ACL every node shares (auth-file unused).
        (Some(settings), Some(url)) => {
            let (url, prefix) = (url.clone(), config.redis_key_prefix.clone());
            let access = settings.default_access;
            let auth = tokio::task::spawn_blocking(move || {
                crate::auth::redis::cluster_authorizer(&url, &prefix, access)
            })
            .await
            .context("opening the auth store")?
            .context("cannot open the auth store in Redis")?;
            tracing::info!(
                default_access = access.as_str(),
                "access control on, users in Redis"
            );
            auth
        }
        (Some(settings), None) => {
            let auth = crate::auth::Authorizer::open(settings).with_context(|| {
                format!("cannot open auth file {}", settings.auth_file.display())
            })?;
            tracing::info!(
                auth_file = %settings.auth_file.display(),
                default_access = settings.default_access.as_str(),
                "access control on"
            );
            auth
        }
        (None, _) => crate::auth::Authorizer::disabled(),
    };
    // `auth-users`, `auth-access`, `auth-tokens`: applied before anything is served.
    if let (Some(p), Some(store)) = (&config.auth_provisioning, auth.store()) {
        let (p, store) = (p.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            crate::auth::provision::apply(&*store, &p, crate::model::now_unix())
        })
        .await
        .context("provisioning users")?
        .context("cannot apply auth-users, auth-access, auth-tokens")?;
        tracing::info!("provisioned users, access entries and tokens applied");
    }
    let mut state = AppState::with_metrics(herald.clone(), metrics, metrics_listener.is_none())
        .with_auth(Arc::new(auth));
    state.webhooks = webhooks.clone();
    state.attachments = open_attachments(&config, &tracker, &background).await?;
    state.upstream = upstream;
    state.webpush = webpush.clone();
    state.idempotency = Arc::new(
        crate::idempotency::Idempotency::open(&config, redis.as_ref())
            .context("cannot open the idempotency key store")?,
    );
    if let Some(url) = &redis {
        state.limits = cluster_limits(&config, url, &state.metrics, &tracker, &background).await?;
    }
    if let Some(smtp) = &config.email.server {
        let listener = crate::email::incoming::bind(&smtp.listen)
            .await
            .with_context(|| format!("cannot listen for SMTP on {}", smtp.listen))?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let deps = Arc::new(crate::email::incoming::Deps {
            config: smtp.clone(),
            herald: herald.clone(),
            auth: state.auth.clone(),
            limits: state.limits.clone(),
            metrics: email_metrics.clone(),
        });
        crate::email::incoming::start(listener, deps, &tracker, background.clone());
        // Tests and scripts wait for this line to learn the bound port.
        tracing::info!(domain = %smtp.domain, "smtp listening on {addr}");
    }
    // The metrics listener runs until the very end, so a drain can be watched.
    let metrics_stop = CancellationToken::new();
    let metrics_server = metrics_listener.map(|listener| {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!("metrics listening on http://{addr}/metrics");
        tokio::spawn(serve_metrics(listener, state.clone(), metrics_stop.clone()))
    });
    // The gRPC API (crate::grpc): it keeps answering (health NOT_SERVING, calls
    // UNAVAILABLE) while the server drains, and stops with the HTTP connections.
    let grpc_stop = CancellationToken::new();
    let grpc_server = grpc_listener.map(|listener| {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!("gRPC listening on {addr}");
        tokio::spawn(crate::grpc::serve(
            listener,
            state.clone(),
            grpc_metrics.clone(),
            config.grpc_reflection,
            grpc_stop.clone(),
        ))
    });
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
    let store_name = match &redis {
        // The URL may carry a password: name only where the cluster lives.
        Some(_) => format!(
            "{} (prefix {})",
            config.redis.describe(),
            config.redis_key_prefix
        ),
        None => config.cache_file.display().to_string(),
    };
    tracing::info!(store = %store_name, "herald listening on http://{addr}");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining connections");
    herald.start_draining();
    let _ = accept_loop.await;
    // Streams end after what is queued for them; HTTP connections finish their
    // in-flight request (hyper's graceful shutdown), then close.
    hub.close_all(CloseReason::Shutdown);
    connections.close();
    grpc_stop.cancel();
    let grpc_done = async {
        if let Some(task) = grpc_server {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(config.shutdown_timeout, async {
        tokio::join!(connections.wait(), grpc_done)
    })
    .await
    .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    background.cancel();
    tracker.close();
    tracker.wait().await;
    if let Some(webhooks) = &webhooks {
        webhooks.stop().await;
    }
    if let Some(webpush) = &webpush {
        webpush.stop().await;
    }
    store.close().await;
    metrics_stop.cancel();
    if let Some(task) = metrics_server {
        let _ = task.await;
    }
    // Every request's access-log line before the last line.
    let _ = tokio::task::spawn_blocking(|| {
        crate::logging::access::flush(std::time::Duration::from_secs(2))
    })
    .await;
    tracing::info!("herald stopped");
    Ok(())
}

/// The embedded message store `store-engine` chooses, reporting its writes to
/// `metrics`.
fn open_embedded_store(
    config: &Config,
    metrics: &Arc<StoreMetrics>,
) -> anyhow::Result<Arc<dyn Store>> {
    let observer: Arc<dyn crate::store::CommitObserver> = metrics.clone();
    Ok(match config.store_engine {
        StoreEngine::Sqlite => {
            let options = SqliteOptions {
                sync: config.store_sync,
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open_observed(&config.cache_file, options, Some(observer))
                .with_context(|| {
                    format!("cannot open message store {}", config.cache_file.display())
                })?;
            Arc::new(store)
        }
        StoreEngine::Log => {
            let dir = config.log_dir();
            let options = LogOptions {
                sync: config.store_sync,
                ..LogOptions::default()
            };
            let store = LogStore::open(&dir, options, Some(&config.cache_file), Some(observer))
                .with_context(|| format!("cannot open message store {}", dir.display()))?;
            Arc::new(store)
        }
    })
}

/// The Redis store and broker of a cluster node (`redis-url`, docs/SCALING.md); the
/// broker's log reader runs on `tracker` until `stop`.
async fn cluster_backends(
    config: &Config,
    url: &RedisConnector,
    hub: &Arc<Hub>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Broker>)> {
    let prefix = &config.redis_key_prefix;
    let delivered = Arc::new(Delivered::default());
    let store = RedisStore::open(url, prefix, config.cache_duration, delivered.clone())
        .context("cannot set up the Redis store")?;
    let broker =
        RedisBroker::new(url, prefix, delivered).context("cannot set up the Redis broker")?;
    broker
        .start_reader(hub.clone(), tracker, stop.clone())
        .await;
    tracing::info!(prefix = %prefix, "cluster mode: store and fan-out on Redis");
    Ok((Arc::new(store), Arc::new(broker)))
}

/// Visitor limits shared by the cluster's nodes (docs/SCALING.md, "Rate limits"),
/// with this node's heartbeat kept on `tracker` until `stop`.
async fn cluster_limits(
    config: &Config,
    url: &RedisConnector,
    metrics: &Metrics,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<crate::limits::Limits>> {
    let shared = crate::limits::redis::RedisLimits::new(
        url,
        &config.redis_key_prefix,
        &config.limits,
        config.visitor_subscription_limit,
        metrics.limits_shared_unavailable.clone(),
    )
    .map_err(anyhow::Error::msg)
    .context("cannot set up the shared rate limits")?;
    let shared = Arc::new(shared);
    shared.start(tracker, stop.clone()).await;
    let limits = crate::limits::Limits::new(config.limits.clone(), metrics.limit_refusals.clone());
    Ok(Arc::new(limits.with_shared(shared)))
}

/// The webhook service of a cluster node: the shared queue in Redis and the feed over
/// the cluster log (`crate::webhook::redis`, docs/WEBHOOKS.md "Cluster mode").
fn cluster_webhooks(
    config: &Config,
    url: &RedisConnector,
    herald: &Arc<Herald>,
    metrics: &WebhookMetrics,
    feed_wake: Arc<FeedWake>,
) -> anyhow::Result<Arc<Webhooks>> {
    let prefix = &config.redis_key_prefix;
    let store = RedisWebhookStore::open(url, prefix, config.webhooks.concurrency)
        .context("cannot set up the Redis webhook store")?;
    let feed = LogFeed::open(url, prefix).context("cannot set up the webhook feed")?;
    Ok(Webhooks::with_feed(
        config.webhooks.clone(),
        Arc::new(store),
        herald.clone(),
        metrics.clone(),
        feed_wake,
        Arc::new(feed),
    )?)
}

/// The `metrics-listen-http` server: `GET /metrics` and nothing else (404), with
/// the same request metrics and access log as the main listener.
async fn serve_metrics(listener: TcpListener, state: AppState, stop: CancellationToken) {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;

    async fn handle(State(state): State<AppState>, req: Request) -> axum::response::Response {
        let info = RequestInfo::new(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        );
        let response = if req.method() == axum::http::Method::GET && req.uri().path() == "/metrics"
        {
            crate::api::info::metrics(&state).await
        } else {
            crate::error::ApiError::NOT_FOUND.into_response()
        };
        info.finish(&state.metrics, response.status().as_u16());
        response
    }

    let app = axum::Router::new().fallback(handle).with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "metrics listener failed");
    }
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
