//! Hardening against misbehaving clients over raw sockets (issue #11, finding 5):
//! request bodies that never arrive, request heads with bare-LF line endings.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::TestServer;
use crate::limits::{connect, read_to_close};

/// Writes `request` on a new connection; returns what the server sent
/// until it closed (or `limit` passed), and whether it closed.
async fn exchange(s: &TestServer, request: &[u8], limit: Duration) -> (String, bool) {
    let mut stream = connect(s).await;
    stream.write_all(request).await.expect("write request");
    read_to_close(&mut stream, limit).await
}

#[tokio::test]
async fn a_request_body_that_does_not_arrive_is_answered_408() {
    let s = TestServer::start(&["--body-read-timeout", "1s"]);
    // Every way a body is read: a publish, a JSON publish, the webhook API's JSON.
    for (method, path) in [("PUT", "/t"), ("POST", "/"), ("POST", "/v1/webhooks")] {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
        // Well within the generous limit: the body never comes, the answer does.
        let (answer, closed) = exchange(&s, head.as_bytes(), Duration::from_secs(20)).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "{method} {path}: {answer:?}"
        );
        assert!(
            answer.contains("\"code\":40801"),
            "{method} {path}: {answer}"
        );
        assert!(closed, "{method} {path}: connection left open");
    }
    // Dripping the body a byte at a time does not extend the deadline.
    let mut stream = connect(&s).await;
    stream
        .write_all(b"PUT /t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut answer)).await;
    drip.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "drip: {answer:?}");
    // A body sent at once is published as before.
    assert_eq!(s.publish("t", "on time").await["message"], "on time");
}

#[tokio::test]
async fn request_heads_with_bare_lf_line_endings_are_served() {
    // A long header timeout, so that waiting for a CRLF that never comes is a
    // clear failure rather than a cut-off connection.
    let s = TestServer::start(&["--header-read-timeout", "60s"]);
    let limit = Duration::from_secs(10);
    let (answer, _) = exchange(
        &s,
        b"PUT /lf HTTP/1.1\nHost: x\nContent-Length: 5\nConnection: close\n\nhello",
        limit,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "publish: {answer:?}");
    assert!(answer.contains("\"message\":\"hello\""), "{answer}");
    let (answer, _) = exchange(
        &s,
        b"GET /v1/health HTTP/1.1\nHost: x\nConnection: close\n\n",
        limit,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "health: {answer:?}");
    // A streaming subscription (the direct path) with a bare-LF head.
    let mut stream = connect(&s).await;
    stream
        .write_all(b"GET /lf/json?since=all HTTP/1.1\nHost: x\n\n")
        .await
        .unwrap();
    let seen = crate::limits::read_until(&mut stream, "\"message\":\"hello\"").await;
    assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");
}
