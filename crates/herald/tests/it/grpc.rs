//! The gRPC API (`listen-grpc`, docs/GRPC.md) through the real binary with a real
//! tonic client: publish over gRPC → received over HTTP and WebSocket and back,
//! subscribe with `since` and filters, poll, batch, delete/clear, errors with ntfy's
//! codes in the status details, the auth matrix, rate limits, health during drain,
//! metrics. Also run in cluster mode by `.ci/run` (HERALD_TEST_REDIS_URL).

use std::time::Duration;

use base64::Engine;
use herald::grpc::proto::herald_client::HeraldClient;
use herald::grpc::proto::{self, EventKind};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::auth::cli;
use crate::fixture::{EVENT_TIMEOUT, EXEMPT_HOSTS_ENV, Launch, TestServer};

/// A server with a gRPC listener on an ephemeral port, and `extra` flags.
fn grpc_server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--listen-grpc", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// The gRPC address the server logged (`gRPC listening on <addr>`).
fn grpc_url(server: &TestServer) -> String {
    let log = server.log_text();
    let addr = log
        .lines()
        .find_map(|l| l.split("gRPC listening on ").nth(1))
        .unwrap_or_else(|| panic!("no gRPC address in log:\n{log}"));
    let addr = addr
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap_or(addr);
    format!("http://{addr}")
}

async fn channel(server: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(grpc_url(server))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect over gRPC")
}

async fn client(server: &TestServer) -> HeraldClient<Channel> {
    HeraldClient::new(channel(server).await)
}

fn publish_req(topic: &str, text: &str) -> proto::PublishRequest {
    proto::PublishRequest {
        topic: topic.into(),
        message: text.into(),
        ..Default::default()
    }
}

fn sub_req(topics: &[&str], since: &str) -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        topics: topics.iter().map(|t| t.to_string()).collect(),
        since: since.into(),
        ..Default::default()
    }
}

/// `req` with an `authorization` header value.
fn with_auth<T>(req: T, auth: Option<&str>) -> Request<T> {
    let mut req = Request::new(req);
    if let Some(auth) = auth {
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("metadata value"));
    }
    req
}

fn basic(user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("Basic {}", b64.encode(format!("{user}:{pass}")))
}

/// The ntfy code in a status's `google.rpc.ErrorInfo`.
fn ntfy_code(status: &Status) -> u32 {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "herald");
    assert_eq!(info.reason, format!("NTFY_{}", info.metadata["code"]));
    info.metadata["code"].parse().expect("numeric code")
}

/// Each message's result of a `PublishBatch` that must itself succeed.
async fn batch_results(
    grpc: &mut HeraldClient<Channel>,
    batch: proto::PublishBatchRequest,
) -> Vec<proto::PublishResult> {
    grpc.publish_batch(batch)
        .await
        .expect("batch")
        .into_inner()
        .results
}

async fn next_event(stream: &mut tonic::Streaming<proto::Message>) -> proto::Message {
    tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("stream not ended")
}

#[tokio::test]
async fn publish_over_grpc_reaches_http_and_websocket_and_back() {
    let server = grpc_server(&[]);
    let mut grpc = client(&server).await;
    let mut http = server.stream("/t1/json").await;
    assert_eq!(http.next_json().await["event"], "open");
    let mut ws = server.ws("/t1/ws").await;
    assert_eq!(ws.next_json().await["event"], "open");
    let mut sub = grpc
        .subscribe(sub_req(&["t1"], ""))
        .await
        .expect("subscribe")
        .into_inner();
    let open = next_event(&mut sub).await;
    assert_eq!(open.event, EventKind::Open as i32);
    assert_eq!(open.topic, "t1");

    let sent = grpc
        .publish(proto::PublishRequest {
            title: "T".into(),
            priority: 4,
            tags: vec!["a".into(), "b".into()],
            ..publish_req("t1", "from grpc")
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(sent.event, EventKind::Message as i32);
    assert_eq!(sent.message, "from grpc");
    assert_eq!(sent.sequence_id, sent.id);
    assert!(sent.expires > sent.time, "cached: {sent:?}");
    let via_http = http.next_non_keepalive().await;
    assert_eq!(via_http["id"], sent.id.as_str());
    assert_eq!(via_http["message"], "from grpc");
    assert_eq!(via_http["title"], "T");
    assert_eq!(via_http["priority"], 4);
    assert_eq!(via_http["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(ws.next_json().await["id"], sent.id.as_str());
    assert_eq!(next_event(&mut sub).await.id, sent.id);

    // HTTP → gRPC, with the same ID on both.
    let posted = server.publish("t1", "from http").await;
    let got = next_event(&mut sub).await;
    assert_eq!(got.id, posted["id"].as_str().unwrap());
    assert_eq!(got.message, "from http");

    // Poll: both, in ID order, then the end.
    let mut poll = grpc
        .poll(sub_req(&["t1"], ""))
        .await
        .expect("poll")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(m) = poll.message().await.expect("poll stream") {
        ids.push(m.id);
    }
    assert_eq!(ids, vec![sent.id.clone(), got.id.clone()]);
}

#[tokio::test]
async fn subscribe_with_since_and_filters() {
    let server = grpc_server(&[]);
    let mut grpc = client(&server).await;
    let mut ids = Vec::new();
    for (text, priority, tags) in [
        ("one", 1, vec!["x"]),
        ("two", 5, vec!["x", "y"]),
        ("three", 5, vec![]),
    ] {
        let m = grpc
            .publish(proto::PublishRequest {
                priority,
                tags: tags.into_iter().map(String::from).collect(),
                ..publish_req("f1", text)
            })
            .await
            .expect("publish")
            .into_inner();
        ids.push(m.id);
    }
    let texts = |events: Vec<proto::Message>| -> Vec<String> {
        events.into_iter().map(|m| m.message).collect()
    };
    // since=<id>: what came after it; since=all with filters: the matching ones.
    let mut sub = grpc
        .subscribe(sub_req(&["f1"], &ids[0]))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(next_event(&mut sub).await.event, EventKind::Open as i32);
    let backlog = vec![next_event(&mut sub).await, next_event(&mut sub).await];
    assert_eq!(texts(backlog), ["two", "three"]);

    let filtered = proto::SubscribeRequest {
        priorities: vec![5],
        tags: vec!["y".into()],
        ..sub_req(&["f1", "other"], "all")
    };
    let mut sub = grpc
        .subscribe(filtered)
        .await
        .expect("subscribe")
        .into_inner();
    let open = next_event(&mut sub).await;
    assert_eq!(open.topic, "f1,other");
    assert_eq!(next_event(&mut sub).await.message, "two");
    // Live events pass the same filters: only the second arrives.
    grpc.publish(publish_req("f1", "no tags"))
        .await
        .expect("publish");
    grpc.publish(proto::PublishRequest {
        priority: 5,
        tags: vec!["y".into()],
        ..publish_req("other", "live match")
    })
    .await
    .expect("publish");
    assert_eq!(next_event(&mut sub).await.message, "live match");

    // since=latest: the last message only.
    let mut poll = grpc
        .poll(sub_req(&["f1"], "latest"))
        .await
        .expect("poll")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = poll.message().await.expect("poll") {
        got.push(m.message);
    }
    assert_eq!(got, ["no tags"]);
}

#[tokio::test]
async fn errors_carry_ntfy_codes() {
    let server = grpc_server(&["--message-size-limit", "1k"]);
    let mut grpc = client(&server).await;
    let cases: Vec<(proto::PublishRequest, Code, u32)> = vec![
        (
            proto::PublishRequest {
                priority: 9,
                ..publish_req("e1", "x")
            },
            Code::InvalidArgument,
            40007,
        ),
        (publish_req("no/t", "x"), Code::InvalidArgument, 40009),
        (publish_req("docs", "x"), Code::InvalidArgument, 40010),
        (
            proto::PublishRequest {
                delay: "1s".into(),
                ..publish_req("e1", "x")
            },
            Code::InvalidArgument,
            40005,
        ),
        (
            proto::PublishRequest {
                icon: "nope".into(),
                ..publish_req("e1", "x")
            },
            Code::InvalidArgument,
            40021,
        ),
        (
            publish_req("e1", &"x".repeat(1024)),
            Code::InvalidArgument,
            41301,
        ),
    ];
    for (req, code, ntfy) in cases {
        let status = grpc.publish(req.clone()).await.expect_err("refused");
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
        assert_eq!(ntfy_code(&status), ntfy, "{req:?}");
    }
    let status = grpc
        .subscribe(sub_req(&["e1"], "not-a-time"))
        .await
        .expect_err("bad since");
    assert_eq!(
        (status.code(), ntfy_code(&status)),
        (Code::InvalidArgument, 40008)
    );
    let status = grpc
        .delete(proto::SequenceRequest {
            topic: "e1".into(),
            sequence_id: "a b".into(),
        })
        .await
        .expect_err("bad sequence");
    assert_eq!(ntfy_code(&status), 40049);
    // Nothing refused was stored.
    let mut poll = grpc
        .poll(sub_req(&["e1"], "all"))
        .await
        .expect("poll")
        .into_inner();
    assert!(poll.message().await.expect("poll").is_none());
    // A call larger than the batch bound is refused from its length prefix.
    let huge = proto::PublishRequest {
        title: "x".repeat(40 << 20),
        ..publish_req("e1", "x")
    };
    let status = grpc.publish(huge).await.expect_err("too large");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );
}

#[tokio::test]
async fn batch_delete_and_clear() {
    let server = grpc_server(&[]);
    let mut grpc = client(&server).await;
    let mut http = server.stream("/b1/json").await;
    assert_eq!(http.next_json().await["event"], "open");
    let batch = proto::PublishBatchRequest {
        messages: vec![
            publish_req("b1", "first"),
            proto::PublishRequest {
                priority: 7,
                ..publish_req("b1", "bad")
            },
            proto::PublishRequest {
                sequence_id: "s1".into(),
                ..publish_req("b1", "seq")
            },
            publish_req("b1", "last"),
        ],
    };
    let results = batch_results(&mut grpc, batch).await;
    assert_eq!(results.len(), 4);
    use proto::publish_result::Result as R;
    let ok: Vec<proto::Message> = results
        .iter()
        .filter_map(|r| match &r.result {
            Some(R::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        ok.iter().map(|m| m.message.as_str()).collect::<Vec<_>>(),
        ["first", "seq", "last"]
    );
    match &results[1].result {
        Some(R::Error(e)) => {
            assert_eq!(
                (e.grpc_code, e.code, e.http),
                (Code::InvalidArgument as i32, 40007, 400)
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Delivered in batch order, IDs in the same order.
    for m in &ok {
        assert_eq!(http.next_non_keepalive().await["id"], m.id.as_str());
    }
    let mut sorted = ok.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(sorted, ok.iter().map(|m| m.id.clone()).collect::<Vec<_>>());

    let seq = proto::SequenceRequest {
        topic: "b1".into(),
        sequence_id: "s1".into(),
    };
    let cleared = grpc.clear(seq.clone()).await.expect("clear").into_inner();
    assert_eq!(
        (cleared.event, cleared.sequence_id.as_str()),
        (EventKind::MessageClear as i32, "s1")
    );
    let deleted = grpc.delete(seq).await.expect("delete").into_inner();
    assert_eq!(deleted.event, EventKind::MessageDelete as i32);
    assert_eq!(http.next_non_keepalive().await["event"], "message_clear");
    let event = http.next_non_keepalive().await;
    assert_eq!(
        (event["event"].as_str(), event["sequence_id"].as_str()),
        (Some("message_delete"), Some("s1"))
    );
}

/// `idempotency_key` (issue #20): a repeat gets the original message and publishes
/// nothing, concurrent repeats too; the key with other fields is FAILED_PRECONDITION
/// (42201); a bad key is INVALID_ARGUMENT (40000); in a batch each message has its own.
#[tokio::test]
async fn idempotency_key_publishes_once() {
    let server = grpc_server(&[]);
    let grpc = client(&server).await;
    let keyed = |text: &str, key: &str| proto::PublishRequest {
        idempotency_key: key.into(),
        ..publish_req("idem1", text)
    };
    let calls = (0..20).map(|_| {
        let mut grpc = grpc.clone();
        let req = keyed("once", "k-1");
        async move { grpc.publish(req).await.map(|r| r.into_inner().id) }
    });
    let ids: Vec<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("publish"))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one message: {ids:?}");
    let mut grpc = grpc;
    let again = grpc.publish(keyed("once", "k-1")).await.expect("repeat");
    assert_eq!(again.into_inner().id, ids[0]);
    let other = grpc
        .publish(keyed("changed", "k-1"))
        .await
        .expect_err("same key, other message");
    assert_eq!(
        (other.code(), ntfy_code(&other)),
        (Code::FailedPrecondition, 42201)
    );
    let bad = grpc
        .publish(keyed("x", "not\u{7f}ascii"))
        .await
        .expect_err("invalid key");
    assert_eq!(
        (bad.code(), ntfy_code(&bad)),
        (Code::InvalidArgument, 40000)
    );
    let batch = proto::PublishBatchRequest {
        messages: vec![
            keyed("once", "k-1"),
            keyed("second", "k-2"),
            keyed("second", "k-2"),
        ],
    };
    let results = batch_results(&mut grpc, batch).await;
    use proto::publish_result::Result as R;
    let batch_ids: Vec<String> = results
        .iter()
        .map(|r| match &r.result {
            Some(R::Message(m)) => m.id.clone(),
            other => panic!("expected a message, got {other:?}"),
        })
        .collect();
    assert_eq!(batch_ids[0], ids[0]);
    assert_eq!(batch_ids[1], batch_ids[2]);
    let texts: Vec<String> = server
        .poll("idem1", "since=all")
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts, ["once", "second"]);
}

#[tokio::test]
async fn auth_matrix_matches_http() {
    let server = grpc_server(&["--auth-default-access", "deny-all"]);
    // In cluster mode (HERALD_TEST_REDIS_URL) the users live in Redis.
    let cluster = server.cluster_args();
    let run = |args: &[&str], password: Option<&str>| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(cluster.iter().map(String::as_str));
        cli(&server, &all, password)
    };
    run(
        &["user", "add", "--role", "admin", "ben"],
        Some("admin-secret"),
    );
    run(&["user", "add", "phil"], Some("phil-secret"));
    run(&["access", "phil", "ro-*", "ro"], None);
    let token = run(&["token", "add", "ben"], None);
    let token = token
        .split_whitespace()
        .find(|w| w.starts_with("tk_"))
        .expect("token")
        .to_string();
    let mut grpc = client(&server).await;
    let bearer = format!("Bearer {token}");
    // In cluster mode a node learns the CLI's changes from Redis within ~250 ms
    // (docs/SCALING.md): wait until the last one (the token) is known.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let known = reqwest::Client::new()
            .get(server.url("/v1/account"))
            .header("authorization", &bearer)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if known || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = basic("ben", "admin-secret");
    let phil = basic("phil", "phil-secret");
    let wrong = basic("phil", "wrong");
    // (who, topic, publish code, subscribe code)
    let cases: Vec<(Option<&str>, &str, Code, Code)> = vec![
        (None, "ro-a", Code::PermissionDenied, Code::PermissionDenied),
        (Some(&admin), "ro-a", Code::Ok, Code::Ok),
        (Some(&bearer), "x", Code::Ok, Code::Ok),
        (Some(&phil), "ro-a", Code::PermissionDenied, Code::Ok),
        (
            Some(&phil),
            "x",
            Code::PermissionDenied,
            Code::PermissionDenied,
        ),
        (
            Some(&wrong),
            "ro-a",
            Code::Unauthenticated,
            Code::Unauthenticated,
        ),
    ];
    for (who, topic, publish, subscribe) in cases {
        let got = grpc
            .publish(with_auth(publish_req(topic, "hi"), who))
            .await
            .map_or_else(|s| s.code(), |_| Code::Ok);
        assert_eq!(got, publish, "publish {who:?} {topic}");
        let got = grpc
            .poll(with_auth(sub_req(&[topic], "all"), who))
            .await
            .map_or_else(|s| s.code(), |_| Code::Ok);
        assert_eq!(got, subscribe, "poll {who:?} {topic}");
        // HTTP gives the same answer.
        let mut req = server
            .client
            .put(server.url(&format!("/{topic}")))
            .body("hi");
        if let Some(who) = who {
            req = req.header("Authorization", who);
        }
        let http = req.send().await.expect("http publish").status().as_u16();
        let expected = match publish {
            Code::Ok => 200,
            Code::PermissionDenied => 403,
            _ => 401,
        };
        assert_eq!(http, expected, "http {who:?} {topic}");
    }
    // A multi-topic subscription needs read on every topic.
    let status = grpc
        .subscribe(with_auth(sub_req(&["ro-a", "x"], ""), Some(&phil)))
        .await
        .expect_err("no read on x");
    assert_eq!(
        (status.code(), ntfy_code(&status)),
        (Code::PermissionDenied, 40301)
    );
}

#[tokio::test]
async fn rate_limits_are_resource_exhausted_with_retry() {
    let server = TestServer::launch(Launch {
        args: [
            "--listen-grpc",
            "127.0.0.1:0",
            "--visitor-message-daily-limit",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        envs: vec![(EXEMPT_HOSTS_ENV.to_string(), String::new())],
        ..Launch::default()
    });
    let mut grpc = client(&server).await;
    for i in 0..2 {
        grpc.publish(publish_req("r1", &format!("m{i}")))
            .await
            .expect("within the limit");
    }
    let status = grpc
        .publish(publish_req("r1", "over"))
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(ntfy_code(&status), 42908);
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d >= Duration::from_secs(1)),
        "{retry:?}"
    );
    assert!(status.metadata().get("retry-after").is_some());
    // The same visitor over HTTP is over the limit too (one count per visitor).
    let resp = server
        .client
        .put(server.url("/r1"))
        .body("x")
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 429);
    // A batch: each message refused on its own.
    let batch = proto::PublishBatchRequest {
        messages: vec![publish_req("r1", "a")],
    };
    let results = batch_results(&mut grpc, batch).await;
    match &results[0].result {
        Some(proto::publish_result::Result::Error(e)) => {
            assert_eq!(
                (e.grpc_code, e.code),
                (Code::ResourceExhausted as i32, 42908)
            );
            assert!(e.retry_after_seconds >= 1);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn health_metrics_and_drain() {
    let mut server = grpc_server(&["--shutdown-timeout", "5s"]);
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone());
    // SERVING exactly when /readyz answers 200 (in cluster mode, once the log
    // reader runs).
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    while server.get("/readyz").await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "herald.v1.Herald"] {
        let status = health
            .check(check(service))
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert_eq!(
        health
            .check(check("nope"))
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
    let mut grpc = HeraldClient::new(channel.clone());
    grpc.publish(publish_req("h1", "x")).await.expect("publish");
    let _ = grpc
        .publish(proto::PublishRequest {
            priority: 9,
            ..publish_req("h1", "x")
        })
        .await;
    let metrics = server.get("/metrics").await.text().await.expect("metrics");
    for line in [
        "herald_grpc_requests_total{method=\"Publish\",code=\"OK\"} 1",
        "herald_grpc_requests_total{method=\"Publish\",code=\"INVALID_ARGUMENT\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("herald::access") && l.contains("Publish") && l.contains("grpc")),
        "access log:\n{log}"
    );

    let mut watch = health.watch(check("")).await.expect("watch").into_inner();
    let first = watch.message().await.expect("watch").expect("first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut sub = grpc
        .subscribe(sub_req(&["h1"], ""))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(next_event(&mut sub).await.event, EventKind::Open as i32);

    // SIGTERM: the stream ends with UNAVAILABLE (a clean status, not a reset), and
    // Watch reports NOT_SERVING before it ends.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let end = tokio::time::timeout(EVENT_TIMEOUT, sub.message())
        .await
        .expect("stream ends in time");
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(ntfy_code(&status), 50301);
    let next = tokio::time::timeout(EVENT_TIMEOUT, watch.message())
        .await
        .expect("watch answers in time");
    if let Ok(Some(m)) = next {
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    } else {
        panic!("watch ended without NOT_SERVING: {next:?}");
    }
    assert!(server.wait_for_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn slow_subscriber_is_cut_off_past_the_queue_size() {
    let server = grpc_server(&[
        "--subscriber-queue-size",
        "16",
        "--message-size-limit",
        "8k",
    ]);
    // Small HTTP/2 windows on the client, so flow control holds the server back soon.
    let channel = tonic::transport::Endpoint::from_shared(grpc_url(&server))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut grpc = HeraldClient::new(channel);
    let mut sub = grpc
        .subscribe(sub_req(&["slow"], ""))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(next_event(&mut sub).await.event, EventKind::Open as i32);
    // Not reading: about 2.4 MB waits for a reader that does not come.
    let body = "x".repeat(6000);
    for _ in 0..400 {
        server.publish("slow", &body).await;
    }
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(EVENT_TIMEOUT, sub.message()).await {
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => panic!("ended without a status after {received}"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("stream neither ended nor delivered (after {received})"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        received < 400,
        "cut off, not delivered in full ({received})"
    );
    // The publisher was never held up, and the history has everything.
    let mut poll = grpc
        .poll(sub_req(&["slow"], "all"))
        .await
        .expect("poll")
        .into_inner();
    let mut stored = 0;
    while poll.message().await.expect("poll").is_some() {
        stored += 1;
    }
    assert_eq!(stored, 400);
}

/// `herald bench --transport grpc` and `--publish-transport grpc` (PublishBatch):
/// every message delivered once, in order, next to WebSocket subscribers.
#[test]
fn bench_over_grpc_delivers_everything_in_order() {
    let server = grpc_server(&[]);
    let grpc = grpc_url(&server);
    for publish in [
        &["--rate", "50"][..],
        &[
            "--publish-transport",
            "grpc",
            "--batch",
            "10",
            "--rate",
            "200",
        ][..],
    ] {
        let output = crate::fixture::herald_command()
            .args(["bench", "--url", server.base(), "--grpc-url", &grpc])
            .args([
                "--subscribers",
                "10",
                "--transport",
                "grpc,ws",
                "--topics",
                "2",
            ])
            .args(["--publishers", "2", "--duration", "1", "--quiet"])
            .args(publish)
            .output()
            .expect("run herald bench");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("JSON report");
        let d = &report["delivery"];
        assert!(d["expected"].as_u64().is_some_and(|n| n > 0), "{report:#}");
        assert_eq!(d["delivered"], d["expected"], "{report:#}");
        for key in ["duplicates", "out_of_order", "foreign", "protocol_errors"] {
            assert_eq!(d[key], 0, "{key} in {report:#}");
        }
        assert_eq!(report["connections"]["established"], 10, "{report:#}");
        assert_eq!(report["publish"]["errors"], 0, "{report:#}");
    }
}

/// `PublishRequest.file` (issue #14 over gRPC): uploaded as HTTP uploads a body, served
/// at the attachment's URL; refused with HTTP's codes and nothing left behind.
#[tokio::test]
async fn file_upload_over_grpc() {
    use crate::attachments::{file_path, files_in, jpeg};
    // One node; in cluster mode (HERALD_TEST_REDIS_URL) a directory must be declared
    // shared, which it trivially is.
    let (server, dir) = crate::attachments::server(&[
        "--listen-grpc",
        "127.0.0.1:0",
        "--attachment-cache-dir-shared",
        "true",
    ]);
    let mut grpc = client(&server).await;
    let body = jpeg(100_000);
    let sent = grpc
        .publish(proto::PublishRequest {
            file: body.clone(),
            filename: "snapshot.jpg".into(),
            ..publish_req("cam", "")
        })
        .await
        .expect("publish with a file")
        .into_inner();
    let attachment = sent.attachment.expect("attachment");
    assert_eq!(
        (
            attachment.name.as_str(),
            attachment.r#type.as_str(),
            attachment.size
        ),
        ("snapshot.jpg", "image/jpeg", 100_000)
    );
    assert_eq!(sent.message, "You received a file: snapshot.jpg");
    let resp = server.get(&file_path(&attachment.url)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("file").to_vec(), body);
    let stored = files_in(dir.path());

    for (req, grpc_code, code) in [
        (
            proto::PublishRequest {
                file: jpeg(10),
                attach: "https://example.com/a.jpg".into(),
                ..publish_req("cam", "")
            },
            Code::InvalidArgument,
            40000,
        ),
        (
            proto::PublishRequest {
                file: jpeg((4 << 20) + 1),
                ..publish_req("cam", "")
            },
            Code::InvalidArgument,
            41301,
        ),
        (
            proto::PublishRequest {
                file: jpeg(10),
                delay: "1h".into(),
                priority: 9,
                ..publish_req("cam", "")
            },
            Code::InvalidArgument,
            40007,
        ),
    ] {
        let err = grpc.publish(req).await.expect_err("refused");
        assert_eq!((err.code(), ntfy_code(&err)), (grpc_code, code), "{err:?}");
    }
    assert_eq!(
        files_in(dir.path()),
        stored,
        "a refused upload leaves nothing"
    );

    let plain = grpc_server(&[]);
    let err = client(&plain)
        .await
        .publish(proto::PublishRequest {
            file: jpeg(10),
            ..publish_req("cam", "")
        })
        .await
        .expect_err("no attachment store");
    assert_eq!(ntfy_code(&err), 40014);
}
