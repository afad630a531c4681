//! `herald subscribe` / `herald sub`: ntfy's `ntfy subscribe`.
//!
//! Three modes, as ntfy: `herald sub TOPIC` prints every message as a JSON line;
//! `herald sub TOPIC COMMAND` runs `sh -c COMMAND` for every message with the
//! message in ntfy's environment variables (`$NTFY_MESSAGE`/`$m`, ...; also
//! `$HERALD_*`); `herald sub --from-config` subscribes to every entry of
//! `client.yml`'s `subscribe:` list. `--poll` prints what is there and exits.
//!
//! Unlike ntfy's client (a fixed 10 s retry that may lose messages), a stream that
//! breaks reconnects with backoff (1 s doubling to 30 s) and `since=<last id>`, so
//! nothing published meanwhile is missed; IDs already handled are skipped, so
//! nothing is handled twice. Before the first message, a reconnect asks for
//! everything since the first connection (or the `--since` given).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::args::{env_note, flag, string};
use crate::config::ClientConfig;
use crate::http::{Auth, ServerError, topic_url};
use crate::publish::eprintln_safe;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Message IDs remembered per subscription to skip repeats after a reconnect.
const SEEN_IDS: usize = 1024;

/// One subscription: a topic URL (one or several comma-separated topics), its
/// credentials, its command (none: print JSON) and its filters.
#[derive(Debug, Clone)]
struct Sub {
    url: String,
    auth: Auth,
    command: Option<String>,
    filters: Vec<(String, String)>,
}

/// The `subscribe` subcommand's arguments (added to `cmd`).
pub fn add_args(cmd: Command) -> Command {
    cmd.about("Subscribe to one or more topics and print or act on every message (ntfy's `ntfy subscribe`)")
        .visible_alias("sub")
        .override_usage("herald subscribe [OPTIONS] TOPIC [COMMAND]\n       herald subscribe [OPTIONS] --from-config")
        .after_help("TOPIC is a name on `default-host` (client.yml), `host/topic` or a full URL; `host/t1,t2` subscribes to several.\nCOMMAND runs (sh -c) for every message with $NTFY_ID/$id, $NTFY_TIME/$time, $NTFY_TOPIC/$topic,\n$NTFY_MESSAGE/$message/$m, $NTFY_TITLE/$title/$t, $NTFY_PRIORITY/$priority/$prio/$p,\n$NTFY_TAGS/$tags/$tag/$ta, $NTFY_RAW/$raw (and the same as $HERALD_*).\nExamples:\n  herald sub localhost:8080/backups\n  herald sub localhost:8080/alerts 'notify-send \"$t\" \"$m\"'\n  herald sub --poll --since=1h localhost:8080/backups")
        .arg(Arg::new("config").long("config").short('c').value_name("FILE").help(format!("Client config file (client.yml){}", env_note("config"))))
        .arg(Arg::new("since").long("since").short('s').value_name("SINCE").help(format!("Also return messages since SINCE: a Unix time, a duration (`10m`), a message ID or `all`{}", env_note("since"))))
        .arg(Arg::new("user").long("user").short('u').value_name("USER[:PASS]").help(format!("Log in as this user (asks for the password if not given){}", env_note("user"))))
        .arg(Arg::new("token").long("token").short('k').value_name("TOKEN").help(format!("Access token{}", env_note("token"))))
        .arg(Arg::new("from-config").long("from-config").visible_alias("from_config").short('C').action(ArgAction::SetTrue).help(format!("Subscribe to every topic of client.yml's `subscribe:` list{}", env_note("from-config"))))
        .arg(Arg::new("poll").long("poll").short('p').action(ArgAction::SetTrue).help(format!("Return the messages there are and exit{}", env_note("poll"))))
        .arg(Arg::new("scheduled").long("scheduled").visible_alias("sched").short('S').action(ArgAction::SetTrue).help(format!("Also return scheduled (delayed) messages{}", env_note("scheduled"))))
        .arg(Arg::new("if").long("if").value_name("KEY=VALUE").action(ArgAction::Append).help("Only messages matching this server-side filter: message=, title=, priority=, tags=, id= (repeatable; client.yml's `if:`)"))
        .arg(Arg::new("topic").value_name("TOPIC"))
        .arg(Arg::new("command").value_name("COMMAND"))
}

/// Runs `herald subscribe` with `tls` for `https://` servers.
pub fn run(m: &ArgMatches, tls: rustls::ClientConfig) -> anyhow::Result<()> {
    crate::block_on(subscribe(m, tls))
}

async fn subscribe(m: &ArgMatches, tls: rustls::ClientConfig) -> anyhow::Result<()> {
    let config = crate::config::load(string(m, "config").as_deref())?;
    let since = string(m, "since");
    let scheduled = flag(m, "scheduled");
    let mut subs = Vec::new();
    if flag(m, "from-config") {
        subs.extend(config_subs(&config));
    }
    if let Some(topic) = m.get_one::<String>("topic") {
        let mut filters = Vec::new();
        for pair in m.get_many::<String>("if").into_iter().flatten() {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--if takes KEY=VALUE, got {pair:?}"))?;
            filters.push((k.to_string(), v.to_string()));
        }
        subs.push(Sub {
            url: topic_url(topic, &config.default_host),
            auth: Auth::choose(string(m, "user"), string(m, "token"), &config)?,
            command: m.get_one::<String>("command").cloned(),
            filters,
        });
    }
    if subs.is_empty() {
        anyhow::bail!("must specify topic, type 'herald subscribe --help' for help");
    }
    let client = crate::http::client(tls)?;
    if flag(m, "poll") {
        for sub in &subs {
            for (raw, message) in poll(&client, sub, since.as_deref(), scheduled).await? {
                if !handle(sub, &raw, &message).await {
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel(64);
    for (index, sub) in subs.iter().enumerate() {
        let stream = Stream {
            client: client.clone(),
            sub: sub.clone(),
            since: since.clone(),
            scheduled,
            index,
            tx: tx.clone(),
        };
        tokio::spawn(stream.run());
    }
    drop(tx);
    while let Some(event) = rx.recv().await {
        let (index, raw, message) = event?;
        if !handle(&subs[index], &raw, &message).await {
            return Ok(());
        }
    }
    Ok(())
}

/// The `subscribe:` entries of `config`, each with its own or the default
/// credentials and command.
fn config_subs(config: &ClientConfig) -> Vec<Sub> {
    config
        .subscribe
        .iter()
        .map(|s| {
            let user = s.user.as_deref().or(config.default_user.as_deref());
            let password = s.password.as_deref().or(config.default_password.as_deref());
            let token = s.token.as_deref().or(config.default_token.as_deref());
            Sub {
                url: topic_url(&s.topic, &config.default_host),
                auth: Auth::from_defaults(user, password, token),
                command: s.command.clone().or_else(|| config.default_command.clone()),
                filters: s
                    .filters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }
        })
        .collect()
}

/// `<topic url>/json` with the query for `since`, `poll`, `scheduled` and filters.
fn stream_url(
    sub: &Sub,
    since: Option<&str>,
    poll: bool,
    scheduled: bool,
) -> anyhow::Result<url::Url> {
    let mut url = url::Url::parse(&format!("{}/json", sub.url))
        .map_err(|e| anyhow::anyhow!("invalid topic URL {}: {e}", sub.url))?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(since) = since {
            query.append_pair("since", since);
        }
        if poll {
            query.append_pair("poll", "1");
        }
        if scheduled {
            query.append_pair("scheduled", "1");
        }
        for (k, v) in &sub.filters {
            query.append_pair(k, v);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// Every message the server has for `sub` (one `poll=1` request).
async fn poll(
    client: &reqwest::Client,
    sub: &Sub,
    since: Option<&str>,
    scheduled: bool,
) -> anyhow::Result<Vec<(String, Value)>> {
    let url = stream_url(sub, since, true, scheduled)?;
    let resp = sub
        .auth
        .apply(client.get(url.clone()))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(ServerError::read(resp).await.into());
    }
    let text = resp
        .text()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    Ok(text.lines().filter_map(message_line).collect())
}

/// A JSON line that is a `message` event, as (raw line, parsed).
fn message_line(line: &str) -> Option<(String, Value)> {
    let line = line.trim();
    // `from_slice`, as the server's JSON publish parses: one parser in the binary.
    let value: Value = serde_json::from_slice(line.as_bytes()).ok()?;
    (value["event"] == "message").then(|| (line.to_string(), value))
}

/// What a subscription's task sends: (subscription, raw line, message), or the
/// error that ended it.
type Delivery = anyhow::Result<(usize, String, Value)>;

/// One subscription's stream, reconnecting until the server refuses it for good.
struct Stream {
    client: reqwest::Client,
    sub: Sub,
    since: Option<String>,
    scheduled: bool,
    index: usize,
    tx: mpsc::Sender<Delivery>,
}

impl Stream {
    async fn run(self) {
        let mut last_id: Option<String> = None;
        let mut seen = Seen::default();
        let mut backoff = FIRST_BACKOFF;
        // Before any message arrived, a reconnect resumes from the first connection.
        let mut resume_from: Option<String> = None;
        loop {
            let since = last_id
                .clone()
                .or_else(|| resume_from.clone())
                .or_else(|| self.since.clone());
            if resume_from.is_none() && self.since.is_none() {
                resume_from = Some(unix_now().to_string());
            }
            let url = match stream_url(&self.sub, since.as_deref(), false, self.scheduled) {
                Ok(url) => url,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            };
            match self
                .sub
                .auth
                .apply(self.client.get(url.clone()))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    backoff = FIRST_BACKOFF;
                    match self.read(resp, &mut last_id, &mut seen).await {
                        Ok(()) => eprintln_safe(&format!(
                            "herald: {}: connection closed, reconnecting",
                            self.sub.url
                        )),
                        Err(Closed) => return,
                    }
                }
                Ok(resp) => {
                    let e = ServerError::read(resp).await;
                    if !e.is_transient() {
                        let _ = self
                            .tx
                            .send(Err(anyhow::anyhow!("{}: {e}", self.sub.url)))
                            .await;
                        return;
                    }
                    eprintln_safe(&format!(
                        "herald: {}: {e}; retrying in {}s",
                        self.sub.url,
                        backoff.as_secs()
                    ));
                }
                Err(e) => eprintln_safe(&format!(
                    "herald: {url}: {e}; retrying in {}s",
                    backoff.as_secs()
                )),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the stream's lines until it ends; hands on every new message.
    async fn read(
        &self,
        mut resp: reqwest::Response,
        last_id: &mut Option<String>,
        seen: &mut Seen,
    ) -> Result<(), Closed> {
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Some((raw, message)) = message_line(&String::from_utf8_lossy(&line)) else {
                    continue;
                };
                let id = message["id"].as_str().unwrap_or_default().to_string();
                if !seen.insert(&id) {
                    continue;
                }
                *last_id = Some(id);
                if self.tx.send(Ok((self.index, raw, message))).await.is_err() {
                    return Err(Closed);
                }
            }
        }
        Ok(())
    }
}

/// The receiving side is gone (the client is exiting).
struct Closed;

/// The last [`SEEN_IDS`] message IDs.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    /// False if `id` was seen already.
    fn insert(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        if !self.set.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > SEEN_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prints the message or runs the subscription's command for it; false when
/// stdout is gone (nothing more can be printed).
async fn handle(sub: &Sub, raw: &str, message: &Value) -> bool {
    match &sub.command {
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{raw}").and_then(|()| out.flush()).is_ok()
        }
        Some(command) => {
            let env = command_env(raw, message);
            let command = command.clone();
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .envs(env)
                    .status()
            })
            .await;
            match status {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => eprintln_safe(&format!(
                    "herald: command failed ({s}) for message {}",
                    message["id"]
                )),
                Ok(Err(e)) => eprintln_safe(&format!("herald: cannot run command: {e}")),
                Err(e) => eprintln_safe(&format!("herald: command task failed: {e}")),
            }
            true
        }
    }
}

/// ntfy's environment for a command (`NTFY_*` and the short names), and the same
/// under `HERALD_*`.
fn command_env(raw: &str, m: &Value) -> Vec<(String, String)> {
    let text = |key: &str| m[key].as_str().unwrap_or_default().to_string();
    let number = |key: &str| m[key].as_i64().unwrap_or(0).to_string();
    let tags = m["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let fields: [(String, &[&str]); 8] = [
        (text("id"), &["ID", "id"]),
        (text("topic"), &["TOPIC", "topic"]),
        (number("time"), &["TIME", "time"]),
        (text("message"), &["MESSAGE", "message", "m"]),
        (text("title"), &["TITLE", "title", "t"]),
        (number("priority"), &["PRIORITY", "priority", "prio", "p"]),
        (tags, &["TAGS", "tags", "tag", "ta"]),
        (raw.to_string(), &["RAW", "raw"]),
    ];
    let mut env = Vec::new();
    for (value, names) in fields {
        env.push((format!("NTFY_{}", names[0]), value.clone()));
        env.push((format!("HERALD_{}", names[0]), value.clone()));
        for alias in &names[1..] {
            env.push((alias.to_string(), value.clone()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_has_ntfys_names_and_heralds() {
        let raw = r#"{"id":"a1","time":5,"event":"message","topic":"t","message":"hi","title":"T","priority":4,"tags":["x","y"]}"#;
        let m: Value = serde_json::from_str(raw).unwrap();
        let env: std::collections::HashMap<_, _> = command_env(raw, &m).into_iter().collect();
        for (k, v) in [
            ("NTFY_MESSAGE", "hi"),
            ("m", "hi"),
            ("HERALD_MESSAGE", "hi"),
            ("t", "T"),
            ("p", "4"),
            ("ta", "x,y"),
            ("NTFY_ID", "a1"),
            ("time", "5"),
            ("raw", raw),
        ] {
            assert_eq!(env[k], v, "{k}");
        }
    }

    #[test]
    fn urls_carry_the_query() {
        let sub = Sub {
            url: "http://h/a,b".into(),
            auth: Auth::None,
            command: None,
            filters: vec![("priority".into(), "high".into())],
        };
        assert_eq!(
            stream_url(&sub, Some("abc"), true, true).unwrap().as_str(),
            "http://h/a,b/json?since=abc&poll=1&scheduled=1&priority=high"
        );
        let plain = Sub {
            filters: Vec::new(),
            ..sub
        };
        assert_eq!(
            stream_url(&plain, None, false, false).unwrap().as_str(),
            "http://h/a,b/json"
        );
    }

    #[test]
    fn repeats_are_skipped() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..SEEN_IDS {
            seen.insert(&i.to_string());
        }
        assert!(seen.insert("a"), "forgotten after SEEN_IDS others");
    }
}
