//! The one place cluster mode gets its Redis connections from, so that TLS, Sentinel
//! discovery and following a failover are done once for every Redis user (store,
//! broker, limits, access control, webhooks, and whatever comes next).
//!
//! A user asks the shared [`RedisConnector`] for a [`Conn`] (async, multiplexed, one
//! per purpose: a blocking `XREAD` gets its own) or a blocking connection (off the
//! runtime). Where the primary is:
//!
//! - `redis-url` alone: that address; `rediss://` speaks TLS (rustls, the compiled-in
//!   Mozilla roots or `redis-tls-ca-file`, optionally a client certificate). An answer
//!   `READONLY` (a managed Redis whose DNS name moved to the new primary while this
//!   connection still talks to the old one) makes the next command reconnect, so
//!   the name is resolved again.
//! - `redis-sentinel-addrs` + `redis-sentinel-master`: asked of the Sentinels
//!   (`SENTINEL get-master-addr-by-name`), checked with `ROLE`, and asked again every
//!   [`WATCH_INTERVAL`] and at once after a lost connection or a `READONLY` answer;
//!   when it moved, every `Conn` reconnects on its next command. `redis-url`, if
//!   set too, gives the scheme (TLS), credentials and database; its host is unused.
//!
//! Nothing reads from replicas: every read of herald's decides what a client sees
//! next (history before live delivery, rate limits, access), so none is harmless
//! to serve stale.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::replicas::{Confirmations, Ticket};

/// How often the Sentinels are asked where the primary is, besides after errors.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one Sentinel's answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// Where cluster mode's Redis is and how to reach it (the `redis-*` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis-url`: the primary (or, with Sentinels, the scheme, credentials and
    /// database to use with the primary they name).
    pub url: Option<String>,
    /// `redis-sentinel-addrs`: `host:port` of each Sentinel; empty: no Sentinel.
    pub sentinel_addrs: Vec<String>,
    /// `redis-sentinel-master`: the name the Sentinels monitor the primary under.
    pub sentinel_master: String,
    /// `redis-tls-ca-file`: PEM roots to trust instead of the compiled-in ones.
    pub tls_ca_file: Option<PathBuf>,
    /// `redis-tls-cert-file` + `redis-tls-key-file`: a client certificate (PEM).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// `redis-min-replicas-acked`: replicas that must confirm a write before it is
    /// acknowledged (see `cluster::replicas`); 0: the primary's answer suffices.
    pub min_replicas_acked: u32,
    /// `redis-replica-ack-timeout`: how long to wait for those confirmations.
    pub replica_ack_timeout: Duration,
}

impl RedisSettings {
    /// Whether cluster mode is on (a Redis URL or Sentinels given).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.sentinel_addrs.is_empty()
    }

    /// Where the cluster lives, for logs: never the URL (it may carry a password).
    pub fn describe(&self) -> String {
        if self.sentinel_addrs.is_empty() {
            "redis".into()
        } else {
            format!(
                "redis via sentinels {} (master {})",
                self.sentinel_addrs.join(","),
                self.sentinel_master
            )
        }
    }
}

/// Why the connector could not be built (a bad URL, an unreadable certificate).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectorError(String);

/// Hands out connections to the cluster's current primary (see the module docs).
/// Cheap to clone; every clone shares the discovered primary.
#[derive(Clone)]
pub struct RedisConnector {
    inner: Arc<Inner>,
}

struct Inner {
    /// Scheme, credentials, database and (without Sentinel) address.
    template: ConnectionInfo,
    tls: Option<redis::TlsCertificates>,
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    /// The primary the Sentinels last named (`None` before the first answer).
    primary: RwLock<Option<(String, u16)>>,
    /// Moves whenever connections must be made afresh (a new primary, `READONLY`).
    generation: AtomicU64,
    /// Wakes the Sentinel watcher early (an error suggests a failover).
    rediscover: tokio::sync::Notify,
    min_replicas: u32,
    ack_timeout: Duration,
}

impl std::fmt::Debug for RedisConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnector")
            .field("sentinels", &self.inner.sentinels.len())
            .field("primary", &self.primary())
            .field("min_replicas", &self.inner.min_replicas)
            .finish_non_exhaustive()
    }
}

fn config_error(what: &str) -> impl Fn(RedisError) -> ConnectorError + '_ {
    move |e| ConnectorError(format!("{what}: {e}"))
}

/// The scheme, credentials and database of `url`, checked (`redis-url`).
fn parse_url(url: &str) -> Result<ConnectionInfo, ConnectorError> {
    url.into_connection_info()
        .map_err(config_error("not a Redis URL"))
}

/// `host:port` (a bare host: Sentinel's port 26379), for `redis-sentinel-addrs`.
pub fn parse_sentinel_addr(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| format!("`{s}`: expected host:port"))?,
        ),
        _ => (s, 26379),
    };
    if host.is_empty() {
        return Err(format!("`{s}`: expected host:port"));
    }
    Ok((host.to_string(), port))
}

/// Checks that `url` is a Redis URL the client understands (`redis-url`).
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|e| e.0)
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ConnectorError> {
    std::fs::read(path)
        .map_err(|e| ConnectorError(format!("cannot read {what} {}: {e}", path.display())))
}

/// The compiled-in Mozilla roots (the webhook client's too) as PEM, the form the
/// Redis client takes roots in: a FROM-scratch image needs no CA bundle.
fn compiled_in_roots() -> Vec<u8> {
    use base64ct::{Base64, Encoding};
    let mut pem = Vec::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in Base64::encode_string(cert.as_ref()).as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

fn tls_certificates(settings: &RedisSettings) -> Result<redis::TlsCertificates, ConnectorError> {
    let root_cert = match &settings.tls_ca_file {
        Some(path) => read_pem(path, "redis-tls-ca-file")?,
        None => compiled_in_roots(),
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem(cert, "redis-tls-cert-file")?,
            client_key: read_pem(key, "redis-tls-key-file")?,
        }),
        (None, None) => None,
        _ => {
            return Err(ConnectorError(
                "redis-tls-cert-file and redis-tls-key-file go together".into(),
            ));
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert: Some(root_cert),
    })
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// `info` pointed at `host:port`, keeping its scheme.
fn with_address(info: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = if is_tls(info) {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    };
    info.clone().set_addr(addr)
}

impl RedisConnector {
    /// A connector for `settings`; reads the certificate files. With Sentinels, it
    /// starts asking them where the primary is (on the current runtime).
    pub fn new(settings: &RedisSettings) -> Result<RedisConnector, ConnectorError> {
        let template = parse_url(settings.url.as_deref().unwrap_or("redis://127.0.0.1/"))?;
        let tls = if is_tls(&template) {
            Some(tls_certificates(settings)?)
        } else {
            None
        };
        let mut sentinels = Vec::new();
        for addr in &settings.sentinel_addrs {
            let (host, port) = parse_sentinel_addr(addr).map_err(ConnectorError)?;
            // Sentinels take no database and, here, the data nodes' TLS but not their
            // credentials (Sentinel has its own, rarely set).
            let info = with_address(&template, &host, port)
                .set_redis_settings(redis::RedisConnectionInfo::default());
            sentinels.push(info);
        }
        if !sentinels.is_empty() && settings.sentinel_master.is_empty() {
            return Err(ConnectorError(
                "redis-sentinel-addrs needs redis-sentinel-master".into(),
            ));
        }
        let connector = RedisConnector {
            inner: Arc::new(Inner {
                template,
                tls,
                sentinels,
                master_name: settings.sentinel_master.clone(),
                primary: RwLock::new(None),
                generation: AtomicU64::new(0),
                rediscover: tokio::sync::Notify::new(),
                min_replicas: settings.min_replicas_acked,
                ack_timeout: settings.replica_ack_timeout,
            }),
        };
        if !connector.inner.sentinels.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(watch(Arc::downgrade(&connector.inner)));
        }
        Ok(connector)
    }

    /// A connector for a bare URL (tests): no Sentinel, no confirmations.
    #[cfg(test)]
    pub(crate) fn from_url(url: &str) -> Result<RedisConnector, ConnectorError> {
        RedisConnector::new(&RedisSettings {
            url: Some(url.to_string()),
            ..RedisSettings::default()
        })
    }

    /// The primary the Sentinels named last (`None` without Sentinel or before).
    pub fn primary(&self) -> Option<(String, u16)> {
        self.inner
            .primary
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Replicas a write must reach before it is acknowledged.
    pub(crate) fn min_replicas(&self) -> u32 {
        self.inner.min_replicas
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        self.inner.ack_timeout
    }

    /// A client for the current primary.
    fn client(&self) -> RedisResult<redis::Client> {
        let info = if self.inner.sentinels.is_empty() {
            self.inner.template.clone()
        } else {
            match self.primary() {
                Some((host, port)) => with_address(&self.inner.template, &host, port),
                None => {
                    self.inner.rediscover.notify_one();
                    return Err(RedisError::from((
                        ErrorKind::Io,
                        "no Sentinel has named the primary yet",
                    )));
                }
            }
        };
        client_for(info, self.inner.tls.as_ref())
    }

    /// An async connection to the primary whose commands each give up after
    /// `response_timeout`; it reconnects by itself, with backoff, and fails
    /// commands quickly while Redis is away (they are answered 503, not queued).
    pub(crate) fn connect(&self, response_timeout: Duration) -> Conn {
        Conn {
            connector: self.clone(),
            response_timeout,
            slot: Arc::new(tokio::sync::Mutex::new(Slot::default())),
            confirmations: Arc::new(Confirmations::default()),
        }
    }

    /// A blocking connection to the primary whose connect, reads and writes each
    /// give up after `io_timeout`, for callers off the runtime (CLI, follower
    /// threads). With Sentinels and no primary known yet, asks them first.
    pub(crate) fn connect_blocking(&self, io_timeout: Duration) -> RedisResult<redis::Connection> {
        if !self.inner.sentinels.is_empty() && self.primary().is_none() {
            self.inner.discover_blocking();
        }
        let conn = self.client()?.get_connection_with_timeout(io_timeout)?;
        conn.set_read_timeout(Some(io_timeout))?;
        conn.set_write_timeout(Some(io_timeout))?;
        Ok(conn)
    }

    /// After `result` of a command: on a lost connection or `READONLY`, find the
    /// primary again (see the module docs).
    pub(crate) fn observe<T>(&self, result: &RedisResult<T>) {
        let Err(e) = result else { return };
        let read_only = e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            || e.to_string().contains("READONLY");
        if read_only && self.inner.sentinels.is_empty() {
            // The address may now resolve elsewhere: reconnect.
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
        if read_only || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            self.inner.rediscover.notify_one();
        }
    }

    /// Confirms, on a blocking connection that just wrote, that enough replicas
    /// have the write (`WAIT`); auth changes are rare, so unbatched.
    pub(crate) fn confirm_blocking(&self, conn: &mut redis::Connection) -> RedisResult<()> {
        if self.inner.min_replicas == 0 {
            return Ok(());
        }
        let acked: i64 = redis::cmd("WAIT")
            .arg(self.inner.min_replicas)
            .arg(self.inner.ack_timeout.as_millis() as u64)
            .query(conn)?;
        super::replicas::enough(acked, self.inner.min_replicas)
    }
}

impl Inner {
    /// Asks each Sentinel in turn; the first that names a primary which says it is
    /// one wins. Returns whether the primary changed.
    async fn discover(&self) -> bool {
        for sentinel in &self.sentinels {
            let Some(found) = ask_sentinel(sentinel, &self.master_name, self.tls.as_ref()).await
            else {
                continue;
            };
            if self.current() == Some(found.clone()) {
                return false;
            }
            let candidate = with_address(&self.template, &found.0, found.1);
            if !is_primary(candidate, self.tls.as_ref()).await {
                // A Sentinel may still name the old primary for a moment.
                continue;
            }
            return self.switch_to(found);
        }
        false
    }

    fn discover_blocking(&self) {
        for sentinel in &self.sentinels {
            let Ok(client) = client_for(sentinel.clone(), self.tls.as_ref()) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(SENTINEL_TIMEOUT) else {
                continue;
            };
            let _ = conn.set_read_timeout(Some(SENTINEL_TIMEOUT));
            let answer: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query(&mut conn);
            if let Ok(Some(found)) = answer {
                self.switch_to(found);
                return;
            }
        }
    }

    fn current(&self) -> Option<(String, u16)> {
        self.primary
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn switch_to(&self, found: (String, u16)) -> bool {
        let mut primary = self.primary.write().unwrap_or_else(|p| p.into_inner());
        if primary.as_ref() == Some(&found) {
            return false;
        }
        tracing::warn!(
            master = %self.master_name,
            from = ?primary.as_ref().map(|(h, p)| format!("{h}:{p}")),
            to = %format!("{}:{}", found.0, found.1),
            "Redis primary (from Sentinel) changed; reconnecting"
        );
        *primary = Some(found);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

fn client_for(
    info: ConnectionInfo,
    tls: Option<&redis::TlsCertificates>,
) -> RedisResult<redis::Client> {
    match tls {
        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
        None => redis::Client::open(info),
    }
}

/// One connection, one command, bounded by [`SENTINEL_TIMEOUT`].
async fn ask_once<T: redis::FromRedisValue>(
    info: ConnectionInfo,
    tls: Option<&redis::TlsCertificates>,
    cmd: Cmd,
) -> Option<T> {
    let client = client_for(info, tls).ok()?;
    let work = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    };
    tokio::time::timeout(SENTINEL_TIMEOUT, work)
        .await
        .ok()?
        .ok()
}

async fn ask_sentinel(
    sentinel: &ConnectionInfo,
    master: &str,
    tls: Option<&redis::TlsCertificates>,
) -> Option<(String, u16)> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(master);
    ask_once::<Option<(String, u16)>>(sentinel.clone(), tls, cmd)
        .await
        .flatten()
}

/// Whether the node at `info` says (`ROLE`) it is a primary.
async fn is_primary(info: ConnectionInfo, tls: Option<&redis::TlsCertificates>) -> bool {
    let role: Option<Vec<Value>> = ask_once(info, tls, redis::cmd("ROLE")).await;
    matches!(role.as_deref().and_then(<[Value]>::first),
        Some(Value::BulkString(b)) if b.as_slice() == b"master")
}

/// Asks the Sentinels every [`WATCH_INTERVAL`], or at once when an error wakes it,
/// until the connector is gone.
async fn watch(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.discover().await;
        let wake = async {
            tokio::select! {
                _ = strong.rediscover.notified() => {
                    // Several errors at once are one failover: ask once, shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
        };
        wake.await;
        drop(strong);
    }
}

/// An async connection from [`RedisConnector::connect`]: usable wherever the Redis
/// client takes one (`query_async`, `invoke_async`). Clones share the connection.
///
/// One multiplexed connection at a time, replaced after it broke (with backoff,
/// failing fast meanwhile: commands are answered 503, not queued) or when the
/// primary moved. Each replacement is a new epoch: a `WAIT` only covers writes made
/// on the same connection, so a confirmation checks that the epoch did not change.
#[derive(Clone)]
pub(crate) struct Conn {
    connector: RedisConnector,
    response_timeout: Duration,
    slot: Arc<tokio::sync::Mutex<Slot>>,
    confirmations: Arc<Confirmations>,
}

#[derive(Default)]
struct Slot {
    current: Option<Current>,
    /// Connections made so far.
    epochs: u64,
    /// While Redis is away: no new attempt before this, and the next wait.
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
}

#[derive(Clone)]
struct Current {
    generation: u64,
    epoch: u64,
    conn: MultiplexedConnection,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Conn {
    async fn current(&self) -> RedisResult<Current> {
        let generation = self.connector.generation();
        let mut slot = self.slot.lock().await;
        if let Some(current) = slot.current.as_ref()
            && current.generation == generation
        {
            return Ok(current.clone());
        }
        if let Some(at) = slot.retry_at
            && tokio::time::Instant::now() < at
        {
            return Err(RedisError::from((
                ErrorKind::Io,
                "Redis unreachable; retrying shortly",
            )));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.response_timeout));
        let connected = match self.connector.client() {
            Ok(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            Err(e) => Err(e),
        };
        match connected {
            Ok(conn) => {
                slot.epochs += 1;
                slot.retry_at = None;
                slot.backoff = MIN_BACKOFF;
                let current = Current {
                    generation,
                    epoch: slot.epochs,
                    conn,
                };
                slot.current = Some(current.clone());
                Ok(current)
            }
            Err(e) => {
                let backoff = slot.backoff.clamp(MIN_BACKOFF, MAX_BACKOFF);
                slot.retry_at = Some(tokio::time::Instant::now() + backoff);
                slot.backoff = backoff * 2;
                let failed = Err(e);
                self.connector.observe(&failed);
                failed
            }
        }
    }

    /// After a command on `used`: a lost connection is replaced on the next one.
    async fn after<T>(&self, used: &Current, result: &RedisResult<T>) {
        self.connector.observe(result);
        if let Err(e) = result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
            && !e.is_timeout()
        {
            let mut slot = self.slot.lock().await;
            if slot.current.as_ref().is_some_and(|c| c.epoch == used.epoch) {
                slot.current = None;
            }
        }
    }

    /// Taken before a write that must be confirmed (see [`Conn::confirm`]).
    pub(crate) async fn ticket(&self) -> Ticket {
        let current = self.current().await.ok();
        Ticket {
            generation: current.as_ref().map(|c| c.generation),
            epoch: current.map(|c| c.epoch),
        }
    }

    /// Waits until `redis-min-replicas-acked` replicas have the write made after
    /// `ticket` was taken; one `WAIT` covers all writes in flight on this
    /// connection (see `cluster::replicas`).
    pub(crate) async fn confirm(&self, ticket: Ticket) -> RedisResult<()> {
        let min = self.connector.min_replicas();
        if min == 0 {
            return Ok(());
        }
        let timeout = self.connector.ack_timeout();
        let this = self.clone();
        self.confirmations
            .confirm(ticket, min, move || async move {
                let current = this.current().await?;
                let mut conn = current.conn.clone();
                let acked: RedisResult<i64> = redis::cmd("WAIT")
                    .arg(min)
                    .arg(timeout.as_millis() as u64)
                    .query_async(&mut conn)
                    .await;
                this.after(&current, &acked).await;
                Ok((acked?, current.generation, current.epoch))
            })
            .await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let current = self.current().await?;
            let result = current.conn.clone().req_packed_command(cmd).await;
            self.after(&current, &result).await;
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let current = self.current().await?;
            let result = current
                .conn
                .clone()
                .req_packed_commands(cmd, offset, count)
                .await;
            self.after(&current, &result).await;
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.connector.inner.template.redis_settings().db()
    }
}

/// The machine's Redis (127.0.0.1:6379), for unit tests of the Redis users.
#[cfg(test)]
pub(crate) fn local() -> RedisConnector {
    RedisConnector::from_url("redis://127.0.0.1:6379").unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses() {
        assert_eq!(
            parse_sentinel_addr("10.0.0.1:26380"),
            Ok(("10.0.0.1".to_string(), 26380))
        );
        assert_eq!(
            parse_sentinel_addr("sentinel-0"),
            Ok(("sentinel-0".to_string(), 26379))
        );
        assert_eq!(
            parse_sentinel_addr("[::1]:26379"),
            Ok(("::1".to_string(), 26379))
        );
        assert!(parse_sentinel_addr("h:port").is_err());
        assert!(parse_sentinel_addr(":1").is_err());
    }

    #[test]
    fn compiled_in_roots_are_pem_the_client_accepts() {
        let pem = compiled_in_roots();
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        };
        let client = redis::Client::build_with_tls("rediss://127.0.0.1:1/", certs);
        assert!(client.is_ok(), "{:?}", client.err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let settings = RedisSettings {
            url: Some("rediss://127.0.0.1:1/".into()),
            tls_cert_file: Some("/nonexistent.pem".into()),
            ..RedisSettings::default()
        };
        let err = RedisConnector::new(&settings).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        let settings = RedisSettings {
            sentinel_addrs: vec!["127.0.0.1:1".into()],
            ..RedisSettings::default()
        };
        let err = RedisConnector::new(&settings).unwrap_err().to_string();
        assert!(err.contains("redis-sentinel-master"), "{err}");
    }
}
