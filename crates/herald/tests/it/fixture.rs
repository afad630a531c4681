//! Test fixture: the real `herald` binary on `127.0.0.1:0`, and small clients for
//! each subscribe framing (JSON lines, SSE, raw, WebSocket).
//!
//! Every test starts its own server on its own temporary data directory, so tests
//! run in parallel without sharing ports or state.

use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::Value;
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for one event on a stream.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Environment variable of `visitor-request-limit-exempt-hosts`.
pub const EXEMPT_HOSTS_ENV: &str = "HERALD_VISITOR_REQUEST_LIMIT_EXEMPT_HOSTS";
/// Loopback, exempt from visitor limits in tests by default.
const LOOPBACK: &str = "127.0.0.0/8,::1";
/// The line the server prints once it accepts connections.
const LISTENING: &str = "herald listening on http://";

/// A running `herald serve` process with its own data directory.
pub struct TestServer {
    child: Option<Child>,
    data_dir: TempDir,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

/// What to spawn: arguments after `serve`, and extra environment variables.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Arguments after `serve` (`--data-dir <tempdir>` always comes first).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Leave out `--listen-http 127.0.0.1:0` (the test supplies it another way).
    pub no_listen_flag: bool,
}

impl TestServer {
    /// `herald serve --listen-http 127.0.0.1:0 --data-dir <tempdir> <extra_args>`.
    pub fn start(extra_args: &[&str]) -> TestServer {
        TestServer::launch(Launch {
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            ..Launch::default()
        })
    }

    /// Starts a server as `launch` describes.
    pub fn launch(launch: Launch) -> TestServer {
        let data_dir = tempfile::tempdir().expect("create temp data dir");
        let mut args = Vec::new();
        if !launch.no_listen_flag {
            args.extend(["--listen-http".to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend(launch.args);
        herald::webhook::client::install_tls_provider();
        args.extend(redis_backend_args(&args));
        args.extend(store_engine_args(&args));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("build HTTP client");
        // Tests publish and subscribe from loopback in bursts: exempt it from the
        // visitor limits unless the test says otherwise (`tests/it/limits.rs`).
        let mut envs = vec![(EXEMPT_HOSTS_ENV.to_string(), LOOPBACK.to_string())];
        envs.extend(launch.envs);
        let mut server = TestServer {
            child: None,
            data_dir,
            args,
            envs,
            base: String::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            client,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = herald_command();
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herald binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            // Keep reading to the end so the server never blocks on a full pipe.
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = listening_url(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url);
                }
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => self.base = url,
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "herald did not report its address (exit status {status:?}); log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// `--redis-url <url> --redis-key-prefix <prefix>` when the server runs in
    /// cluster mode, so a CLI command reaches the same users and tokens.
    pub fn cluster_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pair in self.args.windows(2) {
            if pair[0] == "--redis-url" || pair[0] == "--redis-key-prefix" {
                out.extend(pair.iter().cloned());
            }
        }
        out
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The WebSocket URL of `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.base.trim_start_matches("http://"))
    }

    /// The server's data directory (for `herald user|access|token --data-dir`).
    pub fn data_path(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// The server's stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Graceful stop (SIGTERM) and start again on the same data directory. The port
    /// changes; `base()` and `url()` follow.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "graceful shutdown exited with {status}");
        self.spawn();
    }

    /// SIGTERM and wait for the process to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
        wait_exit(&mut child, STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("server did not stop in time; log:\n{}", self.log_text()))
    }

    /// The server's process ID (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Waits for the process to exit on its own (after a signal the test sent);
    /// panics if it is still running after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        wait_exit(&mut child, timeout)
            .unwrap_or_else(|| panic!("server did not exit in time; log:\n{}", self.log_text()))
    }

    /// Starts the server again on the same data directory after `stop` or `kill9`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }

    /// Sets option `flag` to `value` for the next start (replacing the value it had).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => self.args[at + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// SIGKILL the server and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    // ---- request helpers ----

    /// `PUT /<topic>` with `body`; asserts 200 and returns the response JSON.
    pub async fn publish(&self, topic: &str, body: &str) -> Value {
        let resp = self
            .client
            .put(self.url(&format!("/{topic}")))
            .body(body.to_string())
            .timeout(EVENT_TIMEOUT)
            .send()
            .await
            .expect("publish request");
        expect_json(resp, 200).await
    }

    /// `GET /<topics>/json?poll=1&<query>`; returns the events.
    pub async fn poll(&self, topics: &str, query: &str) -> Vec<Value> {
        let sep = if query.is_empty() { "" } else { "&" };
        let resp = self
            .get(&format!("/{topics}/json?poll=1{sep}{query}"))
            .await;
        assert_eq!(resp.status(), 200, "poll {topics}?{query}");
        parse_ndjson(&resp.text().await.expect("poll body"))
    }

    /// `GET path` with a timeout.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .timeout(EVENT_TIMEOUT)
            .send()
            .await
            .expect("GET request")
    }

    /// Opens a streaming subscription at `path` (e.g. `/t/json?since=all`).
    pub async fn stream(&self, path: &str) -> EventStream {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("subscribe request");
        assert_eq!(resp.status(), 200, "subscribe {path}");
        EventStream::new(resp)
    }

    /// Opens a WebSocket subscription at `path` (e.g. `/t/ws`).
    pub async fn ws(&self, path: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(
            EVENT_TIMEOUT,
            tokio_tungstenite::connect_async(self.ws_url(path)),
        )
        .await
        .expect("websocket connect timed out")
        .expect("websocket connect");
        WsClient { ws }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `Command` for the herald binary with a clean environment: no inherited
/// `HERALD_*` or `RUST_LOG` (they would change the configuration under test).
pub fn herald_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("HERALD_") || key == "RUST_LOG")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

fn listening_url(line: &str) -> Option<String> {
    let start = line.find(LISTENING)? + LISTENING.len();
    let host: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    Some(format!("http://{host}"))
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for server") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the status and returns the body as JSON (body must end with `\n`).
pub async fn expect_json(resp: reqwest::Response, status: u16) -> Value {
    expect_json_raw(resp, status).await.0
}

/// Like [`expect_json`], also returning the body text (for key-order checks).
pub async fn expect_json_raw(resp: reqwest::Response, status: u16) -> (Value, String) {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert!(
        text.ends_with('\n'),
        "JSON body not newline-terminated: {text:?}"
    );
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON {text:?}: {e}"));
    (value, text)
}

/// Asserts that the object `v` has exactly `keys` (in any order).
pub fn assert_key_set(v: &Value, keys: &[&str]) {
    let mut have: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = keys.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want, "keys of {v}");
}

/// Asserts that the JSON object `raw` has exactly `keys`, in this order (ntfy's
/// struct order). Order is taken from the first occurrence of `"key":` in the text,
/// which is the top-level one for keys that come before any nested object.
pub fn assert_keys_in_order(raw: &str, keys: &[&str]) {
    let value: Value = serde_json::from_str(raw).expect("JSON object");
    assert_key_set(&value, keys);
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| raw.find(&format!("\"{k}\":")).expect("key in text"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order {keys:?} in {raw}"
    );
}

/// Asserts an ntfy error answer: status, content type, `code`, `http`, `error`.
pub async fn expect_error(resp: reqwest::Response, http: u16, code: u64) -> Value {
    let ctype = header(&resp, "content-type");
    assert_eq!(ctype, "application/json", "error content type");
    let body = expect_json(resp, http).await;
    assert_eq!(body["code"], code, "error code in {body}");
    assert_eq!(body["http"], http, "http field in {body}");
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "error text in {body}"
    );
    body
}

/// A response header as a string ("" if absent).
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_string())
        .unwrap_or_default()
}

/// Parses newline-delimited JSON.
pub fn parse_ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The `message` field of each `message` event.
pub fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A streaming HTTP response read frame by frame.
pub struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    pub content_type: String,
}

impl EventStream {
    pub fn new(resp: reqwest::Response) -> Self {
        let content_type = header(&resp, "content-type");
        EventStream {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            content_type,
        }
    }

    /// The next frame ending in `sep` (without it); `None` at end of stream.
    /// Panics after `timeout`.
    pub async fn next_frame(&mut self, sep: &[u8], timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let frame: Vec<u8> = self.buf.drain(..pos + sep.len()).collect();
                let text = String::from_utf8(frame[..pos].to_vec()).expect("UTF-8 stream");
                return Some(text);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!(
                    "no complete frame within {timeout:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    /// Next JSON line (`/json` stream).
    pub async fn next_json(&mut self) -> Value {
        let line = self.next_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
    }

    /// Next line of a `/json` or `/raw` stream, as text.
    pub async fn next_line(&mut self) -> String {
        self.next_frame(b"\n", EVENT_TIMEOUT)
            .await
            .expect("stream ended")
    }

    /// Next JSON event that is not a keepalive, within one deadline (keepalives must
    /// not keep a test waiting forever).
    pub async fn next_non_keepalive(&mut self) -> Value {
        let wait = async {
            loop {
                let v = self.next_json().await;
                if v["event"] != "keepalive" {
                    return v;
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, wait)
            .await
            .expect("no event other than keepalives in time")
    }

    /// Next SSE frame (`/sse` stream), raw text without the blank line.
    pub async fn next_sse_raw(&mut self) -> String {
        self.next_frame(b"\n\n", EVENT_TIMEOUT)
            .await
            .expect("stream ended")
    }

    /// Next SSE frame as (`event:` name if any, `data:` JSON).
    pub async fn next_sse(&mut self) -> (Option<String>, Value) {
        let frame = self.next_sse_raw().await;
        parse_sse(&frame)
    }

    /// Whether the stream ends (EOF) within `timeout`, discarding what arrives.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

/// Parses one SSE frame into (`event:` name if any, `data:` JSON). Panics on lines
/// other than `event:` and `data:` (ntfy writes no `id:` lines).
pub fn parse_sse(frame: &str) -> (Option<String>, Value) {
    let mut event = None;
    let mut data = None;
    for line in frame.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = Some(name.to_string());
        } else if let Some(json) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(json).expect("SSE data is JSON"));
        } else {
            panic!("unexpected SSE line {line:?} in frame {frame:?}");
        }
    }
    (event, data.expect("SSE frame without data"))
}

/// A WebSocket subscription.
pub struct WsClient {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsClient {
    /// Next frame of any kind (pings included).
    pub async fn next_frame(&mut self) -> WsMessage {
        tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
            .await
            .expect("no websocket frame in time")
            .expect("websocket ended")
            .expect("websocket error")
    }

    /// Next text frame parsed as JSON (control frames skipped). One deadline for the
    /// whole wait: keepalive pings must not keep a test waiting for a message forever.
    pub async fn next_json(&mut self) -> Value {
        let wait = async {
            loop {
                match self.next_frame().await {
                    WsMessage::Text(t) => {
                        return serde_json::from_str(t.as_str()).expect("frame is JSON");
                    }
                    WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                    other => panic!("unexpected websocket frame {other:?}"),
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, wait)
            .await
            .expect("no websocket text frame in time")
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.send(WsMessage::Close(None)).await;
    }
}

/// Retries `check` (every 50 ms) until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `HERALD_TEST_STORE_ENGINE` set (`.ci/run` sets `log` for a subset of the
/// suite), every server that chooses neither its store engine nor Redis uses that
/// embedded store: the same tests on the log store.
fn store_engine_args(args: &[String]) -> Vec<String> {
    let Ok(engine) = std::env::var("HERALD_TEST_STORE_ENGINE") else {
        return Vec::new();
    };
    if engine.is_empty()
        || args
            .iter()
            .any(|a| a == "--store-engine" || a == "--redis-url")
    {
        return Vec::new();
    }
    vec!["--store-engine".into(), engine]
}

/// With `HERALD_TEST_REDIS_URL` set (`.ci/run` does for a subset of the suite), every
/// server that does not choose its backend runs in cluster mode on that Redis, under
/// a key prefix of its own: the same tests, the Redis store and broker.
fn redis_backend_args(args: &[String]) -> Vec<String> {
    static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Ok(url) = std::env::var("HERALD_TEST_REDIS_URL") else {
        return Vec::new();
    };
    if url.is_empty() || args.iter().any(|a| a == "--redis-url") {
        return Vec::new();
    }
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    vec![
        "--redis-url".into(),
        url,
        "--redis-key-prefix".into(),
        format!("herald-test:suite:{}:{nanos}:{n}:", std::process::id()),
    ]
}
