//! Subscribing: JSON/SSE/raw/WebSocket framing, keepalives, multiple topics,
//! polling, `since=`, filters, ordering, slow subscribers and limits
//! (docs/COMPATIBILITY.md §3).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::fixture::{
    TestServer, assert_key_set, assert_keys_in_order, expect_error, parse_sse, texts,
};

fn assert_open(ev: &Value, topic: &str) {
    assert_eq!(ev["event"], "open", "{ev}");
    assert_eq!(ev["topic"], topic, "{ev}");
    assert_key_set(ev, &["id", "time", "event", "topic"]);
}

#[tokio::test]
async fn json_stream_framing() {
    let s = TestServer::start(&[]);
    let mut sub = s.stream("/jt/json").await;
    assert_eq!(sub.content_type, "application/x-ndjson; charset=utf-8");
    let open = sub.next_line().await;
    assert_keys_in_order(&open, &["id", "time", "event", "topic"]);
    assert_open(&serde_json::from_str(&open).unwrap(), "jt");
    let published = s.publish("jt", "hello json").await;
    let line = sub.next_line().await;
    assert_keys_in_order(
        &line,
        &["id", "time", "expires", "event", "topic", "message"],
    );
    let live: Value = serde_json::from_str(&line).unwrap();
    // The stream carries exactly the publish response object.
    assert_eq!(live, published);
    assert!(live.get("sequence_id").is_none());
}

#[tokio::test]
async fn sse_stream_framing() {
    let s = TestServer::start(&["--keepalive-interval", "1s"]);
    let mut sub = s.stream("/st/sse").await;
    assert_eq!(sub.content_type, "text/event-stream; charset=utf-8");
    let open = sub.next_sse_raw().await;
    assert!(open.starts_with("event: open\ndata: {"), "{open:?}");
    let (name, data) = parse_sse(&open);
    assert_eq!(name.as_deref(), Some("open"));
    assert_open(&data, "st");

    let published = s.publish("st", "hello sse").await;
    // Skip keepalives until the message; a message frame has no `event:` line.
    loop {
        let frame = sub.next_sse_raw().await;
        let (name, data) = parse_sse(&frame);
        if name.as_deref() == Some("keepalive") {
            assert!(frame.starts_with("event: keepalive\ndata: "), "{frame:?}");
            assert_eq!(data["event"], "keepalive");
            assert_eq!(data["topic"], "st");
            continue;
        }
        assert!(frame.starts_with("data: {"), "{frame:?}");
        assert_keys_in_order(
            frame.strip_prefix("data: ").unwrap(),
            &["id", "time", "expires", "event", "topic", "message"],
        );
        assert_eq!(name, None);
        assert_eq!(data, published);
        break;
    }
    // Keepalives keep coming with --keepalive-interval 1s.
    let (name, data) = sub.next_sse().await;
    assert_eq!(name.as_deref(), Some("keepalive"));
    assert_key_set(&data, &["id", "time", "event", "topic"]);
}

#[tokio::test]
async fn raw_stream_framing() {
    let s = TestServer::start(&["--keepalive-interval", "1s"]);
    let mut sub = s.stream("/rt/raw").await;
    assert_eq!(sub.content_type, "text/plain; charset=utf-8");
    // `open` is an empty line.
    assert_eq!(sub.next_line().await, "");
    s.client
        .put(s.url("/rt"))
        .body("line one\nline two")
        .send()
        .await
        .unwrap();
    // Message text with newlines flattened; keepalives are empty lines.
    let mut line = sub.next_line().await;
    while line.is_empty() {
        line = sub.next_line().await;
    }
    assert_eq!(line, "line one line two");
    assert_eq!(sub.next_line().await, "", "keepalive as an empty line");
}

#[tokio::test]
async fn json_keepalive_events() {
    let s = TestServer::start(&["--keepalive-interval", "1s"]);
    let mut sub = s.stream("/ka1,ka2/json").await;
    assert_open(&sub.next_json().await, "ka1,ka2");
    for _ in 0..2 {
        let ka = sub.next_json().await;
        assert_eq!(ka["event"], "keepalive", "{ka}");
        assert_eq!(ka["topic"], "ka1,ka2");
        assert_key_set(&ka, &["id", "time", "event", "topic"]);
    }
}

#[tokio::test]
async fn websocket_framing_and_pings() {
    let s = TestServer::start(&["--keepalive-interval", "1s"]);
    let mut ws = s.ws("/w1,w2/ws").await;
    let open = ws.next_json().await;
    assert_open(&open, "w1,w2");
    let published = s.publish("w2", "hello ws").await;
    let m = ws.next_json().await;
    assert_eq!(m["event"], "message");
    assert_eq!(m["id"], published["id"]);
    assert_eq!(m["message"], "hello ws");
    assert_eq!(m["topic"], "w2");
    // WS frames keep `sequence_id` even when it equals the id.
    assert_eq!(m["sequence_id"], m["id"], "{m}");

    // Keepalive on WebSocket: PING control frames, never JSON keepalive events.
    let mut pings = 0;
    while pings < 2 {
        match ws.next_frame().await {
            WsMessage::Ping(_) => pings += 1,
            WsMessage::Text(t) => panic!("unexpected text frame {t}"),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // Still alive after answering pings (tungstenite answers them automatically).
    let published = s.publish("w1", "after pings").await;
    assert_eq!(ws.next_json().await["id"], published["id"]);
    ws.close().await;
}

/// `ws?poll=1` as ntfy: the cached messages (no `open`), then the socket ends.
#[tokio::test]
async fn websocket_poll_sends_cache_then_closes() {
    let s = TestServer::start(&[]);
    let first = s.publish("wsp", "one").await;
    let second = s.publish("wsp", "two").await;
    let mut ws = s.ws("/wsp/ws?poll=1").await;
    assert_eq!(ws.next_json().await["id"], first["id"]);
    assert_eq!(ws.next_json().await["id"], second["id"]);
    match ws.next_frame().await {
        WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a normal close, got {other:?}"),
    }
    // A poll of an empty topic closes at once.
    let mut empty = s.ws("/wsp-empty/ws?poll=1").await;
    assert!(matches!(empty.next_frame().await, WsMessage::Close(_)));
}

#[tokio::test]
async fn websocket_route_requires_upgrade() {
    let s = TestServer::start(&[]);
    expect_error(s.get("/t/ws").await, 400, 40016).await;
}

#[tokio::test]
async fn multiple_topics() {
    let s = TestServer::start(&[]);
    let mut sub = s.stream("/ma,mb/json").await;
    assert_open(&sub.next_json().await, "ma,mb");
    s.publish("ma", "to a").await;
    s.publish("mc", "to c").await;
    s.publish("mb", "to b").await;
    let first = sub.next_non_keepalive().await;
    assert_eq!(
        (first["topic"].as_str(), first["message"].as_str()),
        (Some("ma"), Some("to a"))
    );
    let second = sub.next_non_keepalive().await;
    assert_eq!(
        (second["topic"].as_str(), second["message"].as_str()),
        (Some("mb"), Some("to b"))
    );
    // Poll over several topics merges them in time order.
    assert_eq!(texts(&s.poll("ma,mb", "").await), ["to a", "to b"]);
    assert_eq!(texts(&s.poll("mb,mc", "since=all").await), ["to c", "to b"]);
}

#[tokio::test]
async fn poll_and_backlog() {
    let s = TestServer::start(&[]);
    for i in 1..=3 {
        s.publish("pb", &format!("m{i}")).await;
    }
    // poll=1: no open event, since defaults to all, response ends.
    let polled = s.poll("pb", "").await;
    assert_eq!(polled.len(), 3);
    assert!(polled.iter().all(|e| e["event"] == "message"));
    assert_eq!(texts(&polled), ["m1", "m2", "m3"]);
    // poll aliases.
    let resp = s.get("/pb/json?po=1").await;
    assert_eq!(
        texts(&crate::fixture::parse_ndjson(&resp.text().await.unwrap())).len(),
        3
    );
    let resp = s
        .client
        .get(s.url("/pb/json"))
        .header("X-Poll", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        texts(&crate::fixture::parse_ndjson(&resp.text().await.unwrap())).len(),
        3
    );
    // poll on SSE and raw framings.
    let sse = s.get("/pb/sse?poll=1").await.text().await.unwrap();
    assert_eq!(sse.matches("data: ").count(), 3, "{sse}");
    assert!(!sse.contains("event: open"), "{sse}");
    let raw = s.get("/pb/raw?poll=1").await.text().await.unwrap();
    assert_eq!(raw, "m1\nm2\nm3\n");

    // A stream without since: open, then only live messages.
    let mut live = s.stream("/pb/json").await;
    assert_open(&live.next_json().await, "pb");
    s.publish("pb", "m4").await;
    assert_eq!(live.next_non_keepalive().await["message"], "m4");
    // A stream with since=all: open, backlog, live, no duplicates.
    let mut all = s.stream("/pb/json?since=all").await;
    assert_open(&all.next_json().await, "pb");
    for want in ["m1", "m2", "m3", "m4"] {
        assert_eq!(all.next_non_keepalive().await["message"], want);
    }
    s.publish("pb", "m5").await;
    assert_eq!(all.next_non_keepalive().await["message"], "m5");
}

#[tokio::test]
async fn since_variants() {
    let s = TestServer::start(&[]);
    let m1 = s.publish("sv", "one").await;
    let m2 = s.publish("sv", "two").await;
    let m3 = s.publish("sv", "three").await;
    s.publish("other", "other topic").await;
    let id = |m: &Value| m["id"].as_str().unwrap().to_string();

    assert_eq!(
        texts(&s.poll("sv", "since=all").await),
        ["one", "two", "three"]
    );
    assert!(s.poll("sv", "since=none").await.is_empty());
    assert_eq!(texts(&s.poll("sv", "since=latest").await), ["three"]);
    assert_eq!(
        texts(&s.poll("sv,other", "since=latest").await).len(),
        2,
        "latest of each topic"
    );
    assert_eq!(
        texts(&s.poll("sv", &format!("since={}", id(&m1))).await),
        ["two", "three"]
    );
    assert_eq!(
        texts(&s.poll("sv", &format!("since={}", id(&m2))).await),
        ["three"]
    );
    assert!(s.poll("sv", &format!("since={}", id(&m3))).await.is_empty());
    // The marker's own topic does not matter.
    let other_marker = s.publish("marker", "m").await;
    assert!(
        s.poll("sv", &format!("since={}", id(&other_marker)))
            .await
            .is_empty()
    );
    // Unknown ID: everything.
    assert_eq!(texts(&s.poll("sv", "since=zzzzzzzzzzzz").await).len(), 3);
    // Unix time, inclusive.
    let t1 = m1["time"].as_i64().unwrap();
    assert_eq!(texts(&s.poll("sv", &format!("since={t1}")).await).len(), 3);
    let later = m3["time"].as_i64().unwrap() + 1;
    assert!(s.poll("sv", &format!("since={later}")).await.is_empty());
    // Go duration.
    assert_eq!(texts(&s.poll("sv", "since=1h").await).len(), 3);
    assert_eq!(texts(&s.poll("sv", "since=1h30m").await).len(), 3);
    // Alias `si` and header `X-Since`.
    assert_eq!(texts(&s.poll("sv", "si=latest").await), ["three"]);
    let resp = s
        .client
        .get(s.url("/sv/json?poll=1"))
        .header("X-Since", "none")
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().trim().is_empty());
    // Invalid: no `d` unit for since, and garbage.
    for bad in ["1d", "yesterday", "abc"] {
        expect_error(
            s.get(&format!("/sv/json?poll=1&since={bad}")).await,
            400,
            40008,
        )
        .await;
    }
    // Also on streams.
    expect_error(s.get("/sv/json?since=1d").await, 400, 40008).await;
}

#[tokio::test]
async fn filters() {
    let s = TestServer::start(&[]);
    let put = |prio: &'static str, tags: &'static str, title: &'static str, msg: &'static str| {
        let mut req = s.client.put(s.url("/ft")).body(msg);
        if !prio.is_empty() {
            req = req.header("X-Priority", prio);
        }
        if !tags.is_empty() {
            req = req.header("X-Tags", tags);
        }
        if !title.is_empty() {
            req = req.header("X-Title", title);
        }
        async move {
            let resp = req.send().await.unwrap();
            crate::fixture::expect_json(resp, 200).await
        }
    };
    put("1", "a,b", "T1", "p1").await;
    put("", "a", "", "unset").await;
    put("4", "b,c", "T2", "p4").await;
    let p5 = put("5", "a,b,c", "T1", "p5").await;

    assert_eq!(texts(&s.poll("ft", "priority=4,5").await), ["p4", "p5"]);
    assert_eq!(
        texts(&s.poll("ft", "p=3").await),
        ["unset"],
        "unset counts as 3"
    );
    assert_eq!(texts(&s.poll("ft", "prio=min,high").await), ["p1", "p4"]);
    assert_eq!(
        texts(&s.poll("ft", "tags=a,b").await),
        ["p1", "p5"],
        "tags AND"
    );
    assert_eq!(texts(&s.poll("ft", "ta=c").await), ["p4", "p5"]);
    assert_eq!(texts(&s.poll("ft", "title=T1").await), ["p1", "p5"]);
    assert_eq!(texts(&s.poll("ft", "message=unset").await), ["unset"]);
    assert_eq!(
        texts(
            &s.poll("ft", &format!("id={}", p5["id"].as_str().unwrap()))
                .await
        ),
        ["p5"]
    );
    assert_eq!(texts(&s.poll("ft", "title=T1&priority=5").await), ["p5"]);
    expect_error(s.get("/ft/json?poll=1&priority=9").await, 400, 40007).await;

    // Filters apply to live messages too.
    let mut sub = s.stream("/ft/json?priority=high&tags=x").await;
    assert_open(&sub.next_json().await, "ft");
    put("4", "y", "", "filtered out").await;
    put("3", "x", "", "filtered out too").await;
    put("4", "x,y", "", "passes").await;
    assert_eq!(sub.next_non_keepalive().await["message"], "passes");
}

#[tokio::test]
async fn per_topic_order_ws_and_sse() {
    const N: usize = 200;
    let s = TestServer::start(&[]);
    let mut ws = s.ws("/order/ws").await;
    assert_eq!(ws.next_json().await["event"], "open");
    let mut sse = s.stream("/order/sse").await;
    assert_eq!(sse.next_sse().await.0.as_deref(), Some("open"));

    let ws_reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            let m = ws.next_json().await;
            got.push(m["message"].as_str().unwrap().to_string());
        }
        got
    });
    let sse_reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            let (name, data) = sse.next_sse().await;
            if name.is_none() {
                got.push(data["message"].as_str().unwrap().to_string());
            }
        }
        got
    });
    let mut want = Vec::with_capacity(N);
    for i in 0..N {
        let text = format!("msg {i:03}");
        s.publish("order", &text).await;
        want.push(text);
    }
    let got_ws = tokio::time::timeout(Duration::from_secs(30), ws_reader)
        .await
        .unwrap()
        .unwrap();
    let got_sse = tokio::time::timeout(Duration::from_secs(30), sse_reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got_ws, want, "WebSocket order");
    assert_eq!(got_sse, want, "SSE order");
    assert_eq!(texts(&s.poll("order", "").await), want, "stored order");
}

/// Opens `GET path` on a socket with a tiny receive buffer and never reads it.
async fn non_reading_subscriber(base: &str, path: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_disconnected_others_keep_receiving() {
    // Large messages, so that the kernel's socket buffers (several MB on loopback)
    // fill after a few dozen messages and the server-side queue of 8 overflows.
    let s = TestServer::start(&[
        "--subscriber-queue-size",
        "8",
        "--message-size-limit",
        "64k",
    ]);
    let mut slow = non_reading_subscriber(s.base(), "/slow/json").await;
    let mut fast = s.stream("/slow/json").await;
    assert_open(&fast.next_json().await, "slow");

    let reader = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let ev = fast.next_non_keepalive().await;
            if ev["message"] == "done" {
                return n;
            }
            n += 1;
        }
    });
    let body = "x".repeat(60_000);
    let mut total = 0;
    while total < 600 {
        s.publish("slow", &body).await;
        total += 1;
        // Enough to overflow any plausible socket buffers; stop early once the
        // server says it cut the subscriber off (the wire check follows below).
        if total >= 100 && total % 20 == 0 && s.log_text().contains("too slow") {
            break;
        }
    }
    s.publish("slow", "done").await;
    let received = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, total, "the reading subscriber got everything");

    // The non-reading one was cut off: once it reads, its stream ends short.
    let mut got = Vec::new();
    let read_all = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut got)).await;
    let delivered = String::from_utf8_lossy(&got)
        .matches("\"event\":\"message\"")
        .count();
    assert!(
        read_all.is_ok(),
        "slow subscriber's connection was not closed; read {} bytes ({delivered} messages)",
        got.len(),
    );
    assert!(
        delivered < total,
        "slow subscriber received all {delivered} messages; expected a disconnect"
    );
}

#[tokio::test]
async fn subscription_limit() {
    // Loopback is exempt from visitor limits by default in tests; not here.
    let s = TestServer::launch(crate::fixture::Launch {
        args: vec!["--visitor-subscription-limit".into(), "2".into()],
        envs: vec![(crate::fixture::EXEMPT_HOSTS_ENV.into(), String::new())],
        ..Default::default()
    });
    let mut a = s.stream("/lim1/json").await;
    a.next_json().await;
    let mut b = s.ws("/lim2,lim3/ws").await;
    b.next_json().await;
    expect_error(s.get("/lim4/json").await, 429, 42903).await;
    expect_error(s.get("/lim4/sse").await, 429, 42903).await;
    // Polling is not a subscription.
    assert!(s.poll("lim4", "").await.is_empty());
    // Closing one frees its slot.
    drop(a);
    let s = &s;
    crate::fixture::eventually(Duration::from_secs(10), "slot freed", || async move {
        let resp = s.client.get(s.url("/lim5/json")).send().await.unwrap();
        (resp.status() == 200).then_some(())
    })
    .await;
    b.close().await;
}
