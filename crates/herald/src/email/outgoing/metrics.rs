//! E-mail metrics (a [`MetricSource`]), with the meaning of ntfy's
//! `ntfy_emails_sent_success`/`_failure` and `ntfy_emails_received_success`/
//! `_failure`: a mail counts as failed when herald gives up on it, not per attempt.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::MetricSource;

/// The counters the outbox and the SMTP server update.
#[derive(Debug, Clone, Default)]
pub struct EmailMetrics {
    queued: Counter,
    sent: Counter,
    failed: Counter,
    retries: Counter,
    queue_depth: Gauge,
    received: Counter,
    received_failed: Counter,
}

impl MetricSource for EmailMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_emails_queued",
            "Mails accepted into the outgoing queue",
            self.queued.clone(),
        );
        registry.register(
            "herald_emails_sent",
            "Mails the relay accepted (ntfy_emails_sent_success)",
            self.sent.clone(),
        );
        registry.register(
            "herald_emails_sent_failed",
            "Mails given up: retries exhausted, refused permanently, or not queued (ntfy_emails_sent_failure)",
            self.failed.clone(),
        );
        registry.register(
            "herald_email_send_retries",
            "Failed send attempts that will be retried",
            self.retries.clone(),
        );
        registry.register(
            "herald_email_queue_depth",
            "Mails waiting in the outgoing queue",
            self.queue_depth.clone(),
        );
        registry.register(
            "herald_emails_received",
            "Mails received by the SMTP server and published (ntfy_emails_received_success)",
            self.received.clone(),
        );
        registry.register(
            "herald_emails_received_failed",
            "Mails received by the SMTP server and refused (ntfy_emails_received_failure)",
            self.received_failed.clone(),
        );
    }
}

impl EmailMetrics {
    pub fn queued(&self) {
        self.queued.inc();
    }
    pub fn sent(&self) {
        self.sent.inc();
    }
    pub fn gave_up(&self) {
        self.failed.inc();
    }
    pub fn retried(&self) {
        self.retries.inc();
    }
    pub fn set_queued(&self, n: u64) {
        self.queue_depth.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn received(&self) {
        self.received.inc();
    }
    pub fn received_failed(&self) {
        self.received_failed.inc();
    }
}
