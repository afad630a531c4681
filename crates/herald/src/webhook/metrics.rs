//! Webhook metrics, registered into the server's registry as a
//! [`MetricSource`]. Labels are outcomes only (a
//! fixed list), never URLs or endpoint IDs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::telemetry::MetricSource;

/// Upper bounds (seconds) of the delivery latency histogram: from a message's
/// first due time to its 2xx, so retries show up in the tail.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 7200.0, 86400.0,
];

/// How an attempt ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Success,
    /// A response with another status.
    HttpError,
    /// No response within `webhook-timeout`.
    Timeout,
    /// The connection failed.
    ConnectError,
    /// The address policy refused the destination.
    Refused,
    /// Anything else.
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::HttpError => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The handles the dispatcher updates.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    attempts: Family<OutcomeLabels, Counter>,
    latency: Histogram,
    queue_depth: Gauge,
    oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    disabled: Gauge,
    disabled_total: Counter,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            attempts: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            queue_depth: Gauge::default(),
            oldest_pending: Gauge::default(),
            disabled: Gauge::default(),
            disabled_total: Counter::default(),
        }
    }
}

impl MetricSource for WebhookMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_webhook_attempts",
            "Webhook delivery attempts, by outcome (success, http_error, timeout, connect_error, refused, error)",
            self.attempts.clone(),
        );
        registry.register(
            "herald_webhook_delivery_latency_seconds",
            "Time from a webhook delivery being due to its successful attempt (retries included)",
            self.latency.clone(),
        );
        registry.register(
            "herald_webhook_queue_depth",
            "Webhook deliveries not yet delivered or exhausted",
            self.queue_depth.clone(),
        );
        registry.register(
            "herald_webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery (0 when none)",
            self.oldest_pending.clone(),
        );
        registry.register(
            "herald_webhook_endpoints_disabled",
            "Webhook endpoints currently disabled (410 Gone or failing too long)",
            self.disabled.clone(),
        );
        registry.register(
            "herald_webhook_endpoint_disablements",
            "Webhook endpoints disabled by herald since start",
            self.disabled_total.clone(),
        );
    }
}

impl WebhookMetrics {
    /// Counts one attempt.
    pub fn attempt(&self, outcome: Outcome) {
        self.attempts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A delivery succeeded `seconds` after it was first due.
    pub fn delivered_after(&self, seconds: f64) {
        self.latency.observe(seconds.max(0.0));
    }

    /// herald disabled an endpoint.
    pub fn endpoint_disabled(&self) {
        self.disabled_total.inc();
    }

    /// The queue as of now.
    pub fn set_queue(&self, pending: u64, oldest_age_seconds: f64, disabled: u64) {
        self.queue_depth
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.oldest_pending.set(oldest_age_seconds.max(0.0));
        self.disabled
            .set(i64::try_from(disabled).unwrap_or(i64::MAX));
    }
}
