//! `herald publish` / `herald pub`: ntfy's `ntfy publish`, flag for flag.
//!
//! `herald pub [OPTIONS] TOPIC [MESSAGE...]`: the topic is a name (on `default-host`),
//! `host/topic` or a full URL; the message is the remaining arguments (or
//! `--message`); `--file` uploads a file as an attachment (`-` reads stdin);
//! `--wait-pid` / `--wait-cmd` publish once a process or a command ends, with ntfy's
//! text when no message is given. The server's JSON answer is printed unless
//! `--quiet`; a refused publish exits non-zero with the server's error.
//!
//! Beyond ntfy: every publish carries an `Idempotency-Key` (random, or
//! `--idempotency-key`), and a transient failure (no answer, `429`, `5xx`) is retried
//! under the same key (`--retries`), so a retry after a lost answer never publishes
//! twice on herald (ntfy ignores the header).

use std::time::{Duration, Instant};

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::args::{env_note, flag, string};
use crate::http::{Auth, ServerError, is_transient, topic_url};

/// Longest wait between two attempts (a `Retry-After` above it is cut to it).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// How long one publish attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// An option that takes a value and becomes a header as it is: `(flag, aliases,
/// short flag, header, help)`.
type HeaderOption = (
    &'static str,
    &'static [&'static str],
    Option<char>,
    &'static str,
    &'static str,
);

/// Every [`HeaderOption`], with ntfy's flag names.
const HEADER_OPTIONS: &[HeaderOption] = &[
    ("title", &[], Some('t'), "X-Title", "Message title"),
    (
        "priority",
        &["prio"],
        Some('p'),
        "X-Priority",
        "Priority: 1=min, 2=low, 3=default, 4=high, 5=max (or min, low, default, high, urgent/max)",
    ),
    (
        "tags",
        &["tag"],
        Some('T'),
        "X-Tags",
        "Comma-separated tags and emoji short codes",
    ),
    (
        "delay",
        &["at", "in"],
        Some('D'),
        "X-Delay",
        "Deliver later: `30m`, `2h`, a Unix time, or `tomorrow, 10am`",
    ),
    (
        "click",
        &[],
        Some('U'),
        "X-Click",
        "URL to open when the notification is tapped",
    ),
    (
        "icon",
        &[],
        Some('i'),
        "X-Icon",
        "URL of the notification's icon",
    ),
    (
        "actions",
        &[],
        Some('A'),
        "X-Actions",
        "Action buttons: JSON array or ntfy's simple format",
    ),
    (
        "attach",
        &[],
        Some('a'),
        "X-Attach",
        "URL to send as an external attachment",
    ),
    (
        "filename",
        &["name"],
        Some('n'),
        "X-Filename",
        "File name of the attachment",
    ),
    (
        "email",
        &["mail"],
        Some('e'),
        "X-Email",
        "Also send to this e-mail address",
    ),
    (
        "sequence-id",
        &["sid"],
        None,
        "X-Sequence-ID",
        "Update (replace) the notification with this sequence ID",
    ),
    (
        "cache",
        &[],
        None,
        "X-Cache",
        "`no`: do not keep the message in the server's history",
    ),
    (
        "firebase",
        &[],
        None,
        "X-Firebase",
        "`no`: do not forward to Firebase",
    ),
];

/// The `publish` subcommand's arguments (added to `cmd`).
pub fn add_args(cmd: Command) -> Command {
    let mut cmd = cmd
        .about("Send a message to a topic (ntfy's `ntfy publish`)")
        .visible_alias("pub")
        .alias("send")
        .alias("trigger")
        .override_usage("herald publish [OPTIONS] TOPIC [MESSAGE...]\n       herald publish [OPTIONS] --wait-cmd TOPIC COMMAND...")
        .after_help("TOPIC is a name on `default-host` (client.yml, default https://ntfy.sh), `host/topic` or a full URL.\nExamples:\n  herald pub localhost:8080/backups \"Backup done\"\n  herald pub -p high -T warning,skull localhost:8080/alerts \"Disk full\"\n  herald pub --wait-cmd localhost:8080/jobs rsync -av ./ /backup")
        .trailing_var_arg(true)
        .arg(Arg::new("config").long("config").short('c').value_name("FILE").help(format!("Client config file (client.yml){}", env_note("config"))))
        .arg(Arg::new("message").long("message").short('m').value_name("TEXT").help(format!("Message text (instead of MESSAGE...){}", env_note("message"))));
    for (name, aliases, short, header, help) in HEADER_OPTIONS {
        let mut arg = Arg::new(*name)
            .long(*name)
            .value_name("VALUE")
            .help(format!("{help} ({header}){}", env_note(name)));
        for alias in *aliases {
            arg = arg.visible_alias(*alias);
        }
        if let Some(short) = short {
            arg = arg.short(*short);
        }
        cmd = cmd.arg(arg);
    }
    cmd.arg(
        Arg::new("markdown")
            .long("markdown")
            .visible_alias("md")
            .action(ArgAction::SetTrue)
            .help(format!("The message is Markdown{}", env_note("markdown"))),
    )
    .arg(
        Arg::new("file")
            .long("file")
            .short('f')
            .value_name("PATH")
            .help(format!(
                "Upload this file as an attachment (`-`: stdin){}",
                env_note("file")
            )),
    )
    .arg(
        Arg::new("user")
            .long("user")
            .short('u')
            .value_name("USER[:PASS]")
            .help(format!(
                "Log in as this user (asks for the password if not given){}",
                env_note("user")
            )),
    )
    .arg(
        Arg::new("token")
            .long("token")
            .short('k')
            .value_name("TOKEN")
            .help(format!("Access token{}", env_note("token"))),
    )
    .arg(
        Arg::new("wait-pid")
            .long("wait-pid")
            .visible_alias("pid")
            .value_name("PID")
            .value_parser(clap::value_parser!(u32))
            .help(format!(
                "Publish once the process PID has exited{}",
                env_note("wait-pid")
            )),
    )
    .arg(
        Arg::new("wait-cmd")
            .long("wait-cmd")
            .visible_aliases(["cmd", "done"])
            .action(ArgAction::SetTrue)
            .help(format!(
                "Run COMMAND... and publish when it has finished{}",
                env_note("wait-cmd")
            )),
    )
    .arg(
        Arg::new("no-cache")
            .long("no-cache")
            .short('C')
            .action(ArgAction::SetTrue)
            .help(format!(
                "Do not keep the message in the server's history{}",
                env_note("no-cache")
            )),
    )
    .arg(
        Arg::new("no-firebase")
            .long("no-firebase")
            .short('F')
            .action(ArgAction::SetTrue)
            .help(format!(
                "Do not forward the message to Firebase{}",
                env_note("no-firebase")
            )),
    )
    .arg(
        Arg::new("quiet")
            .long("quiet")
            .short('q')
            .action(ArgAction::SetTrue)
            .help(format!(
                "Do not print the published message{}",
                env_note("quiet")
            )),
    )
    .arg(
        Arg::new("idempotency-key")
            .long("idempotency-key")
            .value_name("KEY")
            .help(format!(
                "Idempotency-Key of this publish (default: a random one); retries reuse it{}",
                env_note("idempotency-key")
            )),
    )
    .arg(
        Arg::new("retries")
            .long("retries")
            .value_name("N")
            .value_parser(clap::value_parser!(u32))
            .help(format!(
                "Retries after a transient failure (no answer, 429, 5xx) [default: 3]{}",
                env_note("retries")
            )),
    )
    .arg(
        Arg::new("args")
            .value_name("TOPIC [MESSAGE...]")
            .num_args(0..)
            .allow_hyphen_values(true)
            .trailing_var_arg(true),
    )
}

/// Runs `herald publish` with `tls` for `https://` servers.
pub fn run(m: &ArgMatches, tls: rustls::ClientConfig) -> anyhow::Result<()> {
    crate::block_on(publish(m, tls))
}

async fn publish(m: &ArgMatches, tls: rustls::ClientConfig) -> anyhow::Result<()> {
    let config = crate::config::load(string(m, "config").as_deref())?;
    let auth = Auth::choose(string(m, "user"), string(m, "token"), &config)?;
    let mut args: Vec<String> = m
        .get_many::<String>("args")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    // ntfy: `NTFY_TOPIC` names the topic, and then every argument is message (or command).
    let topic = match std::env::var("NTFY_TOPIC").ok().filter(|t| !t.is_empty()) {
        Some(topic) => topic,
        None if args.is_empty() => {
            anyhow::bail!("must specify topic, type 'herald publish --help' for help")
        }
        None => args.remove(0),
    };
    let wait_cmd = flag(m, "wait-cmd");
    if wait_cmd && args.is_empty() {
        anyhow::bail!(
            "must specify command when --wait-cmd is passed, type 'herald publish --help' for help"
        );
    }
    let mut message = match string(m, "message") {
        Some(text) => text,
        None if wait_cmd => String::new(),
        None => args.join(" "),
    };
    let retries = match m.get_one::<u32>("retries") {
        Some(n) => *n,
        None => string(m, "retries")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    };
    let key = match string(m, "idempotency-key") {
        Some(key) => key,
        None => random_key()?,
    };

    let mut headers = Vec::new();
    for (name, _, _, header, _) in HEADER_OPTIONS {
        if let Some(value) = string(m, name) {
            // ntfy joins multi-line simple action definitions into one line.
            let value = if *name == "actions" {
                value.replace('\n', " ")
            } else {
                value
            };
            headers.push((*header, value));
        }
    }
    if flag(m, "markdown") {
        headers.push(("X-Markdown", "yes".into()));
    }
    if flag(m, "no-cache") {
        headers.push(("X-Cache", "no".into()));
    }
    if flag(m, "no-firebase") {
        headers.push(("X-Firebase", "no".into()));
    }
    headers.push(("Idempotency-Key", key));

    if let Some(pid) = m
        .get_one::<u32>("wait-pid")
        .copied()
        .or_else(|| string(m, "wait-pid").and_then(|v| v.parse().ok()))
    {
        let text = wait_for_pid(pid).await?;
        if message.is_empty() {
            message = text;
        }
    } else if wait_cmd {
        let text = run_command(args).await?;
        if message.is_empty() {
            message = text;
        }
    }

    let body = match string(m, "file") {
        None => message.into_bytes(),
        Some(file) => {
            if !message.is_empty() {
                headers.push(("X-Message", message));
            }
            let has_name = headers.iter().any(|(h, _)| *h == "X-Filename");
            let (bytes, name) = read_file(&file)?;
            if !has_name {
                headers.push(("X-Filename", name));
            }
            bytes
        }
    };
    // Header values must be valid header bytes; anything else (a newline in a title)
    // goes RFC 2047-encoded, which ntfy and herald decode.
    let headers: Vec<(&str, String)> = headers
        .into_iter()
        .map(|(h, v)| (h, header_value(&v)))
        .collect();

    let client = crate::http::client(tls)?;
    let url = topic_url(&topic, &config.default_host);
    let answer = send_with_retries(&client, &url, &auth, &headers, body, retries).await?;
    if !flag(m, "quiet") {
        println!("{}", answer.trim());
    }
    Ok(())
}

/// Sends the publish, retrying transient failures (same body, same key) with
/// backoff (1, 2, 4 ... s, or the server's `Retry-After`).
async fn send_with_retries(
    client: &reqwest::Client,
    url: &str,
    auth: &Auth,
    headers: &[(&str, String)],
    body: Vec<u8>,
    retries: u32,
) -> anyhow::Result<String> {
    let mut attempt = 0;
    loop {
        let mut request = client.post(url).timeout(ATTEMPT_TIMEOUT).body(body.clone());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let backoff = Duration::from_secs(1 << attempt.min(5));
        let (error, wait): (anyhow::Error, Duration) = match auth.apply(request).send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp
                    .text()
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the answer: {e}"));
            }
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let e = ServerError::read(resp).await;
                if !e.is_transient() {
                    return Err(e.into());
                }
                (e.into(), retry_after.unwrap_or(backoff).min(MAX_RETRY_WAIT))
            }
            Err(e) if is_transient(&e) => (anyhow::anyhow!("{url}: {e}"), backoff),
            Err(e) => return Err(anyhow::anyhow!("{url}: {e}")),
        };
        if attempt >= retries {
            return Err(error);
        }
        attempt += 1;
        eprintln_safe(&format!(
            "herald: {error:#}; retrying in {}s ({attempt}/{retries})",
            wait.as_secs()
        ));
        tokio::time::sleep(wait).await;
    }
}

/// A line on stderr; a closed stderr is ignored (never a panic).
pub(crate) fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// 128 random bits, hex: unique per publish.
fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the idempotency key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `value` if it is valid header text, else as an RFC 2047 `=?UTF-8?B?...?=` word.
fn header_value(value: &str) -> String {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b' '..0x7f).contains(&b))
    {
        return value.to_string();
    }
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    format!("=?UTF-8?B?{encoded}?=")
}

/// The file's bytes and the name to send it under (`stdin` for `-`).
fn read_file(path: &str) -> anyhow::Result<(Vec<u8>, String)> {
    use std::io::Read;
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot read stdin: {e}"))?;
        return Ok((bytes, "stdin".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    Ok((bytes, name))
}

/// Waits until process `pid` has exited (ntfy polls every 500 ms too); returns
/// ntfy's message for it.
async fn wait_for_pid(pid: u32) -> anyhow::Result<String> {
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    if !alive() {
        anyhow::bail!("process with PID {pid} not running");
    }
    let start = Instant::now();
    while alive() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(format!(
        "Process with PID {pid} exited after {}",
        go_duration(start.elapsed())
    ))
}

/// Runs `command` to its end; returns ntfy's message about how it went. A command
/// that cannot be started is an error (nothing is published).
async fn run_command(command: Vec<String>) -> anyhow::Result<String> {
    let pretty = quote_command(&command);
    let start = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.status()
    })
    .await
    .map_err(|e| anyhow::anyhow!("command task failed: {e}"))?
    .map_err(|e| anyhow::anyhow!("command failed: {pretty}, error: {e}"))?;
    let took = go_duration(start.elapsed());
    Ok(match status.code() {
        Some(0) => format!("Command succeeded after {took}: {pretty}"),
        Some(code) => format!("Command failed after {took} (exit code {code}): {pretty}"),
        None => format!("Command failed after {took} (killed by a signal): {pretty}"),
    })
}

/// Arguments joined as a shell would need them (quoted when they hold spaces or quotes).
fn quote_command(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'', '\t']) {
                format!("\"{}\"", a.replace('"', "\\\""))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A duration as Go prints one rounded to milliseconds (`1.5s`, `250ms`, `2m3.004s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_gos() {
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(123_004)), "2m3.004s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn header_values_are_encoded_when_needed() {
        assert_eq!(header_value("plain"), "plain");
        assert_eq!(header_value("a\nb"), "=?UTF-8?B?YQpi?=");
        assert_eq!(header_value("é"), "=?UTF-8?B?w6k=?=");
    }

    #[test]
    fn commands_are_quoted() {
        let c: Vec<String> = ["rsync", "-av", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(quote_command(&c), "rsync -av \"a b\"");
    }
}
