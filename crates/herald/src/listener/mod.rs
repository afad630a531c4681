//! The HTTP listener: accepts connections and decides who serves each one.
//!
//! Most requests (publishing, polling, the info endpoints) are served by hyper and
//! the axum router in [`crate::api`]. Long-lived subscriptions, which are most of
//! what a notification server holds, are served by [`direct`]: after the request
//! head is read and validated, the socket itself is registered in the hub, events
//! are written to it straight from the fan-out (one `send` per subscriber, no task
//! wake-up), and the connection keeps no HTTP machinery or buffers while idle.
//!
//! Plain publishes, most of the rest of the traffic, are answered by [`publish`] on a
//! keep-alive loop without hyper, through the API's own functions. Anything the
//! listener does not take — other routes, polls, invalid or unusual requests,
//! subscriptions that would be refused — goes to hyper with the bytes already read
//! replayed in front ([`rewind::Rewind`]), at the first request or after plain
//! publishes, so hyper and the API produce the answer, errors included, exactly as
//! they would have without the direct paths.
//!
//! The listener is also the first line of defence ([`crate::limits`]): it refuses
//! connections over `connection-limit` (a static `503`, no task), cuts off a client
//! whose request head takes longer than `header-read-timeout` (slowloris), answers a
//! head over `max-header-size` or with too many headers with `431`, and leaves long
//! URLs to the API's `414`. Request bodies get a deadline of their own
//! (`body-read-timeout`: [`timed_body`] on hyper's path, the same deadline in [`publish`]). On the direct path, visitor limits are checked last and
//! without charging anything when they refuse, so the API charges and answers a
//! refused subscription exactly once. In cluster mode that check is a Redis call
//! (shared limits), made by the connection's task after the synchronous planning.

pub mod direct;
mod publish;
pub mod rewind;
pub(crate) mod timed_body;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::api::subscribe::parse_parts;
use crate::error::ApiError;
use crate::limits::{ConnectionPermit, Limit};
use crate::telemetry::RequestInfo;
use crate::wire::StreamFormat;

/// Most headers in a request head (hyper's default); more are answered `431`.
const MAX_HEADERS: usize = 100;
/// How long an answer to a refused request head may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// What is read and discarded after such an answer, so closing the socket does not
/// reset the answer away before the client reads it.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// Everything a connection handler needs.
#[derive(Clone)]
pub struct Listener {
    pub state: AppState,
    pub router: Router,
    pub tracker: TaskTracker,
    /// Cancelled when the server starts draining.
    pub shutdown: CancellationToken,
}

impl Listener {
    /// Accepts connections until shutdown; each is served on its own tracked task.
    pub async fn run(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Over `connection-limit`: answered and closed here, without a
                    // task or a buffer.
                    let Some(permit) = self.state.limits.try_connection() else {
                        let _ = stream.try_write(&TOO_MANY_CONNECTIONS);
                        continue;
                    };
                    let this = self.clone();
                    self.tracker
                        .spawn(async move { this.serve_connection(stream, peer, permit).await });
                }
                Err(e) => {
                    // Out of descriptors or a transient error: back off a little
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn serve_connection(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: ConnectionPermit,
    ) {
        let _ = stream.set_nodelay(true);
        let limits = self.state.limits.config();
        let mut head = BytesMut::with_capacity(1024);
        let parsed = tokio::time::timeout(
            limits.header_read_timeout,
            read_head(
                &mut stream,
                &mut head,
                limits.max_header_size,
                &self.shutdown,
            ),
        )
        .await;
        let head_len = match parsed {
            Ok(Ok(Head::Complete(len))) => len,
            // Unparsable: hyper answers it properly.
            Ok(Ok(Head::Malformed)) => {
                return Box::pin(self.hand_to_hyper(stream, peer, head.freeze(), permit)).await;
            }
            Ok(Ok(Head::TooLarge)) => {
                self.state.limits.refused(Limit::HeaderSize);
                drop(head);
                return Box::pin(refuse(stream, ApiError::HEADERS_TOO_LARGE)).await;
            }
            Ok(Err(_)) => return,
            // Slowloris: the head did not arrive in time. The client is cut off.
            Err(_) => {
                self.state.limits.refused(Limit::HeaderTimeout);
                return;
            }
        };
        if let Some(mut plan) = self.plan_direct(&head[..head_len], peer) {
            // Cluster mode: boxed, so that single-node connections carry nothing of it.
            if let Some(admission) = plan.shared_admission.take()
                && !Box::pin(self.admit_shared(&mut plan, admission)).await
            {
                // Refused (nothing was taken): the API charges and answers it.
                drop(plan);
                return Box::pin(self.hand_to_hyper(stream, peer, head.freeze(), permit)).await;
            }
            plan.connection = Some(permit);
            let leftover = Bytes::copy_from_slice(&head[head_len..]);
            drop(head);
            // The direct path spawns its own, minimal task for the life of the
            // subscription; this one (with the head buffer) ends here.
            Box::pin(direct::serve(
                self.state.streams(),
                &self.state.metrics,
                stream,
                plan,
                leftover,
                &self.tracker,
            ))
            .await;
        } else {
            // Plain publishes are answered here until a request comes that hyper
            // must answer (boxed, like hyper's state below: only the connections
            // that publish carry it).
            let (stream, outcome) =
                Box::pin(self.serve_publishes(stream, peer, head, head_len)).await;
            if let publish::Outcome::Fallback(rest) = outcome {
                // Boxed so that hyper's connection state is allocated only for the
                // connections hyper serves, not reserved in every connection's task.
                Box::pin(self.hand_to_hyper(stream, peer, rest, permit)).await;
            }
        }
    }

    /// Decides whether the request in `head` is a streaming subscription that the
    /// direct path can serve, and validates it fully. Anything else returns `None`.
    fn plan_direct(&self, head: &[u8], peer: SocketAddr) -> Option<direct::Plan> {
        let started = Instant::now();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
            return None;
        };
        if req.method != Some("GET") {
            return None;
        }
        let target = req.path?;
        // Too long: hyper's service answers `414`.
        if target.len() > self.state.limits.config().max_url_length {
            return None;
        }
        let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        let (topics, kind) = path.strip_prefix('/')?.split_once('/')?;
        let format = match kind {
            "json" => StreamFormat::Json,
            "sse" => StreamFormat::Sse,
            "raw" => StreamFormat::Raw,
            "ws" => StreamFormat::Ws,
            _ => return None,
        };
        let map = header_map(req.headers)?;
        // A GET with a body is unusual enough to leave to hyper.
        if map.contains_key("transfer-encoding")
            || map
                .get("content-length")
                .is_some_and(|v| v.as_bytes() != b"0")
        {
            return None;
        }
        let query: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect();
        let limits = &self.state.limits;
        let client_ip = limits.client_ip(peer.ip(), &map);
        // Credentials that need a password hashed, wrong ones and refusals go to
        // hyper, which answers them exactly (401, 403, 429).
        let principal = self
            .state
            .auth
            .authenticate_cached(&map, Some(raw_query), client_ip)?;
        // A refused `auth-user-header` is answered (401) by the API.
        let principal =
            crate::api::proxy_auth::apply(&self.state, &map, peer.ip(), principal).ok()?;
        let request = parse_parts(&self.state, &map, &query, topics, &principal).ok()?;
        if request.params.poll {
            return None;
        }
        let ws_accept = if format == StreamFormat::Ws {
            Some(websocket_accept(&map)?)
        } else {
            None
        };
        // Limits come last and refuse without charging anything, so a refused
        // request handed to the API is charged (and answered) once, there.
        // An authenticated user is its own visitor (`user:<name>`), as in `api::dispatch`.
        let visitor = limits.visitor(client_ip, principal.user_name());
        let new_topics = self.state.streams().new_topic_count(&request.topics);
        // Cluster mode: charged in the connection's task (a Redis round trip), not here.
        if limits.is_shared() && !visitor.exempt {
            return Some(direct::Plan {
                format,
                request,
                ws_accept,
                http10: req.version == Some(0),
                slot: self.state.slots.shared_pending(),
                shared_admission: Some((visitor, new_topics)),
                connection: None,
                started,
            });
        }
        let slot = self.state.streams().admit_uncharged(&visitor, new_topics)?;
        Some(direct::Plan {
            format,
            request,
            ws_accept,
            http10: req.version == Some(0),
            slot,
            shared_admission: None,
            connection: None,
            started,
        })
    }

    /// Cluster mode: charges a direct subscription's request, slot and new topics to
    /// the shared limits (this node's if they cannot answer) and puts the slot in
    /// `plan`; `false` if refused.
    async fn admit_shared(
        &self,
        plan: &mut direct::Plan,
        (visitor, new_topics): (crate::limits::Visitor, usize),
    ) -> bool {
        let limits = &self.state.limits;
        plan.slot = match limits.open_stream_shared(&visitor, true, new_topics).await {
            Some(Ok(slot)) => self.state.slots.shared_guard(slot),
            Some(Err(_)) => return false,
            None => match self.state.streams().admit_uncharged(&visitor, new_topics) {
                Some(slot) => slot,
                None => return false,
            },
        };
        true
    }

    /// Serves the connection with hyper and the API router, replaying `prefix`.
    async fn hand_to_hyper(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        prefix: Bytes,
        permit: ConnectionPermit,
    ) {
        let io = TokioIo::new(rewind::Rewind::new(prefix, stream));
        let permit = std::sync::Arc::new(permit);
        let router = self.router.clone();
        let metrics = self.state.metrics.clone();
        let limits = self.state.limits.clone();
        let config = limits.config();
        let (header_read_timeout, max_header_size, body_read_timeout) = (
            config.header_read_timeout,
            config.max_header_size,
            config.body_read_timeout,
        );
        let service = hyper::service::service_fn({
            let permit = permit.clone();
            move |req: hyper::Request<hyper::body::Incoming>| {
                // Taken from the head before the router consumes the request: the
                // access log and request metrics (see `telemetry`).
                let info = RequestInfo::new(
                    req.method(),
                    req.uri().path(),
                    req.uri().query(),
                    req.headers(),
                );
                // The listener checked the connection's first head; these checks
                // cover later requests on a kept-alive connection too (hyper's own
                // buffer bound is at least 8 KiB).
                let url_length = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
                let head_size = url_length
                    + req
                        .headers()
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len() + 4)
                        .sum::<usize>();
                let refusal = if url_length > limits.config().max_url_length {
                    limits.refused(Limit::UrlLength);
                    Some(ApiError::URI_TOO_LONG)
                } else if head_size > limits.config().max_header_size {
                    limits.refused(Limit::HeaderSize);
                    Some(ApiError::HEADERS_TOO_LARGE)
                } else {
                    None
                };
                let mut req = req.map(|body| {
                    axum::body::Body::new(timed_body::TimedBody::new(body, body_read_timeout))
                });
                req.extensions_mut().insert(ConnectInfo(peer));
                // A WebSocket upgraded by the API outlives this connection's hyper
                // state; it keeps the connection's place by holding a clone.
                req.extensions_mut().insert(permit.clone());
                let response = tower::ServiceExt::oneshot(router.clone(), req);
                let metrics = metrics.clone();
                async move {
                    let response = if let Some(error) = refusal {
                        axum::response::IntoResponse::into_response(error)
                    } else {
                        response.await?
                    };
                    let mut response = response;
                    // The rest of a body that timed out may never come: the
                    // connection cannot be reused.
                    if response.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
                        response.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            HeaderValue::from_static("close"),
                        );
                    }
                    info.finish(&metrics, response.status().as_u16());
                    Ok::<_, std::convert::Infallible>(response)
                }
            }
        });
        // Later requests on the connection get the same bounds from hyper (its
        // own plain answers: `431`, or a closed connection on a timeout).
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_header_size.max(8192))
            // hyper's default bound is MAX_HEADERS (100) already; setting it
            // explicitly makes hyper fill a heap vector of 100 slots per request
            // instead of an uninitialised stack array (1.7k instructions a publish).
            .serve_connection(io, service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(permit);
    }
}

/// The answer to a connection over `connection-limit`, built once.
static TOO_MANY_CONNECTIONS: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| error_response_bytes(&ApiError::TOO_MANY_CONNECTIONS));

/// A complete `Connection: close` HTTP/1.1 response carrying `error`, for answers
/// the listener writes itself (the API's JSON shape and CORS header).
pub(crate) fn error_response_bytes(error: &ApiError) -> Vec<u8> {
    error_response_bytes_retry(error, None)
}

/// [`error_response_bytes`] with a `Retry-After` header when `retry` is given.
pub(crate) fn error_response_bytes_retry(
    error: &ApiError,
    retry: Option<std::time::Duration>,
) -> Vec<u8> {
    let body = error.to_json_line();
    let retry = retry
        .map(|r| format!("Retry-After: {}\r\n", r.as_secs().max(1)))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        error.http,
        error.status().canonical_reason().unwrap_or(""),
        body.len(),
        body
    )
    .into_bytes()
}

/// Answers a request head the listener refuses (too large) and closes: the answer
/// is written, the sending side shut, and a bounded amount of what the client is
/// still sending read and discarded, so the close does not reset the answer away.
async fn refuse(mut stream: TcpStream, error: ApiError) {
    let bytes = error_response_bytes(&error);
    let written = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// What [`read_head`] found.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete head of this many bytes.
    Complete(usize),
    /// Not HTTP (hyper answers `400`).
    Malformed,
    /// Longer than `max-header-size`, or more than [`MAX_HEADERS`] headers.
    TooLarge,
}

/// Reads from `stream` until `buf` holds a complete request head of at most
/// `max_head` bytes, or an error if the client went away.
///
/// Once `shutdown` is cancelled, a connection that has sent nothing is closed
/// (without waiting for `header-read-timeout`) unless its first bytes are already
/// there; a request that has started arriving is read to the end and served.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    shutdown: &CancellationToken,
) -> std::io::Result<Head> {
    read_head_by(stream, buf, max_head, Some(shutdown), |buf| {
        parse_head(buf, max_head)
    })
    .await
}

/// [`read_head`], with `parse` (which gets the whole buffer, and answers `None`
/// while the head is incomplete) in place of [`parse_head`]: the direct publish
/// path parses the head once for both questions, its end and its meaning. Without
/// `shutdown` the caller watches it (the direct path keeps one registration per
/// connection instead of one per request).
async fn read_head_by(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    shutdown: Option<&CancellationToken>,
    mut parse: impl FnMut(&[u8]) -> Option<Head>,
) -> std::io::Result<Head> {
    // A pipelined request may be in the buffer already.
    if !buf.is_empty()
        && ends_a_head(&buf[..])
        && let Some(head) = parse(&buf[..])
    {
        return Ok(head);
    }
    loop {
        if buf.len() >= max_head {
            return Ok(Head::TooLarge);
        }
        let before = buf.len();
        buf.reserve(1024);
        let n = if let Some(shutdown) = shutdown.filter(|_| buf.is_empty()) {
            tokio::select! {
                // `read_buf` is cancel safe: nothing is lost if shutdown wins.
                r = stream.read_buf(buf) => r?,
                _ = shutdown.cancelled() => match stream.try_read_buf(buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                    Err(e) => return Err(e),
                },
            }
        } else {
            stream.read_buf(buf).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // Only re-parse once the end-of-head marker may have arrived: an empty
        // line, ended by CRLF or (as hyper and Go accept) a bare LF.
        let scan_from = before.saturating_sub(2);
        if !ends_a_head(&buf[scan_from..]) {
            continue;
        }
        if let Some(head) = parse(&buf[..]) {
            return Ok(head);
        }
    }
}

/// What the request head at the front of `buf` is; `None` while it is incomplete.
fn parse_head(buf: &[u8], max_head: usize) -> Option<Head> {
    let mut headers = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    Some(match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > max_head => Head::TooLarge,
        Ok(httparse::Status::Complete(len)) => Head::Complete(len),
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
        Err(_) => Head::Malformed,
    })
}

/// The parsed headers as a `HeaderMap`; `None` for a name or value it refuses
/// (hyper then answers the request).
fn header_map(headers: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// Room for [`MAX_HEADERS`] parsed headers, left uninitialised: `httparse` writes
/// only the ones it parses, so a request does not pay for filling 100 slots (3 KB).
fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Whether `bytes` hold an empty line after a line end: `\n\n` or `\n\r\n`, so a
/// head with bare-LF line endings is parsed as soon as it is complete rather than
/// left waiting for a `\r\n\r\n` that never comes.
fn ends_a_head(bytes: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = find_newline(&bytes[from..]) {
        let at = from + i;
        if matches!(&bytes[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The first `\n` in `bytes`, looked for eight bytes at a time: every read of a
/// request is scanned for the end of its head, and a byte-by-byte loop was a tenth
/// of the keep-alive wait's instructions (docs/BENCHMARKS.md, "The request path").
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // A byte of `x` is zero where the chunk has a `\n`; the expression is non-zero
        // exactly when one is (the classic test for a zero byte in a word).
        let x = u64::from_ne_bytes(word) ^ NEWLINES;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return chunk.iter().position(|&b| b == b'\n').map(|i| base + i);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

/// The `Sec-WebSocket-Accept` value for a valid RFC 6455 upgrade request.
fn websocket_accept(headers: &HeaderMap) -> Option<String> {
    let has_token = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return None;
    }
    if headers.get("sec-websocket-version")?.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get("sec-websocket-key")?;
    // A malformed key is refused by the API (`400`), with the same answer as there.
    if !crate::wire::ws::websocket_key_is_valid(key.as_bytes()) {
        return None;
    }
    Some(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_an_empty_line_with_either_line_ending() {
        assert!(ends_a_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_a_head(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(ends_a_head(b"GET / HTTP/1.1\nHost: x\n\r\n"));
        assert!(!ends_a_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!ends_a_head(b"GET / HTTP/1.1\nHost: x\n"));
        assert!(!ends_a_head(b"\n\r"));
        // Every place of the line ends against the eight-byte chunks, and bytes that
        // differ from `\n` in one bit or have the high bit set around them.
        for len in 0..40 {
            for at in 0..len {
                for filler in [b'x', 0x0b, 0x8a, 0x00, 0xff] {
                    let mut bytes = vec![filler; len];
                    bytes[at] = b'\n';
                    let simple = bytes.iter().position(|&b| b == b'\n');
                    assert_eq!(find_newline(&bytes), simple, "{bytes:?}");
                    if at + 1 < len {
                        bytes[at + 1] = b'\n';
                        assert!(ends_a_head(&bytes), "{bytes:?}");
                        bytes[at + 1] = b'\r';
                        assert_eq!(
                            ends_a_head(&bytes),
                            at + 2 < len && bytes[at + 2] == b'\n',
                            "{bytes:?}"
                        );
                    }
                }
            }
            assert_eq!(find_newline(&vec![b'a'; len]), None);
        }
    }

    #[test]
    fn websocket_accept_key_follows_rfc6455() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        // The example from RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        h.insert("sec-websocket-key", HeaderValue::from_static("short"));
        assert_eq!(websocket_accept(&h), None);
        h.remove("upgrade");
        assert_eq!(websocket_accept(&h), None);
    }
}
