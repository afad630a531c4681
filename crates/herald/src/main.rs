//! The `herald` command: parses arguments and starts the chosen role.

use anyhow::Context;
use clap::{Arg, Command};
use tokio_util::sync::CancellationToken;

use herald::config::{self, Config, LogFormat};

fn cli() -> Command {
    Command::new("herald")
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
        .subcommand(herald::loadgen::add_args(Command::new("bench")))
}

fn main() -> std::process::ExitCode {
    let matches = cli().get_matches();
    let result = match matches.subcommand() {
        Some(("serve", m)) => config::load(m)
            .context("invalid configuration")
            .and_then(serve),
        Some(("healthcheck", m)) => healthcheck(m.get_one::<String>("url").map(String::as_str)),
        Some(("bench", m)) => herald::loadgen::run(m),
        _ => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("herald={0},{0}", config.log_level))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
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
