//! `herald publish` (`pub`) and `herald subscribe` (`sub`): ntfy's command-line
//! client, with ntfy's flags, environment variables and `client.yml`, for herald and
//! for any ntfy server.
//!
//! A crate of its own, like `herald-bench`: the client speaks only the public HTTP
//! API (so it cannot lean on server internals and works against ntfy too), the
//! server library carries no client code, and the binary (`main.rs`) is the only
//! place that joins them. Everything it uses (reqwest on rustls, serde-saphyr, clap)
//! is already in the server's dependency graph.
//!
//! # Layout
//! - `config`: `client.yml` (ntfy's keys) and where it is looked for.
//! - `http`: the HTTP client (TLS from the binary), auth, topic URLs, error answers.
//! - `publish`: `herald publish`, its `--wait-pid`/`--wait-cmd`, and retries under
//!   one `Idempotency-Key`.
//! - `subscribe`: `herald subscribe`: streams that reconnect with `since=<last id>`,
//!   polling, and command mode with ntfy's environment variables.
//! - `args`: flag values with ntfy's `NTFY_*` (and herald's `HERALD_*`) environment
//!   fallbacks.

mod args;
mod config;
mod http;
mod publish;
mod subscribe;

pub use publish::{add_args as add_publish_args, run as run_publish};
pub use subscribe::{add_args as add_subscribe_args, run as run_subscribe};

/// Runs `fut` on a runtime of one worker (commands run on the blocking pool). The
/// multi-thread scheduler, as the server's: the binary then carries one scheduler.
fn block_on<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(fut)
}
