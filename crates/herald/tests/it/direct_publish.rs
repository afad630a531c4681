//! The listener's direct publish path (`listener::publish`): plain publishes
//! answered without hyper, over raw sockets, each compared with the answer hyper
//! and the API give the same request (sent with a chunked body, which the direct
//! path leaves to them), and the fall-back to hyper in the middle of a connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixture::{EXEMPT_HOSTS_ENV, Launch, TestServer};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(s: &TestServer) -> TcpStream {
    let addr = s.base().trim_start_matches("http://").to_string();
    TcpStream::connect(addr).await.expect("connect")
}

/// One answer read from a connection: its head and body.
#[derive(Debug)]
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The answer with what differs between two equal requests (the date, the
    /// message's ID and times, a `Retry-After` second) blanked out.
    fn normalized(&self) -> String {
        let head: Vec<&str> = self
            .head
            .split("\r\n")
            .map(|l| {
                if l.starts_with("date: ") {
                    "date: X"
                } else if l.starts_with("retry-after: ") {
                    "retry-after: X"
                } else {
                    l
                }
            })
            .collect();
        let mut body = self.body.clone();
        for key in ["\"id\":", "\"time\":", "\"expires\":"] {
            if let Some(start) = body.find(key) {
                let from = start + key.len();
                let end = body[from..]
                    .find([',', '}'])
                    .map_or(body.len(), |e| from + e);
                body.replace_range(from..end, "X");
            }
        }
        format!("{}\r\n\r\n{body}", head.join("\r\n"))
    }
}

/// Reads one `Content-Length` answer from `stream`, keeping what follows in `buf`.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Answer> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some(Answer { head, body });
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closes `stream` (after whatever it still sends).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

/// A plain publish (`Content-Length`): served by the direct path.
fn plain(method: &str, topic: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} /{topic} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The same publish with a chunked body: left to hyper and the API.
fn chunked(method: &str, topic: &str, headers: &str, body: &str) -> String {
    let chunk = if body.is_empty() {
        String::new()
    } else {
        format!("{:x}\r\n{body}\r\n", body.len())
    };
    format!(
        "{method} /{topic} HTTP/1.1\r\nHost: x\r\n{headers}Transfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"
    )
}

/// Sends `request` on a new connection and reads one answer.
async fn ask(s: &TestServer, request: &str) -> Answer {
    let mut stream = connect(s).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    read_answer(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|| panic!("no answer to {request:?}"))
}

/// The counter of publishes the direct path answered.
async fn direct_publishes(s: &TestServer) -> f64 {
    let text = s.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("herald_http_direct_publishes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no direct publish counter in:\n{text}"))
}

/// `request` answered by the direct path and, as `fallback`, by hyper: the same
/// answer, apart from the message's ID and times and the date.
async fn same_answer(s: &TestServer, request: &str, fallback: &str) -> Answer {
    let before = direct_publishes(s).await;
    let direct = ask(s, request).await;
    assert_eq!(direct_publishes(s).await, before + 1.0, "{request:?}");
    let hyper = ask(s, fallback).await;
    assert_eq!(direct_publishes(s).await, before + 1.0, "{fallback:?}");
    assert_eq!(direct.normalized(), hyper.normalized(), "{request:?}");
    direct
}

#[tokio::test]
async fn direct_answers_are_the_apis() {
    let s = TestServer::start(&[]);
    let headers = "Title: hello\r\nTags: a,b\r\nPriority: 4\r\nOrigin: http://example.org\r\n";
    let ok = same_answer(
        &s,
        &plain("POST", "t1", headers, "hi there"),
        &chunked("POST", "t1", headers, "hi there"),
    )
    .await;
    assert_eq!(ok.status(), 200, "{ok:?}");
    assert!(ok.head.starts_with("HTTP/1.1 200 OK\r\n"), "{ok:?}");
    assert!(ok.body.contains("\"message\":\"hi there\""), "{ok:?}");
    assert!(ok.body.contains("\"title\":\"hello\""), "{ok:?}");
    // PUT, an empty body with `message=` in the query.
    let ok = same_answer(
        &s,
        "PUT /t1?message=from%20query&x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        &chunked("PUT", "t1?message=from%20query&x=1", "", ""),
    )
    .await;
    assert!(ok.body.contains("\"message\":\"from query\""), "{ok:?}");
    // A bad parameter: ntfy's error shape, from the same code.
    let bad = same_answer(
        &s,
        &plain("POST", "t1", "Priority: 9\r\n", "x"),
        &chunked("POST", "t1", "Priority: 9\r\n", "x"),
    )
    .await;
    assert_eq!(bad.status(), 400, "{bad:?}");
    assert!(bad.body.contains("\"code\":40007"), "{bad:?}");
    // A reserved topic name.
    let bad = same_answer(
        &s,
        &plain("POST", "docs", "", "x"),
        &chunked("POST", "docs", "", "x"),
    )
    .await;
    assert_eq!(bad.status(), 400, "{bad:?}");
    // HTTP/1.0, with and without keep-alive.
    for (connection, keep) in [("", false), ("Connection: keep-alive\r\n", true)] {
        let request = format!("POST /t1 HTTP/1.0\r\n{connection}Content-Length: 2\r\n\r\nhi");
        let mut stream = connect(&s).await;
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let a = read_answer(&mut stream, &mut buf).await.expect("answer");
        assert!(a.head.starts_with("HTTP/1.0 200 OK\r\n"), "{a:?}");
        assert_eq!(a.head.contains("connection: keep-alive"), keep, "{a:?}");
        if keep {
            stream.write_all(request.as_bytes()).await.expect("write");
            let again = read_answer(&mut stream, &mut buf).await.expect("answer");
            assert_eq!(again.status(), 200, "{again:?}");
        } else {
            assert!(
                closed(&mut stream).await,
                "HTTP/1.0 without keep-alive stays open"
            );
        }
    }
    // `Connection: close` is answered with it, and the connection ends.
    let mut stream = connect(&s).await;
    let request = plain("POST", "t1", "Connection: close\r\n", "bye");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let a = read_answer(&mut stream, &mut buf).await.expect("answer");
    assert!(a.head.contains("\r\nconnection: close\r\n"), "{a:?}");
    assert!(closed(&mut stream).await);
    // Everything published above is in the topic's history, in order.
    let texts: Vec<String> = s
        .poll("t1", "")
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        texts,
        [
            "hi there",
            "hi there",
            "from query",
            "from query",
            "hi",
            "hi",
            "hi",
            "bye"
        ]
    );
}

#[tokio::test]
async fn keep_alive_and_pipelined_publishes_then_hyper_on_the_same_connection() {
    let s = TestServer::start(&["--message-size-limit", "4096"]);
    let mut stream = connect(&s).await;
    let mut buf = Vec::new();
    // Kept alive: one request after the other.
    for text in ["one", "two"] {
        let request = plain("POST", "ka", "", text);
        stream.write_all(request.as_bytes()).await.expect("write");
        let a = read_answer(&mut stream, &mut buf).await.expect("answer");
        assert!(a.body.contains(&format!("\"message\":\"{text}\"")), "{a:?}");
    }
    assert_eq!(direct_publishes(&s).await, 2.0);
    // Pipelined in one write: two publishes, a poll (hyper's), a publish (now hyper's).
    let pipelined = [
        plain("PUT", "ka", "", "three"),
        plain("POST", "ka", "Title: t\r\n", "four"),
        "GET /ka/json?poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        plain("POST", "ka", "", "five"),
    ]
    .concat();
    stream.write_all(pipelined.as_bytes()).await.expect("write");
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(read_answer(&mut stream, &mut buf).await.expect("answer"));
    }
    assert!(
        answers[0].body.contains("\"message\":\"three\""),
        "{answers:?}"
    );
    assert!(
        answers[1].body.contains("\"message\":\"four\""),
        "{answers:?}"
    );
    let polled: Vec<&str> = answers[2].body.lines().collect();
    assert_eq!(polled.len(), 4, "{answers:?}");
    assert!(
        answers[3].body.contains("\"message\":\"five\""),
        "{answers:?}"
    );
    assert_eq!(direct_publishes(&s).await, 4.0, "the last one is hyper's");
    // A body split over several writes.
    let mut stream = connect(&s).await;
    stream
        .write_all(b"POST /ka HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nsp")
        .await
        .expect("write");
    for part in ["lit ", "bo", "dy!"] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(part.as_bytes()).await.expect("write");
    }
    let mut buf = Vec::new();
    let a = read_answer(&mut stream, &mut buf).await.expect("answer");
    assert!(a.body.contains("\"message\":\"split body!\""), "{a:?}");
    // An oversize body (here a template's JSON over its 32 KB) goes to hyper,
    // answered in ntfy's shape, and the connection goes on.
    let big = "x".repeat(40_000);
    let request = [
        plain("POST", "ka", "", "before"),
        plain("PUT", "ka", "X-Template: yes\r\n", &big),
        plain("POST", "ka", "", "after"),
    ]
    .concat();
    let mut stream = connect(&s).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let first = read_answer(&mut stream, &mut buf).await.expect("answer");
    let large = read_answer(&mut stream, &mut buf).await.expect("answer");
    let after = read_answer(&mut stream, &mut buf).await.expect("answer");
    assert_eq!(first.status(), 200, "{first:?}");
    assert_eq!(large.status(), 413, "{large:?}");
    assert!(large.body.contains("\"code\":41303"), "{large:?}");
    assert!(
        large.head.contains("access-control-allow-origin: *"),
        "{large:?}"
    );
    assert!(after.body.contains("\"message\":\"after\""), "{after:?}");
    assert_eq!(direct_publishes(&s).await, 6.0);
}

#[tokio::test]
async fn refusals_are_the_apis() {
    // Access control: anonymous may not write (403), a bad token is 401.
    let s = TestServer::start(&["--auth-default-access", "deny-all"]);
    let forbidden = same_answer(
        &s,
        &plain("POST", "secret", "", "x"),
        &chunked("POST", "secret", "", "x"),
    )
    .await;
    assert_eq!(forbidden.status(), 403, "{forbidden:?}");
    assert!(forbidden.body.contains("\"code\":40301"), "{forbidden:?}");
    let bad_token = "Authorization: Bearer tk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let unauthorized = same_answer(
        &s,
        &plain("POST", "secret", bad_token, "x"),
        &chunked("POST", "secret", bad_token, "x"),
    )
    .await;
    assert_eq!(unauthorized.status(), 401, "{unauthorized:?}");
    // A refused publish's body is read past: the next request on the connection
    // is answered in turn.
    let mut stream = connect(&s).await;
    let request = [
        plain("POST", "secret", "", "refused"),
        plain("POST", "secret", "", "again"),
    ]
    .concat();
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    for _ in 0..2 {
        let a = read_answer(&mut stream, &mut buf).await.expect("answer");
        assert_eq!(a.status(), 403, "{a:?}");
    }

    // A visitor over its request limit: 429 with Retry-After, counted once.
    let s = TestServer::launch(Launch {
        args: [
            "--visitor-request-limit-burst",
            "2",
            "--visitor-request-limit-replenish",
            "1h",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        envs: vec![(EXEMPT_HOSTS_ENV.to_string(), String::new())],
        ..Launch::default()
    });
    for _ in 0..2 {
        assert_eq!(ask(&s, &plain("POST", "lim", "", "x")).await.status(), 200);
    }
    let direct = ask(&s, &plain("POST", "lim", "", "x")).await;
    let hyper = ask(&s, &chunked("POST", "lim", "", "x")).await;
    assert_eq!(direct.status(), 429, "{direct:?}");
    assert!(direct.head.contains("\r\nretry-after: "), "{direct:?}");
    assert!(direct.body.contains("\"code\":42901"), "{direct:?}");
    assert_eq!(direct.normalized(), hyper.normalized());
}

#[tokio::test]
async fn a_slow_body_is_answered_408_and_a_vanished_client_leaves_no_trace() {
    let s = TestServer::start(&["--body-read-timeout", "1s"]);
    // The body does not arrive: 408, `connection: close`, closed; as from hyper.
    let mut answers = Vec::new();
    for request in [
        "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        "POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\nabc",
    ] {
        let mut stream = connect(&s).await;
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let a = read_answer(&mut stream, &mut buf).await.expect("answer");
        assert_eq!(a.status(), 408, "{a:?}");
        assert!(a.head.contains("\r\nconnection: close\r\n"), "{a:?}");
        assert!(closed(&mut stream).await, "{request:?}: left open");
        answers.push(a.normalized());
    }
    assert_eq!(answers[0], answers[1]);
    // A client that goes away in the middle of a body: nothing published, and the
    // server goes on (the same count of 400s as hyper's path makes).
    for request in [
        "POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf",
        "POST /gone HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nhalf",
    ] {
        let mut stream = connect(&s).await;
        stream.write_all(request.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    }
    let metric = "herald_http_requests_total{route=\"publish\",method=\"POST\",status=\"400\"} 2";
    crate::fixture::eventually(Duration::from_secs(10), "two 400s counted", || async {
        let text = s.get("/metrics").await.text().await.ok()?;
        text.contains(metric).then_some(())
    })
    .await;
    assert!(s.poll("gone", "").await.is_empty());
    assert_eq!(
        s.publish("gone", "still here").await["message"],
        "still here"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_gets_header_read_timeout_per_wait() {
    let s = TestServer::start(&["--header-read-timeout", "2s"]);
    let mut stream = connect(&s).await;
    let mut buf = Vec::new();
    // Each wait is shorter than the timeout, together they are longer: the
    // connection's one timer fires during a wait that has not run out and moves on.
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let request = plain("POST", "idle", "", "still open");
        stream.write_all(request.as_bytes()).await.expect("write");
        let a = read_answer(&mut stream, &mut buf).await.expect("answer");
        assert_eq!(a.status(), 200, "publish {i}: {a:?}");
    }
    // Idle past the timeout: closed, as hyper closes an idle kept-alive connection.
    assert!(closed(&mut stream).await, "left open");
    assert_eq!(direct_publishes(&s).await, 4.0);
}

#[tokio::test]
async fn heads_parameters_and_queries_the_direct_path_reads_itself_are_the_apis() {
    let s = TestServer::start(&[]);
    // Headers are taken from the head's bytes as they are: a custom name, a repeated
    // parameter (the first counts), UTF-8 in a value, tokens in `Connection`; a
    // request without any parameter but an encrypted body (UnifiedPush); Markdown.
    for (i, headers) in [
        "X-Custom: 1\r\nX-Tags: a\r\nX-Tags: b\r\nTitle: caf\u{e9}\r\n",
        "Connection: keep-alive, x-foo\r\nUser-Agent: test\r\nAccept: */*\r\n",
        "Content-Encoding: aes128gcm\r\n",
        "Content-Type: text/markdown\r\n",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("h{i}");
        let a = same_answer(
            &s,
            &plain("POST", &topic, headers, "some text"),
            &chunked("POST", &topic, headers, "some text"),
        )
        .await;
        assert_eq!(a.status(), 200, "{headers:?}: {a:?}");
    }
    // Names in any case, the headers the direct path leaves out of its map (`Host`,
    // `User-Agent`, in odd case and repeated), idempotency keys (each sent twice: the
    // second answer is the replay; hyper gets its own key), credentials it must
    // refuse, a forwarded-for address, a template: whatever the answer, the API's.
    for (direct, hyper) in [
        (
            "hOsT: x\r\nUSER-AGENT: a\r\nuser-agent: b\r\nx-TITLE: t\r\nTITLE: u\r\n",
            "hOsT: x\r\nUSER-AGENT: a\r\nuser-agent: b\r\nx-TITLE: t\r\nTITLE: u\r\n",
        ),
        ("Idempotency-Key: k1\r\n", "Idempotency-Key: k2\r\n"),
        ("Idempotency-Key: k1\r\n", "Idempotency-Key: k2\r\n"),
        (
            "X-IDEMPOTENCY-KEY: k3\r\nTags: a\r\n",
            "X-IDEMPOTENCY-KEY: k4\r\nTags: a\r\n",
        ),
        (
            "X-IDEMPOTENCY-KEY: k3\r\nTags: a\r\n",
            "X-IDEMPOTENCY-KEY: k4\r\nTags: a\r\n",
        ),
        (
            "Authorization: Bearer tk_nosuchtoken0000000000000000000\r\n",
            "Authorization: Bearer tk_nosuchtoken0000000000000000000\r\n",
        ),
        (
            "Authorization: Basic Zm9vOmJhcg==\r\n",
            "Authorization: Basic Zm9vOmJhcg==\r\n",
        ),
        (
            "X-Forwarded-For: 10.1.2.3\r\n",
            "X-Forwarded-For: 10.1.2.3\r\n",
        ),
        ("Tpl: yes\r\n", "Tpl: yes\r\n"),
    ] {
        let a = same_answer(
            &s,
            &plain("POST", "c", direct, "{\"a\":1}"),
            &chunked("POST", "c", hyper, "{\"a\":1}"),
        )
        .await;
        assert_ne!(a.status(), 0, "{direct:?}: {a:?}");
    }
    // Queries: empty, a fragment, an encoded value, a parameter with no value.
    for target in ["q?", "q?title=a%20b#frag", "q?tags=x,y&priority=", "q?x"] {
        let a = same_answer(
            &s,
            &plain("PUT", target, "", "text"),
            &chunked("PUT", target, "", "text"),
        )
        .await;
        assert_eq!(a.status(), 200, "{target:?}: {a:?}");
    }
    // A head the direct path refuses after reading its headers goes to hyper whole.
    for headers in ["Expect: 100-continue\r\n", "Content-Length: 4\r\n"] {
        let before = direct_publishes(&s).await;
        let a = ask(&s, &plain("POST", "q", headers, "abcd")).await;
        assert_ne!(a.status(), 0, "{a:?}");
        assert_eq!(direct_publishes(&s).await, before, "{headers:?}");
    }
}

#[tokio::test]
async fn request_metrics_follow_each_answers_method_and_status() {
    let s = TestServer::start(&[]);
    let mut stream = connect(&s).await;
    let mut buf = Vec::new();
    // One connection, its answers' method and status changing along the way.
    let requests = [
        plain("POST", "m", "", "a"),
        plain("POST", "m", "", "b"),
        plain("PUT", "m", "", "c"),
        plain("POST", "m", "Priority: 9\r\n", "d"),
        plain("POST", "m", "", "e"),
        plain("PUT", "m", "Priority: 9\r\n", "f"),
    ];
    for request in &requests {
        stream.write_all(request.as_bytes()).await.expect("write");
        read_answer(&mut stream, &mut buf).await.expect("answer");
    }
    let text = s.get("/metrics").await.text().await.expect("metrics");
    for (method, status, count) in [
        ("POST", 200, 3),
        ("PUT", 200, 1),
        ("POST", 400, 1),
        ("PUT", 400, 1),
    ] {
        let line = format!(
            "herald_http_requests_total{{route=\"publish\",method=\"{method}\",status=\"{status}\"}} {count}"
        );
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
    assert!(
        text.contains("herald_http_request_duration_seconds_count{route=\"publish\"} 6"),
        "{text}"
    );
}
