//! herald: a lean, ntfy-compatible notification server.
//!
//! # Layout
//! - [`config`]: options from flags, environment, YAML file and defaults.
//! - [`model`]: what a notification is (ntfy's message JSON), IDs and topic names.
//! - [`time`]: durations and delivery times in the notations ntfy accepts (API,
//!   config, CLI).
//! - [`store`]: durable history behind the [`store::Store`] trait (embedded SQLite, or
//!   Redis in cluster mode).
//! - [`hub`]: the in-process topic hub: subscribers, bounded queues, fan-out.
//! - [`broker`]: how a committed message reaches every node's hub ([`broker::Broker`]).
//! - [`cluster`]: the Redis plumbing every cluster-mode (`redis-url`) part shares.
//! - [`core`]: the `Herald` handle the transports call: publish, subscribe, poll,
//!   plus the scheduler and the expiry sweep.
//! - `idempotency`: idempotent publishing (`Idempotency-Key`), keys in SQLite or Redis.
//! - [`subscribe`]: the subscription core every stream path shares: request
//!   validation, filters, backlog replay, slots, keepalive policy.
//! - [`wire`]: every byte layout written to a subscriber (JSON/SSE/raw, HTTP chunks,
//!   WebSocket frames).
//! - [`listener`]: the accept loop; serves streaming subscriptions on the socket
//!   itself and hands every other request to the API.
//! - [`api`]: the ntfy-compatible HTTP surface (publish, JSON/SSE/raw/WebSocket streams).
//! - [`limits`]: ntfy's visitor rate limits and connection limits (shared through
//!   Redis in cluster mode).
//! - [`error`]: ntfy's JSON error shape and codes.
//! - [`attachment`]: file attachments (uploads, `/file/<id>`, limits, expiry) on a
//!   local directory or S3-compatible storage.
//! - [`auth`]: access control as ntfy has it: users, tokens, ACLs, credentials.
//! - [`server`]: binds listeners, runs everything, drains on shutdown.
//! - [`telemetry`]: Prometheus metrics and the access log.
//! - [`logging`]: the log's stderr writer, which counts failed writes instead of panicking.
//! - [`otel`]: OpenTelemetry trace export (`otel` cargo feature, `otlp-endpoint`).
//! - `template`: message templates (Go `text/template` + Sprig over a JSON body).
//! - `upstream`: iOS upstream poll requests (`upstream-base-url`).
//! - [`webhook`]: outgoing webhooks (Standard Webhooks, at-least-once, SSRF guard).
//! - `web`: the web app embedded in the binary (`web-root`).
//! - [`webpush`]: Web Push to browsers (VAPID, RFC 8291 encryption, the send queue).
//! - `datafiles`: the data directory's and the databases' permissions.
//!
//! The load generator (`herald bench`) is the workspace's `herald-bench` crate; only
//! the binary uses it.
//!
//! # Visibility
//! The library's surface is what the `herald` binary and the benchmarks use: the
//! option table, the server's entry points, logging, tracing, the CLI parts of `auth`
//! and `webhook`, and the hot-path types the benchmarks drive (`api::params`, `hub`,
//! `store`, `model`, `wire`, `auth`'s snapshot types). Everything else is
//! `pub(crate)`, so the compiler reports dead code.
//!
//! `ARCHITECTURE.md` at the repository root describes how a message flows and the
//! invariants each module keeps.

pub mod api;
pub mod attachment;
pub mod auth;
pub(crate) mod broker;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod core;
pub(crate) mod datafiles;
pub(crate) mod email;
pub mod error;
pub mod grpc;
pub mod hub;
pub(crate) mod idempotency;
pub(crate) mod limits;
pub(crate) mod listener;
pub mod logging;
pub mod model;
pub mod otel;
pub mod server;
pub mod store;
pub(crate) mod subscribe;
pub(crate) mod telemetry;
pub(crate) mod template;
pub(crate) mod time;
pub(crate) mod upstream;
pub(crate) mod web;
pub mod webhook;
pub mod webpush;
pub mod wire;
