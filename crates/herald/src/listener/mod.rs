//! The HTTP listener: accepts connections and decides who serves each one.
//!
//! Most requests (publishing, polling, the info endpoints) are served by hyper and
//! the axum router in [`crate::api`]. Long-lived subscriptions, which are most of
//! what a notification server holds, are served by [`direct`]: after the request
//! head is read and validated, the socket itself is registered in the hub, events
//! are written to it straight from the fan-out (one `send` per subscriber, no task
//! wake-up), and the connection keeps no HTTP machinery or buffers while idle.
//!
//! The listener reads only the first request head of a connection. Anything it does
//! not take — other routes, polls, invalid or unusual requests, requests that would
//! be refused — goes to hyper with the bytes already read replayed in front
//! ([`rewind::Rewind`]), so hyper and the API produce the answer, errors included,
//! exactly as they would have without the direct path.

pub mod direct;
pub mod rewind;
pub mod wsframe;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::subscribe::parse_parts;
use crate::api::{AppState, StreamFormat};
use crate::telemetry::RequestInfo;

/// Longest request head the listener reads before handing over to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers parsed in a request head.
const MAX_HEADERS: usize = 64;
/// A client must send its request head within this time (slowloris guard).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
                    let this = self.clone();
                    self.tracker
                        .spawn(async move { this.serve_connection(stream, peer).await });
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

    async fn serve_connection(self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut head = Vec::with_capacity(1024);
        let parsed = tokio::time::timeout(
            HEAD_TIMEOUT,
            read_head(&mut stream, &mut head, &self.shutdown),
        )
        .await;
        let head_len = match parsed {
            Ok(Ok(Some(len))) => len,
            // A complete-looking but unparsable head, or one that is too large:
            // hyper answers it properly.
            Ok(Ok(None)) => {
                return Box::pin(self.hand_to_hyper(stream, peer, Bytes::from(head))).await;
            }
            Ok(Err(_)) | Err(_) => return,
        };
        if let Some(plan) = self.plan_direct(&head[..head_len], peer) {
            let leftover = Bytes::copy_from_slice(&head[head_len..]);
            drop(head);
            // The direct path spawns its own, minimal task for the life of the
            // subscription; this one (with the head buffer) ends here.
            Box::pin(direct::serve(
                &self.state,
                stream,
                plan,
                leftover,
                &self.tracker,
            ))
            .await;
        } else {
            // Boxed so that hyper's connection state is allocated only for the
            // connections hyper serves, not reserved in every connection's task.
            Box::pin(self.hand_to_hyper(stream, peer, Bytes::from(head))).await;
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
        let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        let (topics, kind) = path.strip_prefix('/')?.split_once('/')?;
        let format = match kind {
            "json" => StreamFormat::Json,
            "sse" => StreamFormat::Sse,
            "raw" => StreamFormat::Raw,
            "ws" => StreamFormat::Ws,
            _ => return None,
        };
        let mut map = HeaderMap::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(h.value).ok()?;
            map.append(name, value);
        }
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
        // Credentials that need a password hashed, wrong ones and refusals go to
        // hyper, which answers them exactly (401, 403, 429).
        let principal = self
            .state
            .auth
            .authenticate_cached(&map, Some(raw_query), peer.ip())?;
        let request = parse_parts(&self.state, &map, &query, topics, &principal).ok()?;
        if request.params.poll {
            return None;
        }
        let ws_accept = if format == StreamFormat::Ws {
            Some(websocket_accept(&map)?)
        } else {
            None
        };
        let slot = self.state.slots.acquire(peer.ip()).ok()?;
        Some(direct::Plan {
            format,
            request,
            ws_accept,
            http10: req.version == Some(0),
            slot,
            started,
        })
    }

    /// Serves the connection with hyper and the API router, replaying `prefix`.
    async fn hand_to_hyper(self, stream: TcpStream, peer: SocketAddr, prefix: Bytes) {
        let io = TokioIo::new(rewind::Rewind::new(prefix, stream));
        let router = self.router.clone();
        let metrics = self.state.metrics.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // Taken from the head before the router consumes the request: the
                // access log and request metrics (see `telemetry`).
                let info = RequestInfo::new(
                    req.method(),
                    req.uri().path(),
                    req.uri().query(),
                    req.headers(),
                );
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                let response = tower::ServiceExt::oneshot(router.clone(), req);
                let metrics = metrics.clone();
                async move {
                    let response = response.await?;
                    info.finish(&metrics, response.status().as_u16());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
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
    }
}

/// Reads from `stream` until `buf` holds a complete request head. Returns its
/// length, `None` if the head is malformed or too large (for hyper to answer), or
/// an error if the client went away.
///
/// Once `shutdown` is cancelled, a connection that has sent nothing is closed
/// (without waiting for [`HEAD_TIMEOUT`]) unless its first bytes are already there;
/// a request that has started arriving is read to the end and served.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<usize>> {
    loop {
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let before = buf.len();
        buf.reserve(1024);
        let n = if buf.is_empty() {
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
        // Only re-parse once the end-of-head marker may have arrived.
        let scan_from = before.saturating_sub(3);
        if !buf[scan_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        return Ok(match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => Some(len),
            Ok(httparse::Status::Partial) => continue,
            Err(_) => None,
        });
    }
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
    Some(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        h.remove("upgrade");
        assert_eq!(websocket_accept(&h), None);
    }
}
