//! History answers (`poll=1`, `since=` backlogs) are read from the store a page at a
//! time as the client takes them, and at most `history-read-limit` are read at once.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixture::{TestServer, expect_error, header};

/// Messages in the large history, and the size of each one's text.
const MESSAGES: usize = 200;
const TEXT: usize = 40_000;

fn text(i: usize) -> String {
    format!("{i:04}-{}", "x".repeat(TEXT - 5))
}

/// A server with a history of about `MESSAGES * TEXT` bytes (8 MB) on topic `big`.
async fn server_with_large_history(extra: &[&str]) -> TestServer {
    let mut args = vec!["--message-size-limit", "64k"];
    args.extend_from_slice(extra);
    let s = TestServer::start(&args);
    for i in 0..MESSAGES {
        s.publish("big", &text(i)).await;
    }
    s
}

/// The server's resident memory in bytes (`VmRSS`).
fn rss(s: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// Sends `GET path` on a socket with a small receive buffer, waits for the first
/// bytes of the answer and then stops reading.
async fn stalled_request(s: &TestServer, path: &str, version: &str) -> TcpStream {
    let addr: std::net::SocketAddr = s.base().trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let req = format!("GET {path} {version}\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut first))
        .await
        .expect("the answer starts")
        .unwrap();
    assert!(n > 0, "answer to {path} started");
    stream
}

/// The message texts of an NDJSON body.
fn message_texts(body: &str) -> Vec<String> {
    body.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "message")
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_history_readers_hold_a_page_not_the_answer() {
    let s = server_with_large_history(&[]).await;
    let answer_size: u64 = s.get("/big/json?poll=1").await.bytes().await.unwrap().len() as u64;
    assert!(answer_size > (MESSAGES * TEXT) as u64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(&s);

    // Polls (axum) and live streams with a backlog (the direct path), none read
    // past the first kilobyte.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(stalled_request(&s, "/big/json?poll=1", "HTTP/1.0").await);
    }
    for _ in 0..4 {
        stalled.push(stalled_request(&s, "/big/json?since=all", "HTTP/1.1").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss(&s).saturating_sub(before);
    let whole = stalled.len() as u64 * answer_size;
    eprintln!("stalled history readers: RSS +{grown} bytes; their answers: {whole} bytes");
    assert!(
        grown < whole / 2,
        "{} stalled history readers grew the server by {grown} bytes; their answers are {whole}",
        stalled.len()
    );

    // A stalled answer is complete and in order once the client reads it.
    let mut poll = stalled.remove(0);
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), poll.read_to_end(&mut raw))
        .await
        .expect("the rest of the answer")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    // The first kilobyte was read above: skip the partial first line.
    let rest = &raw[raw.find('\n').unwrap() + 1..];
    let texts = message_texts(rest);
    let first: usize = texts[0][..4].parse().unwrap();
    let want: Vec<String> = (first..MESSAGES).map(text).collect();
    assert_eq!(texts, want, "complete and in order");

    // A live stream replays the whole backlog in order, then goes on live, once.
    let mut live = s.stream("/big/json?since=all").await;
    assert_eq!(live.next_json().await["event"], "open");
    for i in 0..MESSAGES {
        assert_eq!(live.next_non_keepalive().await["message"], text(i));
    }
    s.publish("big", "after").await;
    assert_eq!(live.next_non_keepalive().await["message"], "after");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_over_the_limit_wait_then_get_429() {
    let s = server_with_large_history(&["--history-read-limit", "1"]).await;
    // Holds the only place: its answer is many pages and it does not read.
    let holder = stalled_request(&s, "/big/json?poll=1", "HTTP/1.1").await;

    let started = Instant::now();
    let resp = s.get("/big/json?poll=1").await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for a place"
    );
    assert_eq!(header(&resp, "retry-after"), "1");
    expect_error(resp, 429, 42901).await;
    // The direct path refuses a live stream's backlog the same way.
    let resp = s.get("/big/json?since=all").await;
    assert_eq!(header(&resp, "retry-after"), "1");
    expect_error(resp, 429, 42901).await;
    // Requests without history do not need a place.
    let mut live = s.stream("/big/json").await;
    assert_eq!(live.next_json().await["event"], "open");
    assert_eq!(s.poll("big", "since=none").await.len(), 0);

    // The place comes back when the holder goes away.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = s.get("/big/json?poll=1&since=latest").await;
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
