//! Integration tests: the real `herald` binary over real sockets, checked against
//! ntfy's wire formats (docs/COMPATIBILITY.md, https://docs.ntfy.sh/).
//!
//! One test binary (faster to link than one per file); each test starts its own
//! server on `127.0.0.1:0` with its own data directory.

mod attachments;
mod auth;
mod bench;
mod cli_config;
mod client;
mod cluster;
mod direct_publish;
mod durability;
mod failover;
mod files;
mod fixture;
mod grpc;
mod hardening;
mod history;
mod idempotency;
mod info;
mod limits;
mod matrix;
mod metrics;
mod otel;
mod provisioning;
mod proxy_auth;
mod publish;
mod resilience;
mod scheduled;
mod sequence;
mod shutdown;
mod subscribe;
mod templates;
mod upstream;
mod webhook_receiver;
mod webhooks;
