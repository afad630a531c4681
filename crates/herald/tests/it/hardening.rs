//! Hardening against misbehaving clients over raw sockets (issue #11, findings 5
//! and 6): request bodies that never arrive, request heads with bare-LF line
//! endings, and WebSocket peers that break RFC 6455.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::cli;
use crate::fixture::{EVENT_TIMEOUT, TestServer, herald_command};
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

/// The account API reads its JSON through its own path: `408` there too.
#[tokio::test]
async fn an_account_request_body_that_does_not_arrive_is_answered_408() {
    use base64::Engine as _;
    let s = TestServer::start(&[
        "--auth-default-access",
        "read-write",
        "--body-read-timeout",
        "1s",
    ]);
    cli(&s, &["user", "add", "phil"], Some("phil-secret"));
    let basic = base64::engine::general_purpose::STANDARD.encode("phil:phil-secret");
    let head = format!(
        "POST /v1/account/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\
         Content-Length: 100\r\n\r\n"
    );
    let (answer, closed) = exchange(&s, head.as_bytes(), Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("\"code\":40801"), "{answer}");
    assert!(closed);
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

// --- WebSocket (RFC 6455) ---

/// Opens a WebSocket subscription on a raw socket and reads past the `open` event.
async fn ws_connect(s: &TestServer, path: &str, authorization: Option<&str>) -> TcpStream {
    let mut stream = connect(s).await;
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut byte))
            .await
            .expect("handshake answer in time")
            .unwrap();
        assert_eq!(n, 1, "closed during the handshake: {answer:?}");
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let (opcode, payload) = read_frame(&mut stream).await.expect("open event");
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&payload).contains("\"event\":\"open\""));
    stream
}

/// One server frame (opcode, payload), or `None` if the connection closed or
/// nothing came in time.
async fn read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await.ok()?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await.ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        Some((h[0] & 0x0f, payload))
    })
    .await
    .ok()
    .flatten()
}

/// A masked client frame.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 2, 9];
    let mut f = vec![first_byte, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The close code of the server's close frame after the client sent `frame`.
async fn close_code_after(mut stream: TcpStream, frame: &[u8]) -> Option<u16> {
    stream.write_all(frame).await.unwrap();
    loop {
        let (opcode, payload) = read_frame(&mut stream).await?;
        if opcode == 0x8 {
            return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        }
    }
}

/// Broken frames and what RFC 6455 asks the server to close with.
fn broken_frames() -> Vec<(&'static str, Vec<u8>, u16)> {
    vec![
        (
            "continuation without a start",
            client_frame(0x80, b"x"),
            1002,
        ),
        (
            "text that is not UTF-8",
            client_frame(0x81, &[b'a', 0xff, 0xfe]),
            1007,
        ),
        (
            "close code 999",
            client_frame(0x88, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 1005",
            client_frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
        ("1-byte close payload", client_frame(0x88, &[3]), 1002),
        (
            "a valid close is echoed",
            client_frame(0x88, &1000u16.to_be_bytes()),
            1000,
        ),
    ]
}

#[tokio::test]
async fn websocket_protocol_errors_get_rfc6455_close_codes() {
    let s = TestServer::start(&[]);
    let mut wrong = Vec::new();
    for (case, frame, want) in broken_frames() {
        let stream = ws_connect(&s, "/wsbad/ws", None).await;
        let got = close_code_after(stream, &frame).await;
        if got != Some(want) {
            wrong.push(format!("{case}: closed with {got:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The same over the API's WebSocket (axum): a password not verified yet sends the
/// subscription there, so each case logs in as a new user.
#[tokio::test]
async fn websocket_protocol_errors_get_rfc6455_close_codes_from_the_api_too() {
    use base64::Engine as _;
    let s = TestServer::start(&["--auth-default-access", "read-write"]);
    let mut wrong = Vec::new();
    for (i, (case, frame, want)) in broken_frames().into_iter().enumerate() {
        let user = format!("u{i}");
        let out = herald_command()
            .args(["user", "add", &user, "--data-dir"])
            .arg(s.data_path())
            .env("HERALD_PASSWORD", "secret")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:secret"));
        let stream = ws_connect(&s, "/wsbad/ws", Some(&format!("Basic {basic}"))).await;
        let got = close_code_after(stream, &frame).await;
        if got != Some(want) {
            wrong.push(format!("{case}: closed with {got:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn a_malformed_websocket_key_is_answered_400() {
    let s = TestServer::start(&[]);
    for key in ["not-base64!", "c2hvcnQ=", "dGhlIHNhbXBsZSBub25jZSE="] {
        let head = format!(
            "GET /wskey/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nConnection: close\r\n\r\n"
        );
        let (answer, _) = exchange(&s, head.as_bytes(), EVENT_TIMEOUT).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "key {key:?}: {answer:?}"
        );
        assert!(answer.contains("\"code\":40016"), "key {key:?}: {answer}");
    }
}
