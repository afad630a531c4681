//! Server options: one table of keys, four sources, one typed [`Config`].
//!
//! Keys use ntfy's names where ntfy has the same option (`listen-http`,
//! `cache-duration`, ...), so an ntfy `server.yml` carries over for the shared options;
//! herald's own options (`data-dir`, `store-sync`, ...) follow the same style.
//! Precedence, highest first: command-line flag, environment (`HERALD_` + key in upper
//! snake case), YAML config file (`--config`), built-in default. A bad value is
//! reported with its key and the source it came from, and the server does not start.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::store::sqlite::SyncMode;
use crate::time::parse_config_duration;

/// One configurable option.
struct OptionSpec {
    key: &'static str,
    default: &'static str,
    help: &'static str,
}

/// Options whose values are secrets: never echoed (`--help`, errors, `Debug`).
const SECRET_OPTIONS: &[&str] = &[
    "webhook-admin-token",
    "upstream-access-token",
    "auth-users",
    "auth-tokens",
    // An `s3://` attachment-cache-dir carries the bucket's secret key.
    "attachment-cache-dir",
    "smtp-sender-pass",
    "web-push-private-key",
];

/// Every option `herald serve` takes. `--help` is generated from this table.
const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "listen-http",
        default: ":8080",
        help: "Address to listen on for HTTP, e.g. `:8080` (all interfaces) or `127.0.0.1:8080`",
    },
    OptionSpec {
        key: "metrics-listen-http",
        default: "",
        help: "Serve `/metrics` (Prometheus) only on this address, e.g. `:9090`, and not on `listen-http`; empty: `/metrics` on `listen-http`",
    },
    OptionSpec {
        key: "listen-grpc",
        default: "",
        help: "Address to serve the gRPC API on (herald.v1, gRPC health; HTTP/2 without TLS), e.g. `:9000`; empty: no gRPC",
    },
    OptionSpec {
        key: "grpc-reflection",
        default: "false",
        help: "Serve gRPC server reflection (grpc.reflection.v1 and v1alpha) on `listen-grpc`, for grpcurl and similar tools",
    },
    OptionSpec {
        key: "base-url",
        default: "",
        help: "Public URL of this server, e.g. `https://ntfy.example.com` (reported in /v1/config)",
    },
    OptionSpec {
        key: "data-dir",
        default: "./herald-data",
        help: "Directory for herald's durable state (message store)",
    },
    OptionSpec {
        key: "cache-file",
        default: "",
        help: "Path of the SQLite message store; default `<data-dir>/messages.db`",
    },
    OptionSpec {
        key: "cache-duration",
        default: "12h",
        help: "How long messages are kept for `since=`/`poll=1`; `0` keeps none",
    },
    OptionSpec {
        key: "keepalive-interval",
        default: "45s",
        help: "Interval of keepalive events (HTTP streams) and pings (WebSocket)",
    },
    OptionSpec {
        key: "manager-interval",
        default: "1m",
        help: "Interval of the expiry sweep that deletes old messages",
    },
    OptionSpec {
        key: "message-size-limit",
        default: "4k",
        help: "Largest message body, in bytes (`4k`, `4096`); larger bodies are refused",
    },
    OptionSpec {
        key: "message-delay-limit",
        default: "3d",
        help: "Furthest in the future a message may be scheduled",
    },
    OptionSpec {
        key: "visitor-subscription-limit",
        default: "30",
        help: "Open subscriptions (streams) allowed per visitor IP",
    },
    OptionSpec {
        key: "global-topic-limit",
        default: "15000",
        help: "Most topics with subscribers at once",
    },
    OptionSpec {
        key: "store-sync",
        default: "normal",
        help: "Store durability: `normal` (survives a process crash), `full` (also power loss, fsync per commit), `off`",
    },
    OptionSpec {
        key: "store-engine",
        default: "sqlite",
        help: "Message store on disk: `sqlite` (the file `cache-file`) or `log` (an append-only log in the directory `cache-file` with the extension `.log`, its index in memory; imports `cache-file` if it exists). See docs/OPERATIONS.md",
    },
    OptionSpec {
        key: "subscriber-queue-size",
        default: "1024",
        help: "Undelivered events a subscriber may lag behind before it is disconnected",
    },
    OptionSpec {
        key: "fanout-shard-size",
        default: "1024",
        help: "Split a topic's fan-out over the runtime's worker threads when it has at least this many subscribers per thread (each subscriber still gets events in publish order); `0` never splits",
    },
    OptionSpec {
        key: "history-read-limit",
        default: "64",
        help: "Most history reads (`poll=1` answers, `since=` backlogs) in progress at once; more wait up to 3 s, then get `429` with `Retry-After`",
    },
    OptionSpec {
        key: "shutdown-timeout",
        default: "25s",
        help: "Longest time a graceful shutdown waits for streams and publishes to finish",
    },
    OptionSpec {
        key: "log-level",
        default: "info",
        help: "Log level: error, warn, info, debug, trace (RUST_LOG overrides)",
    },
    OptionSpec {
        key: "log-format",
        default: "text",
        help: "Log format: `text` or `json`",
    },
    OptionSpec {
        key: "otlp-endpoint",
        default: "",
        help: "Export OpenTelemetry traces over OTLP/HTTP (protobuf) to this collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended); empty: off. Needs a binary built with `--features otel`",
    },
    OptionSpec {
        key: "otlp-service-name",
        default: "herald",
        help: "`service.name` of the exported traces",
    },
    OptionSpec {
        key: "visitor-request-limit-burst",
        default: "60",
        help: "Requests a visitor may make in a burst (publishes, subscriptions, polls); then one per `visitor-request-limit-replenish`",
    },
    OptionSpec {
        key: "visitor-request-limit-replenish",
        default: "5s",
        help: "How often a visitor gets one more request",
    },
    OptionSpec {
        key: "visitor-request-limit-exempt-hosts",
        default: "",
        help: "Comma-separated IPs, CIDRs or host names exempt from every visitor limit, e.g. `127.0.0.1,10.0.0.0/8`",
    },
    OptionSpec {
        key: "visitor-message-daily-limit",
        default: "0",
        help: "Messages a visitor may publish per day (UTC); 0: one per `visitor-request-limit-replenish` (17,280 at 5s)",
    },
    OptionSpec {
        key: "visitor-topic-creation-limit-burst",
        default: "100",
        help: "New topics (without subscribers) a visitor may subscribe to in a burst; 0: no limit",
    },
    OptionSpec {
        key: "visitor-topic-creation-limit-replenish",
        default: "1m",
        help: "How often a visitor may create one more topic",
    },
    OptionSpec {
        key: "visitor-prefix-bits-ipv4",
        default: "32",
        help: "IPv4 addresses in the same prefix of this length are one visitor",
    },
    OptionSpec {
        key: "visitor-prefix-bits-ipv6",
        default: "64",
        help: "IPv6 addresses in the same prefix of this length are one visitor",
    },
    OptionSpec {
        key: "visitor-table-size",
        default: "100000",
        help: "Most visitors whose limits are remembered at once (memory bound; idle ones are forgotten first)",
    },
    OptionSpec {
        key: "behind-proxy",
        default: "false",
        help: "Take the client address from `proxy-forwarded-header` (only behind a reverse proxy that sets it)",
    },
    OptionSpec {
        key: "proxy-forwarded-header",
        default: "X-Forwarded-For",
        help: "Header with the client address when `behind-proxy`: `X-Forwarded-For`, `X-Real-IP`, `X-Client-IP` or `Forwarded`",
    },
    OptionSpec {
        key: "proxy-trusted-hosts",
        default: "",
        help: "Comma-separated IPs, CIDRs or host names of proxies skipped in `proxy-forwarded-header` (the right-most other address is the client)",
    },
    OptionSpec {
        key: "connection-limit",
        default: "auto",
        help: "Most open client connections; more are answered 503 and closed. `auto`: the descriptor limit (ulimit -n) less 256",
    },
    OptionSpec {
        key: "header-read-timeout",
        default: "10s",
        help: "A request head (request line and headers) must arrive within this time, or the connection is closed",
    },
    OptionSpec {
        key: "body-read-timeout",
        default: "30s",
        help: "A request body must arrive within this time of its request, or the request is answered 408 and the connection closed",
    },
    OptionSpec {
        key: "max-header-size",
        default: "32k",
        help: "Largest request head; larger ones are answered 431",
    },
    OptionSpec {
        key: "max-url-length",
        default: "16k",
        help: "Longest request URL (path and query); longer ones are answered 414",
    },
    // Outgoing webhooks (docs/WEBHOOKS.md).
    OptionSpec {
        key: "webhook-file",
        default: "",
        help: "Path of the SQLite webhook store (endpoints, delivery queue, attempts); default `<data-dir>/webhooks.db`",
    },
    OptionSpec {
        key: "webhook-retry-schedule",
        default: crate::webhook::DEFAULT_RETRY_SCHEDULE,
        help: "Delay before each webhook delivery attempt, comma-separated (first: normally `0s`); ±20 % jitter on retries",
    },
    OptionSpec {
        key: "webhook-timeout",
        default: "15s",
        help: "A webhook endpoint must answer 2xx within this time",
    },
    OptionSpec {
        key: "webhook-disable-after",
        default: "5d",
        help: "Disable a webhook endpoint that has been failing (no success) for longer than this",
    },
    OptionSpec {
        key: "webhook-allow-private",
        default: "false",
        help: "Allow webhook destinations on loopback, private, link-local and other non-public addresses",
    },
    OptionSpec {
        key: "webhook-allow-cidrs",
        default: "",
        help: "Non-public networks webhooks may reach anyway, comma-separated CIDRs (e.g. `10.1.0.0/16`)",
    },
    OptionSpec {
        key: "webhook-concurrency",
        default: "4",
        help: "Delivery attempts in flight per webhook endpoint (1 for endpoints registered as ordered)",
    },
    OptionSpec {
        key: "webhook-visitor-limit",
        default: "20",
        help: "Webhooks one visitor (client IP) may register; 0: no limit",
    },
    OptionSpec {
        key: "webhook-secret-grace",
        default: "24h",
        help: "How long a rotated-out webhook secret keeps signing next to the new one",
    },
    OptionSpec {
        key: "webhook-admin-token",
        default: "",
        help: "Secret (at least 16 characters) whose bearer (`Authorization: Bearer <it>`) is a webhook admin in every mode: may register topic patterns, replay, and list and manage every webhook; empty: only admin users are. Prefer the environment or the config file to a flag (visible in `ps`)",
    },
    // E-mail (docs/EMAIL.md): ntfy's names.
    OptionSpec {
        key: "smtp-sender-addr",
        default: "",
        help: "SMTP relay for e-mail notifications (`X-Email`), `host:port`, e.g. `smtp.example.com:587`; empty: e-mail notifications off (40001). Needs `base-url` and `smtp-sender-from`",
    },
    OptionSpec {
        key: "smtp-sender-user",
        default: "",
        help: "User name at the SMTP relay; empty: no authentication",
    },
    OptionSpec {
        key: "smtp-sender-pass",
        default: "",
        help: "Password at the SMTP relay. Prefer the environment or the config file to a flag (visible in `ps`)",
    },
    OptionSpec {
        key: "smtp-sender-from",
        default: "",
        help: "Sender address of e-mail notifications, e.g. `ntfy@example.com`",
    },
    OptionSpec {
        key: "smtp-sender-tls",
        default: "auto",
        help: "How the relay connection is secured: `auto` (implicit TLS on port 465, else STARTTLS when offered), `starttls` (required), `tls` (implicit TLS), `none`",
    },
    OptionSpec {
        key: "smtp-sender-retry-schedule",
        default: crate::email::DEFAULT_RETRY_SCHEDULE,
        help: "Delays before each retry of a mail the relay did not take, comma-separated (±20 % jitter); after the last one the mail is given up",
    },
    OptionSpec {
        key: "smtp-server-listen",
        default: "",
        help: "Accept e-mail publishing on this address, e.g. `:25`; empty: off. Needs `smtp-server-domain`",
    },
    OptionSpec {
        key: "smtp-server-domain",
        default: "",
        help: "Domain of e-mail publishing addresses, e.g. `ntfy.example.com`",
    },
    OptionSpec {
        key: "smtp-server-addr-prefix",
        default: "",
        help: "Prefix of e-mail publishing addresses before the topic, e.g. `ntfy-` (`ntfy-alerts@ntfy.example.com`)",
    },
    OptionSpec {
        key: "visitor-email-limit-burst",
        default: "16",
        help: "E-mail notifications a visitor may send at once",
    },
    OptionSpec {
        key: "visitor-email-limit-replenish",
        default: "1h",
        help: "A visitor may send one more e-mail notification per this interval",
    },
    OptionSpec {
        key: "auth-file",
        default: "",
        help: "SQLite file of users, tokens and access control entries; setting it (or `auth-default-access`) turns access control on. Default when on: `<data-dir>/auth.db`. Not used with `redis-url`: users live in Redis",
    },
    OptionSpec {
        key: "auth-default-access",
        default: "",
        help: "Access for topics no ACL entry matches: `read-write`, `read-only`, `write-only` or `deny-all`; setting it (or `auth-file`) turns access control on [default when on: read-write]",
    },
    OptionSpec {
        key: "redis-url",
        default: "",
        help: "Run as one node of a cluster on this Redis, e.g. `redis://127.0.0.1:6379/0`: history, scheduled messages and fan-out live in Redis (docs/SCALING.md); empty: embedded store, single node",
    },
    OptionSpec {
        key: "attachment-cache-dir",
        default: "",
        help: "Directory for uploaded attachments (needs `base-url`); empty: uploads are refused with 40014 as in ntfy",
    },
    OptionSpec {
        key: "attachment-cache-dir-shared",
        default: "false",
        help: "Cluster mode: `attachment-cache-dir` is one directory every node shares (a network file system); required for a directory with `redis-url`",
    },
    OptionSpec {
        key: "attachment-total-size-limit",
        default: "5G",
        help: "Most bytes of attachments stored at once on the server",
    },
    OptionSpec {
        key: "attachment-file-size-limit",
        default: "15M",
        help: "Largest attachment; a larger upload is refused with 413 41301",
    },
    OptionSpec {
        key: "attachment-expiry-duration",
        default: "3h",
        help: "How long an attachment is kept (at most as long as its message)",
    },
    OptionSpec {
        key: "visitor-attachment-total-size-limit",
        default: "100M",
        help: "Most bytes of attachments one visitor may have stored at once",
    },
    OptionSpec {
        key: "visitor-attachment-daily-bandwidth-limit",
        default: "500M",
        help: "Bytes of attachments one visitor's uploads and their downloads may transfer per UTC day",
    },
    OptionSpec {
        key: "redis-key-prefix",
        default: "herald:",
        help: "Prefix of every Redis key herald uses; nodes of one cluster share it, different clusters on one Redis need different ones",
    },
    // Integrations (issue #15): templates, upstream, provisioning, proxy auth.
    OptionSpec {
        key: "template-dir",
        default: "",
        help: "Directory of message template files (`<name>.yml`, used with `X-Template: <name>`); a file there overrides the built-in template of the same name (github, grafana, alertmanager); empty: built-ins only",
    },
    OptionSpec {
        key: "auth-user-header",
        default: "",
        help: "Header in which an authenticating reverse proxy names the user (e.g. `X-Forwarded-User`, `Remote-User`); believed only from a `proxy-trusted-hosts` peer with `behind-proxy` on; needs access control on",
    },
    OptionSpec {
        key: "upstream-base-url",
        default: "",
        help: "Server that wakes the ntfy iOS app (usually `https://ntfy.sh`): each message is followed by a poll request there (`X-Poll-ID`, topic as a SHA-256 hash, never the content); needs `base-url`",
    },
    OptionSpec {
        key: "upstream-access-token",
        default: "",
        help: "Bearer token for `upstream-base-url` (e.g. an ntfy.sh account's, for higher limits)",
    },
    OptionSpec {
        key: "auth-users",
        default: "",
        help: "Provisioned users, `name:hash:role` (a bcrypt or argon2 hash; role `admin` or `user`), a YAML list or comma-separated; created at start, removed when dropped, not changeable by the CLI or API; needs access control on",
    },
    OptionSpec {
        key: "auth-access",
        default: "",
        help: "Provisioned ACL entries, `user:pattern:permission` (user `everyone` or `*` for anonymous), a YAML list or comma-separated",
    },
    OptionSpec {
        key: "auth-tokens",
        default: "",
        help: "Provisioned tokens, `user:tk_...[:label]`, a YAML list or comma-separated",
    },
    OptionSpec {
        key: "auth-logout-url",
        default: "",
        help: "Where the web app sends users to log out when the proxy authenticates them (reported in /v1/config)",
    },
    // The web app and Web Push (docs/WEBAPP.md).
    OptionSpec {
        key: "web-root",
        default: "/",
        help: "Where the web app is served: `/` (browsers opening `/` or `/<topic>`), another path such as `/app`, or `disable`",
    },
    OptionSpec {
        key: "web-push-public-key",
        default: "",
        help: "Web Push VAPID public key (base64url, from `herald webpush keys`); with `web-push-private-key` it turns Web Push on",
    },
    OptionSpec {
        key: "web-push-private-key",
        default: "",
        help: "Web Push VAPID private key (base64url). Prefer the environment or the config file to a flag (visible in `ps`)",
    },
    OptionSpec {
        key: "web-push-file",
        default: "",
        help: "SQLite file of Web Push subscriptions and their send queue; default `<data-dir>/webpush.db`. Not used with `redis-url`",
    },
    OptionSpec {
        key: "web-push-email-address",
        default: "",
        help: "Contact address sent to push services in the VAPID JWT (`sub`), e.g. `admin@example.com`",
    },
    OptionSpec {
        key: "web-push-allowed-endpoints",
        default: "",
        help: "Comma-separated URL prefixes accepted as Web Push endpoints besides the browsers' public push services (Google, Mozilla, Microsoft, Apple), e.g. a self-hosted push service",
    },
    OptionSpec {
        key: "web-push-expiry-duration",
        default: "60d",
        help: "Remove a Web Push subscription its browser has not renewed for this long",
    },
    // Idempotent publishing (a herald extension, README "Idempotent publishing").
    OptionSpec {
        key: "idempotency-window",
        default: "24h",
        help: "How long a publish's `Idempotency-Key` is remembered (per visitor): a repeat within it gets the original answer instead of a second message; `0` ignores keys",
    },
    OptionSpec {
        key: "idempotency-key-limit",
        default: "100000",
        help: "Most idempotency keys remembered at once (node, or cluster with `redis-url`); beyond it the ones nearest their expiry are forgotten first",
    },
    OptionSpec {
        key: "redis-sentinel-addrs",
        default: "",
        help: "Find the cluster's Redis primary through these Sentinels (comma-separated `host:port`), and follow it when they fail over; needs `redis-sentinel-master`. `redis-url`, if also set, gives the scheme (`rediss://` for TLS), password and database",
    },
    OptionSpec {
        key: "redis-sentinel-master",
        default: "",
        help: "The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`)",
    },
    OptionSpec {
        key: "redis-tls-ca-file",
        default: "",
        help: "PEM file of the CA certificates to trust for `rediss://` instead of the compiled-in Mozilla roots",
    },
    OptionSpec {
        key: "redis-tls-cert-file",
        default: "",
        help: "PEM client certificate (chain) for `rediss://` servers that require one; with `redis-tls-key-file`",
    },
    OptionSpec {
        key: "redis-tls-key-file",
        default: "",
        help: "PEM private key of `redis-tls-cert-file`",
    },
    OptionSpec {
        key: "redis-min-replicas-acked",
        default: "0",
        help: "Acknowledge a publish (and webhook, auth changes) only once this many Redis replicas confirmed it (`WAIT`), so losing the primary loses nothing acknowledged; unconfirmed in time: 503. 0: the primary's answer suffices",
    },
    OptionSpec {
        key: "redis-replica-ack-timeout",
        default: "2s",
        help: "How long to wait for `redis-min-replicas-acked` replicas before answering 503",
    },
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag => write!(f, "command-line flag"),
        }
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for `{key}` (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The embedded message store (`store-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    /// `crate::store::sqlite`: one SQLite file, `cache-file`.
    Sqlite,
    /// `crate::store::log`: an append-only log in [`Config::log_dir`].
    Log,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_http: String,
    /// Separate address for `/metrics` (ntfy's `metrics-listen-http`); `None` serves
    /// it on `listen_http`.
    pub metrics_listen_http: Option<String>,
    /// Address of the gRPC API (`crate::grpc`); `None`: no gRPC listener.
    pub listen_grpc: Option<String>,
    /// Serve gRPC server reflection on `listen_grpc`.
    pub grpc_reflection: bool,
    pub base_url: String,
    pub data_dir: PathBuf,
    pub cache_file: PathBuf,
    pub cache_duration: Duration,
    pub keepalive_interval: Duration,
    pub manager_interval: Duration,
    pub message_size_limit: usize,
    pub message_delay_limit: Duration,
    pub visitor_subscription_limit: usize,
    pub global_topic_limit: usize,
    pub store_sync: SyncMode,
    /// `store-engine`: which embedded store holds the message cache.
    pub store_engine: StoreEngine,
    pub subscriber_queue_size: usize,
    /// `fanout-shard-size`: subscribers per worker thread from which a topic's
    /// fan-out is split (`hub`); 0: never.
    pub fanout_shard_size: usize,
    /// Most history reads in progress at once (`history-read-limit`).
    pub history_read_limit: usize,
    pub shutdown_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where OpenTelemetry traces go (the full `/v1/traces` URL); `None`: no tracing.
    pub otlp_endpoint: Option<String>,
    pub otlp_service_name: String,
    /// Rate limits and hardening (`visitor-request-limit-*`, `behind-proxy`,
    /// `connection-limit`, ...).
    pub limits: crate::limits::LimitsConfig,
    /// Outgoing webhooks (`webhook-*` keys).
    pub webhooks: crate::webhook::WebhookConfig,
    /// E-mail both ways (`smtp-sender-*`, `smtp-server-*`).
    pub email: crate::email::EmailConfig,
    /// Access control (`auth-file`, `auth-default-access`); `None`: off, everyone
    /// may read and write every topic (as ntfy without an auth file).
    pub auth: Option<crate::auth::AuthSettings>,
    /// The cluster's Redis (`redis-url`); `None`: embedded store, single node.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (`redis-key-prefix`).
    pub redis_key_prefix: String,
    /// File attachments (`attachment-*`, `visitor-attachment-*`).
    pub attachments: crate::attachment::AttachmentConfig,
    /// Message template files (`template-dir`); `None`: built-in templates only.
    pub template_dir: Option<PathBuf>,
    /// `auth-user-header`: the header a trusted proxy names the user in.
    pub auth_user_header: Option<String>,
    /// `auth-logout-url` (for `/v1/config`).
    pub auth_logout_url: String,
    /// `upstream-base-url` and `upstream-access-token`; `None`: no upstream pokes.
    pub upstream: Option<crate::upstream::UpstreamConfig>,
    /// `auth-users`, `auth-access`, `auth-tokens`; `None`: nothing provisioned.
    pub auth_provisioning: Option<crate::auth::provision::Provisioning>,
    /// The web app (`web-root`) and Web Push (`web-push-*`).
    pub web: crate::web::WebConfig,
    /// How long idempotency keys are remembered (`idempotency-window`); zero: off.
    pub idempotency_window: Duration,
    /// Most idempotency keys kept (`idempotency-key-limit`).
    pub idempotency_key_limit: usize,
    /// How cluster mode reaches Redis: URL, Sentinels, TLS files, confirmations
    /// (`redis-*`; see `cluster::connector`).
    pub redis: crate::cluster::connector::RedisSettings,
}

impl Config {
    /// The defaults, with `data_dir` replaced (convenient for tests).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut raw = RawValues::defaults();
        raw.set(
            "data-dir",
            data_dir.into().display().to_string(),
            Source::Flag,
        );
        raw.into_config()
            .unwrap_or_else(|e| unreachable!("built-in defaults are valid: {e}"))
    }

    /// The log store's directory (`store-engine = log`): `cache-file` with the
    /// extension `.log` (`<data-dir>/messages.log` by default).
    pub fn log_dir(&self) -> PathBuf {
        self.cache_file.with_extension("log")
    }
}

/// Adds one flag per option to `cmd` (`--listen-http`, ... and `--config`).
pub fn add_args(mut cmd: Command) -> Command {
    cmd = cmd.arg(
        Arg::new("config")
            .long("config")
            .short('c')
            .value_name("FILE")
            .env("HERALD_CONFIG")
            .help("YAML config file with ntfy-style keys (e.g. an ntfy server.yml)"),
    );
    for opt in OPTIONS {
        let help = if opt.default.is_empty() {
            opt.help.to_string()
        } else {
            format!("{} [default: {}]", opt.help, opt.default)
        };
        cmd = cmd.arg(
            Arg::new(opt.key)
                .long(opt.key)
                .value_name("VALUE")
                // As Go's flag package does for ntfy: the word after an option is its
                // value, even when it starts with `-`, as a base64url key may.
                .allow_hyphen_values(true)
                .env(env_name(opt.key))
                .hide_env_values(SECRET_OPTIONS.contains(&opt.key))
                .help(help),
        );
    }
    cmd
}

/// `listen-http` → `HERALD_LISTEN_HTTP`.
pub fn env_name(key: &str) -> String {
    format!("HERALD_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// `HERALD_*` variables herald reads that are not server options: the config file,
/// and the CLI commands' own (`herald user`'s password, `herald webhook`'s server).
const OTHER_ENV: &[&str] = &["HERALD_CONFIG", "HERALD_PASSWORD", "HERALD_SERVER"];

/// The names among `vars` that start with `HERALD_` but that herald does not read: a
/// misspelled setting (`HERALD_REDIS_SENTINEL_ADRS`) would otherwise leave a node
/// silently on a default, e.g. alone on its own store. Sorted, for a stable warning.
pub fn unknown_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|name| name.starts_with("HERALD_"))
        .filter(|name| !OTHER_ENV.contains(&name.as_str()))
        .filter(|name| !OPTIONS.iter().any(|o| env_name(o.key) == *name))
        .collect();
    unknown.sort();
    unknown
}

/// Builds the configuration from parsed arguments (flags and environment, as clap saw
/// them), the config file they name, and the defaults.
pub fn load(matches: &ArgMatches) -> Result<Config, ConfigError> {
    let mut raw = RawValues::defaults();
    if let Some(path) = matches.get_one::<String>("config") {
        raw.merge_file(Path::new(path))?;
    }
    for opt in OPTIONS {
        if let Some(value) = matches.get_one::<String>(opt.key) {
            let source = match matches.value_source(opt.key) {
                Some(ValueSource::EnvVariable) => Source::Env(env_name(opt.key)),
                _ => Source::Flag,
            };
            raw.set(opt.key, value.clone(), source);
        }
    }
    raw.into_config()
}

/// Values as strings, each with its source, before validation.
struct RawValues(HashMap<&'static str, (String, Source)>);

impl RawValues {
    fn defaults() -> Self {
        RawValues(
            OPTIONS
                .iter()
                .map(|o| (o.key, (o.default.to_string(), Source::Default)))
                .collect(),
        )
    }

    fn set(&mut self, key: &str, value: String, source: Source) {
        if let Some(opt) = OPTIONS.iter().find(|o| o.key == key) {
            self.0.insert(opt.key, (value, source));
        }
    }

    /// Takes every known key from a YAML file. Unknown keys (ntfy options herald does
    /// not have) are logged and ignored, so an ntfy `server.yml` still loads.
    fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        if text.trim().is_empty() {
            return Ok(());
        }
        let doc: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        let serde_json::Value::Object(map) = doc else {
            return Err(file_err(
                "expected a mapping of option names to values".into(),
            ));
        };
        for (key, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            let key = key.replace('_', "-");
            if OPTIONS.iter().any(|o| o.key == key) {
                self.set(&key, text, Source::File(path.to_path_buf()));
            } else {
                tracing::warn!(key = %key, file = %path.display(), "ignoring unsupported config option");
            }
        }
        Ok(())
    }

    fn get(&self, key: &'static str) -> (&str, &Source) {
        match self.0.get(key) {
            Some((v, s)) => (v.as_str(), s),
            None => ("", &Source::Default),
        }
    }

    fn parse<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse_shown(key, parse, true)
    }

    /// [`Self::parse`] for a secret: an error does not repeat the value.
    fn parse_secret<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse_shown(key, parse, false)
    }

    fn parse_shown<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        show_value: bool,
    ) -> Result<T, ConfigError> {
        let (value, source) = self.get(key);
        parse(value.trim()).map_err(|reason| ConfigError::Invalid {
            key,
            value: if show_value {
                value.to_string()
            } else {
                "(hidden)".into()
            },
            origin: source.clone(),
            reason,
        })
    }

    fn into_config(self) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(self.parse("data-dir", non_empty)?);
        let cache_file = self.parse("cache-file", |s| Ok(s.to_string()))?;
        let cache_file = if cache_file.is_empty() {
            data_dir.join("messages.db")
        } else {
            PathBuf::from(cache_file)
        };
        Ok(Config {
            listen_http: self.parse("listen-http", parse_listen)?,
            metrics_listen_http: self.parse("metrics-listen-http", optional_listen)?,
            listen_grpc: self.parse("listen-grpc", optional_listen)?,
            grpc_reflection: self.parse("grpc-reflection", boolean)?,
            base_url: self.parse("base-url", |s| Ok(s.trim_end_matches('/').to_string()))?,
            cache_file,
            cache_duration: self.parse("cache-duration", duration)?,
            keepalive_interval: self.parse("keepalive-interval", positive_duration)?,
            manager_interval: self.parse("manager-interval", positive_duration)?,
            message_size_limit: self.parse("message-size-limit", |s| {
                let n = parse_size(s)?;
                if n == 0 {
                    return Err("must be at least 1 byte".into());
                }
                Ok(n)
            })?,
            message_delay_limit: self.parse("message-delay-limit", positive_duration)?,
            visitor_subscription_limit: self.parse("visitor-subscription-limit", count)?,
            global_topic_limit: self.parse("global-topic-limit", count)?,
            store_sync: self.parse("store-sync", |s| {
                s.parse::<SyncMode>()
                    .map_err(|_| "expected one of: off, normal, full".to_string())
            })?,
            store_engine: self.parse("store-engine", |s| match s {
                "sqlite" => Ok(StoreEngine::Sqlite),
                "log" => Ok(StoreEngine::Log),
                _ => Err("expected one of: sqlite, log".to_string()),
            })?,
            fanout_shard_size: self.parse("fanout-shard-size", count)?,
            subscriber_queue_size: self.parse("subscriber-queue-size", |s| {
                let n = count(s)?;
                if n == 0 {
                    return Err("must be at least 1".into());
                }
                Ok(n)
            })?,
            history_read_limit: self.parse("history-read-limit", |s| {
                let n = count(s)?;
                if n == 0 {
                    return Err("must be at least 1".into());
                }
                Ok(n)
            })?,
            shutdown_timeout: self.parse("shutdown-timeout", duration)?,
            log_level: self.parse("log-level", |s| match s.to_ascii_lowercase().as_str() {
                l @ ("error" | "warn" | "info" | "debug" | "trace") => Ok(l.to_string()),
                _ => Err("expected one of: error, warn, info, debug, trace".into()),
            })?,
            log_format: self.parse("log-format", |s| match s.to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".into()),
            })?,
            otlp_endpoint: self.parse("otlp-endpoint", otlp_endpoint)?,
            otlp_service_name: self.parse("otlp-service-name", non_empty)?,
            redis_url: self.parse("redis-url", redis_url)?,
            redis_key_prefix: self.parse("redis-key-prefix", non_empty)?,
            idempotency_window: self.parse("idempotency-window", duration)?,
            idempotency_key_limit: self.parse("idempotency-key-limit", |s| match count(s)? {
                0 => Err("must be at least 1".into()),
                n => Ok(n),
            })?,
            redis: self.redis_settings()?,
            limits: self.limits()?,
            attachments: self.attachment_config()?,
            webhooks: self.webhook_config(&data_dir)?,
            email: self.email_config(&data_dir)?,
            auth: self.auth_settings(&data_dir)?,
            template_dir: self.parse("template-dir", |s| {
                Ok((!s.is_empty()).then(|| PathBuf::from(s)))
            })?,
            auth_user_header: self.auth_user_header()?,
            auth_logout_url: self.parse("auth-logout-url", |s| Ok(s.to_string()))?,
            upstream: self.upstream()?,
            auth_provisioning: self.auth_provisioning()?,
            web: self.web_config(&data_dir)?,
            data_dir,
        })
    }

    fn limits(&self) -> Result<crate::limits::LimitsConfig, ConfigError> {
        use crate::limits::{LimitsConfig, auto_connection_limit, net::parse_host_list};
        let u32_at_least = |min: u32| {
            move |s: &str| match s.parse::<u32>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(format!("expected a whole number of at least {min}")),
            }
        };
        let bits = |max: u8| {
            move |s: &str| match s.parse::<u8>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("expected a prefix length from 1 to {max}")),
            }
        };
        let at_least = |min: usize| {
            move |s: &str| match parse_size(s) {
                Ok(n) if n >= min => Ok(n),
                Ok(_) => Err(format!("must be at least {min} bytes")),
                Err(e) => Err(e),
            }
        };
        Ok(LimitsConfig {
            request_burst: self.parse("visitor-request-limit-burst", u32_at_least(1))?,
            request_replenish: self.parse("visitor-request-limit-replenish", positive_duration)?,
            exempt_hosts: self.parse("visitor-request-limit-exempt-hosts", parse_host_list)?,
            message_daily_limit: self.parse("visitor-message-daily-limit", u32_at_least(0))?,
            topic_creation_burst: self
                .parse("visitor-topic-creation-limit-burst", u32_at_least(0))?,
            topic_creation_replenish: self
                .parse("visitor-topic-creation-limit-replenish", positive_duration)?,
            email_burst: self.parse("visitor-email-limit-burst", u32_at_least(1))?,
            email_replenish: self.parse("visitor-email-limit-replenish", positive_duration)?,
            prefix_bits_ipv4: self.parse("visitor-prefix-bits-ipv4", bits(32))?,
            prefix_bits_ipv6: self.parse("visitor-prefix-bits-ipv6", bits(128))?,
            visitor_table_size: self.parse("visitor-table-size", |s| match count(s)? {
                0 => Err("must be at least 1".into()),
                n => Ok(n),
            })?,
            behind_proxy: self.parse("behind-proxy", boolean)?,
            proxy_forwarded_header: self.parse("proxy-forwarded-header", |s| {
                axum::http::HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
                    .map_err(|_| "expected a header name such as X-Forwarded-For".to_string())
            })?,
            proxy_trusted_hosts: self.parse("proxy-trusted-hosts", parse_host_list)?,
            connection_limit: self.parse("connection-limit", |s| {
                if s.eq_ignore_ascii_case("auto") {
                    return Ok(auto_connection_limit());
                }
                match count(s)? {
                    0 => Err("must be at least 1 (or `auto`)".into()),
                    n => Ok(n),
                }
            })?,
            header_read_timeout: self.parse("header-read-timeout", positive_duration)?,
            body_read_timeout: self.parse("body-read-timeout", positive_duration)?,
            max_header_size: self.parse("max-header-size", at_least(1024))?,
            max_url_length: self.parse("max-url-length", at_least(64))?,
        })
    }

    fn attachment_config(&self) -> Result<crate::attachment::AttachmentConfig, ConfigError> {
        let bytes = |s: &str| parse_size(s).map(|n| n as u64);
        let config = crate::attachment::AttachmentConfig {
            // An `s3://` URL carries the secret key: never echoed in an error.
            location: if self
                .get("attachment-cache-dir")
                .0
                .trim()
                .starts_with("s3://")
            {
                self.parse_secret("attachment-cache-dir", crate::attachment::parse_location)?
            } else {
                self.parse("attachment-cache-dir", crate::attachment::parse_location)?
            },
            shared_dir: self.parse("attachment-cache-dir-shared", boolean)?,
            total_size_limit: self.parse("attachment-total-size-limit", bytes)?,
            file_size_limit: self.parse("attachment-file-size-limit", bytes)?,
            expiry: self.parse("attachment-expiry-duration", positive_duration)?,
            visitor_total_size_limit: self.parse("visitor-attachment-total-size-limit", bytes)?,
            visitor_daily_bandwidth_limit: self
                .parse("visitor-attachment-daily-bandwidth-limit", bytes)?,
        };
        // A node-local directory cannot serve files uploaded through another node.
        let cluster = !self.get("redis-url").0.trim().is_empty()
            || !self.get("redis-sentinel-addrs").0.trim().is_empty();
        if cluster
            && matches!(config.location, Some(crate::attachment::Location::Dir(_)))
            && !config.shared_dir
        {
            return self.parse("attachment-cache-dir", |_| {
                Err::<crate::attachment::AttachmentConfig, _>(
                    "with `redis-url`, every node must reach every file: set `attachment-cache-dir-shared: true` if this directory is shared by all nodes"
                        .into(),
                )
            });
        }
        Ok(config)
    }

    /// An error for `key` that is about its relation to other options.
    fn invalid(&self, key: &'static str, reason: &str) -> ConfigError {
        let (value, origin) = self.get(key);
        ConfigError::Invalid {
            key,
            value: value.to_string(),
            origin: origin.clone(),
            reason: reason.to_string(),
        }
    }

    fn email_config(&self, data_dir: &Path) -> Result<crate::email::EmailConfig, ConfigError> {
        use crate::email::{EmailConfig, SenderConfig, ServerConfig};
        let text = |s: &str| Ok::<_, String>(s.trim().to_string());
        let addr = self.parse("smtp-sender-addr", |s| {
            let s = s.trim();
            if !s.is_empty() {
                crate::email::outgoing::parse_relay(s)?;
            }
            Ok(s.to_string())
        })?;
        let from = self.parse("smtp-sender-from", |s| {
            let s = s.trim();
            if s.is_empty() || crate::email::is_valid_address(s) {
                Ok(s.to_string())
            } else {
                Err("expected an e-mail address such as ntfy@example.com".into())
            }
        })?;
        // Checked even while off, so that a typo shows before it matters.
        let tls = self.parse("smtp-sender-tls", |s| s.parse())?;
        let retry_schedule = self.parse("smtp-sender-retry-schedule", |s| {
            if s.trim().is_empty() {
                return Ok(Vec::new());
            }
            crate::webhook::parse_schedule(s)
        })?;
        let sender = if addr.is_empty() {
            None
        } else {
            // As ntfy: mails link to the topic, so the public URL must be known.
            if from.is_empty() || self.get("base-url").0.trim().is_empty() {
                return Err(self.invalid(
                    "smtp-sender-addr",
                    "`base-url` and `smtp-sender-from` must be set too",
                ));
            }
            Some(SenderConfig {
                addr,
                user: self.parse("smtp-sender-user", text)?,
                pass: self.parse_secret("smtp-sender-pass", |s| Ok(s.to_string()))?,
                from,
                tls,
                retry_schedule,
                queue_file: data_dir.join("mail.db"),
            })
        };
        let listen = self.parse("smtp-server-listen", text)?;
        let domain = self.parse("smtp-server-domain", |s| {
            let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
            if s.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err("expected a domain such as ntfy.example.com".into());
            }
            Ok(s)
        })?;
        let addr_prefix = self.parse("smtp-server-addr-prefix", text)?;
        let server = if listen.is_empty() {
            None
        } else if domain.is_empty() {
            return Err(self.invalid("smtp-server-listen", "`smtp-server-domain` must be set too"));
        } else {
            Some(ServerConfig {
                listen,
                domain,
                addr_prefix,
            })
        };
        Ok(EmailConfig { sender, server })
    }

    fn web_config(&self, data_dir: &Path) -> Result<crate::web::WebConfig, ConfigError> {
        use crate::webpush::{WebPushConfig, keys::VapidKeys};
        let public = self.parse("web-push-public-key", |s| Ok(s.to_string()))?;
        // Both keys or neither: the pair is checked as one (the public key must be
        // the private key's).
        let keys = self.parse_secret("web-push-private-key", |private| {
            match (public.is_empty(), private.is_empty()) {
                (true, true) => Ok(None),
                (false, false) => VapidKeys::from_base64(&public, private)
                    .map(Some)
                    .map_err(|e| e.to_string()),
                _ => {
                    Err("set both web-push-public-key and web-push-private-key, or neither".into())
                }
            }
        })?;
        let push = match keys {
            None => None,
            Some(keys) => {
                let file = self.parse("web-push-file", |s| Ok(s.to_string()))?;
                Some(WebPushConfig {
                    keys: std::sync::Arc::new(keys),
                    file: if file.is_empty() {
                        data_dir.join("webpush.db")
                    } else {
                        PathBuf::from(file)
                    },
                    email: self.parse("web-push-email-address", |s| Ok(s.to_string()))?,
                    expiry: self.parse("web-push-expiry-duration", positive_duration)?,
                    allowed_endpoints: self.parse("web-push-allowed-endpoints", |s| {
                        Ok(s.split(',')
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .map(str::to_string)
                            .collect())
                    })?,
                })
            }
        };
        Ok(crate::web::WebConfig {
            root: self.parse("web-root", crate::web::parse_web_root)?,
            push,
        })
    }

    fn webhook_config(
        &self,
        data_dir: &Path,
    ) -> Result<crate::webhook::WebhookConfig, ConfigError> {
        let defaults = crate::webhook::WebhookConfig::defaults(data_dir);
        let file = self.parse("webhook-file", |s| Ok(s.to_string()))?;
        Ok(crate::webhook::WebhookConfig {
            file: if file.is_empty() {
                defaults.file
            } else {
                PathBuf::from(file)
            },
            retry_schedule: self.parse("webhook-retry-schedule", crate::webhook::parse_schedule)?,
            timeout: self.parse("webhook-timeout", positive_duration)?,
            disable_after: self.parse("webhook-disable-after", positive_duration)?,
            allow_private: self.parse("webhook-allow-private", boolean)?,
            allow_cidrs: self.parse("webhook-allow-cidrs", crate::webhook::parse_cidrs)?,
            concurrency: self.parse("webhook-concurrency", |s| {
                let n = count(s)?;
                if n == 0 || n > 1000 {
                    return Err("must be 1 to 1000".into());
                }
                Ok(n)
            })?,
            visitor_limit: self.parse("webhook-visitor-limit", count)?,
            secret_grace: self.parse("webhook-secret-grace", duration)?,
            admin_token: self.parse_secret("webhook-admin-token", |s| {
                if s.is_empty() {
                    Ok(None)
                } else if s.chars().count() < 16 || s.chars().any(char::is_whitespace) {
                    Err("must be at least 16 characters without spaces".into())
                } else if crate::webhook::token::is_management_token(s) {
                    Err("must not start with `whm_` (the management tokens' prefix)".into())
                } else {
                    Ok(Some(crate::webhook::token::AdminToken::new(s)))
                }
            })?,
        })
    }
}

fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

impl RawValues {
    /// `auth-user-header`: a header name, and only where a proxy can be told apart
    /// from everyone else (`behind-proxy` with `proxy-trusted-hosts`) and there are
    /// users to name (access control on).
    fn auth_user_header(&self) -> Result<Option<String>, ConfigError> {
        let header = self.parse("auth-user-header", |s| {
            if s.is_empty() {
                return Ok(None);
            }
            axum::http::HeaderName::from_bytes(s.as_bytes())
                .map(|h| Some(h.as_str().to_string()))
                .map_err(|_| "not a valid header name".to_string())
        })?;
        if header.is_none() {
            return Ok(None);
        }
        let needs = |reason: &str| {
            self.parse("auth-user-header", |_| -> Result<(), String> {
                Err(reason.to_string())
            })
        };
        if !self.parse("behind-proxy", boolean)? {
            needs("needs `behind-proxy` (the header is believed only from a proxy)")?;
        }
        if self.get("proxy-trusted-hosts").0.trim().is_empty() {
            needs("needs `proxy-trusted-hosts` (the proxies whose header is believed)")?;
        }
        if self.get("auth-file").0.trim().is_empty()
            && self.get("auth-default-access").0.trim().is_empty()
        {
            needs("needs access control on (`auth-file` or `auth-default-access`)")?;
        }
        Ok(header)
    }

    /// `upstream-base-url` (with its token): an `http(s)://` URL other than
    /// `base-url`, which it needs (the topic hash is made from it).
    fn upstream(&self) -> Result<Option<crate::upstream::UpstreamConfig>, ConfigError> {
        let base = self
            .get("base-url")
            .0
            .trim()
            .trim_end_matches('/')
            .to_string();
        let url = self.parse("upstream-base-url", |s| {
            let s = s.trim_end_matches('/');
            if s.is_empty() {
                return Ok(None);
            }
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err("expected an http:// or https:// URL".to_string());
            }
            if base.is_empty() {
                return Err("needs `base-url` (the topic hash is made from it)".to_string());
            }
            if s == base {
                return Err("must differ from `base-url`".to_string());
            }
            Ok(Some(s.to_string()))
        })?;
        let token = self.parse_secret("upstream-access-token", |s| Ok(s.to_string()))?;
        Ok(url.map(|base_url| crate::upstream::UpstreamConfig {
            base_url,
            access_token: (!token.is_empty()).then_some(token),
        }))
    }

    /// `auth-users`, `auth-access` and `auth-tokens` (secrets: errors do not repeat
    /// them); they need access control on.
    fn auth_provisioning(
        &self,
    ) -> Result<Option<crate::auth::provision::Provisioning>, ConfigError> {
        let raw = |key| self.get(key).0.trim().to_string();
        let (users, access, tokens) = (raw("auth-users"), raw("auth-access"), raw("auth-tokens"));
        let p = self.parse_secret("auth-users", |_| {
            crate::auth::provision::Provisioning::parse(&users, &access, &tokens)
        })?;
        if p.is_empty() {
            return Ok(None);
        }
        if self.get("auth-file").0.trim().is_empty()
            && self.get("auth-default-access").0.trim().is_empty()
        {
            self.parse("auth-users", |_| -> Result<(), String> {
                Err("needs access control on (`auth-file` or `auth-default-access`)".into())
            })?;
        }
        Ok(Some(p))
    }

    /// The `redis-*` options beyond the URL (`cluster::connector`).
    fn redis_settings(&self) -> Result<crate::cluster::connector::RedisSettings, ConfigError> {
        let path = |s: &str| Ok((!s.is_empty()).then(|| PathBuf::from(s)));
        let settings = crate::cluster::connector::RedisSettings {
            url: self.parse("redis-url", redis_url)?,
            sentinel_addrs: self.parse("redis-sentinel-addrs", |s| {
                let addrs: Vec<String> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect();
                for addr in &addrs {
                    crate::cluster::connector::parse_sentinel_addr(addr)?;
                }
                Ok(addrs)
            })?,
            sentinel_master: self.parse("redis-sentinel-master", |s| Ok(s.to_string()))?,
            tls_ca_file: self.parse("redis-tls-ca-file", path)?,
            tls_cert_file: self.parse("redis-tls-cert-file", path)?,
            tls_key_file: self.parse("redis-tls-key-file", path)?,
            min_replicas_acked: self.parse("redis-min-replicas-acked", |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 100)
                    .ok_or_else(|| "expected a whole number from 0 to 100".to_string())
            })?,
            replica_ack_timeout: self.parse("redis-replica-ack-timeout", positive_duration)?,
        };
        if !settings.sentinel_addrs.is_empty() && settings.sentinel_master.is_empty() {
            return Err(self.invalid(
                "redis-sentinel-master",
                "must be set with redis-sentinel-addrs",
            ));
        }
        if settings.tls_cert_file.is_some() != settings.tls_key_file.is_some() {
            return Err(self.invalid(
                "redis-tls-key-file",
                "redis-tls-cert-file and redis-tls-key-file go together",
            ));
        }
        Ok(settings)
    }

    /// `auth-file` and `auth-default-access`: on if either is set.
    fn auth_settings(
        &self,
        data_dir: &Path,
    ) -> Result<Option<crate::auth::AuthSettings>, ConfigError> {
        let file = self.parse("auth-file", |s| Ok(s.to_string()))?;
        let access = self.parse("auth-default-access", |s| {
            if s.is_empty() {
                return Ok(None);
            }
            crate::auth::Access::parse(s).map(Some).ok_or_else(|| {
                "expected one of: read-write, read-only, write-only, deny-all".to_string()
            })
        })?;
        if file.is_empty() && access.is_none() {
            return Ok(None);
        }
        Ok(Some(crate::auth::AuthSettings {
            auth_file: if file.is_empty() {
                data_dir.join("auth.db")
            } else {
                PathBuf::from(file)
            },
            default_access: access.unwrap_or(crate::auth::Access::READ_WRITE),
        }))
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// `otlp-endpoint`: empty is off; anything else needs the `otel` feature compiled in.
fn otlp_endpoint(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if !crate::otel::COMPILED {
        return Err(
            "this herald binary was built without OpenTelemetry support: rebuild it with \
             `cargo build --release --features otel`, or leave `otlp-endpoint` empty"
                .into(),
        );
    }
    crate::otel::traces_url(s).map(Some)
}

/// `redis-url`: empty is off; otherwise a `redis://` (or `unix://`) URL the client accepts.
fn redis_url(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    crate::cluster::redis::check_url(s)?;
    Ok(Some(s.to_string()))
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_config_duration(s).ok_or_else(|| "expected a duration such as 45s, 10m, 12h or 3d".into())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| "expected a whole number".to_string())
}

/// An address as [`parse_listen`] takes it, or `None` when empty (the listener is off).
fn optional_listen(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_listen(s).map(Some)
    }
}

/// `:8080` (all interfaces, as ntfy writes it), `127.0.0.1:8080`, `[::1]:8080`.
fn parse_listen(s: &str) -> Result<String, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse::<std::net::SocketAddr>()
        .map_err(|_| "expected [host]:port, e.g. :8080 or 127.0.0.1:8080".to_string())?;
    Ok(full)
}

/// Byte sizes as ntfy writes them: `4096`, `4k`, `4K`, `4KB`, `1M`, `1G`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1024),
        Some('m') => (&lower[..lower.len() - 1], 1024 * 1024),
        Some('g') => (&lower[..lower.len() - 1], 1024 * 1024 * 1024),
        _ => (lower, 1),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "expected a size such as 4096, 4k or 1M".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> ArgMatches {
        add_args(Command::new("serve"))
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_are_ntfys() {
        let c = load(&matches(&[])).unwrap();
        assert_eq!(c.listen_http, "0.0.0.0:8080");
        assert_eq!(c.cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(c.keepalive_interval, Duration::from_secs(45));
        assert_eq!(c.message_size_limit, 4096);
        assert_eq!(c.message_delay_limit, Duration::from_secs(3 * 86400));
        assert_eq!(c.visitor_subscription_limit, 30);
        assert_eq!(c.cache_file, PathBuf::from("./herald-data/messages.db"));
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.yml");
        std::fs::write(
            &file,
            "listen-http: \":9999\"\ncache-duration: 1h\nauth-file: /var/lib/ntfy/user.db\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = load(&matches(&[
            "--config",
            f,
            "--listen-http",
            "127.0.0.1:7000",
        ]))
        .unwrap();
        assert_eq!(c.listen_http, "127.0.0.1:7000");
        assert_eq!(c.cache_duration, Duration::from_secs(3600));
    }

    #[test]
    fn idempotency_options() {
        let c = load(&matches(&[])).unwrap();
        assert_eq!(c.idempotency_window, Duration::from_secs(24 * 3600));
        assert_eq!(c.idempotency_key_limit, 100_000);
        let c = load(&matches(&["--idempotency-window", "5m"])).unwrap();
        assert_eq!(c.idempotency_window, Duration::from_secs(300));
        let err = load(&matches(&["--idempotency-key-limit", "0"])).unwrap_err();
        assert!(err.to_string().contains("idempotency-key-limit"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let err = load(&matches(&["--cache-duration", "soon"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cache-duration"), "{text}");
        assert!(text.contains("command-line flag"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.yml");
        std::fs::write(&file, "message-size-limit: lots\n").unwrap();
        let err = load(&matches(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("message-size-limit"));
        assert!(err.to_string().contains("config file"));
    }

    #[test]
    fn email_options_from_an_ntfy_server_yml() {
        let c = load(&matches(&[])).unwrap();
        assert!(c.email.sender.is_none() && c.email.server.is_none());
        assert_eq!(c.limits.email_burst, 16);
        assert_eq!(c.limits.email_replenish, Duration::from_secs(3600));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.yml");
        std::fs::write(
            &file,
            "base-url: https://ntfy.example.com\nsmtp-sender-addr: smtp.example.com:587\n\
             smtp-sender-user: ntfy\nsmtp-sender-pass: s3cret-pass\n\
             smtp-sender-from: ntfy@example.com\nsmtp-server-listen: \":2525\"\n\
             smtp-server-domain: NTFY.example.com\nsmtp-server-addr-prefix: ntfy-\n\
             visitor-email-limit-burst: 5\nvisitor-email-limit-replenish: 1m\n",
        )
        .unwrap();
        let c = load(&matches(&["--config", file.to_str().unwrap()])).unwrap();
        let sender = c.email.sender.clone().unwrap();
        assert_eq!(sender.addr, "smtp.example.com:587");
        assert_eq!(
            (sender.user.as_str(), sender.pass.as_str()),
            ("ntfy", "s3cret-pass")
        );
        assert_eq!(sender.tls, crate::email::SenderTls::Auto);
        assert_eq!(sender.retry_schedule.len(), 8);
        assert!(!format!("{c:?}").contains("s3cret-pass"));
        let server = c.email.server.unwrap();
        assert_eq!(
            (
                server.listen.as_str(),
                server.domain.as_str(),
                server.addr_prefix.as_str()
            ),
            (":2525", "ntfy.example.com", "ntfy-")
        );
        assert_eq!(c.limits.email_burst, 5);
        assert_eq!(c.limits.email_replenish, Duration::from_secs(60));
        // ntfy's rules: a relay needs base-url and a sender; a listener a domain.
        for args in [
            &["--smtp-sender-addr", "h:25", "--smtp-sender-from", "a@b.c"][..],
            &["--smtp-sender-addr", "h:25", "--base-url", "http://x"][..],
            &[
                "--smtp-sender-addr",
                "h",
                "--smtp-sender-from",
                "a@b.c",
                "--base-url",
                "http://x",
            ],
            &["--smtp-sender-from", "nobody"][..],
            &["--smtp-server-listen", ":25"][..],
            &["--smtp-sender-tls", "ssl3"][..],
            &["--visitor-email-limit-burst", "0"][..],
        ] {
            let err = load(&matches(args)).unwrap_err().to_string();
            assert!(
                err.contains("smtp-") || err.contains("visitor-email"),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn metrics_listener_is_optional() {
        assert_eq!(load(&matches(&[])).unwrap().metrics_listen_http, None);
        let c = load(&matches(&["--metrics-listen-http", ":9090"])).unwrap();
        assert_eq!(c.metrics_listen_http.as_deref(), Some("0.0.0.0:9090"));
        let err = load(&matches(&["--metrics-listen-http", "nope"])).unwrap_err();
        assert!(err.to_string().contains("metrics-listen-http"));
        // gRPC: off unless set; the same address forms as `listen-http`.
        let c = load(&matches(&[])).unwrap();
        assert_eq!((c.listen_grpc, c.grpc_reflection), (None, false));
        let c = load(&matches(&[
            "--listen-grpc",
            ":9000",
            "--grpc-reflection",
            "true",
        ]))
        .unwrap();
        assert_eq!(c.listen_grpc.as_deref(), Some("0.0.0.0:9000"));
        assert!(c.grpc_reflection);
        let err = load(&matches(&["--listen-grpc", "nope"])).unwrap_err();
        assert!(err.to_string().contains("listen-grpc"));
    }

    #[test]
    fn otlp_endpoint_is_off_by_default_and_needs_the_otel_feature() {
        let c = load(&matches(&[])).unwrap();
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.otlp_service_name, "herald");
        let result = load(&matches(&["--otlp-endpoint", "http://127.0.0.1:4318"]));
        if crate::otel::COMPILED {
            let c = result.unwrap();
            assert_eq!(
                c.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4318/v1/traces")
            );
            let err = load(&matches(&["--otlp-endpoint", "https://x:4318"])).unwrap_err();
            assert!(err.to_string().contains("otlp-endpoint"), "{err}");
        } else {
            let text = result.unwrap_err().to_string();
            assert!(text.contains("otlp-endpoint"), "{text}");
            assert!(text.contains("--features otel"), "{text}");
        }
        let err = load(&matches(&["--otlp-service-name", " "])).unwrap_err();
        assert!(err.to_string().contains("otlp-service-name"));
    }

    #[test]
    fn limit_options() {
        let c = load(&matches(&[])).unwrap().limits;
        assert_eq!(c.request_burst, 60);
        assert_eq!(c.request_replenish, Duration::from_secs(5));
        assert_eq!(c.effective_message_daily_limit(), 17_280);
        assert_eq!(c.topic_creation_burst, 100);
        assert!(!c.behind_proxy);
        assert_eq!(c.proxy_forwarded_header, "x-forwarded-for");
        assert!(c.connection_limit >= 64);
        let c = load(&matches(&[
            "--visitor-request-limit-exempt-hosts",
            "127.0.0.1, 10.0.0.0/8,localhost",
            "--behind-proxy",
            "true",
            "--proxy-forwarded-header",
            "X-Real-IP",
            "--connection-limit",
            "500",
        ]))
        .unwrap()
        .limits;
        assert_eq!(c.exempt_hosts.len(), 3);
        assert!(c.behind_proxy);
        assert_eq!(c.proxy_forwarded_header, "x-real-ip");
        assert_eq!(c.connection_limit, 500);
        for (key, bad) in [
            ("--visitor-request-limit-burst", "0"),
            ("--visitor-request-limit-exempt-hosts", "10.0.0.0/40"),
            ("--visitor-prefix-bits-ipv6", "129"),
            ("--behind-proxy", "maybe"),
            ("--connection-limit", "0"),
            ("--max-header-size", "10"),
        ] {
            let err = load(&matches(&[key, bad])).unwrap_err().to_string();
            assert!(err.contains(key.trim_start_matches("--")), "{err}");
        }
    }

    #[test]
    fn webhook_options_default_and_validate() {
        let c = load(&matches(&[])).unwrap().webhooks;
        assert_eq!(c.retry_schedule.len(), 8);
        assert_eq!(c.timeout, Duration::from_secs(15));
        assert_eq!(c.disable_after, Duration::from_secs(5 * 86400));
        assert!(!c.allow_private && c.allow_cidrs.is_empty());
        assert_eq!(c.file, PathBuf::from("./herald-data/webhooks.db"));
        let c = load(&matches(&[
            "--webhook-retry-schedule",
            "0s,1s",
            "--webhook-allow-private",
            "true",
            "--webhook-allow-cidrs",
            "10.0.0.0/8,fd00::/8",
        ]))
        .unwrap()
        .webhooks;
        assert_eq!(c.retry_schedule, [Duration::ZERO, Duration::from_secs(1)]);
        assert!(c.allow_private);
        assert_eq!(c.allow_cidrs.len(), 2);
        for (key, value) in [
            ("--webhook-allow-cidrs", "nope"),
            ("--webhook-retry-schedule", "1s,later"),
            ("--webhook-allow-private", "maybe"),
            ("--webhook-concurrency", "0"),
        ] {
            let err = load(&matches(&[key, value])).unwrap_err().to_string();
            assert!(err.contains(&key[2..]), "{err}");
        }
    }

    #[test]
    fn a_value_may_start_with_a_hyphen() {
        // One VAPID private key in 64 starts with `-` (32 random bytes in base64url; a
        // public key starts with `B`, its 0x04 byte): it must not read as a flag.
        let m = matches(&["--web-push-private-key", "-Ab_c", "--base-url", "-x"]);
        assert_eq!(
            m.get_one::<String>("web-push-private-key")
                .map(String::as_str),
            Some("-Ab_c")
        );
        assert_eq!(
            m.get_one::<String>("base-url").map(String::as_str),
            Some("-x")
        );
    }

    #[test]
    fn web_options_default_and_validate() {
        let c = load(&matches(&[])).unwrap().web;
        assert_eq!(c.root, crate::web::WebRoot::At("/".into()));
        assert!(c.push.is_none());
        let keys = crate::webpush::keys::VapidKeys::generate().unwrap();
        let (public, private) = (keys.public_base64(), keys.private_base64());
        let c = load(&matches(&[
            "--web-root",
            "/app",
            "--web-push-public-key",
            &public,
            "--web-push-private-key",
            &private,
            "--web-push-allowed-endpoints",
            "http://127.0.0.1:9/, https://push.example/",
        ]))
        .unwrap();
        assert_eq!(c.web.root, crate::web::WebRoot::At("/app".into()));
        let push = c.web.push.clone().unwrap();
        assert_eq!(push.keys.public_base64(), public);
        assert_eq!(push.file, PathBuf::from("./herald-data/webpush.db"));
        assert_eq!(push.expiry, Duration::from_secs(60 * 86400));
        assert_eq!(
            push.allowed_endpoints,
            ["http://127.0.0.1:9/", "https://push.example/"]
        );
        assert!(
            !format!("{c:?}").contains(&private),
            "the private key is a secret"
        );
        let other = crate::webpush::keys::VapidKeys::generate().unwrap();
        for args in [
            vec!["--web-push-public-key", public.as_str()],
            vec!["--web-push-private-key", private.as_str()],
            vec![
                "--web-push-public-key",
                &public,
                "--web-push-private-key",
                &other.private_base64(),
            ],
        ] {
            let err = load(&matches(&args)).unwrap_err().to_string();
            assert!(err.contains("web-push-private-key"), "{err}");
            assert!(
                !err.contains(&private) && !err.contains(&other.private_base64()),
                "{err}"
            );
        }
        let err = load(&matches(&["--web-root", "/a/b"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("web-root"), "{err}");
    }

    #[test]
    fn webhook_admin_token_is_validated_and_never_echoed() {
        assert!(load(&matches(&[])).unwrap().webhooks.admin_token.is_none());
        let c = load(&matches(&["--webhook-admin-token", "adm-0123456789abcdef"])).unwrap();
        let admin = c.webhooks.admin_token.clone().unwrap();
        assert!(admin.matches("adm-0123456789abcdef"));
        assert!(!format!("{c:?}").contains("adm-0123456789abcdef"));
        for bad in [
            "short-secret",
            "whm_0123456789abcdef",
            "with space 0123456789",
        ] {
            let err = load(&matches(&["--webhook-admin-token", bad]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("webhook-admin-token"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
    }

    #[test]
    fn access_control_is_off_unless_configured() {
        assert!(load(&matches(&[])).unwrap().auth.is_none());
        let c = load(&matches(&["--auth-default-access", "deny-all"])).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.auth_file, PathBuf::from("./herald-data/auth.db"));
        assert_eq!(auth.default_access, crate::auth::Access::DENY_ALL);
        let c = load(&matches(&["--auth-file", "/tmp/u.db"])).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.auth_file, PathBuf::from("/tmp/u.db"));
        assert_eq!(auth.default_access, crate::auth::Access::READ_WRITE);
        let err = load(&matches(&["--auth-default-access", "everything"])).unwrap_err();
        assert!(err.to_string().contains("auth-default-access"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn unknown_herald_variables_are_named() {
        let vars = [
            "HERALD_REDIS_URL",
            "HERALD_REDIS_URLL",
            "HERALD_CONFIG",
            "HERALD_PASSWORD",
            "PATH",
            "HERALD_LISTEN_HTP",
        ]
        .map(String::from);
        assert_eq!(
            unknown_env_vars(vars),
            vec![
                "HERALD_LISTEN_HTP".to_string(),
                "HERALD_REDIS_URLL".to_string()
            ]
        );
    }
}
