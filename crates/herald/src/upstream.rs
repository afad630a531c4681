//! iOS upstream pokes (`upstream-base-url`, ntfy's): Apple lets only the App Store
//! build's server wake the ntfy iOS app, so a self-hosted server asks that one
//! (usually `https://ntfy.sh`) to send a `poll_request` for each message: `POST
//! <upstream>/<sha256-hex(base-url + "/" + topic)>` with `X-Poll-ID: <message id>` and
//! optionally `Authorization: Bearer <upstream-access-token>`. The app then polls
//! this server for the message itself; the upstream never sees its content.
//!
//! Pokes never slow a publish: [`Upstream::poke`] puts them on a bounded queue
//! (dropped and counted when full) that one task drains with a few requests in
//! flight, each retried a little. Exactly one node pokes per message: the node that
//! accepted the publish (`api::publish`), or for a scheduled message the node whose
//! scheduler took it (taken once cluster-wide, `core`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::Digest;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{EventKind, Message};

/// Pokes waiting to be sent; more are dropped (and counted).
const QUEUE: usize = 10_000;
/// Requests to the upstream in flight at once.
const IN_FLIGHT: usize = 8;
/// Attempts per poke, and the pause before each retry.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `upstream-base-url` and `upstream-access-token`.
#[derive(Clone)]
pub struct UpstreamConfig {
    pub base_url: String,
    pub access_token: Option<String>,
}

// The token stays out of debug output.
impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// `herald_upstream_pokes_total{result="sent|failed|dropped"}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamMetrics {
    pokes: Family<Outcome, Counter>,
}

impl UpstreamMetrics {
    fn count(&self, result: &'static str) {
        self.pokes.get_or_create(&Outcome { result }).inc();
    }
}

impl crate::telemetry::MetricSource for UpstreamMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_upstream_pokes",
            "iOS upstream poll requests, by result (sent, failed after retries, dropped when the queue was full)",
            self.pokes.clone(),
        );
    }
}

struct Poke {
    path: String,
    id: String,
}

/// The poker: cheap to share.
#[derive(Debug)]
pub(crate) struct Upstream {
    tx: mpsc::Sender<Poke>,
    /// `base-url`, for the topic hash.
    base_url: String,
    metrics: UpstreamMetrics,
}

impl std::fmt::Debug for Poke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poke").field("id", &self.id).finish()
    }
}

/// The upstream path of `topic`: ntfy's `sha256(base-url + "/" + topic)` in hex.
pub(crate) fn topic_hash(base_url: &str, topic: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{base_url}/{topic}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Upstream {
    /// Starts the sender on `tracker` until `shutdown`.
    pub(crate) fn start(
        config: UpstreamConfig,
        base_url: &str,
        metrics: UpstreamMetrics,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Upstream>> {
        crate::webhook::client::install_tls_provider();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(
                crate::webhook::client::tls_config().map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(rx, client, config, metrics.clone(), shutdown));
        Ok(Arc::new(Upstream {
            tx,
            base_url: base_url.to_string(),
            metrics,
        }))
    }

    /// Queues the poke for `m` if it is a message (not a poll request, delete or
    /// clear). Never waits.
    pub(crate) fn poke(&self, m: &Message) {
        if m.event != EventKind::Message || !m.poll_id.is_empty() {
            return;
        }
        let poke = Poke {
            path: topic_hash(&self.base_url, &m.topic),
            id: m.id.clone(),
        };
        if self.tx.try_send(poke).is_err() {
            self.metrics.count("dropped");
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Poke>,
    client: reqwest::Client,
    config: UpstreamConfig,
    metrics: UpstreamMetrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let config = Arc::new(config);
    let tasks = TaskTracker::new();
    loop {
        let poke = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, config, metrics) = (client.clone(), config.clone(), metrics.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                ok = send(&client, &config, &poke) => ok,
            };
            metrics.count(if sent { "sent" } else { "failed" });
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// One poke, retried after [`RETRY_PAUSES`]; true once the upstream took it.
async fn send(client: &reqwest::Client, config: &UpstreamConfig, poke: &Poke) -> bool {
    let url = format!("{}/{}", config.base_url.trim_end_matches('/'), poke.path);
    for attempt in 0..=RETRY_PAUSES.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSES[attempt - 1]).await;
        }
        let mut req = client.post(&url).header("X-Poll-ID", &poke.id);
        if let Some(token) = &config.access_token {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => return true,
            // A refusal will not change by asking again.
            Ok(resp) if resp.status().is_client_error() && resp.status() != 429 => {
                tracing::warn!(status = %resp.status(), id = %poke.id, "upstream refused poll request");
                return false;
            }
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), id = %poke.id, "upstream poll request failed")
            }
            Err(e) => tracing::debug!(error = %e, id = %poke.id, "upstream poll request failed"),
        }
    }
    tracing::warn!(id = %poke.id, "upstream poll request failed after retries");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_hash_is_ntfys() {
        assert_eq!(
            topic_hash("https://ntfy.example.com", "mytopic"),
            "6de73be8dfb7d69e32fb2c00c23fe7adbd8b5504406e3068c273aa24cef4055b"
        );
    }
}
