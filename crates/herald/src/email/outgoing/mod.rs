//! Outgoing mail: the outbox the core hands committed messages to, the durable
//! queue behind it, and the sender that empties it through the relay.
//!
//! Order of events for `X-Email`: the API checks the address (`40050`), that a
//! relay is configured (`40001`), that the message is not scheduled (`40003`) and
//! charges the visitor's e-mail limit (`42902`); the core commits the message, then
//! (in the same spawned task, so a client going away cannot stop it) asks the
//! [`Outbox`] to render the mail and push it to the [`queue::MailQueue`], and only
//! then answers. The [`Outbox`]'s sender task claims due mail under a lease, sends
//! it with lettre, and settles it: removed when the relay took it, due again after
//! the next delay of `smtp-sender-retry-schedule` (±20 %) when it failed for a
//! reason that may pass (connection refused, timeout, `4xx`), given up and counted
//! after the last one or on a permanent refusal (`5xx`). Publishing never waits for
//! the relay.

pub(crate) mod metrics;
pub(crate) mod queue;
pub(crate) mod redis;
pub(crate) mod render;
pub(crate) mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SenderConfig;
use crate::core::publish::{EmailRequest, MailOutbox};
use crate::model::Message;
pub use metrics::EmailMetrics;
use queue::{MailQueue, QueuedMail};

/// How long a claim holds a mail: longer than any attempt can take (lettre's
/// per-command timeout is [`SMTP_TIMEOUT`]).
const LEASE: Duration = Duration::from_secs(300);
/// Each SMTP command must be answered within this time.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Mails claimed (and sent in parallel, one connection each) at once.
const BATCH: usize = 8;
/// Longest the sender sleeps without looking at the queue (other nodes push to a
/// shared queue without waking this one).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// How the relay connection is secured (`smtp-sender-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderTls {
    /// Implicit TLS on port 465, else STARTTLS when the relay offers it (ntfy's
    /// behaviour: Go's `smtp.SendMail`), required when credentials are sent to a
    /// relay that is not on this host.
    Auto,
    /// STARTTLS, required.
    StartTls,
    /// Implicit TLS (SMTPS), whatever the port.
    Tls,
    /// Plain text only (a relay on localhost).
    None,
}

impl std::str::FromStr for SenderTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(SenderTls::Auto),
            "starttls" => Ok(SenderTls::StartTls),
            "tls" | "smtps" => Ok(SenderTls::Tls),
            "none" | "off" => Ok(SenderTls::None),
            _ => Err("expected one of: auto, starttls, tls, none".into()),
        }
    }
}

/// `host:port` of `smtp-sender-addr`, checked at start.
pub fn parse_relay(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port, e.g. smtp.example.com:587".to_string())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port number"))?;
    if host.is_empty() {
        return Err("expected host:port, e.g. smtp.example.com:587".into());
    }
    Ok((host.to_string(), port))
}

/// Why the relay client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("e-mail sender: {0}")]
pub struct SetupError(String);

/// The outbox: takes mail from the core, keeps it in the queue, sends it.
pub struct Outbox {
    queue: Arc<dyn MailQueue>,
    config: SenderConfig,
    base_url: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    metrics: EmailMetrics,
    wake: Notify,
    /// This sender's name on its claims.
    owner: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox over `queue`, sending through `config`'s relay; mails link to
    /// `base_url`. Start its sender with [`Outbox::start`].
    pub fn new(
        config: SenderConfig,
        base_url: &str,
        queue: Arc<dyn MailQueue>,
        metrics: EmailMetrics,
    ) -> Result<Arc<Outbox>, SetupError> {
        let transport = transport(&config)?;
        Ok(Arc::new(Outbox {
            queue,
            config,
            base_url: base_url.trim_end_matches('/').to_string(),
            transport,
            metrics,
            wake: Notify::new(),
            owner: format!("{:016x}", fastrand::u64(..)),
        }))
    }

    /// Runs the sender on `tracker` until `stop`.
    pub fn start(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        let this = self.clone();
        tracker.spawn(async move { this.run(stop).await });
    }

    async fn run(&self, stop: CancellationToken) {
        let mut failing = false;
        loop {
            // A send in progress is abandoned at shutdown: its claim lapses (or, in
            // the embedded queue, is released when the file is opened again).
            let round = tokio::select! {
                () = stop.cancelled() => return,
                r = self.round() => r,
            };
            let wait = match round {
                Ok(wait) => {
                    failing = false;
                    wait
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "mail queue unavailable; retrying");
                    }
                    failing = true;
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends what is due; returns how long to wait before the next round.
    async fn round(&self) -> Result<Duration, queue::QueueError> {
        let now = now_ms();
        let mails = self.queue.claim(now, LEASE, &self.owner, BATCH).await?;
        let full_batch = mails.len() == BATCH;
        // A batch goes out over parallel connections (a relay takes several at once).
        let attempts = futures_util::future::join_all(mails.into_iter().map(|m| self.attempt(m)));
        attempts.await.into_iter().collect::<Result<(), _>>()?;
        self.metrics.set_queued(self.queue.len().await?);
        if full_batch {
            return Ok(Duration::ZERO);
        }
        let wait = match self.queue.next_due().await? {
            Some(due) => Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)),
            None => IDLE_POLL,
        };
        // Never a busy loop: a mail due now but claimed elsewhere is looked at again
        // shortly.
        Ok(wait.clamp(Duration::from_millis(10), IDLE_POLL))
    }

    async fn attempt(&self, mail: QueuedMail) -> Result<(), queue::QueueError> {
        let envelope = match envelope(&self.config.from, &mail.to) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(id = %mail.id, error = %e, "queued mail cannot be addressed; given up");
                self.metrics.gave_up();
                return self.queue.settle(&mail.id, &self.owner, None).await;
            }
        };
        match self.transport.send_raw(&envelope, &mail.body).await {
            Ok(_) => {
                tracing::debug!(id = %mail.id, attempts = mail.attempts + 1, "mail sent");
                self.metrics.sent();
                self.queue.settle(&mail.id, &self.owner, None).await
            }
            Err(e) => {
                let attempt = mail.attempts as usize;
                let retry = (!e.is_permanent())
                    .then(|| self.config.retry_schedule.get(attempt))
                    .flatten();
                match retry {
                    Some(delay) => {
                        let delay = jitter(*delay);
                        tracing::info!(id = %mail.id, attempt = attempt + 1, error = %e,
                            retry_in_ms = delay.as_millis() as u64, "mail not sent; will retry");
                        self.metrics.retried();
                        let due =
                            now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        self.queue.settle(&mail.id, &self.owner, Some(due)).await
                    }
                    None => {
                        tracing::warn!(id = %mail.id, attempts = attempt + 1, error = %e,
                            "mail not sent; given up");
                        self.metrics.gave_up();
                        self.queue.settle(&mail.id, &self.owner, None).await
                    }
                }
            }
        }
    }
}

#[async_trait]
impl MailOutbox for Outbox {
    async fn queue(&self, message: &Message, email: &EmailRequest) {
        let id = crate::webhook::random_id("");
        let env = render::Envelope {
            base_url: &self.base_url,
            from: &self.config.from,
            to: &email.to,
            sender: &email.sender,
            id: &id,
        };
        let body = match render::render(message, &env) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(message = %message.id, error = %e, "mail not queued");
                self.metrics.gave_up();
                return;
            }
        };
        let mail = QueuedMail {
            id,
            to: email.to.clone(),
            body,
            attempts: 0,
            created_ms: now_ms(),
        };
        match self.queue.push(&mail, mail.created_ms).await {
            Ok(()) => {
                self.metrics.queued();
                self.wake.notify_one();
            }
            Err(e) => {
                // The message is committed and delivered; only its mail is lost.
                tracing::error!(message = %message.id, error = %e, "mail could not be queued");
                self.metrics.gave_up();
            }
        }
    }
}

fn envelope(from: &str, to: &str) -> Result<lettre::address::Envelope, String> {
    let from: lettre::Address = from.parse().map_err(|e| format!("{e}"))?;
    let to: lettre::Address = to.parse().map_err(|e| format!("{e}"))?;
    lettre::address::Envelope::new(Some(from), vec![to]).map_err(|e| e.to_string())
}

/// ±20 %, so that mails that failed together do not all retry at once.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The relay client: rustls with the compiled-in Mozilla roots (as the webhook
/// client), so a `FROM scratch` image needs no CA bundle.
fn transport(config: &SenderConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, SetupError> {
    let (host, port) = parse_relay(&config.addr).map_err(SetupError)?;
    let params = || -> Result<TlsParameters, SetupError> {
        let mut builder =
            TlsParameters::builder(host.clone()).certificate_store(CertificateStore::None);
        for root in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            if let Ok(cert) = Certificate::from_der(root.as_ref().to_vec()) {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
            .build_rustls()
            .map_err(|e| SetupError(e.to_string()))
    };
    let tls = match config.tls {
        SenderTls::Auto if port == 465 => Tls::Wrapper(params()?),
        // As ntfy: credentials go only over TLS, unless the relay is this host.
        SenderTls::Auto if !config.user.is_empty() && !is_local(&host) => Tls::Required(params()?),
        SenderTls::Auto => Tls::Opportunistic(params()?),
        SenderTls::StartTls => Tls::Required(params()?),
        SenderTls::Tls => Tls::Wrapper(params()?),
        SenderTls::None => Tls::None,
    };
    let hello = config
        .from
        .rsplit_once('@')
        .map_or("localhost", |(_, d)| d)
        .to_string();
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT))
        .hello_name(ClientId::Domain(hello));
    if !config.user.is_empty() {
        builder = builder.credentials(Credentials::new(config.user.clone(), config.pass.clone()));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_and_tls_modes() {
        assert_eq!(
            parse_relay("smtp.example.com:587").unwrap(),
            ("smtp.example.com".into(), 587)
        );
        assert_eq!(parse_relay("[::1]:25").unwrap(), ("::1".into(), 25));
        assert!(parse_relay("smtp.example.com").is_err());
        assert!(parse_relay(":25").is_err());
        assert!(parse_relay("h:0").is_err());
        assert_eq!(
            "STARTTLS".parse::<SenderTls>().unwrap(),
            SenderTls::StartTls
        );
        assert_eq!("".parse::<SenderTls>().unwrap(), SenderTls::Auto);
        assert!("ssl3".parse::<SenderTls>().is_err());
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
