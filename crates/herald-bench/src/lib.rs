//! `herald bench`: a load generator for sizing a deployment of herald or any
//! ntfy-compatible server, and for measuring nats-server with the same code.
//!
//! Why a crate of its own: nothing here is server code (it imports nothing from
//! the server library), and the side-by-side figures of docs/BENCHMARKS.md need one
//! client that speaks both ntfy and NATS. Only the `herald` binary depends on it
//! (`herald bench`); the server library does not.
//!
//! # Usage
//!
//! ```text
//! # 1000 subscribers over all three transports, 100 msg/s for 10 s:
//! herald bench --url http://127.0.0.1:8080 --subscribers 1000 --transport ws,sse,json \
//!     --rate 100 --duration 10
//! # publish throughput: 64 topics with one subscriber each, 16 closed-loop publishers:
//! herald bench --subscribers 64 --topics 64 --publishers 16 --rate 0 --duration 10
//! # 10k idle-ish subscribers from 16 source addresses, server memory and CPU sampled:
//! taskset -c 0 herald serve --visitor-request-limit-exempt-hosts 127.0.0.0/8 & PID=$!
//! taskset -c 1 herald bench --subscribers 10000 --src-ips 16 --rate 10 \
//!     --server-pid $PID --json run.json
//! # nats-server: NATS over its WebSocket listener for subscribers, TCP for publishers:
//! herald bench --url nats://127.0.0.1:4222 --nats-ws-url ws://127.0.0.1:8081 \
//!     --subscribers 1000 --rate 10
//! ```
//!
//! # The fan-out floor
//!
//! `herald bench --floor 127.0.0.1:18097` serves a minimal ntfy-shaped endpoint whose
//! fan-out is a plain loop of one `send` per subscriber socket (`floor.rs`); the same
//! `herald bench` run against it (`--url http://127.0.0.1:18097`) gives the physical
//! floor that herald's fan-out rows are compared with (bench/compare.sh prints both).
//!
//! A run has three phases. **Connect**: open `--subscribers` streams over
//! `--topics` topics, transports round robin; a stream counts as established when
//! its first event (ntfy's `open`) arrives, which is when the server has registered
//! it. **Publish**: `--publishers` keep-alive connections `POST` for `--duration`
//! seconds, either on a fixed schedule (`--rate`, open loop: message `k` is due at
//! `k / rate` whether or not the server keeps up, so queueing shows up as latency)
//! or as fast as acknowledgements return (`--rate 0`, closed loop: measures
//! publish throughput). **Drain**: wait until every expected delivery arrived or
//! none arrived for 3 s. Then the summary goes to stderr and the JSON report to
//! stdout or `--json FILE`. With `--publishers 0` the publish phase is an idle
//! hold of `--duration` seconds.
//!
//! Against NATS (`nats.rs`) topics are subjects; a subscriber is established when
//! the `PONG` after its `SUB` arrives (the subscription is registered), and a
//! publish is `PUB` + `PING`, acknowledged by the `PONG`: one publish in flight
//! per publisher, as with an HTTP POST, so the two servers are measured alike.
//!
//! # How it measures
//!
//! Each body carries a stamp (see `stamp.rs`) with the send time on this process's
//! monotonic clock and a per-run nonce, so delivery latency is receipt minus send
//! without clock synchronisation, and messages of other runs are ignored. Each
//! subscriber checks for duplicates and for one publisher's messages arriving out
//! of order within its topic (herald promises per-topic order). Latencies go into
//! HdrHistograms (microseconds, 3 significant digits). With `--server-pid`, the
//! server's VmRSS and CPU time are read from `/proc` at each phase boundary (and
//! RSS every 250 ms for the peak); the generator's own CPU is always reported, so a
//! saturated generator is visible.
//!
//! With `--rx-timestamps` (`rxstamp.rs`) a delivery ends not when this process
//! reads the event but at the kernel's receive timestamp of its bytes
//! (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`, converted to the run clock by the offset
//! sampled at start). On loopback that stamp is taken inside the server's `send`,
//! so the latency is the server's (publish handling and fan-out up to that
//! subscriber's write) and the generator can run at low priority (`chrt -i 0`) on
//! a core the server also uses, reading its events after the server is done.
//!
//! # Design
//!
//! - One thread (a current-thread runtime plus a `LocalSet`): counters are plain
//!   fields behind one `RefCell`, and the generator can be pinned with `taskset`
//!   to a CPU the server does not use.
//! - Every socket is opened here (`client::connect`): `TcpSocket::bind` to a
//!   source address before `connect` is what lets `--src-ips` go past one
//!   address's ephemeral port range and per-IP limits on loopback.
//! - Publishing and the SSE/JSON streams use a small HTTP/1.1 client (`http.rs`)
//!   instead of hyper's: one request in flight per connection, a keep-alive POST
//!   and a streamed GET are all it needs, it works on the sockets above without
//!   adapters, and its framing code is easy to test in isolation. WebSocket
//!   streams use `tokio-tungstenite` over the same sockets (ntfy's `/ws`, and
//!   NATS over nats-server's WebSocket listener).
//! - Events are not JSON-parsed: the stamp is found by a byte search, which
//!   keeps the generator's CPU per delivery low.

mod client;
mod floor;
mod grpc;
mod http;
mod nats;
mod options;
mod progress;
mod report;
mod run;
mod rxstamp;
mod stamp;
mod stats;

use options::Options;
pub use options::add_args;

/// Runs `herald bench` with the parsed command-line arguments.
pub fn run(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    if let Some(addr) = matches.get_one::<String>("floor") {
        let addr = addr
            .parse()
            .map_err(|e| anyhow::anyhow!("--floor {addr:?}: {e} (want HOST:PORT)"))?;
        return floor::serve(addr);
    }
    run::run(Options::from_matches(matches)?)
}
