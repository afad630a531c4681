//! `/metrics` (Prometheus text), `metrics-listen-http`, and the access log.
//!
//! The exposition is checked with `promtool check metrics` (Debian package
//! `prometheus`, installed by `.ci/run`): a missing promtool fails the test instead
//! of skipping it, so CI cannot pass without the check.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{Launch, TestServer, eventually, expect_json, header};

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `transport="json"`; empty for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn must(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
}

async fn scrape(url: &str) -> String {
    herald::webhook::client::install_tls_provider();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200, "GET {url}");
    let ctype = header(&resp, "content-type");
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype:?}"
    );
    resp.text().await.expect("metrics body")
}

/// Runs `promtool check metrics` on `text`; panics with its output on failure.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required for this test and could not be run ({e}); \
             install it with `apt-get install -y prometheus` (.ci/run does)"
        ),
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\nstdout: {}\nstderr: {}\nmetrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_move_and_pass_promtool() {
    let s = TestServer::start(&[]);
    let before = scrape(&s.url("/metrics")).await;
    promtool_check(&before);
    assert_eq!(must(&before, "herald_messages_published_total", ""), 0.0);
    assert_eq!(
        must(&before, "herald_subscribers", "transport=\"json\""),
        0.0
    );

    let mut json = s.stream("/mt/json").await;
    assert_eq!(json.next_json().await["event"], "open");
    let mut sse = s.stream("/mt/sse").await;
    sse.next_sse().await;
    let mut ws = s.ws("/mt/ws").await;
    assert_eq!(ws.next_json().await["event"], "open");
    for i in 0..3 {
        s.publish("mt", &format!("m{i}")).await;
    }
    for _ in 0..3 {
        assert_eq!(json.next_non_keepalive().await["event"], "message");
        assert_eq!(sse.next_sse().await.1["event"], "message");
        assert_eq!(ws.next_json().await["event"], "message");
    }
    // A scheduled message and a poll.
    expect_json(
        s.client
            .put(s.url("/mt"))
            .header("X-Delay", "1h")
            .body("later")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    s.poll("mt", "since=all").await;

    let text = scrape(&s.url("/metrics")).await;
    promtool_check(&text);
    assert_eq!(must(&text, "herald_messages_published_total", ""), 4.0);
    for transport in ["json", "sse", "ws"] {
        let labels = format!("transport=\"{transport}\"");
        assert_eq!(must(&text, "herald_subscribers", &labels), 1.0, "{labels}");
        assert!(
            must(&text, "herald_messages_delivered_total", &labels) >= 3.0,
            "{labels}"
        );
    }
    assert_eq!(must(&text, "herald_subscribers", "transport=\"raw\""), 0.0);
    assert_eq!(must(&text, "herald_topics", ""), 1.0);
    assert_eq!(must(&text, "herald_scheduled_messages", ""), 1.0);
    assert_eq!(must(&text, "herald_store_messages", ""), 4.0);
    assert_eq!(
        must(&text, "herald_subscribers_dropped_slow_total", ""),
        0.0
    );
    assert_eq!(
        must(
            &text,
            "herald_http_requests_total",
            "route=\"publish\",method=\"PUT\",status=\"200\""
        ),
        4.0
    );
    for route in ["subscribe_json", "subscribe_sse"] {
        let labels = format!("route=\"{route}\",method=\"GET\",status=\"200\"");
        assert_eq!(must(&text, "herald_http_requests_total", &labels), 1.0);
    }
    assert_eq!(
        must(
            &text,
            "herald_http_requests_total",
            "route=\"subscribe_ws\",method=\"GET\",status=\"101\""
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            "herald_http_requests_total",
            "route=\"poll\",method=\"GET\",status=\"200\""
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            "herald_http_request_duration_seconds_count",
            "route=\"publish\""
        ),
        4.0
    );
    // Every publish above was cached: at least one commit per publish or per batch.
    assert!(must(&text, "herald_store_commit_duration_seconds_count", "") >= 1.0);
    assert!(must(&text, "herald_store_commit_batch_size_sum", "") >= 4.0);
    assert!(must(&text, "process_resident_memory_bytes", "") > 1e6);
    assert!(must(&text, "process_open_fds", "") >= 5.0);
    assert!(must(&text, "process_cpu_seconds_total", "") >= 0.0);
    assert!(must(&text, "process_start_time_seconds", "") > 1.6e9);
    // Bounded labels: no topic name anywhere in the exposition.
    assert!(!text.contains("\"mt\""), "topic leaked into labels");

    // Closing subscribers moves the gauges back.
    ws.close().await;
    drop(json);
    drop(sse);
    eventually(
        Duration::from_secs(10),
        "subscribers gauge back to 0",
        || {
            let url = s.url("/metrics");
            async move {
                let text = scrape(&url).await;
                let open: f64 = ["json", "sse", "ws"]
                    .iter()
                    .map(|t| must(&text, "herald_subscribers", &format!("transport=\"{t}\"")))
                    .sum();
                (open == 0.0).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn slow_subscriber_drop_is_counted() {
    // A raw TCP subscriber that never reads, and a tiny queue: it is cut off.
    let s = TestServer::start(&["--subscriber-queue-size", "2"]);
    let addr = s.base().trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sock, b"GET /slow/json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "subscriber registered", || {
        let url = s.url("/metrics");
        async move {
            let text = scrape(&url).await;
            (must(&text, "herald_subscribers", "transport=\"json\"") == 1.0).then_some(())
        }
    })
    .await;
    // Big messages fill the socket buffers, then the queue.
    let body = "x".repeat(4000);
    let client = s.client.clone();
    let url = s.url("/slow");
    eventually(Duration::from_secs(30), "slow subscriber dropped", || {
        let (client, url, body, murl) =
            (client.clone(), url.clone(), body.clone(), s.url("/metrics"));
        async move {
            for _ in 0..50 {
                client.put(&url).body(body.clone()).send().await.unwrap();
            }
            let text = scrape(&murl).await;
            (must(&text, "herald_subscribers_dropped_slow_total", "") >= 1.0).then_some(())
        }
    })
    .await;
    drop(sock);
}

#[tokio::test]
async fn metrics_listen_http_serves_metrics_only_there() {
    let s = TestServer::start(&["--metrics-listen-http", "127.0.0.1:0"]);
    let log = s.log_text();
    let marker = "metrics listening on http://";
    let start = log.find(marker).expect("metrics listener line") + marker.len();
    let addr: String = log[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    s.publish("ml", "hi").await;
    let text = scrape(&format!("http://{addr}/metrics")).await;
    promtool_check(&text);
    assert_eq!(must(&text, "herald_messages_published_total", ""), 1.0);
    // Not on the main port (ntfy's behaviour with metrics-listen-http).
    assert_eq!(s.get("/metrics").await.status(), 404);
    // Nothing else on the metrics port.
    let other = s
        .client
        .get(format!("http://{addr}/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn access_log_has_one_line_per_request_without_query_or_body() {
    let s = TestServer::launch(Launch {
        args: vec!["--log-format".into(), "json".into()],
        ..Launch::default()
    });
    let resp = s
        .client
        .put(s.url("/logged?title=query-secret&auth=abc123"))
        .body("body-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sub = s.stream("/logged/json?since=all&auth=abc123").await;
    assert_eq!(sub.next_json().await["event"], "open");
    assert_eq!(s.get("/nope/x/y/z").await.status(), 404);

    let lines: Vec<Value> = eventually(Duration::from_secs(10), "access log lines", || {
        let log = s.log_text();
        async move {
            let lines: Vec<Value> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "herald::access")
                .collect();
            (lines.len() >= 3).then_some(lines)
        }
    })
    .await;
    let publish = lines
        .iter()
        .find(|l| l["fields"]["route"] == "publish")
        .expect("publish line");
    let f = &publish["fields"];
    assert_eq!(f["method"], "PUT");
    assert_eq!(f["path"], "/logged");
    assert_eq!(f["status"], 200);
    assert_eq!(f["topic"], "logged");
    assert!(f["latency_ms"].as_f64().is_some(), "{publish}");
    let stream = lines
        .iter()
        .find(|l| l["fields"]["route"] == "subscribe_json")
        .expect("stream line");
    assert_eq!(stream["fields"]["path"], "/logged/json");
    assert_eq!(stream["fields"]["status"], 200);
    let missing = lines
        .iter()
        .find(|l| l["fields"]["status"] == 404)
        .expect("404 line");
    assert_eq!(missing["fields"]["route"], "other");

    let log = s.log_text();
    for secret in ["query-secret", "abc123", "body-secret"] {
        assert!(!log.contains(secret), "{secret:?} logged:\n{log}");
    }
}
