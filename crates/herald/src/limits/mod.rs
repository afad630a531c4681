//! Rate limits and connection limits: ntfy's visitor model, and the listener's
//! hardening bounds.
//!
//! A *visitor* is whoever a request is charged to: an authenticated user
//! (`user:<name>`), otherwise the client address by prefix (IPv4 /32 and IPv6 /64
//! by default, so one host with many IPv6 addresses is still one visitor). Behind a
//! reverse proxy (`behind-proxy`), the client address comes from the proxy's header.
//! Each visitor has a request bucket (ntfy's burst 60, then one per 5 s), a daily
//! message count, a bucket for creating new topics, and (in
//! [`crate::subscribe::SubscriptionSlots`]) its open subscriptions. Exempt
//! hosts skip every visitor limit.
//!
//! Memory stays bounded however many addresses show up: the registry is sharded,
//! each shard holds at most `visitor-table-size / shards` visitors, a visitor that
//! has nothing to remember (full buckets, no messages today) is forgotten by a
//! periodic sweep, and a full shard first drops those and then its least recently
//! seen visitors (losing at worst their counts, never refusing anyone).
//!
//! In cluster mode (`redis-url`) the visitor limits are charged to counters every
//! node shares ([`shared::SharedLimits`], in Redis: [`redis::RedisLimits`]), and this
//! registry is the fallback while Redis does not answer; without it, nothing here
//! goes through that trait.
//!
//! A refusal is a domain value ([`Refusal`]: which limit, and when to try again);
//! each edge answers it in its own terms (HTTP: `api::refusal_response`, with ntfy's
//! code from `crate::error`).
//!
//! The buckets are hand-written ([`bucket`]) rather than `governor`'s: a visitor
//! holds several limits that are checked together under one lock (a subscription
//! takes a request token and a new-topic token or neither), the registry needs to
//! know when a visitor is at rest to forget it, and everything runs on tokio's clock
//! so tests pause and advance time. GCRA is a timestamp per bucket either way.

pub mod attachments;
pub mod bucket;
pub mod net;
pub mod redis;
pub mod shared;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use bucket::{Bucket, Clock, DailyCount, Rate};
pub use net::{HostSpec, IpNet};
use shared::{SharedCharge, SharedLimits, SharedSlot, Verdict, visitor_name};

/// Shards of the visitor registry (lock contention stays low on many cores).
const SHARDS: usize = 16;
/// How often each shard forgets visitors at rest.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The rate-limit and hardening options (ntfy's names where ntfy has them).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `visitor-request-limit-burst`.
    pub request_burst: u32,
    /// `visitor-request-limit-replenish`.
    pub request_replenish: Duration,
    /// `visitor-request-limit-exempt-hosts`.
    pub exempt_hosts: Vec<HostSpec>,
    /// `visitor-message-daily-limit`; 0: one day's worth of request replenishment.
    pub message_daily_limit: u32,
    /// `visitor-topic-creation-limit-burst`; 0: no limit.
    pub topic_creation_burst: u32,
    /// `visitor-topic-creation-limit-replenish`.
    pub topic_creation_replenish: Duration,
    /// `visitor-email-limit-burst`: mails a visitor may send at once.
    pub email_burst: u32,
    /// `visitor-email-limit-replenish`: one more mail per this interval.
    pub email_replenish: Duration,
    /// `visitor-prefix-bits-ipv4`.
    pub prefix_bits_ipv4: u8,
    /// `visitor-prefix-bits-ipv6`.
    pub prefix_bits_ipv6: u8,
    /// `behind-proxy`.
    pub behind_proxy: bool,
    /// `proxy-forwarded-header`.
    pub proxy_forwarded_header: HeaderName,
    /// `proxy-trusted-hosts`.
    pub proxy_trusted_hosts: Vec<HostSpec>,
    /// `visitor-table-size`: most visitors remembered at once.
    pub visitor_table_size: usize,
    /// `connection-limit`: most open client connections.
    pub connection_limit: usize,
    /// `header-read-timeout`: a request head must arrive within this time.
    pub header_read_timeout: Duration,
    /// `body-read-timeout`: a request body must arrive within this time of its head.
    pub body_read_timeout: Duration,
    /// `max-header-size`: longest request head (request line and headers).
    pub max_header_size: usize,
    /// `max-url-length`: longest request target.
    pub max_url_length: usize,
}

impl LimitsConfig {
    /// The daily message limit in force: the option, or (0, ntfy's default) as many
    /// requests as the request bucket replenishes in a day (17,280 at 5 s).
    pub fn effective_message_daily_limit(&self) -> u32 {
        if self.message_daily_limit > 0 {
            return self.message_daily_limit;
        }
        let per_day = Duration::from_secs(bucket::DAY_SECS).as_nanos()
            / self.request_replenish.as_nanos().max(1);
        u32::try_from(per_day).unwrap_or(u32::MAX).max(1)
    }

    /// The built-in defaults (ntfy's for ntfy's options).
    pub fn defaults() -> Self {
        LimitsConfig {
            request_burst: 60,
            request_replenish: Duration::from_secs(5),
            exempt_hosts: Vec::new(),
            message_daily_limit: 0,
            topic_creation_burst: 100,
            topic_creation_replenish: Duration::from_secs(60),
            email_burst: 16,
            email_replenish: Duration::from_secs(3600),
            prefix_bits_ipv4: 32,
            prefix_bits_ipv6: 64,
            behind_proxy: false,
            proxy_forwarded_header: HeaderName::from_static("x-forwarded-for"),
            proxy_trusted_hosts: Vec::new(),
            visitor_table_size: 100_000,
            connection_limit: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_size: 32 * 1024,
            max_url_length: 16 * 1024,
        }
    }
}

/// `connection-limit: auto`: the process's descriptor limit (`RLIMIT_NOFILE`, soft)
/// less a reserve for the store, the metrics listener and accept back-off, so herald
/// refuses a connection cleanly before the kernel refuses `accept`.
pub fn auto_connection_limit() -> usize {
    const RESERVE: usize = 256;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let value = line
                .trim_start_matches("Max open files")
                .split_whitespace()
                .next()?;
            if value == "unlimited" {
                Some(1_000_000)
            } else {
                value.parse::<usize>().ok()
            }
        })
        .unwrap_or(10_240);
    soft.saturating_sub(RESERVE).max(64)
}

/// Which limit refused something: the `limit` label of `herald_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Requests,
    Messages,
    Subscriptions,
    TopicCreation,
    GlobalTopics,
    Connections,
    HeaderSize,
    UrlLength,
    HeaderTimeout,
    BodySize,
    /// Password checks (argon2) busy: `auth::gate`.
    PasswordChecks,
    /// `visitor-email-limit-*` (src/email).
    Emails,
}

impl Limit {
    /// Every limit, for pre-registering the label values.
    pub const ALL: [Limit; 12] = [
        Limit::Requests,
        Limit::Messages,
        Limit::Subscriptions,
        Limit::TopicCreation,
        Limit::GlobalTopics,
        Limit::Connections,
        Limit::HeaderSize,
        Limit::UrlLength,
        Limit::HeaderTimeout,
        Limit::BodySize,
        Limit::PasswordChecks,
        Limit::Emails,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Messages => "messages",
            Limit::Subscriptions => "subscriptions",
            Limit::TopicCreation => "topic_creation",
            Limit::GlobalTopics => "global_topics",
            Limit::Connections => "connections",
            Limit::HeaderSize => "header_size",
            Limit::UrlLength => "url_length",
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodySize => "body_size",
            Limit::PasswordChecks => "password_checks",
            Limit::Emails => "emails",
        }
    }
}

/// Labels of `herald_limit_refusals_total` (one value per [`Limit`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// What a request costs, decided from its method and path as ntfy's route table
/// applies `limitRequests` (docs/COMPATIBILITY.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Not rate limited: health, stats, config, metrics, the web app, unknown paths.
    Free,
    /// One request token: subscriptions (streams, polls, WebSocket), `/auth`, `OPTIONS`.
    Request,
    /// One request token, and the daily message limit: every kind of publish.
    Publish,
}

impl Charge {
    /// The charge of `method` on the path split into `segments`.
    pub fn of(method: &Method, segments: &[&str]) -> Charge {
        match (method, segments) {
            (&Method::OPTIONS, _) => Charge::Request,
            // The Matrix push gateway publishes one message per request.
            (&Method::POST, ["_matrix", "push", "v1", "notify"]) => Charge::Publish,
            // ntfy's `limitRequests` on web push registrations.
            (_, ["v1", "webpush"]) => Charge::Request,
            (_, ["v1", ..]) => Charge::Free,
            (&Method::PUT | &Method::POST, [_] | [_, _]) => Charge::Publish,
            (&Method::DELETE, [_, _]) => Charge::Publish,
            (&Method::GET, [_, "publish" | "send" | "trigger"]) => Charge::Publish,
            (&Method::GET, [_, _, "delete" | "clear" | "read"]) => Charge::Publish,
            (&Method::PUT, [_, _, "clear" | "read"]) => Charge::Publish,
            (&Method::GET, [_, "json" | "sse" | "raw" | "ws" | "auth"]) => Charge::Request,
            (&Method::GET | &Method::HEAD, ["file", _]) => Charge::Request,
            _ => Charge::Free,
        }
    }
}

/// Whom a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VisitorKey {
    /// An IPv4 prefix (`visitor-prefix-bits-ipv4`, /32 by default), masked.
    V4(u32),
    /// An IPv6 prefix (`visitor-prefix-bits-ipv6`, /64 by default), masked.
    V6(u128),
    /// An authenticated user.
    User(Arc<str>),
}

/// A visitor as a request sees it: its key, and whether its address is exempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    pub key: VisitorKey,
    /// `visitor-request-limit-exempt-hosts`: no visitor limit applies.
    pub exempt: bool,
}

/// What the registry remembers about one visitor.
#[derive(Debug, Clone, Copy)]
struct VisitorState {
    requests: Bucket,
    topics: Bucket,
    emails: Bucket,
    messages: DailyCount,
    last_seen: Instant,
}

impl VisitorState {
    fn new(now: Instant) -> Self {
        VisitorState {
            requests: Bucket::full(now),
            topics: Bucket::full(now),
            emails: Bucket::full(now),
            messages: DailyCount::default(),
            last_seen: now,
        }
    }

    /// Nothing to remember: forgetting this visitor changes no answer.
    fn at_rest(&self, now: Instant, today: u32) -> bool {
        self.requests.is_full(now)
            && self.topics.is_full(now)
            && self.emails.is_full(now)
            && self.messages.get(today) == 0
    }
}

struct Shard {
    visitors: HashMap<VisitorKey, VisitorState>,
    next_sweep: Instant,
}

/// The visitor registry and the connection count. One per server, in `AppState`.
pub struct Limits {
    config: LimitsConfig,
    requests: Rate,
    topics: Option<Rate>,
    emails: Rate,
    daily_messages: u32,
    exempt: Vec<IpNet>,
    trusted: Vec<IpNet>,
    /// `Forwarded` (RFC 7239) syntax rather than a plain address list.
    rfc7239: bool,
    clock: Clock,
    hasher: std::collections::hash_map::RandomState,
    /// Drawn at start: spreads address keys over the shards (see [`Limits::shard`]).
    shard_seed: u64,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    open_connections: Arc<AtomicUsize>,
    refusals: Family<LimitLabels, Counter>,
    /// Cluster mode: the visitor limits every node shares (`None`: this node's own).
    shared: Option<Arc<dyn SharedLimits>>,
}

/// A request a limit refused: which limit, and when the shared limits said it may
/// be tried again (`None`: this node's registry knows, see [`Limits::retry_after`]).
/// Each edge answers it in its own terms (HTTP: `crate::error`'s `From<Refusal>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit reached: {}", .limit.as_str())]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Option<Duration>,
}

impl From<Limit> for Refusal {
    fn from(limit: Limit) -> Self {
        Refusal {
            limit,
            retry_after: None,
        }
    }
}

/// Who counted an admitted publish's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// No message was counted (an exempt visitor, a request that publishes
    /// nothing): nothing to settle.
    Uncharged,
    /// This node's registry counted the message at the instant given (on its day):
    /// give it back if the publish fails.
    Local(Instant),
    /// The shared limits, up front: give it back if the publish fails.
    Shared,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .field("open_connections", &self.open_connections)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// Limits as `config` says; refusals are counted in `refusals`. Host names in the
    /// host lists are resolved now.
    pub fn new(config: LimitsConfig, refusals: Family<LimitLabels, Counter>) -> Self {
        for limit in Limit::ALL {
            // Every label value is exported from the start (as 0).
            drop(refusals.get_or_create(&LimitLabels {
                limit: limit.as_str(),
            }));
        }
        let now = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let hasher = std::collections::hash_map::RandomState::default();
        let shard_seed = hasher.hash_one(0x5eed_u64);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    visitors: HashMap::new(),
                    next_sweep: now + SWEEP_INTERVAL,
                })
            })
            .collect();
        Limits {
            requests: Rate {
                burst: config.request_burst.max(1),
                replenish: config.request_replenish,
            },
            topics: (config.topic_creation_burst > 0).then_some(Rate {
                burst: config.topic_creation_burst,
                replenish: config.topic_creation_replenish,
            }),
            emails: Rate {
                burst: config.email_burst.max(1),
                replenish: config.email_replenish,
            },
            daily_messages: config.effective_message_daily_limit(),
            exempt: net::resolve_hosts(&config.exempt_hosts, "visitor-request-limit-exempt-hosts"),
            trusted: net::resolve_hosts(&config.proxy_trusted_hosts, "proxy-trusted-hosts"),
            rfc7239: config.proxy_forwarded_header == "forwarded",
            clock: Clock::new(now, unix),
            hasher,
            shard_seed,
            shards,
            shard_capacity: config.visitor_table_size.div_ceil(SHARDS).max(1),
            open_connections: Arc::new(AtomicUsize::new(0)),
            refusals,
            shared: None,
            config,
        }
    }

    /// The same limits, shared with the other nodes through `shared` (cluster mode);
    /// this node's registry stays the fallback while `shared` cannot answer.
    pub fn with_shared(mut self, shared: Arc<dyn SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether visitor limits are shared with other nodes (cluster mode).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// [`Limits::admit`] for either mode: on the shared limits in cluster mode (one
    /// round trip, the message counted up front), else, or when they cannot answer,
    /// on this node's registry.
    pub async fn admit_any(&self, visitor: &Visitor, charge: Charge) -> Result<Admission, Refusal> {
        if let Some(shared) = &self.shared
            && !visitor.exempt
            && charge != Charge::Free
        {
            let ask = SharedCharge {
                request: true,
                message: charge == Charge::Publish,
                ..SharedCharge::default()
            };
            if let Ok(verdict) = shared.charge(&visitor_name(&visitor.key), ask).await {
                return shared_verdict(verdict).map(|()| Admission::Shared);
            }
        }
        self.admit(visitor, charge)
    }

    /// Cluster mode: an open-subscription slot and `new_topics` topic-creation
    /// tokens (and a request token if `request`) on the shared limits, all or none.
    /// `None`: not in cluster mode, an exempt visitor, or the shared limits cannot
    /// answer; the caller uses this node's limits.
    pub async fn open_stream_shared(
        &self,
        visitor: &Visitor,
        request: bool,
        new_topics: usize,
    ) -> Option<Result<SharedSlot, Refusal>> {
        let shared = self.shared.as_ref().filter(|_| !visitor.exempt)?;
        let name = visitor_name(&visitor.key);
        let ask = SharedCharge {
            request,
            message: false,
            new_topics: u32::try_from(new_topics).unwrap_or(u32::MAX),
            open_stream: true,
        };
        let verdict = shared.charge(&name, ask).await.ok()?;
        Some(shared_verdict(verdict).map(|()| SharedSlot::new(shared.clone(), name)))
    }

    /// Settles a publish's message after the fact: given back to whichever counted
    /// it (this node's registry or the shared limits) if the publish failed.
    pub async fn settle_message(&self, visitor: &Visitor, admission: Admission, success: bool) {
        match (admission, success) {
            (Admission::Local(at), false) => self.refund_message(visitor, at),
            (Admission::Shared, false) => {
                if let Some(shared) = &self.shared {
                    let _ = shared.refund_message(&visitor_name(&visitor.key)).await;
                }
            }
            _ => {}
        }
    }

    /// When a refused request may be tried again: the shared limits' word when they
    /// refused, else this node's ([`Limits::retry_after`]).
    pub fn retry_after_refusal(&self, refusal: &Refusal, visitor: &Visitor) -> Duration {
        match refusal.retry_after {
            // A slot frees up when another stream ends: as on one node, one request
            // replenish interval.
            Some(retry) if retry.is_zero() => self.requests.replenish,
            Some(retry) => retry,
            None => self.retry_after(refusal.limit, visitor),
        }
    }

    /// The request tokens' replenish interval: the `Retry-After` of refusals that free
    /// up when something else ends.
    pub fn replenish_interval(&self) -> Duration {
        self.requests.replenish
    }

    /// The options in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// The client's address: the TCP peer, or with `behind-proxy` the address the
    /// proxy header names (falling back to the peer if it names none).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.config.behind_proxy {
            return peer;
        }
        let values = headers
            .get_all(&self.config.proxy_forwarded_header)
            .iter()
            .map(HeaderValue::as_bytes);
        net::forwarded_client(values, self.rfc7239, &self.trusted).unwrap_or(peer)
    }

    /// Whether the TCP peer is one of `proxy-trusted-hosts` with `behind-proxy` on:
    /// only such a peer's `auth-user-header` is believed.
    pub fn peer_is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.config.behind_proxy && self.trusted.iter().any(|n| n.contains(peer))
    }

    /// The visitor for a request from `ip`, authenticated as `user` if `Some`.
    pub fn visitor(&self, ip: IpAddr, user: Option<&str>) -> Visitor {
        let ip = ip.to_canonical();
        let exempt = self.exempt.iter().any(|n| n.contains(ip));
        let key = match (user, ip) {
            (Some(name), _) => VisitorKey::User(Arc::from(name)),
            (None, IpAddr::V4(a)) => VisitorKey::V4(net::mask_v4(a, self.config.prefix_bits_ipv4)),
            (None, IpAddr::V6(a)) => VisitorKey::V6(net::mask_v6(a, self.config.prefix_bits_ipv6)),
        };
        Visitor { key, exempt }
    }

    /// Charges a request to `visitor`: a request token, and for a publish a message
    /// of the daily limit, checked and counted here (given back by
    /// [`Limits::settle_message`] if the publish fails, as the shared limits do), so
    /// that concurrent publishes cannot overshoot the limit and a successful one
    /// takes one visit of the registry. Refusals are ntfy's `42901` and `42908`.
    pub fn admit(&self, visitor: &Visitor, charge: Charge) -> Result<Admission, Refusal> {
        self.admit_at(visitor, charge, Instant::now())
    }

    /// [`Limits::admit`] as of `now`, for a caller that read the clock already.
    pub fn admit_at(
        &self,
        visitor: &Visitor,
        charge: Charge,
        now: Instant,
    ) -> Result<Admission, Refusal> {
        if visitor.exempt || charge == Charge::Free {
            return Ok(Admission::Uncharged);
        }
        let today = self.clock.day(now);
        self.with_state_at(visitor, now, |state, now| {
            state
                .requests
                .take(self.requests, 1, now)
                .map_err(|_| Refusal::from(Limit::Requests))?;
            if charge != Charge::Publish {
                return Ok(Admission::Uncharged);
            }
            if state.messages.get(today) >= self.daily_messages {
                return Err(Limit::Messages.into());
            }
            state.messages.increment(today);
            Ok(Admission::Local(now))
        })
    }

    /// A subscription that opens `new_topics` topics: one request token and that
    /// many topic-creation tokens, all or none (the listener's direct path, which
    /// hands a refused request to the API without having charged it).
    pub fn admit_subscription(&self, visitor: &Visitor, new_topics: usize) -> Result<(), Refusal> {
        if visitor.exempt {
            return Ok(());
        }
        self.with_state(visitor, |state, now| {
            state
                .requests
                .check(self.requests, 1, now)
                .map_err(|_| Refusal::from(Limit::Requests))?;
            self.take_topics(state, new_topics, now)?;
            state
                .requests
                .take(self.requests, 1, now)
                .map_err(|_| Refusal::from(Limit::Requests))
        })
    }

    /// Topic-creation tokens for `new_topics` topics that have no subscribers yet
    /// (`42911`); the request itself was charged by [`Limits::admit`].
    pub fn admit_new_topics(&self, visitor: &Visitor, new_topics: usize) -> Result<(), Refusal> {
        if visitor.exempt || new_topics == 0 || self.topics.is_none() {
            return Ok(());
        }
        self.with_state(visitor, |state, now| {
            self.take_topics(state, new_topics, now)
        })
    }

    fn take_topics(&self, state: &mut VisitorState, n: usize, now: Instant) -> Result<(), Refusal> {
        let Some(rate) = self.topics else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        state
            .topics
            .take(rate, n, now)
            .map_err(|_| Refusal::from(Limit::TopicCreation))
    }

    /// One mail from `visitor` (`X-Email`, ntfy's `visitor-email-limit-*`): `42902`
    /// when its bucket is empty. In cluster mode the bucket is shared (one Redis
    /// call), falling back to this node's while Redis does not answer.
    pub async fn admit_email(&self, visitor: &Visitor) -> Result<(), Refusal> {
        if visitor.exempt {
            return Ok(());
        }
        if let Some(shared) = &self.shared
            && let Ok(verdict) = shared.charge_email(&visitor_name(&visitor.key)).await
        {
            return match verdict {
                Verdict::Admitted => Ok(()),
                Verdict::Refused { retry_after, .. } => Err(Refusal {
                    limit: Limit::Emails,
                    retry_after: Some(retry_after),
                }),
            };
        }
        self.with_state(visitor, |state, now| {
            state
                .emails
                .take(self.emails, 1, now)
                .map_err(|_| Refusal::from(Limit::Emails))
        })
    }

    /// Gives back the message of a publish admitted (and counted) at `at` that
    /// failed.
    fn refund_message(&self, visitor: &Visitor, at: Instant) {
        let day = self.clock.day(at);
        self.with_state(visitor, |state, _| state.messages.decrement(day));
    }

    /// Cluster mode: brings this node's count of the visitor's messages today up to
    /// the cluster's, for [`Limits::messages_today`] (`/v1/account`).
    pub async fn refresh_shared_usage(&self, visitor: &Visitor) {
        let Some(shared) = self.shared.as_ref().filter(|_| !visitor.exempt) else {
            return;
        };
        if let Ok(n) = shared.messages_today(&visitor_name(&visitor.key)).await {
            let today = self.clock.day(Instant::now());
            self.with_state(visitor, |state, _| state.messages.set(today, n));
        }
    }

    /// Messages `visitor` published today (for `/v1/account`).
    pub fn messages_today(&self, visitor: &Visitor) -> u32 {
        let today = self.clock.day(Instant::now());
        self.peek_state(visitor)
            .map_or(0, |s| s.messages.get(today))
    }

    /// When trying again may succeed: the next request or topic token, midnight UTC
    /// for the daily limit; for limits that free up when something else ends (open
    /// subscriptions, the global topic count), one request replenish interval.
    pub fn retry_after(&self, limit: Limit, visitor: &Visitor) -> Duration {
        // A password-check slot frees up within a fraction of a second.
        if limit == Limit::PasswordChecks {
            return Duration::from_secs(1);
        }
        let now = Instant::now();
        let from_bucket = |which: fn(&VisitorState) -> Bucket, rate: Rate| {
            self.peek_state(visitor)
                .and_then(|s| which(&s).check(rate, 1, now).err())
                .unwrap_or(rate.replenish)
        };
        match limit {
            Limit::Requests => from_bucket(|s| s.requests, self.requests),
            Limit::Messages => self.clock.until_midnight(now),
            Limit::Emails => from_bucket(|s| s.emails, self.emails),
            Limit::TopicCreation => match self.topics {
                Some(rate) => from_bucket(|s| s.topics, rate),
                None => self.requests.replenish,
            },
            _ => self.requests.replenish,
        }
    }

    /// Counts a refusal by `limit` (for limits enforced outside the API).
    pub fn refused(&self, limit: Limit) {
        self.refusals
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// A place for one more client connection, or `None` (counted) at
    /// `connection-limit`.
    pub fn try_connection(&self) -> Option<ConnectionPermit> {
        let before = self.open_connections.fetch_add(1, Ordering::AcqRel);
        let permit = ConnectionPermit(self.open_connections.clone());
        if before >= self.config.connection_limit {
            drop(permit);
            self.refused(Limit::Connections);
            return None;
        }
        Some(permit)
    }

    /// Visitors currently remembered (for tests and diagnostics).
    pub fn visitor_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .visitors
                    .len()
            })
            .sum()
    }

    /// The shard that holds `key`. An address is spread by a multiply-shift of its
    /// bits and the start's seed (a few instructions, where SipHash took some 180 per
    /// lookup, twice per publish); the map within the shard keeps SipHash against
    /// crafted collisions, and a user's name is hashed with it here too.
    fn shard(&self, key: &VisitorKey) -> &Mutex<Shard> {
        let bits = match key {
            VisitorKey::V4(a) => u64::from(*a),
            VisitorKey::V6(a) => (*a >> 64) as u64 ^ *a as u64,
            VisitorKey::User(_) => self.hasher.hash_one(key),
        };
        let mixed = (bits ^ self.shard_seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(mixed >> 32) as usize % self.shards.len()]
    }

    fn peek_state(&self, visitor: &Visitor) -> Option<VisitorState> {
        let shard = self
            .shard(&visitor.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.visitors.get(&visitor.key).copied()
    }

    /// Runs `f` on the visitor's state (created if new) under its shard's lock,
    /// sweeping or evicting first when due.
    fn with_state<T>(
        &self,
        visitor: &Visitor,
        f: impl FnOnce(&mut VisitorState, Instant) -> T,
    ) -> T {
        self.with_state_at(visitor, Instant::now(), f)
    }

    /// [`Limits::with_state`] at `now`, which the caller has read already.
    fn with_state_at<T>(
        &self,
        visitor: &Visitor,
        now: Instant,
        f: impl FnOnce(&mut VisitorState, Instant) -> T,
    ) -> T {
        let mut shard = self
            .shard(&visitor.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now >= shard.next_sweep {
            let today = self.clock.day(now);
            shard.visitors.retain(|_, s| !s.at_rest(now, today));
            shard.next_sweep = now + SWEEP_INTERVAL;
        }
        if let Some(state) = shard.visitors.get_mut(&visitor.key) {
            state.last_seen = now;
            return f(state, now);
        }
        if shard.visitors.len() >= self.shard_capacity {
            self.evict(&mut shard.visitors, now);
        }
        let state = shard
            .visitors
            .entry(visitor.key.clone())
            .or_insert_with(|| VisitorState::new(now));
        f(state, now)
    }

    /// Makes room in a full shard: drops visitors at rest, then, if that freed less
    /// than a tenth, the least recently seen ones down to nine tenths. One pass per
    /// tenth of the capacity, so a flood of new addresses costs O(1) per visitor.
    fn evict(&self, visitors: &mut HashMap<VisitorKey, VisitorState>, now: Instant) {
        let today = self.clock.day(now);
        visitors.retain(|_, s| !s.at_rest(now, today));
        let keep = self.shard_capacity - self.shard_capacity.div_ceil(10);
        if visitors.len() <= keep {
            return;
        }
        let excess = visitors.len() - keep;
        let mut seen: Vec<Instant> = visitors.values().map(|s| s.last_seen).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(excess - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        visitors.retain(|_, s| {
            if dropped < excess && s.last_seen <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
}

/// Holds one place under `connection-limit` until dropped.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<AtomicUsize>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A shared limit's verdict as a refusal with its `Retry-After`.
fn shared_verdict(verdict: Verdict) -> Result<(), Refusal> {
    let (limit, retry_after) = match verdict {
        Verdict::Admitted => return Ok(()),
        Verdict::Refused { limit, retry_after } => (limit, retry_after),
    };
    // The shared limits refuse by requests, messages, streams or new topics only.
    let limit = match limit {
        Limit::Requests | Limit::Messages | Limit::Subscriptions => limit,
        _ => Limit::TopicCreation,
    };
    Err(Refusal {
        limit,
        retry_after: Some(retry_after),
    })
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

#[cfg(test)]
mod tests;
