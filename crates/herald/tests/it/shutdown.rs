//! Graceful shutdown under load: SIGTERM while publishers loop and subscribers of
//! every transport are connected.
//!
//! What counts as correct, precisely:
//! - Every publish that got a response got `200` with a complete body: no 5xx, no
//!   response cut short.
//! - A publish may fail only *before any byte of its response*: connection refused
//!   (the listener is closed), or the connection closed or reset before a response
//!   began (a request the server never read: it arrived on an idle keep-alive
//!   connection or in the accept backlog as the server stopped). Such requests are
//!   not acknowledged and the client may retry them.
//! - A publish whose request had begun before SIGTERM and finishes after it (a slow
//!   client) is served: `200`.
//! - The server logged exactly as many `200` publishes as the clients received, so
//!   no request the server processed lost its response.
//! - Every acknowledged message is in `since=all` after a restart; a scheduled
//!   message is still pending.
//! - WebSocket subscribers get a close frame with code 1001; JSON and SSE streams
//!   end with the chunked terminator (a clean end, not a connection error).
//! - Draining shows at once (`herald_draining 1` on the metrics listener, which stays
//!   up; the main listener is already closed, so `/readyz` cannot be asked there).
//! - The process exits 0 well within `shutdown-timeout`.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::fixture::{Launch, TestServer, expect_json, texts};

const TOPIC: &str = "drain";
const PUBLISHERS: usize = 6;

fn s_client() -> reqwest::Client {
    herald::webhook::client::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// How one publish went, from the client's side.
#[derive(Debug)]
enum Outcome {
    /// `200` and the message ID from the body.
    Acked(String),
    /// Refused, or closed/reset before any byte of the response: not acknowledged.
    NotServed(String),
}

/// One `PUT /drain` over `conn` (connecting first if `None`). Returns the outcome
/// and whether the connection may be reused. Panics on anything the rules forbid.
async fn publish_once(
    addr: &str,
    conn: &mut Option<TcpStream>,
    body: &str,
    keep_alive: bool,
) -> Outcome {
    if conn.is_none() {
        match TcpStream::connect(addr).await {
            Ok(s) => *conn = Some(s),
            Err(e) => return Outcome::NotServed(format!("connect: {e}")),
        }
    }
    let Some(stream) = conn.as_mut() else {
        unreachable!()
    };
    let request = format!(
        "PUT /{TOPIC} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        *conn = None;
        return Outcome::NotServed(format!("write: {e}"));
    }
    let (outcome, reusable) = read_response(stream).await;
    if !(keep_alive && reusable) {
        *conn = None;
    }
    outcome
}

/// Reads one response. Any failure after the first byte panics (a response cut
/// short); a non-200 status panics.
async fn read_response(stream: &mut TcpStream) -> (Outcome, bool) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Err(_) => panic!("no response within 30 s (partial: {buf:?})"),
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => {
                return (
                    Outcome::NotServed("closed before the response".into()),
                    false,
                );
            }
            Ok(Ok(0)) => panic!(
                "connection closed in the middle of a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Err(e)) => panic!(
                "connection error ({e}) in the middle of a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) => panic!("connection closed in the middle of a response body: {head:?}"),
            Err(e) => panic!("connection error ({e}) in the middle of a response body"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    assert_eq!(status, 200, "publish answered {status}: {head}{body}");
    let json: Value = serde_json::from_str(&body).expect("publish response is JSON");
    let id = json["id"].as_str().expect("id").to_string();
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    (Outcome::Acked(id), !close)
}

/// How a subscriber's stream ended.
#[derive(Debug, PartialEq)]
enum StreamEnd {
    /// WebSocket close frame with this code.
    WsClose(u16),
    /// HTTP stream ended with its terminator.
    Clean,
    /// Anything else (connection error, no close frame, still open).
    Bad(String),
}

async fn ws_subscriber(url: String) -> (usize, StreamEnd) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect");
    let mut messages = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return (messages, StreamEnd::Bad("still open".into())),
            Ok(None) => return (messages, StreamEnd::Bad("ended without close frame".into())),
            Ok(Some(Err(e))) => return (messages, StreamEnd::Bad(e.to_string())),
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                return (messages, StreamEnd::WsClose(code));
            }
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                if t.as_str().contains("\"event\":\"message\"") {
                    messages += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn http_subscriber(client: reqwest::Client, url: String) -> (usize, StreamEnd) {
    let resp = client.get(url).send().await.expect("subscribe");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut messages = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
            Err(_) => return (messages, StreamEnd::Bad("still open".into())),
            // reqwest (hyper) reports a chunked body that ends without its
            // terminator as an error, so `None` means a clean end.
            Ok(None) => return (messages, StreamEnd::Clean),
            Ok(Some(Err(e))) => return (messages, StreamEnd::Bad(format!("{e:?}"))),
            Ok(Some(Ok(bytes))) => {
                messages += String::from_utf8_lossy(&bytes)
                    .matches("\"event\":\"message\"")
                    .count();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_cleanly() {
    let mut s = TestServer::launch(Launch {
        args: [
            "--shutdown-timeout",
            "10s",
            "--log-format",
            "json",
            "--metrics-listen-http",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
        ..Launch::default()
    });
    let addr = s.base().trim_start_matches("http://").to_string();
    let metrics_url = {
        let log = s.log_text();
        let marker = "metrics listening on http://";
        let start = log.find(marker).expect("metrics listener line") + marker.len();
        let host: String = log[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':'))
            .collect();
        format!("http://{host}/metrics")
    };
    let draining = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("herald_draining "))
            .map(|v| v.trim().to_string())
    };
    let scrape = |url: String| async move {
        s_client()
            .get(url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics body")
    };
    assert_eq!(
        draining(&scrape(metrics_url.clone()).await).as_deref(),
        Some("0")
    );

    // A scheduled message that must stay pending across the restart.
    expect_json(
        s.client
            .put(s.url(&format!("/{TOPIC}")))
            .header("X-Delay", "1h")
            .body("scheduled")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;

    // Subscribers: two of each transport.
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        subscribers.push(tokio::spawn(ws_subscriber(
            s.ws_url(&format!("/{TOPIC}/ws")),
        )));
        for kind in ["json", "sse"] {
            subscribers.push(tokio::spawn(http_subscriber(
                s.client.clone(),
                s.url(&format!("/{TOPIC}/{kind}")),
            )));
        }
    }

    // Publishers: half keep connections alive, half use one connection per publish.
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (addr, stop) = (addr.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let keep_alive = p % 2 == 0;
            let mut conn = None;
            let mut acked = Vec::new();
            let mut not_served = Vec::new();
            let mut refused_in_a_row = 0;
            for i in 0.. {
                match publish_once(&addr, &mut conn, &format!("p{p}-{i}"), keep_alive).await {
                    Outcome::Acked(id) => {
                        acked.push(id);
                        refused_in_a_row = 0;
                    }
                    Outcome::NotServed(why) => {
                        assert!(
                            stop.load(Ordering::SeqCst),
                            "publish failed before shutdown: {why}"
                        );
                        not_served.push(why);
                        refused_in_a_row += 1;
                        if refused_in_a_row >= 3 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (acked, not_served)
        }));
    }

    // A slow publisher: the head and half the body before SIGTERM, the rest after.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let body = "slow-publish";
    slow.write_all(
        format!(
            "PUT /{TOPIC} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            &body[..4]
        )
        .as_bytes(),
    )
    .await
    .unwrap();

    // Let the load run, then SIGTERM.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = s.pid();
    stop.store(true, Ordering::SeqCst);
    let sent_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The slow publish keeps the drain going: the metrics listener (still up) shows
    // it. (Readiness on the main port cannot be asked: the listener is closed.)
    assert_eq!(
        draining(&scrape(metrics_url.clone()).await).as_deref(),
        Some("1")
    );
    slow.write_all(&body.as_bytes()[4..]).await.unwrap();
    let (slow_outcome, _) = read_response(&mut slow).await;
    let Outcome::Acked(slow_id) = slow_outcome else {
        panic!("in-flight slow publish not served: {slow_outcome:?}");
    };

    let exit = tokio::task::block_in_place(|| s.wait_for_exit(Duration::from_secs(20)));
    let took = sent_at.elapsed();
    assert!(exit.success(), "exit status {exit}; log:\n{}", s.log_text());
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} (timeout 10 s)"
    );

    let mut acked = vec![slow_id];
    let mut not_served = 0;
    for p in publishers {
        let (ids, failures) = p.await.expect("publisher task");
        assert!(!ids.is_empty(), "a publisher got nothing acknowledged");
        acked.extend(ids);
        not_served += failures.len();
    }
    for sub in subscribers {
        let (messages, end) = sub.await.expect("subscriber task");
        assert!(messages > 0, "a subscriber received nothing");
        assert!(
            end == StreamEnd::WsClose(1001) || end == StreamEnd::Clean,
            "stream ended badly: {end:?}"
        );
    }

    // The server answered 200 to exactly the publishes the clients saw acknowledged
    // (plus the scheduled one): nothing it processed lost its response.
    let log = crate::fixture::eventually(Duration::from_secs(5), "final log line", || {
        let log = s.log_text();
        async move { log.contains("herald stopped").then_some(log) }
    })
    .await;
    let served_200 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["target"] == "herald::access"
                && v["fields"]["route"] == "publish"
                && v["fields"]["status"] == 200
        })
        .count();
    assert_eq!(
        served_200,
        acked.len() + 1,
        "server-side 200s vs client acknowledgements (not served: {not_served})"
    );

    // Every acknowledged message is there after a restart; the scheduled one waits.
    s.start_again();
    let history = s.poll(TOPIC, "since=all").await;
    let have: HashSet<&str> = history.iter().filter_map(|m| m["id"].as_str()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !have.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages missing after restart: {missing:?}",
        missing.len(),
        acked.len()
    );
    assert_eq!(history.len(), acked.len(), "unexpected extra messages");
    assert_eq!(
        texts(&s.poll(TOPIC, "since=all&scheduled=1").await)
            .iter()
            .filter(|t| *t == "scheduled")
            .count(),
        1
    );
    eprintln!(
        "drain test: {} acknowledged, {not_served} not served, shutdown took {took:?}",
        acked.len()
    );
}
