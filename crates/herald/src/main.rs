//! The `herald` command: parses arguments and starts the chosen role.

use anyhow::Context;
use clap::{Arg, Command};
use tokio_util::sync::CancellationToken;

use herald::config::{self, Config, LogFormat};

/// mimalloc instead of glibc's malloc for the Rust side of the process (SQLite's C code
/// keeps glibc's). A durable publish holds ~9 allocations until its commit, and ~50
/// publishes share a commit: glibc's per-thread cache (7 blocks a size) runs dry and
/// most of them took its slow path. mimalloc's free lists have no such bound: 4.7 %
/// fewer instructions a durable publish and 8 % less memory per idle connection, for
/// ~1.3 MiB more at idle (docs/BENCHMARKS.md, "mimalloc (round 14)"). Its `no_thp`
/// feature keeps it from asking for transparent huge pages, which cost ~10 MiB of idle
/// memory here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cli() -> Command {
    let cli = Command::new("herald")
        .about("A lean, ntfy-compatible notification server")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(config::add_args(
            Command::new("serve").about("Run the server (embedded store; nothing else needed)"),
        ))
        .subcommand(
            Command::new("healthcheck")
                .about("Probe a running server's /healthz; exit 0 if healthy, 1 if not (for FROM-scratch images)")
                .arg(
                    Arg::new("url")
                        .long("url")
                        .default_value("http://127.0.0.1:8080/healthz")
                        .help("Health URL to probe (plain HTTP)"),
                ),
        )
        .subcommand(herald::webhook::cli::add_args(Command::new("webhook")))
        .subcommand(
            Command::new("webpush")
                .about("Web Push helpers")
                .subcommand_required(true)
                .subcommand(Command::new("keys").about(
                    "Generate a VAPID key pair for web-push-public-key / web-push-private-key",
                )),
        )
        .subcommand(herald_client::add_publish_args(Command::new("publish")))
        .subcommand(herald_client::add_subscribe_args(Command::new("subscribe")));
    // The load generator: left out of the shipped static binary (feature `bench`).
    #[cfg(feature = "bench")]
    let cli = cli.subcommand(herald_bench::add_args(Command::new("bench")));
    herald::auth::cli::add_commands(cli)
}

fn main() -> std::process::ExitCode {
    // reqwest (webhooks, the otel exporter) finds its TLS provider here: ring.
    herald::webhook::client::install_tls_provider();
    let matches = cli().get_matches();
    let result = match matches.subcommand() {
        Some(("serve", m)) => config::load(m)
            .context("invalid configuration")
            .and_then(serve),
        Some(("healthcheck", m)) => healthcheck(m.get_one::<String>("url").map(String::as_str)),
        #[cfg(feature = "bench")]
        Some(("bench", m)) => herald_bench::run(m),
        Some(("webhook", m)) => herald::webhook::cli::run(m),
        Some(("webpush", _)) => webpush_keys(),
        Some(("publish", m)) => client_tls().and_then(|tls| herald_client::run_publish(m, tls)),
        Some(("subscribe", m)) => client_tls().and_then(|tls| herald_client::run_subscribe(m, tls)),
        Some((name @ ("user" | "access" | "token"), m)) => herald::auth::cli::run(name, m),
        _ => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: it panics (exit 101) when stderr is gone.
            herald::logging::write_line(&format!("herald: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `herald webpush keys`: a new VAPID key pair, printed as config lines (ntfy's
/// `ntfy webpush keys` output shape).
fn webpush_keys() -> anyhow::Result<()> {
    let keys = herald::webpush::keys::VapidKeys::generate()?;
    let text = format!(
        "Web Push keys generated. Add the following lines to your config file:\n\n\
         web-push-public-key: {}\n\
         web-push-private-key: {}\n\
         web-push-file: /var/lib/herald/webpush.db # or leave it out: <data-dir>/webpush.db\n\
         web-push-email-address: <email address>\n\n\
         (or HERALD_WEB_PUSH_PUBLIC_KEY / HERALD_WEB_PUSH_PRIVATE_KEY in the environment)\n",
        keys.public_base64(),
        keys.private_base64()
    );
    use std::io::Write as _;
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("cannot write the keys")
}

/// TLS for `herald publish` / `herald subscribe`: the webhook client's (rustls on
/// ring, compiled-in roots), so a `FROM scratch` image reaches `https://` servers.
fn client_tls() -> anyhow::Result<rustls::ClientConfig> {
    herald::webhook::client::tls_config().map_err(|e| anyhow::anyhow!("TLS set-up: {e}"))
}

/// Installs the log (stderr, through `herald::logging`, so a failing stderr is
/// counted and never panics) and, with `otlp-endpoint` (`--features otel` builds),
/// the OpenTelemetry trace export; returns the exporter to flush on exit.
fn init_logging(config: &Config) -> anyhow::Result<herald::otel::Exporter> {
    // The per-request access log has its own batched writer (herald::logging::access).
    herald::logging::access::install(match config.log_format {
        LogFormat::Json => herald::logging::access::Format::Json,
        LogFormat::Text => herald::logging::access::Format::Text,
    })
    .context("cannot start the access log's writer")?;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // `RUST_LOG` (target=level directives, e.g. `info,herald::access=warn`) overrides
    // `log-level`. A target filter, not `EnvFilter`: its span and field directives
    // would bring a regex engine into the binary (docs/BENCHMARKS.md, "Binary size").
    let fallback = || {
        format!("herald={0},{0}", config.log_level)
            .parse::<tracing_subscriber::filter::Targets>()
            .unwrap_or_default()
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => directives.parse().unwrap_or_else(|e| {
            herald::logging::write_line(&format!(
                "herald: RUST_LOG ignored ({e}); expected target=level directives"
            ));
            fallback()
        }),
        Err(_) => fallback(),
    };
    #[cfg(feature = "otel")]
    if let Some(endpoint) = &config.otlp_endpoint {
        use tracing_subscriber::filter::{FilterExt as _, filter_fn};
        // `filter` (log-level, RUST_LOG) applies to the log only, and the log never
        // sees the trace spans; the trace layer has its own filter (herald::otel).
        let filter = filter.and(filter_fn(|meta| meta.target() != herald::otel::TARGET));
        let (otel, exporter) = herald::otel::layer(endpoint, &config.otlp_service_name)?;
        let log = tracing_subscriber::fmt::layer().with_writer(herald::logging::StderrLog);
        let registry = tracing_subscriber::registry().with(otel);
        match config.log_format {
            LogFormat::Json => registry.with(log.json().with_filter(filter)).init(),
            LogFormat::Text => registry.with(log.with_filter(filter)).init(),
        }
        herald::otel::enable();
        tracing::info!(endpoint = %endpoint, service = %config.otlp_service_name, "exporting OpenTelemetry traces");
        return Ok(exporter);
    }
    let log = tracing_subscriber::fmt::layer().with_writer(herald::logging::StderrLog);
    let registry = tracing_subscriber::registry();
    match config.log_format {
        LogFormat::Json => registry.with(log.json().with_filter(filter)).init(),
        LogFormat::Text => registry.with(log.with_filter(filter)).init(),
    }
    Ok(herald::otel::Exporter::default())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let exporter = init_logging(&config)?;
    for name in
        config::unknown_env_vars(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    {
        tracing::warn!(variable = %name, "ignoring unknown environment variable (misspelled setting?)");
    }
    let result = run_server(config);
    // Outside the runtime: the exporter's final flush blocks (bounded).
    exporter.shutdown();
    result
}

fn run_server(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = herald::server::bind(&config).await?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            herald::server::shutdown_signal().await;
            trigger.cancel();
        });
        herald::server::run(config, listener, shutdown).await
    })
}

/// A dependency-free HTTP/1.0 GET, so a `FROM scratch` image can probe itself.
fn healthcheck(url: Option<&str>) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let url = url.unwrap_or("http://127.0.0.1:8080/healthz");
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let timeout = std::time::Duration::from_secs(5);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {host}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status_ok = response
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    anyhow::ensure!(
        status_ok,
        "unhealthy: {}",
        response.lines().next().unwrap_or("")
    );
    Ok(())
}
