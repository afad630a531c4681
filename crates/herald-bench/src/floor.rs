//! `herald bench --floor ADDR`: the fan-out floor, a server that does nothing but
//! the unavoidable part of a fan-out, for the same `herald bench` run to measure.
//!
//! Why: a fan-out of one message to 10,000 loopback sockets costs 10,000 `send`
//! calls, and on loopback each one also runs the receiver's side of TCP and wakes
//! its reader on the sending core (docs/BENCHMARKS.md, "Where the time and memory
//! go"). That cost is the machine's, not herald's; to tell how far herald is above
//! it, the same load generator with the same subscribers, body size and latency
//! stamp (send time of the POST → receipt) measures this floor in the same run.
//!
//! What it is: one thread, an ntfy-shaped subset just large enough for `herald
//! bench` (a subscription is `GET /<topic>/ws`, `/json` or `/sse` answered with an
//! `open` event; a publish is `POST /<topic>` with a `Content-Length` body). A
//! publish is framed once, in the same JSON shape herald sends, and then written
//! to each subscriber of the topic by a plain loop of non-blocking `send` calls,
//! one per socket: no queue, no lock, no task per subscriber, no batching. A
//! socket whose `send` does not take the whole frame is dropped (at the light rates
//! the floor is meant for, a socket buffer never fills). Nothing is stored.
//!
//! At rates where one fan-out takes longer than the interval between messages,
//! the floor falls behind (it writes every message on its own), where herald
//! batches: it is the floor of the per-message write loop, a yardstick for the
//! light-load latency rows, not for saturated throughput.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{LocalSet, spawn_local};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head (and publish body) the floor reads.
const MAX_REQUEST: usize = 64 * 1024;

/// How a subscriber wants its events framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Ws,
    Json,
    Sse,
}

/// Subscribers by topic, each with its framing.
/// The sockets are plain (non-blocking) `std` sockets, not registered with the
/// runtime's epoll: a send on them is the bare system call.
type Topics = HashMap<String, Vec<(std::net::TcpStream, Framing)>>;

/// Serves the floor on `addr` until the process is killed.
pub(crate) fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("herald bench: fan-out floor listening on {addr}");
        let topics: Rc<RefCell<Topics>> = Rc::default();
        let next_id = Rc::new(std::cell::Cell::new(0u64));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                // Out of file descriptors and the like: keep serving the others.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            spawn_local(connection(stream, topics.clone(), next_id.clone()));
        }
    })
}

/// One connection: a subscription (registered, then left to the publishers) or a
/// keep-alive publisher.
async fn connection(
    mut stream: TcpStream,
    topics: Rc<RefCell<Topics>>,
    next_id: Rc<std::cell::Cell<u64>>,
) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        match request {
            Request::Subscribe {
                topic,
                framing,
                key,
            } => {
                let head = match (framing, key) {
                    (Framing::Ws, Some(key)) => format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        derive_accept_key(key.as_bytes())
                    ),
                    (Framing::Ws, None) => return,
                    (Framing::Json, _) => "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                    (Framing::Sse, _) => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                };
                let open = format!(
                    r#"{{"id":"floor","time":{},"event":"open","topic":"{topic}"}}"#,
                    unix_secs()
                );
                let mut out = head.into_bytes();
                out.extend_from_slice(&frame(framing, &open));
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                // `into_std` deregisters the socket from the runtime's epoll.
                if let Ok(stream) = stream.into_std() {
                    topics
                        .borrow_mut()
                        .entry(topic)
                        .or_default()
                        .push((stream, framing));
                }
                return;
            }
            Request::Publish { topic, body } => {
                let id = next_id.get() + 1;
                next_id.set(id);
                let json = format!(
                    r#"{{"id":"floor{id:07}","time":{},"event":"message","topic":"{topic}","message":"{}"}}"#,
                    unix_secs(),
                    String::from_utf8_lossy(&body).replace(['"', '\\'], "_")
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                fan_out(&topics, &topic, &json);
            }
        }
    }
}

/// The floor itself: each framing built once, then one `send` per subscriber.
fn fan_out(topics: &RefCell<Topics>, topic: &str, json: &str) {
    let frames = [
        frame(Framing::Ws, json),
        frame(Framing::Json, json),
        frame(Framing::Sse, json),
    ];
    let mut topics = topics.borrow_mut();
    let Some(subscribers) = topics.get_mut(topic) else {
        return;
    };
    subscribers.retain(|(stream, framing)| {
        let frame = &frames[*framing as usize];
        matches!((&*stream).write(frame), Ok(n) if n == frame.len())
    });
}

/// `payload` as the bytes a subscriber with `framing` receives.
fn frame(framing: Framing, payload: &str) -> Vec<u8> {
    match framing {
        Framing::Ws => {
            let len = payload.len();
            let mut out = Vec::with_capacity(len + 10);
            out.push(0x81); // FIN + text
            if len < 126 {
                out.push(len as u8);
            } else if len <= usize::from(u16::MAX) {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            out.extend_from_slice(payload.as_bytes());
            out
        }
        Framing::Json => chunk(format!("{payload}\n").as_bytes()),
        Framing::Sse => chunk(format!("data: {payload}\n\n").as_bytes()),
    }
}

/// One HTTP/1.1 chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a request asks of the floor.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Subscribe {
        topic: String,
        framing: Framing,
        key: Option<String>,
    },
    Publish {
        topic: String,
        body: Vec<u8>,
    },
}

/// Reads one request (head and `Content-Length` body) from `stream`; `None` when
/// the connection ends or sends something the floor does not serve.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some((request, used)) = parse_request(buf)? {
            buf.drain(..used);
            return Some(request);
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a request at the start of `buf`: `Some(None)` when more bytes are
/// needed, `None` when it is not one the floor serves.
fn parse_request(buf: &[u8]) -> Option<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf).ok()? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Some(None),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let path = req.path?.split('?').next()?;
    let path = path.strip_prefix('/')?;
    match req.method? {
        "GET" => {
            let (topic, framing) = if let Some(t) = path.strip_suffix("/ws") {
                (t, Framing::Ws)
            } else if let Some(t) = path.strip_suffix("/json") {
                (t, Framing::Json)
            } else {
                (path.strip_suffix("/sse")?, Framing::Sse)
            };
            let key = header("sec-websocket-key").map(str::to_string);
            Some(Some((
                Request::Subscribe {
                    topic: topic.to_string(),
                    framing,
                    key,
                },
                head_len,
            )))
        }
        "POST" | "PUT" => {
            let len: usize = header("content-length")?.trim().parse().ok()?;
            if len > MAX_REQUEST {
                return None;
            }
            let Some(body) = buf.get(head_len..head_len + len) else {
                return Some(None);
            };
            Some(Some((
                Request::Publish {
                    topic: path.to_string(),
                    body: body.to_vec(),
                },
                head_len + len,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subscriptions_and_publishes() {
        let get = b"GET /t1/ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc\r\n\r\n";
        assert_eq!(
            parse_request(get),
            Some(Some((
                Request::Subscribe {
                    topic: "t1".into(),
                    framing: Framing::Ws,
                    key: Some("abc".into())
                },
                get.len()
            )))
        );
        let post = b"POST /t2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(
            parse_request(post),
            Some(Some((
                Request::Publish {
                    topic: "t2".into(),
                    body: b"abc".to_vec()
                },
                post.len() - 3
            )))
        );
        assert_eq!(parse_request(&post[..post.len() - 5]), Some(None));
        assert_eq!(parse_request(b"DELETE /t HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn frames_like_herald() {
        assert_eq!(frame(Framing::Ws, "hi"), b"\x81\x02hi");
        assert_eq!(
            &frame(Framing::Ws, &"x".repeat(200))[..4],
            b"\x81\x7e\x00\xc8"
        );
        assert_eq!(frame(Framing::Json, "{}"), b"3\r\n{}\n\r\n");
        assert_eq!(frame(Framing::Sse, "{}"), b"a\r\ndata: {}\n\n\r\n");
    }
}
