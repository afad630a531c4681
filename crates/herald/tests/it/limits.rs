//! Rate limits (ntfy's visitor model) and hardening, against the real binary:
//! `429`s with ntfy's codes and `Retry-After`, exempt hosts, `behind-proxy`, and the
//! listener's bounds (slowloris, oversized heads and URLs, connection limit).
//!
//! Every server here is started with loopback *not* exempt (the fixture exempts it
//! by default so the other suites are not rate limited).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixture::{EVENT_TIMEOUT, EXEMPT_HOSTS_ENV, Launch, TestServer, expect_error, header};

/// A server with `args` and no exempt hosts.
fn limited(args: &[&str]) -> TestServer {
    TestServer::launch(Launch {
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: vec![(EXEMPT_HOSTS_ENV.to_string(), String::new())],
        ..Launch::default()
    })
}

async fn put(s: &TestServer, topic: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = s.client.put(s.url(&format!("/{topic}"))).body("hi");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.timeout(EVENT_TIMEOUT).send().await.expect("publish")
}

/// A 429 with ntfy's `code` and a whole-seconds `Retry-After` of at least 1.
pub(crate) async fn expect_429(resp: reqwest::Response, code: u64) -> u64 {
    let retry = header(&resp, "retry-after");
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    expect_error(resp, 429, code).await;
    secs
}

/// The value of the refusal counter for `limit` in `/metrics`.
async fn refusals(s: &TestServer, limit: &str) -> f64 {
    let text = s.get("/metrics").await.text().await.expect("metrics");
    let prefix = format!("herald_limit_refusals_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{text}"))
}

#[tokio::test]
async fn request_burst_then_429_with_retry_after() {
    let s = limited(&[
        "--visitor-request-limit-burst",
        "5",
        "--visitor-request-limit-replenish",
        "1h",
    ]);
    for i in 0..5 {
        let resp = put(&s, "burst", &[]).await;
        assert_eq!(resp.status(), 200, "publish {i}");
    }
    let secs = expect_429(put(&s, "burst", &[]).await, 42901).await;
    assert!(secs <= 3600, "Retry-After {secs}");
    // Subscriptions and polls are requests too; health and metrics are not.
    expect_429(s.get("/burst/json?poll=1").await, 42901).await;
    expect_429(s.get("/burst/json").await, 42901).await;
    assert_eq!(s.get("/v1/health").await.status(), 200);
    assert!(refusals(&s, "requests").await >= 3.0);
}

#[tokio::test]
async fn exempt_hosts_skip_every_visitor_limit() {
    let s = TestServer::launch(Launch {
        args: [
            "--visitor-request-limit-burst",
            "2",
            "--visitor-message-daily-limit",
            "2",
            "--visitor-subscription-limit",
            "1",
            "--visitor-topic-creation-limit-burst",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        envs: vec![(
            EXEMPT_HOSTS_ENV.to_string(),
            "localhost, 10.0.0.0/8".to_string(),
        )],
        ..Launch::default()
    });
    for _ in 0..10 {
        assert_eq!(put(&s, "exempt", &[]).await.status(), 200);
    }
    let _a = s.stream("/e1,e2/json").await;
    let _b = s.stream("/e3,e4/sse").await;
    let _c = s.ws("/e5/ws").await;
}

#[tokio::test]
async fn daily_message_limit() {
    let s = limited(&["--visitor-message-daily-limit", "3"]);
    for _ in 0..3 {
        assert_eq!(put(&s, "daily", &[]).await.status(), 200);
    }
    let secs = expect_429(put(&s, "daily", &[]).await, 42908).await;
    assert!(secs <= 86_400, "Retry-After {secs}");
    // JSON publishes and sequence actions are messages too; subscribing is not.
    let json = s
        .client
        .post(s.url("/"))
        .body(r#"{"topic":"daily","message":"x"}"#)
        .send()
        .await
        .unwrap();
    expect_429(json, 42908).await;
    assert_eq!(s.poll("daily", "").await.len(), 3);
    // `/v1/account` reports the quota and what is used of it.
    let account: serde_json::Value = s.get("/v1/account").await.json().await.unwrap();
    assert_eq!(account["limits"]["messages"], 3, "{account}");
    assert_eq!(account["stats"]["messages"], 3, "{account}");
    assert_eq!(account["stats"]["messages_remaining"], 0, "{account}");
}

#[tokio::test]
async fn subscription_limit_per_visitor() {
    let s = limited(&["--visitor-subscription-limit", "2"]);
    let first = s.stream("/s1/json").await;
    let _ws = s.ws("/s2/ws").await;
    // The third stream, on the direct path and through the API.
    expect_429(s.get("/s3/json").await, 42903).await;
    expect_429(s.get("/s3/sse?since=all").await, 42903).await;
    // Polls do not hold a subscription.
    assert_eq!(s.get("/s3/json?poll=1").await.status(), 200);
    drop(first);
    crate::fixture::eventually(EVENT_TIMEOUT, "a slot is free again", || async {
        (s.get("/s3/raw").await.status() == 200).then_some(())
    })
    .await;
    assert!(refusals(&s, "subscriptions").await >= 2.0);
}

#[tokio::test]
async fn topic_creation_limit() {
    let s = limited(&[
        "--visitor-topic-creation-limit-burst",
        "2",
        "--visitor-topic-creation-limit-replenish",
        "1h",
    ]);
    let _a = s.stream("/new1,new2/json").await;
    expect_429(s.get("/new3/json").await, 42911).await;
    // Subscribing to topics that already have subscribers creates nothing.
    let _b = s.stream("/new1/sse").await;
}

#[tokio::test]
async fn forwarded_for_is_honoured_only_behind_a_proxy() {
    let args = [
        "--visitor-request-limit-burst",
        "2",
        "--visitor-request-limit-replenish",
        "1h",
    ];
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];

    // Not behind a proxy: the header is ignored; every request is 127.0.0.1's.
    let s = limited(&args);
    assert_eq!(put(&s, "p", &xff("1.1.1.1")).await.status(), 200);
    assert_eq!(put(&s, "p", &xff("2.2.2.2")).await.status(), 200);
    expect_429(put(&s, "p", &xff("3.3.3.3")).await, 42901).await;

    // Behind a proxy: each forwarded address is its own visitor, and loopback
    // being exempt does not exempt the clients behind it.
    let mut with_proxy = vec!["--behind-proxy", "true"];
    with_proxy.extend(args);
    let s = TestServer::launch(Launch {
        args: with_proxy.iter().map(|s| s.to_string()).collect(),
        envs: vec![(EXEMPT_HOSTS_ENV.to_string(), "127.0.0.1".to_string())],
        ..Launch::default()
    });
    for ip in ["1.1.1.1", "2.2.2.2"] {
        assert_eq!(put(&s, "p", &xff(ip)).await.status(), 200);
        assert_eq!(put(&s, "p", &xff(ip)).await.status(), 200);
    }
    expect_429(put(&s, "p", &xff("1.1.1.1")).await, 42901).await;
    // A client cannot pick another address by prepending one: the right-most wins.
    expect_429(put(&s, "p", &xff("9.9.9.9, 1.1.1.1")).await, 42901).await;
    // The direct subscribe path keys by the forwarded address too.
    expect_429(
        s.client
            .get(s.url("/p/json"))
            .header("X-Forwarded-For", "2.2.2.2")
            .send()
            .await
            .unwrap(),
        42901,
    )
    .await;
    // Without the header, the peer (exempt) is the visitor.
    for _ in 0..5 {
        assert_eq!(put(&s, "p", &[]).await.status(), 200);
    }
}

/// Reads until what was received contains `needle`; returns all of it.
pub(crate) async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&out)));
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw connection to the server.
pub(crate) async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.base().trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (or `limit` passes); returns what
/// it sent and whether it closed.
pub(crate) async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let s = limited(&["--header-read-timeout", "1s"]);
    let stream = connect(&s).await;
    let (mut rd, mut wr) = stream.into_split();
    // One header byte every 100 ms: always sending, never finishing the head.
    let dribble = tokio::spawn(async move {
        if wr
            .write_all(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 64];
    // Well before the default 10 s timeout: the option is in force.
    let ended = tokio::time::timeout(Duration::from_secs(8), rd.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {ended:?}"
    );
    dribble.abort();
    assert!(refusals(&s, "header_timeout").await >= 1.0);
    // A client that sends its head in time is served.
    assert_eq!(s.get("/v1/health").await.status(), 200);
}

#[tokio::test]
async fn oversized_heads_urls_and_bodies_are_refused() {
    let s = limited(&["--max-url-length", "200", "--max-header-size", "4k"]);
    // A long URL: 414 on the subscribe (direct) path and the API alike.
    let long = "x".repeat(300);
    expect_error(s.get(&format!("/t/json?q={long}")).await, 414, 41401).await;
    expect_error(
        s.get(&format!("/t/publish?message={long}")).await,
        414,
        41401,
    )
    .await;
    // A head over max-header-size: 431 in ntfy's JSON shape.
    let big = "y".repeat(5000);
    let resp = s
        .client
        .get(s.url("/t/json"))
        .header("X-Big", big.as_str())
        .send()
        .await
        .unwrap();
    expect_error(resp, 431, 43101).await;
    // Too many headers: 431 too.
    let mut stream = connect(&s).await;
    let mut head = String::from("GET /t/json HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        head.push_str(&format!("X-H{i}: 1\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answer, closed) = read_to_close(&mut stream, EVENT_TIMEOUT).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("\"code\":43101"), "{answer}");
    assert!(closed);
    // A JSON publish body over twice the message limit: 413 41303.
    let body = format!(r#"{{"topic":"t","message":"{}"}}"#, "z".repeat(9000));
    let resp = s.client.post(s.url("/")).body(body).send().await.unwrap();
    expect_error(resp, 413, 41303).await;
    assert!(refusals(&s, "url_length").await >= 2.0);
    assert!(refusals(&s, "header_size").await >= 2.0);
    assert!(refusals(&s, "body_size").await >= 1.0);
    // Normal requests are unaffected.
    assert_eq!(put(&s, "t", &[]).await.status(), 200);
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    let s = limited(&["--connection-limit", "3"]);
    let mut held = Vec::new();
    // A WebSocket upgraded by the API (second request on a kept-alive connection,
    // so not the listener's direct path) keeps its place after the upgrade.
    let mut upgraded = connect(&s).await;
    upgraded
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut upgraded, "{\"healthy\":true}").await;
    upgraded
        .write_all(
            b"GET /up/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until(&mut upgraded, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    held.push(upgraded);
    for _ in 0..2 {
        let mut c = connect(&s).await;
        c.write_all(b"GET /held/json HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(EVENT_TIMEOUT, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(c);
    }
    let mut extra = connect(&s).await;
    let (answer, closed) = read_to_close(&mut extra, EVENT_TIMEOUT).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\"code\":50302"), "{answer}");
    assert!(closed);
    // A closed connection frees its place.
    held.pop();
    let mut again = crate::fixture::eventually(EVENT_TIMEOUT, "a place is free", || async {
        let mut c = connect(&s).await;
        c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let (answer, _) = read_to_close(&mut c, EVENT_TIMEOUT).await;
        answer.starts_with("HTTP/1.1 200").then_some(c)
    })
    .await;
    let _ = again.shutdown().await;
    drop(held);
}

#[tokio::test]
async fn a_subscription_is_charged_once_on_either_path() {
    let s = limited(&[
        "--visitor-request-limit-burst",
        "5",
        "--visitor-request-limit-replenish",
        "1h",
        "--visitor-subscription-limit",
        "1",
    ]);
    // Served by the listener's direct path: one request.
    let _held = s.stream("/once/json").await;
    // Refused there (no slot) and answered by the API: one more request, not two.
    expect_429(s.get("/once2/json").await, 42903).await;
    // Three requests are left of the five.
    for i in 0..3 {
        assert_eq!(put(&s, "once", &[]).await.status(), 200, "publish {i}");
    }
    expect_429(put(&s, "once", &[]).await, 42901).await;
}

#[tokio::test]
async fn addresses_in_one_prefix_are_one_visitor() {
    let s = limited(&[
        "--behind-proxy",
        "true",
        "--visitor-prefix-bits-ipv4",
        "24",
        "--visitor-request-limit-burst",
        "2",
        "--visitor-request-limit-replenish",
        "1h",
    ]);
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    assert_eq!(put(&s, "pfx", &xff("198.51.100.1")).await.status(), 200);
    assert_eq!(put(&s, "pfx", &xff("198.51.100.200")).await.status(), 200);
    expect_429(put(&s, "pfx", &xff("198.51.100.7")).await, 42901).await;
    assert_eq!(put(&s, "pfx", &xff("198.51.101.1")).await.status(), 200);
    // IPv6: a /64 by default.
    assert_eq!(put(&s, "pfx", &xff("2001:db8:1:2::1")).await.status(), 200);
    assert_eq!(
        put(&s, "pfx", &xff("2001:db8:1:2:ffff::1")).await.status(),
        200
    );
    expect_429(put(&s, "pfx", &xff("2001:db8:1:2::9")).await, 42901).await;
    assert_eq!(put(&s, "pfx", &xff("2001:db8:1:3::1")).await.status(), 200);
}

/// ntfy's `TestServer_PublishTooManyRequests_Defaults`: with the defaults, 60
/// publishes pass and the 61st is refused; and the 31st open stream is refused.
#[tokio::test]
async fn ntfy_defaults_60_requests_and_30_streams() {
    let s = limited(&[]);
    for i in 0..60 {
        assert_eq!(put(&s, "defaults", &[]).await.status(), 200, "publish {i}");
    }
    let secs = expect_429(put(&s, "defaults", &[]).await, 42901).await;
    assert!(secs <= 5, "Retry-After {secs}");

    let s = limited(&[]);
    let mut streams = Vec::new();
    for i in 0..30 {
        streams.push(s.stream(&format!("/d{i}/json")).await);
    }
    expect_429(s.get("/d30/json").await, 42903).await;
}
