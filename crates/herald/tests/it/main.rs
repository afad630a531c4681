//! Integration tests: the real `herald` binary over real sockets, checked against
//! ntfy's wire formats (docs/COMPATIBILITY.md, https://docs.ntfy.sh/).
//!
//! One test binary (faster to link than one per file); each test starts its own
//! server on `127.0.0.1:0` with its own data directory.

mod auth;
mod bench;
mod cli_config;
mod cluster;
mod durability;
mod failover;
mod files;
mod fixture;
mod hardening;
mod history;
mod info;
mod limits;
mod metrics;
mod otel;
mod publish;
mod resilience;
mod scheduled;
mod sequence;
mod shutdown;
mod subscribe;
mod webhook_receiver;
mod webhooks;
