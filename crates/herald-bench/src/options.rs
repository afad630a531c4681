//! `herald bench` options: the clap definition and their validated form.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};

/// The protocol the server under test speaks, from `--url`'s scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// ntfy's HTTP API (`http://`): herald, ntfy, any compatible server.
    Ntfy,
    /// The NATS client protocol (`nats://`): nats-server.
    Nats,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Ntfy => "ntfy",
            Protocol::Nats => "nats",
        }
    }
}

/// How a subscriber receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// ntfy: `/<topic>/ws`; NATS: the protocol over nats-server's WebSocket listener.
    Ws,
    Sse,
    Json,
    /// NATS only: the protocol over plain TCP (the client port).
    Tcp,
    /// herald only: `herald.v1.Herald/Subscribe` on `--grpc-url`.
    Grpc,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Json => "json",
            Transport::Tcp => "tcp",
            Transport::Grpc => "grpc",
        }
    }

    fn parse_list(list: &str, protocol: Protocol) -> anyhow::Result<Vec<Transport>> {
        let allowed = match protocol {
            Protocol::Ntfy => "ws, sse, json or grpc",
            Protocol::Nats => "ws or tcp",
        };
        let transports = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match (s, protocol) {
                ("ws", _) => Ok(Transport::Ws),
                ("sse", Protocol::Ntfy) => Ok(Transport::Sse),
                ("json", Protocol::Ntfy) => Ok(Transport::Json),
                ("tcp", Protocol::Nats) => Ok(Transport::Tcp),
                ("grpc", Protocol::Ntfy) => Ok(Transport::Grpc),
                (other, _) => bail!(
                    "unknown transport {other:?} for a {} server ({allowed})",
                    protocol.name()
                ),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(
            !transports.is_empty(),
            "--transport needs at least one of {allowed}"
        );
        Ok(transports)
    }
}

/// The server under test, from `--url`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) protocol: Protocol,
    /// What goes into `Host:` (the URL's authority as written).
    pub(crate) authority: String,
    /// Path prefix for a server mounted below `/` (no trailing slash; may be empty).
    pub(crate) base_path: String,
    pub(crate) addr: SocketAddr,
}

impl Target {
    /// Splits `http://host[:port][/prefix]` or `nats://host[:port]` and resolves
    /// the host.
    fn parse(url: &str) -> anyhow::Result<Target> {
        let (protocol, rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
            (Protocol::Ntfy, rest, 80)
        } else if let Some(rest) = url.strip_prefix("nats://") {
            (Protocol::Nats, rest, 4222)
        } else if url.starts_with("https://") || url.starts_with("tls://") {
            bail!(
                "TLS is not supported: point --url at a plain listener (e.g. behind the TLS proxy)"
            );
        } else {
            bail!("--url must start with http:// (ntfy) or nats:// (NATS)");
        };
        Target::parse_rest(protocol, rest, default_port)
    }

    /// `--nats-ws-url`: `ws://host[:port][/path]`, nats-server's WebSocket listener.
    fn parse_ws(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .context("--nats-ws-url must start with ws:// (wss is not supported)")?;
        Target::parse_rest(Protocol::Nats, rest, 80)
    }

    fn parse_rest(protocol: Protocol, rest: &str, default_port: u16) -> anyhow::Result<Target> {
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        ensure!(!authority.is_empty(), "--url has no host");
        ensure!(
            !path.contains(['?', '#']),
            "--url must not have a query or fragment"
        );
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:{default_port}")
        } else {
            authority.to_string()
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("no address for {authority}"))?;
        Ok(Target {
            protocol,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
            addr,
        })
    }
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) target: Target,
    /// Every server of `--url` (a comma list: several nodes of one cluster);
    /// connections go to them round robin. The first is `target`.
    pub(crate) targets: Vec<Target>,
    /// NATS only: nats-server's WebSocket listener, for `ws` subscribers.
    pub(crate) nats_ws: Option<Target>,
    /// herald's gRPC listener (`--grpc-url`), for `grpc` subscribers and publishers.
    pub(crate) grpc: Option<Target>,
    /// Publish with gRPC (`--publish-transport grpc`) instead of HTTP.
    pub(crate) publish_grpc: bool,
    /// Messages per gRPC publish call: 1 = `Publish`, more = `PublishBatch`.
    pub(crate) batch: usize,
    pub(crate) subscribers: usize,
    pub(crate) transports: Vec<Transport>,
    pub(crate) publishers: usize,
    /// Messages per second over all publishers; `None` = closed loop.
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
    pub(crate) topics: usize,
    pub(crate) topic_prefix: String,
    pub(crate) size: usize,
    /// Source addresses to spread connections over; empty = let the kernel pick.
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) connect_concurrency: usize,
    pub(crate) server_pid: Option<u32>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) quiet: bool,
    /// Delivery latency up to the kernel's receive timestamp of the event's bytes
    /// (`--rx-timestamps`, `rxstamp.rs`) instead of up to this process's read.
    pub(crate) rx_timestamps: bool,
}

impl Options {
    /// The source address of connection number `i` (subscribers first, then publishers).
    pub(crate) fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }

    /// The server connection number `i` goes to (subscribers first, then publishers).
    pub(crate) fn target_for(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.target.protocol
    }

    pub(crate) fn from_matches(m: &ArgMatches) -> anyhow::Result<Options> {
        let url = m
            .get_one::<String>("url")
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let targets = url
            .split(',')
            .map(|u| Target::parse(u.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target = targets[0].clone();
        ensure!(
            targets.iter().all(|t| t.protocol == target.protocol),
            "--url: every server of the list must speak the same protocol"
        );
        let transports = Transport::parse_list(
            m.get_one::<String>("transport")
                .map_or("ws", String::as_str),
            target.protocol,
        )?;
        let nats_ws = m
            .get_one::<String>("nats-ws-url")
            .map(|u| Target::parse_ws(u))
            .transpose()?;
        if target.protocol == Protocol::Nats {
            ensure!(
                nats_ws.is_some() || !transports.contains(&Transport::Ws),
                "--transport ws against a NATS server needs --nats-ws-url (nats-server's websocket listener, e.g. ws://127.0.0.1:8080); or use --transport tcp"
            );
        } else {
            ensure!(
                nats_ws.is_none(),
                "--nats-ws-url only applies to a nats:// --url"
            );
        }
        let grpc = m
            .get_one::<String>("grpc-url")
            .map(|u| {
                let rest = u
                    .strip_prefix("http://")
                    .context("--grpc-url must start with http:// (herald's listen-grpc, no TLS)")?;
                Target::parse_rest(Protocol::Ntfy, rest, 80)
            })
            .transpose()?;
        let publish_grpc = match m
            .get_one::<String>("publish-transport")
            .map_or("http", String::as_str)
        {
            "http" => false,
            "grpc" => true,
            other => bail!("--publish-transport {other:?}: http or grpc"),
        };
        ensure!(
            grpc.is_some() || !(publish_grpc || transports.contains(&Transport::Grpc)),
            "--transport grpc and --publish-transport grpc need --grpc-url (herald's listen-grpc)"
        );
        let batch = m.get_one::<usize>("batch").copied().unwrap_or(1);
        ensure!(
            (1..=1000).contains(&batch) && (batch == 1 || publish_grpc),
            "--batch must be 1..=1000, and more than 1 only with --publish-transport grpc"
        );
        let count = |name: &str| m.get_one::<usize>(name).copied().unwrap_or(1);
        let rate = m.get_one::<f64>("rate").copied().unwrap_or(0.0);
        ensure!(rate.is_finite() && rate >= 0.0, "--rate must be >= 0");
        let duration = m.get_one::<f64>("duration").copied().unwrap_or(10.0);
        ensure!(
            duration.is_finite() && duration > 0.0 && duration <= 86_400.0,
            "--duration must be between 0 and 86400 seconds"
        );
        let src_ips = count("src-ips");
        let sources = if src_ips > 1
            || m.value_source("src-ips") == Some(clap::parser::ValueSource::CommandLine)
        {
            source_addresses(target.addr, src_ips)?
        } else {
            Vec::new()
        };
        let options = Options {
            target,
            targets,
            nats_ws,
            grpc,
            publish_grpc,
            batch,
            subscribers: m.get_one::<usize>("subscribers").copied().unwrap_or(0),
            transports,
            publishers: m.get_one::<usize>("publishers").copied().unwrap_or(1),
            rate: (rate > 0.0).then_some(rate),
            duration: Duration::from_secs_f64(duration),
            topics: count("topics"),
            topic_prefix: m
                .get_one::<String>("topic-prefix")
                .cloned()
                .unwrap_or_else(|| "herald-bench-".to_string()),
            size: m.get_one::<usize>("size").copied().unwrap_or(64),
            sources,
            connect_concurrency: count("connect-concurrency"),
            server_pid: m.get_one::<u32>("server-pid").copied(),
            json: m.get_one::<PathBuf>("json").cloned(),
            quiet: m.get_flag("quiet"),
            rx_timestamps: m.get_flag("rx-timestamps"),
            url,
        };
        ensure!(
            !options.rx_timestamps
                || (options.protocol() == Protocol::Ntfy
                    && options
                        .transports
                        .iter()
                        .all(|t| matches!(t, Transport::Ws | Transport::Sse | Transport::Json))),
            "--rx-timestamps needs ntfy ws, sse or json subscribers (not NATS or gRPC)"
        );
        ensure!(options.topics >= 1, "--topics must be at least 1");
        ensure!(
            options.connect_concurrency >= 1,
            "--connect-concurrency must be at least 1"
        );
        ensure!(
            options
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "--topic-prefix may only hold letters, digits, - and _"
        );
        if let Some(pid) = options.server_pid {
            ensure!(
                std::path::Path::new(&format!("/proc/{pid}/status")).exists(),
                "--server-pid {pid}: no such process (or no /proc)"
            );
        }
        Ok(options)
    }
}

/// `k` loopback addresses from 127.0.0.2 up. The kernel picks source ports per
/// (source address, destination) pair, so each address adds a whole ephemeral
/// port range (~28k ports) of connections to one server port.
fn source_addresses(target: SocketAddr, k: usize) -> anyhow::Result<Vec<IpAddr>> {
    ensure!(
        target.ip().is_loopback() && target.is_ipv4(),
        "--src-ips needs an IPv4 loopback target (127.0.0.0/8), not {}",
        target.ip()
    );
    ensure!(
        (1..=65_000).contains(&k),
        "--src-ips must be between 1 and 65000"
    );
    let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    Ok((0..k as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
        .collect())
}

const ABOUT: &str =
    "Load-test an ntfy-compatible server or nats-server: subscribers, publishers, delivery latency";

const LONG_ABOUT: &str = "\
Load-test an ntfy-compatible server (herald, ntfy, ...) or nats-server.

Opens --subscribers streams spread over --topics topics (transports round robin),
waits until every stream has sent its `open` event, publishes for --duration
seconds from --publishers keep-alive connections, waits for the deliveries to
stop, then prints delivery and publish latency percentiles and a histogram to
stderr and a JSON report to stdout (or --json FILE).

Every message carries a send timestamp and a run nonce, so latency is measured
from just before the POST is written to the moment the subscriber reads the event,
on this process's monotonic clock. Counted per subscriber: deliveries,
duplicates, and reorderings of one publisher's messages within a topic (a
publisher sends its next message only after the previous one was acknowledged,
so the server must keep that order).

--publishers 0 publishes nothing: the subscribers are held idle for --duration
seconds (with --server-pid, the report's RSS samples then measure idle streams).

NATS (--url nats://HOST:4222): the same runs against nats-server, topics being
subjects. Subscribers speak NATS over nats-server's WebSocket listener
(--transport ws with --nats-ws-url ws://HOST:PORT) or over plain TCP (--transport
tcp); a subscriber is established when the PONG after its SUB arrives.
Publishers send PUB + PING on TCP and count a publish when the PONG arrives (the
server has processed it): one request in flight per publisher, like an HTTP POST.

Sizing tips:
  - Pin the server and the generator to different CPUs so they do not compete:
      taskset -c 0 herald serve ... &
      taskset -c 1 herald bench --server-pid $! ...
    The generator is single-threaded; check `loadgen.cpu_pct` in the report: near
    100 means the figures are the generator's limit, not the server's.
  - A server limits streams per client IP (herald and ntfy:
    visitor-subscription-limit, 30 by default). For many subscribers on one host,
    raise it on the server and/or use --src-ips to connect from 127.0.0.2, .3, ...
    (loopback targets only). --src-ips also lifts the ~28k connections per source
    address that the ephemeral port range allows.
  - The open-file limit (ulimit -n) bounds connections on both sides.

Examples:
  herald bench --subscribers 1000 --transport ws,sse,json --rate 100 --duration 10
  herald bench --subscribers 64 --topics 64 --publishers 16 --rate 0 --duration 10
  herald bench --url nats://127.0.0.1:4222 --nats-ws-url ws://127.0.0.1:8080 \\
      --subscribers 1000 --rate 10 --duration 10
  # 10k subscribers from 16 addresses; the server allows 625+ streams per IP:
  #   herald serve --listen-http 127.0.0.1:18095 --visitor-subscription-limit 1000
  herald bench --url http://127.0.0.1:18095 --subscribers 10000 --src-ips 16 \\
      --rate 10 --duration 10 --server-pid 1234 --json run.json --quiet";

/// Adds the `bench` options to `cmd`.
pub fn add_args(cmd: Command) -> Command {
    cmd.about(ABOUT)
        .long_about(LONG_ABOUT)
        .arg(
            Arg::new("url")
                .long("url")
                .value_name("URL")
                .default_value("http://127.0.0.1:8080")
                .help("Base URL of the server: http://HOST[:PORT][/prefix] for an ntfy-compatible server, nats://HOST[:PORT] for nats-server; a comma list for several nodes of one cluster: subscribers and publishers are spread over them round robin"),
        )
        .arg(
            Arg::new("floor")
                .long("floor")
                .value_name("HOST:PORT")
                .help("Serve the fan-out floor on HOST:PORT instead of running a benchmark: a minimal ntfy-shaped server (GET /<topic>/ws|json|sse, POST /<topic>) whose fan-out is one plain send per subscriber socket; measure it with another herald bench --url http://HOST:PORT"),
        )
        .arg(
            Arg::new("nats-ws-url")
                .long("nats-ws-url")
                .value_name("URL")
                .help("NATS only: nats-server's WebSocket listener (ws://HOST:PORT, no_tls) for --transport ws subscribers"),
        )
        .arg(
            Arg::new("grpc-url")
                .long("grpc-url")
                .value_name("URL")
                .help("herald only: its gRPC listener (listen-grpc), http://HOST:PORT, for --transport grpc and --publish-transport grpc"),
        )
        .arg(
            Arg::new("publish-transport")
                .long("publish-transport")
                .value_name("T")
                .default_value("http")
                .help("How publishers publish to an ntfy-compatible server: http (POST) or grpc (herald.v1 Publish / PublishBatch on --grpc-url)"),
        )
        .arg(
            Arg::new("batch")
                .long("batch")
                .value_name("N")
                .value_parser(value_parser!(usize))
                .default_value("1")
                .help("With --publish-transport grpc: messages per call; more than 1 uses PublishBatch (one topic per batch)"),
        )
        .arg(
            Arg::new("subscribers")
                .long("subscribers")
                .short('n')
                .value_name("N")
                .value_parser(value_parser!(usize))
                .default_value("100")
                .help("Subscriber streams to open (0: publish only)"),
        )
        .arg(
            Arg::new("transport")
                .long("transport")
                .value_name("LIST")
                .default_value("ws")
                .help("Subscriber transports, comma list used round robin: ws, sse, json, grpc (ntfy-compatible; grpc: herald's gRPC API on --grpc-url); ws, tcp (NATS)"),
        )
        .arg(
            Arg::new("publishers")
                .long("publishers")
                .short('p')
                .value_name("M")
                .value_parser(value_parser!(usize))
                .default_value("4")
                .help("Publisher connections (HTTP/1.1 keep-alive or NATS over TCP, one publish in flight each); 0: none, subscribers stay idle for --duration"),
        )
        .arg(
            Arg::new("rate")
                .long("rate")
                .short('r')
                .value_name("MSG/S")
                .value_parser(value_parser!(f64))
                .default_value("10")
                .help("Messages per second over all publishers, open loop (on a fixed schedule); 0 = closed loop, as fast as acks come back"),
        )
        .arg(
            Arg::new("duration")
                .long("duration")
                .short('d')
                .value_name("SECS")
                .value_parser(value_parser!(f64))
                .default_value("10")
                .help("Seconds to publish for"),
        )
        .arg(
            Arg::new("topics")
                .long("topics")
                .short('t')
                .value_name("T")
                .value_parser(value_parser!(usize))
                .default_value("1")
                .help("Topics; subscribers are spread round robin, each publisher cycles over all"),
        )
        .arg(
            Arg::new("topic-prefix")
                .long("topic-prefix")
                .value_name("PREFIX")
                .default_value("herald-bench-")
                .help("Topic names are PREFIX0, PREFIX1, ..."),
        )
        .arg(
            Arg::new("size")
                .long("size")
                .short('s')
                .value_name("BYTES")
                .value_parser(value_parser!(usize))
                .default_value("64")
                .help("Message body size (at least the ~40-byte stamp)"),
        )
        .arg(
            Arg::new("src-ips")
                .long("src-ips")
                .value_name("K")
                .value_parser(value_parser!(usize))
                .default_value("1")
                .help("Spread connections over K source addresses 127.0.0.2.. (loopback targets only; 1 without the flag = kernel's choice)"),
        )
        .arg(
            Arg::new("connect-concurrency")
                .long("connect-concurrency")
                .value_name("C")
                .value_parser(value_parser!(usize))
                .default_value("200")
                .help("Subscribers being opened at the same time"),
        )
        .arg(
            Arg::new("server-pid")
                .long("server-pid")
                .value_name("PID")
                .value_parser(value_parser!(u32))
                .help("Server process to sample (VmRSS, CPU) from /proc"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help("Write the JSON report to FILE instead of stdout"),
        )
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .short('q')
                .action(ArgAction::SetTrue)
                .help("No progress bar and no human-readable summary (JSON only)"),
        )
        .arg(
            Arg::new("rx-timestamps")
                .long("rx-timestamps")
                .action(ArgAction::SetTrue)
                .help("Delivery latency up to the kernel's receive timestamp of each event's bytes (SO_TIMESTAMPNS; on loopback taken in the server's send) instead of up to when this process reads the event: the generator's own read cost and scheduling drop out, so it can run at low priority (chrt -i 0) on a core the server also uses. ntfy ws/sse/json subscribers; Linux"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        let m = add_args(Command::new("bench"))
            .try_get_matches_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Options::from_matches(&m)
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).expect("defaults are valid");
        assert_eq!(o.target.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(o.target.base_path, "");
        assert_eq!(o.transports, [Transport::Ws]);
        assert_eq!(o.rate, Some(10.0));
        assert!(o.sources.is_empty());
    }

    #[test]
    fn url_forms() {
        let o = parse(&["--url", "http://127.0.0.1:9000/ntfy/"]).expect("valid");
        assert_eq!(
            (o.target.authority.as_str(), o.target.base_path.as_str()),
            ("127.0.0.1:9000", "/ntfy")
        );
        let o = parse(&["--url", "http://[::1]"]).expect("valid");
        assert_eq!(o.target.addr.port(), 80);
        assert!(parse(&["--url", "https://127.0.0.1"]).is_err());
        assert!(parse(&["--url", "127.0.0.1:80"]).is_err());
        let o = parse(&["--url", "http://127.0.0.1:9000,http://127.0.0.1:9001"]).expect("valid");
        assert_eq!(o.targets.len(), 2);
        assert_eq!(o.target_for(3).authority, "127.0.0.1:9001");
    }

    #[test]
    fn transports_and_sources() {
        let o = parse(&[
            "--transport",
            "ws,sse,json",
            "--src-ips",
            "3",
            "--rate",
            "0",
        ])
        .expect("valid");
        assert_eq!(
            o.transports,
            [Transport::Ws, Transport::Sse, Transport::Json]
        );
        assert_eq!(o.rate, None);
        let ips: Vec<String> = o.sources.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        assert_eq!(
            o.source(4).map(|ip| ip.to_string()).as_deref(),
            Some("127.0.0.3")
        );
        assert!(parse(&["--transport", "mqtt"]).is_err());
        assert!(parse(&["--transport", "tcp"]).is_err(), "tcp is NATS only");
        assert!(parse(&["--url", "http://[::1]:80", "--src-ips", "2"]).is_err());
    }

    #[test]
    fn rx_timestamps_only_for_ntfy_streams() {
        assert!(!parse(&[]).expect("defaults").rx_timestamps);
        let o = parse(&["--rx-timestamps", "--transport", "ws,sse,json"]).expect("ntfy streams");
        assert!(o.rx_timestamps);
        let grpc = [
            "--rx-timestamps",
            "--transport",
            "ws,grpc",
            "--grpc-url",
            "http://127.0.0.1:9000",
        ];
        assert!(parse(&grpc).is_err());
        let nats = [
            "--rx-timestamps",
            "--url",
            "nats://127.0.0.1:4222",
            "--transport",
            "tcp",
        ];
        assert!(parse(&nats).is_err());
    }
}

#[cfg(test)]
mod nats_tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        let m = add_args(Command::new("bench"))
            .try_get_matches_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Options::from_matches(&m)
    }

    #[test]
    fn nats_targets_and_transports() {
        let o = parse(&["--url", "nats://127.0.0.1", "--transport", "tcp"]).expect("valid");
        assert_eq!(o.protocol(), Protocol::Nats);
        assert_eq!(o.target.addr.port(), 4222, "NATS's default port");
        let o = parse(&[
            "--url",
            "nats://127.0.0.1:14222",
            "--nats-ws-url",
            "ws://127.0.0.1:18080",
            "--transport",
            "ws,tcp",
        ])
        .expect("valid");
        assert_eq!(o.transports, [Transport::Ws, Transport::Tcp]);
        assert_eq!(o.nats_ws.map(|t| t.addr.port()), Some(18080));
        // ws subscribers to NATS need the WebSocket listener's address.
        let e = parse(&["--url", "nats://127.0.0.1:4222"]).expect_err("no ws url");
        assert!(e.to_string().contains("--nats-ws-url"), "{e}");
        assert!(parse(&["--url", "nats://127.0.0.1:4222", "--transport", "sse"]).is_err());
        assert!(
            parse(&["--nats-ws-url", "ws://127.0.0.1:1"]).is_err(),
            "ntfy target"
        );
        assert!(
            parse(&["--url", "nats://127.0.0.1:4222,http://127.0.0.1:80"]).is_err(),
            "one protocol per run"
        );
        assert!(parse(&["--url", "tls://127.0.0.1:4222"]).is_err());
    }

    #[test]
    fn zero_publishers_is_an_idle_run() {
        let o = parse(&["--publishers", "0"]).expect("valid");
        assert_eq!(o.publishers, 0);
    }
}
