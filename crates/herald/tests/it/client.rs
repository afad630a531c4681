//! `herald publish` / `herald subscribe` (crates/herald-client) as a user runs them:
//! the real binary as a separate process against a real server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::cli;
use crate::fixture::{Launch, TestServer, herald_command, parse_ndjson};

/// `herald <args>` with no `NTFY_*` from the test's environment; waits for it.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    client_command(args, envs)
        .stdin(Stdio::null())
        .output()
        .expect("run herald")
}

fn client_command(args: &[&str], envs: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = herald_command();
    for (key, _) in std::env::vars() {
        if key.starts_with("NTFY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).envs(envs.iter().copied());
    cmd
}

/// `run`, asserting success; stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args, &[]);
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The server's `host:port/topic`, the short form a user types.
fn short(server: &TestServer, topic: &str) -> String {
    format!("{}/{topic}", server.base().trim_start_matches("http://"))
}

/// Every publish flag reaches the server as ntfy's client sends it.
#[tokio::test]
async fn publish_sends_every_flag() {
    let server = TestServer::start(&[]);
    let topic = short(&server, "cli");
    let printed = ok(&[
        "publish",
        "--title",
        "Backup",
        "--priority",
        "high",
        "--tags",
        "warning,skull",
        "--click",
        "https://example.com/c",
        "--icon",
        "https://example.com/i.png",
        "--actions",
        "view, Open, https://example.com/a",
        "--attach",
        "https://example.com/f.zip",
        "--filename",
        "backup.zip",
        "--markdown",
        "--sequence-id",
        "seq1",
        &topic,
        "Backup",
        "done",
    ]);
    let answer: Value = serde_json::from_str(printed.trim()).expect("the answer is printed");
    let events = server.poll("cli", "since=all").await;
    assert_eq!(events.len(), 1);
    let m = &events[0];
    assert_eq!(m["id"], answer["id"]);
    assert_eq!(m["message"], "Backup done");
    assert_eq!(m["title"], "Backup");
    assert_eq!(m["priority"], 4);
    assert_eq!(m["tags"], serde_json::json!(["warning", "skull"]));
    assert_eq!(m["click"], "https://example.com/c");
    assert_eq!(m["icon"], "https://example.com/i.png");
    assert_eq!(m["actions"][0]["label"], "Open");
    assert_eq!(m["attachment"]["url"], "https://example.com/f.zip");
    assert_eq!(m["attachment"]["name"], "backup.zip");
    assert_eq!(m["content_type"], "text/markdown");
    assert_eq!(m["sequence_id"], "seq1");

    // Short aliases, --message, --quiet, --delay (scheduled), --no-cache, --firebase.
    let quiet = ok(&["pub", "-q", "-m", "from flag", "-D", "1h", &topic]);
    assert_eq!(quiet, "", "--quiet prints nothing");
    let scheduled = server.poll("cli", "since=all&scheduled=1").await;
    assert!(
        scheduled
            .iter()
            .any(|e| e["message"] == "from flag" && e["time"].as_i64() > m["time"].as_i64())
    );
    ok(&["pub", "--no-cache", "--firebase", "no", &topic, "gone"]);
    ok(&["pub", "--cache", "no", &topic, "gone too"]);
    let texts: Vec<Value> = server.poll("cli", "since=all").await;
    assert!(
        texts
            .iter()
            .all(|e| e["message"] != "gone" && e["message"] != "gone too"),
        "not cached"
    );

    // The server's refusals: exit 1 with its error (e-mail and uploads are off).
    for args in [
        vec!["pub", "--email", "a@example.com", &topic, "x"],
        vec!["pub", "--priority", "9", &topic, "x"],
    ] {
        let out = run(&args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("HTTP 400, code 400"), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "attachment body").unwrap();
    let out = run(&["pub", "--file", file.to_str().unwrap(), &topic], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("code 40014"),
        "uploads: ntfy's answer without attachment storage"
    );

    // NTFY_TOPIC names the topic; every argument is the message.
    let out = run(&["pub", "from", "env"], &[("NTFY_TOPIC", &topic)]);
    assert!(out.status.success());
    // HERALD_TITLE and ntfy's NTFY_PRIORITY fill flags not given.
    let out = run(
        &["pub", &topic, "env flags"],
        &[("HERALD_TITLE", "T1"), ("NTFY_PRIORITY", "2")],
    );
    assert!(out.status.success());
    let events = server.poll("cli", "since=all").await;
    assert!(events.iter().any(|e| e["message"] == "from env"));
    let e = events.iter().find(|e| e["message"] == "env flags").unwrap();
    assert_eq!(
        (e["title"].as_str(), e["priority"].as_i64()),
        (Some("T1"), Some(2))
    );
}

/// One `--idempotency-key` publishes once however often the command runs.
#[tokio::test]
async fn publish_with_an_idempotency_key_publishes_once() {
    let server = TestServer::start(&[]);
    let topic = short(&server, "once");
    let first = ok(&[
        "pub",
        "--idempotency-key",
        "nightly-2026-12-04",
        &topic,
        "nightly done",
    ]);
    let again = ok(&[
        "pub",
        "--idempotency-key",
        "nightly-2026-12-04",
        &topic,
        "nightly done",
    ]);
    assert_eq!(first, again, "the original answer");
    assert_eq!(server.poll("once", "since=all").await.len(), 1);
    // Without one, each run has its own random key.
    ok(&["pub", &topic, "a"]);
    ok(&["pub", &topic, "a"]);
    assert_eq!(server.poll("once", "since=all").await.len(), 3);
}

/// A server that is not up yet: the publish is retried until it is.
#[tokio::test]
async fn publish_retries_until_the_server_answers() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/late");
    let mut publisher = client_command(&["pub", "--retries", "5", &url, "eventually"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let server = server_on(port);
    let status = wait(&mut publisher, Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(server.poll("late", "since=all").await.len(), 1);
}

/// `--wait-pid` publishes when the process has exited; `--wait-cmd` after the
/// command, with ntfy's text.
#[tokio::test]
async fn publish_waits_for_a_process_or_a_command() {
    let server = TestServer::start(&[]);
    let topic = short(&server, "wait");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let reaper = std::thread::spawn(move || sleeper.wait());
    let start = Instant::now();
    ok(&["pub", "--wait-pid", &pid, &topic]);
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "waited for the process"
    );
    reaper.join().unwrap().unwrap();
    ok(&["pub", "--wait-cmd", &topic, "sh", "-c", "exit 3"]);
    ok(&["pub", "--cmd", "-m", "custom", &topic, "true"]);
    let texts: Vec<String> = server
        .poll("wait", "since=all")
        .await
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts[0].starts_with(&format!("Process with PID {pid} exited after ")),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("Command failed after ")
            && texts[1].ends_with("(exit code 3): sh -c \"exit 3\""),
        "{texts:?}"
    );
    assert_eq!(texts[2], "custom");
    let out = run(
        &["pub", "--wait-cmd", &topic, "no-such-command-herald"],
        &[],
    );
    assert!(
        !out.status.success(),
        "a command that cannot start publishes nothing"
    );
    assert_eq!(server.poll("wait", "since=all").await.len(), 3);
}

/// `--user` and `--token` against access control.
#[tokio::test]
async fn publish_and_subscribe_with_credentials() {
    let server = TestServer::start(&["--auth-default-access", "deny-all"]);
    cli(
        &server,
        &["user", "add", "--role", "admin", "ben"],
        Some("ben-secret"),
    );
    let token_out = cli(&server, &["token", "add", "ben"], None);
    let token = token_out
        .split_whitespace()
        .find(|w| w.starts_with("tk_"))
        .unwrap();
    let topic = short(&server, "locked");
    let out = run(&["pub", &topic, "x"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("code 40301"),
        "anonymous is refused"
    );
    ok(&["pub", "-u", "ben:ben-secret", &topic, "with password"]);
    ok(&["pub", "-k", token, &topic, "with token"]);
    let out = run(&["pub", "-u", "ben:x", "-k", token, &topic, "x"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot set both --user and --token"));
    let polled = ok(&["sub", "--poll", "-k", token, &topic]);
    assert_eq!(parse_ndjson(&polled).len(), 2);
    let out = run(&["sub", "--poll", &topic], &[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("code 40301"));
}

/// `--poll`, `--since`, `--scheduled` and `--if` filters; several topics at once.
#[tokio::test]
async fn subscribe_polls_with_since_scheduled_and_filters() {
    let server = TestServer::start(&[]);
    let a = short(&server, "pa");
    ok(&["pub", "-p", "5", &a, "urgent one"]);
    ok(&["pub", &a, "plain one"]);
    ok(&["pub", "--delay", "1h", &short(&server, "pb"), "later"]);
    let all = parse_ndjson(&ok(&["sub", "--poll", &a]));
    assert_eq!(all.len(), 2);
    let since = parse_ndjson(&ok(&[
        "sub",
        "--poll",
        "--since",
        all[0]["id"].as_str().unwrap(),
        &a,
    ]));
    assert_eq!(since.len(), 1);
    let urgent = parse_ndjson(&ok(&["sub", "--poll", "--if", "priority=5", &a]));
    assert_eq!(urgent.len(), 1);
    assert_eq!(urgent[0]["message"], "urgent one");
    let both = short(&server, "pa,pb");
    assert_eq!(parse_ndjson(&ok(&["sub", "--poll", &both])).len(), 2);
    assert_eq!(
        parse_ndjson(&ok(&["sub", "--poll", "--scheduled", &both])).len(),
        3
    );
}

/// A live subscriber across a server restart: every message once, in order, none
/// lost (published while it was reconnecting) and none repeated.
#[tokio::test]
async fn subscribe_reconnects_across_a_restart_without_loss_or_repeats() {
    let port = free_port();
    let mut server = server_on(port);
    let url = format!("http://127.0.0.1:{port}/live");
    let (mut sub, lines) = spawn_lines(&["sub", &url]);
    // Subscribed once the first message arrives (the stream may take a moment).
    let first = publish_until_seen(&server, "live", "m1", &lines).await;
    // Published with the CLI: a pooled connection would outlive the restart.
    ok(&["pub", &url, "m2"]);
    assert_eq!(next_line(&lines)["message"], "m2");
    server.stop();
    // Down long enough for the subscriber's first reconnect (after 1 s) to fail; its
    // next one is 2 s later, after m3 and m4 are published.
    std::thread::sleep(Duration::from_millis(1500));
    server.start_again();
    ok(&["pub", &url, "m3"]);
    ok(&["pub", &url, "m4"]);
    let mut got = vec![first, "m2".to_string()];
    for _ in 0..2 {
        got.push(next_line(&lines)["message"].as_str().unwrap().to_string());
    }
    ok(&["pub", &url, "m5"]);
    got.push(next_line(&lines)["message"].as_str().unwrap().to_string());
    assert_eq!(got, ["m1", "m2", "m3", "m4", "m5"]);
    assert!(
        lines.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing repeated"
    );
    let _ = sub.kill();
    let _ = sub.wait();
}

/// Command mode: the command runs per message with ntfy's variables (and herald's).
#[tokio::test]
async fn subscribe_runs_the_command_with_ntfys_environment() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let command = format!(
        "printf '%s|%s|%s|%s|%s|%s|%s\\n' \"$m\" \"$t\" \"$p\" \"$ta\" \"$NTFY_TOPIC\" \"$HERALD_MESSAGE\" \"${{#NTFY_ID}}\" >> {}",
        out.display()
    );
    let url = short(&server, "cmd");
    let mut sub = client_command(&["sub", &url, &command], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ok(&[
            "pub",
            "-t",
            "Title",
            "-p",
            "4",
            "-T",
            "a,b",
            &url,
            "hello world",
        ]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            assert_eq!(line, "hello world|Title|4|a,b|cmd|hello world|12");
            break;
        }
        assert!(Instant::now() < deadline, "the command never ran");
    }
    let _ = sub.kill();
    let _ = sub.wait();
}

/// `--from-config`: client.yml's `default-host`, `subscribe:` list, per-entry
/// commands and `default-command`.
#[tokio::test]
async fn subscribe_from_config_uses_clientyml() {
    let server = TestServer::start(&[]);
    ok(&["pub", &short(&server, "c1"), "one"]);
    ok(&["pub", &short(&server, "c2"), "two"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.yml");
    std::fs::write(
        &config,
        format!(
            "default-host: {}\ndefault-command: echo \"default:$m\"\nsubscribe:\n  - topic: c1\n    command: echo \"own:$m\"\n  - topic: c2\n",
            server.base()
        ),
    )
    .unwrap();
    let printed = ok(&[
        "sub",
        "--config",
        config.to_str().unwrap(),
        "--from-config",
        "--poll",
    ]);
    assert_eq!(printed, "own:one\ndefault:two\n");
    // The default host serves bare topic names for publish too.
    ok(&["pub", "-c", config.to_str().unwrap(), "c1", "short name"]);
    assert_eq!(server.poll("c1", "since=all").await.len(), 2);
}

/// A port free right now (for a server that must come back on the same port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_on(port: u16) -> TestServer {
    TestServer::launch(Launch {
        args: vec!["--listen-http".into(), format!("127.0.0.1:{port}")],
        no_listen_flag: true,
        ..Launch::default()
    })
}

/// Spawns `herald <args>` and hands its stdout lines to a channel.
fn spawn_lines(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = client_command(args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_line(lines: &mpsc::Receiver<String>) -> Value {
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("a line from the subscriber");
    serde_json::from_str(&line).expect("a JSON line")
}

/// Publishes `text` (once; again under new names until one arrives) until the
/// subscriber prints it; returns the text it printed first.
async fn publish_until_seen(
    server: &TestServer,
    topic: &str,
    text: &str,
    lines: &mpsc::Receiver<String>,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        // One message until the stream is up: the subscriber prints it then, and
        // only that one (no `since`: messages before the connection are not shown).
        server.publish(topic, text).await;
        n += 1;
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            return v["message"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "subscriber never connected ({n} tries)"
        );
    }
}

fn wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}
