//! `herald bench` options: the clap definition and their validated form.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};

/// How a subscriber receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Json,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Json => "json",
        }
    }

    fn parse_list(list: &str) -> anyhow::Result<Vec<Transport>> {
        let transports = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "ws" => Ok(Transport::Ws),
                "sse" => Ok(Transport::Sse),
                "json" => Ok(Transport::Json),
                other => bail!("unknown transport {other:?} (ws, sse or json)"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(
            !transports.is_empty(),
            "--transport needs at least one of ws, sse, json"
        );
        Ok(transports)
    }
}

/// The server under test, from `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    /// What goes into `Host:` (the URL's authority as written).
    pub authority: String,
    /// Path prefix for a server mounted below `/` (no trailing slash; may be empty).
    pub base_path: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Splits `http://host[:port][/prefix]` and resolves the host.
    fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            bail!(
                "https is not supported: point --url at a plain-HTTP listener (e.g. behind the TLS proxy)"
            );
        } else {
            bail!("--url must start with http://");
        };
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
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("no address for {authority}"))?;
        Ok(Target {
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
            addr,
        })
    }
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub target: Target,
    /// Every server of `--url` (a comma list: several nodes of one cluster);
    /// connections go to them round robin. The first is `target`.
    pub targets: Vec<Target>,
    pub subscribers: usize,
    pub transports: Vec<Transport>,
    pub publishers: usize,
    /// Messages per second over all publishers; `None` = closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub topics: usize,
    pub topic_prefix: String,
    pub size: usize,
    /// Source addresses to spread connections over; empty = let the kernel pick.
    pub sources: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub server_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub quiet: bool,
}

impl Options {
    /// The source address of connection number `i` (subscribers first, then publishers).
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }

    /// The server connection number `i` goes to (subscribers first, then publishers).
    pub fn target_for(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    pub fn from_matches(m: &ArgMatches) -> anyhow::Result<Options> {
        let url = m
            .get_one::<String>("url")
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let targets = url
            .split(',')
            .map(|u| Target::parse(u.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target = targets[0].clone();
        let transports = Transport::parse_list(
            m.get_one::<String>("transport")
                .map_or("ws", String::as_str),
        )?;
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
            subscribers: m.get_one::<usize>("subscribers").copied().unwrap_or(0),
            transports,
            publishers: count("publishers"),
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
            url,
        };
        ensure!(options.publishers >= 1, "--publishers must be at least 1");
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
    "Load-test an ntfy-compatible server: subscribers, publishers, delivery latency";

const LONG_ABOUT: &str = "\
Load-test an ntfy-compatible server (herald, ntfy, ...).

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
                .help("Base URL of the server (plain http://; a path prefix is kept); a comma list for several nodes of one cluster: subscribers and publishers are spread over them round robin"),
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
                .help("Subscriber transports, comma list used round robin: ws, sse, json"),
        )
        .arg(
            Arg::new("publishers")
                .long("publishers")
                .short('p')
                .value_name("M")
                .value_parser(value_parser!(usize))
                .default_value("4")
                .help("Publisher connections (HTTP/1.1 keep-alive, one request in flight each)"),
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
        assert!(parse(&["--url", "http://[::1]:80", "--src-ips", "2"]).is_err());
    }
}
