//! The load generator's clients: subscriber streams (ntfy: WebSocket, SSE, JSON
//! lines; NATS: the protocol over WebSocket or TCP) and keep-alive publishers, all
//! on sockets this module opens itself so it can choose their source address.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::grpc::{GrpcConn, GrpcStream};
use crate::http::{Conn, HttpError, LineReader};
use crate::nats::{NatsConn, publish_with_ack};
use crate::options::{Options, Protocol, Target, Transport};
use crate::rxstamp::RxStream;
use crate::stamp::{Arrival, SeqTracker, Stamp, find};
use crate::stats::{Clock, Shared};

/// Longest a subscriber may take from `connect` to its `open` event.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one publish (request written to response read) may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed publish connection, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What every task of a run shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) opts: Options,
    pub(crate) clock: Clock,
    /// Identifies this run's messages.
    pub(crate) nonce: u64,
    pub(crate) stats: Shared,
}

impl Ctx {
    pub(crate) fn topic_name(&self, topic: usize) -> String {
        format!("{}{topic}", self.opts.topic_prefix)
    }

    fn path(&self, target: &Target, topic: usize, suffix: &str) -> String {
        format!("{}/{}{suffix}", target.base_path, self.topic_name(topic))
    }
}

/// A TCP connection from `source` (if any) to `addr`, with Nagle off: every
/// request and frame here is small and latency is what is measured.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// An open subscription, positioned after its `open` event.
enum Session {
    Ws {
        ws: Box<WebSocketStream<RxStream>>,
        /// The last text frame, returned by `event`.
        text: Utf8Bytes,
    },
    Http {
        lines: LineReader,
        sse: bool,
        /// The last event's line in `lines`.
        current: Range<usize>,
    },
    Nats {
        conn: Box<NatsConn>,
        /// The last message's payload in `conn`'s buffer.
        current: Range<usize>,
    },
    Grpc {
        stream: Box<GrpcStream>,
        /// The last `herald.v1.Message` in `stream`'s buffer.
        current: Range<usize>,
        /// Keeps the HTTP/2 connection's handle alive with the stream.
        _conn: Box<GrpcConn>,
    },
}

impl Session {
    /// Connects, subscribes and reads the first event. Returns the session and
    /// whether that first event was `open`.
    async fn open(
        ctx: &Ctx,
        transport: Transport,
        topic: usize,
        index: usize,
    ) -> Result<(Session, bool), String> {
        if ctx.opts.protocol() == Protocol::Nats {
            return Session::open_nats(ctx, transport, topic, index).await;
        }
        if transport == Transport::Grpc {
            return Session::open_grpc(ctx, topic, index).await;
        }
        let target = ctx.opts.target_for(index);
        let source = ctx.opts.source(index);
        let stream = connect(target.addr, source)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let stream = RxStream::new(stream, ctx.opts.rx_timestamps)
            .map_err(|e| format!("receive timestamps: {e}"))?;
        let mut session = match transport {
            Transport::Ws => {
                let url = format!(
                    "ws://{}{}",
                    target.authority,
                    ctx.path(target, topic, "/ws")
                );
                let (ws, _) = tokio_tungstenite::client_async(url, stream)
                    .await
                    .map_err(|e| format!("websocket handshake: {e}"))?;
                Session::Ws {
                    ws: Box::new(ws),
                    text: Utf8Bytes::default(),
                }
            }
            Transport::Tcp => return Err("tcp is a NATS transport".to_string()),
            Transport::Grpc => return Err("grpc is opened by open_grpc".to_string()),
            Transport::Sse | Transport::Json => {
                let path = ctx.path(
                    target,
                    topic,
                    if transport == Transport::Sse {
                        "/sse"
                    } else {
                        "/json"
                    },
                );
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herald-bench\r\nAccept: */*\r\n\r\n",
                    target.authority
                );
                let mut conn = Conn::over(stream);
                conn.send(request.as_bytes())
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                let head = conn
                    .read_head()
                    .await
                    .map_err(|e| format!("response: {e}"))?;
                if head.status != 200 {
                    let mut body = Vec::new();
                    // Best effort: the error body only makes the message clearer.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        conn.read_body(head.framing, &mut body),
                    )
                    .await;
                    return Err(format!("HTTP {}: {}", head.status, snippet(&body)));
                }
                Session::Http {
                    lines: conn.into_lines(head.framing),
                    sse: transport == Transport::Sse,
                    current: 0..0,
                }
            }
        };
        if !session
            .next_event()
            .await
            .map_err(|e| format!("read: {e}"))?
        {
            return Err("stream ended before the open event".to_string());
        }
        let is_open = find(session.event(), br#""event":"open""#).is_some();
        Ok((session, is_open))
    }

    /// A NATS subscription over WebSocket or TCP, established once the server
    /// has answered the `PING` sent after `SUB` (NATS has no `open` event; the
    /// `PONG` says the same: the subscription is registered).
    async fn open_nats(
        ctx: &Ctx,
        transport: Transport,
        topic: usize,
        index: usize,
    ) -> Result<(Session, bool), String> {
        let target = match (transport, &ctx.opts.nats_ws) {
            (Transport::Ws, Some(ws)) => ws,
            (Transport::Ws, None) => return Err("no --nats-ws-url".to_string()),
            _ => ctx.opts.target_for(index),
        };
        let stream = connect(target.addr, ctx.opts.source(index))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut conn = if transport == Transport::Ws {
            let path = if target.base_path.is_empty() {
                "/"
            } else {
                &target.base_path
            };
            let url = format!("ws://{}{path}", target.authority);
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| format!("websocket handshake: {e}"))?;
            NatsConn::ws(ws).await
        } else {
            NatsConn::tcp(stream).await
        }
        .map_err(|e| format!("nats handshake: {e}"))?;
        conn.subscribe(&ctx.topic_name(topic))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let session = Session::Nats {
            conn: Box::new(conn),
            current: 0..0,
        };
        Ok((session, true))
    }

    /// `herald.v1.Herald/Subscribe` on `--grpc-url`; the first message must be
    /// `open`.
    async fn open_grpc(ctx: &Ctx, topic: usize, index: usize) -> Result<(Session, bool), String> {
        let target = ctx.opts.grpc.as_ref().ok_or("no --grpc-url")?;
        let tcp = connect(target.addr, ctx.opts.source(index))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut conn = GrpcConn::connect(tcp, &target.authority).await?;
        let request = crate::grpc::subscribe_request(&ctx.topic_name(topic));
        let mut stream = conn.call("Subscribe", &request).await?;
        let first = stream
            .next_message()
            .await?
            .ok_or("stream ended before the open event")?;
        let is_open =
            crate::grpc::event_kind(stream.bytes(first.clone())) == crate::grpc::EVENT_OPEN;
        let session = Session::Grpc {
            stream: Box::new(stream),
            current: first,
            _conn: Box::new(conn),
        };
        Ok((session, is_open))
    }

    /// Waits for the next event; `false` when the stream ended.
    async fn next_event(&mut self) -> Result<bool, String> {
        match self {
            Session::Grpc {
                stream, current, ..
            } => match stream.next_message().await? {
                Some(range) => {
                    *current = range;
                    Ok(true)
                }
                None => Ok(false),
            },
            Session::Nats { conn, current } => match conn.next_message().await {
                Ok(Some(payload)) => {
                    *current = payload;
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e.to_string()),
            },
            Session::Ws { ws, text } => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        *text = t;
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    // Pings are answered by tungstenite on the next read.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                }
            },
            Session::Http {
                lines,
                sse,
                current,
            } => loop {
                let Some(range) = lines
                    .next_line()
                    .await
                    .map_err(|e: HttpError| e.to_string())?
                else {
                    return Ok(false);
                };
                let line = lines.line(range.clone());
                if *sse {
                    // Events are single `data:` lines in ntfy's framing; `event:`
                    // lines repeat what the JSON says, blank lines end events.
                    if let Some(data) = line.strip_prefix(b"data:") {
                        let skip = usize::from(data.first() == Some(&b' '));
                        *current = range.start + 5 + skip..range.end;
                        return Ok(true);
                    }
                } else if !line.is_empty() {
                    *current = range;
                    return Ok(true);
                }
            },
        }
    }

    /// Kernel receive time (`CLOCK_REALTIME` ns) of the event `next_event` found,
    /// with `--rx-timestamps` (ntfy WebSocket and HTTP streams only).
    fn rx_ns(&self) -> Option<u64> {
        match self {
            Session::Ws { ws, .. } => ws.get_ref().last_rx_ns(),
            Session::Http { lines, .. } => lines.last_rx_ns(),
            Session::Nats { .. } | Session::Grpc { .. } => None,
        }
    }

    /// The JSON text of the event `next_event` found.
    fn event(&self) -> &[u8] {
        match self {
            Session::Ws { text, .. } => text.as_bytes(),
            Session::Http { lines, current, .. } => lines.line(current.clone()),
            Session::Nats { conn, current } => conn.bytes(current.clone()),
            Session::Grpc {
                stream, current, ..
            } => stream.bytes(current.clone()),
        }
    }
}

/// Subscriber number `index`: opens its stream (holding `permit` until then, to
/// bound concurrent opens), then counts what arrives until the stream ends.
pub(crate) async fn subscriber(ctx: Rc<Ctx>, index: usize, permit: OwnedSemaphorePermit) {
    let opts = &ctx.opts;
    let topic = index % opts.topics;
    let transport = opts.transports[index % opts.transports.len()];
    let opened =
        tokio::time::timeout(OPEN_TIMEOUT, Session::open(&ctx, transport, topic, index)).await;
    let mut session = match opened {
        Ok(Ok((session, is_open))) => {
            let mut s = ctx.stats.borrow_mut();
            s.established += 1;
            s.established_per_topic[topic] += 1;
            s.last_established_ns = ctx.clock.now_ns();
            if !is_open {
                s.protocol_errors += 1;
                s.error(format!(
                    "subscriber {index} ({}): first event is not `open`",
                    transport.name()
                ));
            }
            session
        }
        Ok(Err(e)) => {
            let mut s = ctx.stats.borrow_mut();
            s.failed += 1;
            s.error(format!("subscriber {index} ({}): {e}", transport.name()));
            return;
        }
        Err(_) => {
            let mut s = ctx.stats.borrow_mut();
            s.failed += 1;
            s.error(format!(
                "subscriber {index} ({}): no open event within {OPEN_TIMEOUT:?}",
                transport.name()
            ));
            return;
        }
    };
    drop(permit);

    let mut trackers = vec![SeqTracker::default(); opts.publishers];
    let end = loop {
        match session.next_event().await {
            Ok(true) => on_event(&ctx, session.event(), session.rx_ns(), &mut trackers),
            Ok(false) => break "stream ended".to_string(),
            Err(e) => break e,
        }
    };
    let mut s = ctx.stats.borrow_mut();
    s.dropped += 1;
    s.error(format!(
        "subscriber {index} ({}) dropped: {end}",
        transport.name()
    ));
}

/// Accounts one received event; `rx_ns` is its kernel receive time, if taken.
fn on_event(ctx: &Ctx, event: &[u8], rx_ns: Option<u64>, trackers: &mut [SeqTracker]) {
    let Some(stamp) = Stamp::find(event) else {
        return; // keepalive, or a message without a stamp
    };
    let mut s = ctx.stats.borrow_mut();
    let now = match rx_ns {
        Some(rx) if ctx.opts.rx_timestamps => ctx.clock.realtime_to_ns(rx),
        _ => {
            if ctx.opts.rx_timestamps {
                s.rx_unstamped += 1;
            }
            ctx.clock.now_ns()
        }
    };
    if stamp.nonce != ctx.nonce {
        s.foreign += 1;
        return;
    }
    let Some(tracker) = usize::try_from(stamp.publisher)
        .ok()
        .and_then(|p| trackers.get_mut(p))
    else {
        s.protocol_errors += 1;
        return;
    };
    match tracker.observe(stamp.seq) {
        Arrival::Duplicate => {
            s.duplicates += 1;
            return;
        }
        Arrival::Late => s.out_of_order += 1,
        Arrival::InOrder => {}
    }
    s.delivered += 1;
    s.first_delivery_ns.get_or_insert(now);
    s.last_delivery_ns = now;
    s.delivery_lat
        .saturating_record(now.saturating_sub(stamp.send_ns) / 1000);
}

/// When and for how long a publisher publishes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Start of the publishing window on the run clock.
    pub(crate) start_ns: u64,
    pub(crate) duration: Duration,
}

/// A publisher's connection: HTTP/1.1 keep-alive, NATS over TCP, or herald's gRPC
/// API over HTTP/2.
enum PubConn {
    Http(Conn),
    Nats(Box<NatsConn>),
    Grpc(Box<GrpcConn>),
}

/// Publisher number `id` with its keep-alive connection.
pub(crate) struct Publisher {
    ctx: Rc<Ctx>,
    id: usize,
    conn: Option<PubConn>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Publisher {
    /// Connects publisher `id` (before the window opens, so the first publish
    /// does not pay for the handshake).
    pub(crate) async fn connect(ctx: Rc<Ctx>, id: usize) -> Publisher {
        let mut publisher = Publisher {
            ctx,
            id,
            conn: None,
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
        };
        if let Err(e) = publisher.ensure_conn().await {
            publisher
                .ctx
                .stats
                .borrow_mut()
                .error(format!("publisher {id}: connect: {e}"));
        }
        publisher
    }

    async fn ensure_conn(&mut self) -> Result<&mut PubConn, String> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let opts = &self.ctx.opts;
                let index = opts.subscribers + self.id;
                let source = opts.source(index);
                if let (true, Some(grpc)) = (opts.publish_grpc, &opts.grpc) {
                    let stream = connect(grpc.addr, source)
                        .await
                        .map_err(|e| e.to_string())?;
                    let conn = GrpcConn::connect(stream, &grpc.authority).await?;
                    return Ok(self.conn.insert(PubConn::Grpc(Box::new(conn))));
                }
                let stream = connect(opts.target_for(index).addr, source)
                    .await
                    .map_err(|e| e.to_string())?;
                match opts.protocol() {
                    Protocol::Ntfy => PubConn::Http(Conn::new(stream)),
                    Protocol::Nats => PubConn::Nats(Box::new(
                        NatsConn::tcp(stream)
                            .await
                            .map_err(|e| format!("nats handshake: {e}"))?,
                    )),
                }
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// Publishes through the window: open loop (message `k` of all publishers is
    /// due at `k / rate`; this one sends `k = id, id + M, ...`) or closed loop.
    pub(crate) async fn run(mut self, window: Window) {
        let ctx = self.ctx.clone();
        let opts = &ctx.opts;
        let mut seqs = vec![0u64; opts.topics];
        let end_ns =
            window.start_ns + u64::try_from(window.duration.as_nanos()).unwrap_or(u64::MAX);
        // A gRPC `PublishBatch` call carries `batch` messages: the schedule is per call.
        let per_call = opts.batch as u64;
        for j in 0u64.. {
            let due_ns = match opts.rate {
                Some(rate) => {
                    let k = (j * opts.publishers as u64 + self.id as u64) * per_call;
                    let due = window.start_ns + (k as f64 / rate * 1e9) as u64;
                    if due >= end_ns {
                        break;
                    }
                    tokio::time::sleep_until(ctx.clock.at(due).into()).await;
                    Some(due)
                }
                None if ctx.clock.now_ns() >= end_ns => break,
                None => None,
            };
            // Each publisher cycles over all topics, starting at its own offset.
            let topic = (self.id + j as usize) % opts.topics;
            let seq = seqs[topic];
            // Every attempt consumes a seq, even a failed one: if the server did
            // take a message whose ack was lost, the next one must not look like a
            // duplicate. Skipped seqs only leave gaps, which are not errors.
            seqs[topic] += per_call;
            self.publish(topic, seq..seq + per_call, due_ns).await;
        }
    }

    async fn publish(&mut self, topic: usize, seqs: Range<u64>, due_ns: Option<u64>) {
        let ctx = self.ctx.clone();
        let send_ns = ctx.clock.now_ns();
        let stamp = |seq| {
            Stamp {
                nonce: ctx.nonce,
                publisher: self.id as u32,
                seq,
                send_ns,
            }
            .body(ctx.opts.size)
        };
        let count = seqs.end - seqs.start;
        let body = stamp(seqs.start);
        self.request.clear();
        match ctx.opts.protocol() {
            Protocol::Ntfy if ctx.opts.publish_grpc => {
                let name = ctx.topic_name(topic);
                if count == 1 {
                    crate::grpc::publish_request(&mut self.request, &name, &body);
                } else {
                    let requests: Vec<Vec<u8>> = seqs
                        .map(|seq| {
                            let mut r = Vec::new();
                            crate::grpc::publish_request(&mut r, &name, &stamp(seq));
                            r
                        })
                        .collect();
                    crate::grpc::batch_request(&mut self.request, &requests);
                }
            }
            Protocol::Ntfy => {
                let target = ctx.opts.target_for(ctx.opts.subscribers + self.id);
                self.request.extend_from_slice(
                    format!(
                        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herald-bench\r\nContent-Length: {}\r\n\r\n",
                        ctx.path(target, topic, ""),
                        target.authority,
                        body.len()
                    )
                    .as_bytes(),
                );
                self.request.extend_from_slice(body.as_bytes());
            }
            Protocol::Nats => {
                publish_with_ack(&mut self.request, &ctx.topic_name(topic), body.as_bytes());
            }
        }
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, self.exchange())
            .await
            .unwrap_or_else(|_| {
                self.conn = None; // a late response would be read as the next one's
                Err(format!("no response within {PUBLISH_TIMEOUT:?}"))
            });
        let mut ok = false;
        for _ in 0..count {
            ok = self.account(topic, send_ns, due_ns, result.clone());
        }
        if !ok && self.conn.is_none() {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Counts one publish attempt; `true` if it was acknowledged (a 2xx, or
    /// NATS's `PONG`).
    fn account(
        &self,
        topic: usize,
        send_ns: u64,
        due_ns: Option<u64>,
        result: Result<(), String>,
    ) -> bool {
        let done_ns = self.ctx.clock.now_ns();
        let mut s = self.ctx.stats.borrow_mut();
        if let Some(due) = due_ns {
            s.max_send_lag_ns = s.max_send_lag_ns.max(send_ns.saturating_sub(due));
        }
        let failure = match result {
            Ok(()) => {
                s.published += 1;
                s.published_per_topic[topic] += 1;
                s.publish_lat.saturating_record((done_ns - send_ns) / 1000);
                return true;
            }
            Err(e) => e,
        };
        s.publish_errors += 1;
        s.error(format!("publisher {}: {failure}", self.id));
        false
    }

    /// One request/response on the keep-alive connection (reconnecting if it was
    /// closed): `Ok` when acknowledged (a 2xx; for NATS the `PONG`). An HTTP
    /// response body is left in `self.response`.
    async fn exchange(&mut self) -> Result<(), String> {
        let request = std::mem::take(&mut self.request);
        let batch = self.ctx.opts.batch;
        let mut response = std::mem::take(&mut self.response);
        response.clear();
        let result = async {
            let conn = self
                .ensure_conn()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match conn {
                PubConn::Http(conn) => {
                    conn.send(&request).await.map_err(|e| e.to_string())?;
                    let head = conn.read_head().await.map_err(|e| e.to_string())?;
                    conn.read_body(head.framing, &mut response)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((head.status, head.keep_alive))
                }
                PubConn::Nats(conn) => {
                    conn.send(&request).await.map_err(|e| e.to_string())?;
                    conn.await_pong().await.map_err(|e| e.to_string())?;
                    Ok((200, true))
                }
                PubConn::Grpc(conn) => {
                    if batch == 1 {
                        conn.unary("Publish", &request).await?;
                    } else {
                        let reply = conn.unary("PublishBatch", &request).await?;
                        let (errors, total) = crate::grpc::batch_errors(&reply);
                        if errors > 0 {
                            return Err(format!("{errors} of {total} batch messages refused"));
                        }
                    }
                    Ok((200, true))
                }
            }
        }
        .await;
        self.request = request;
        self.response = response;
        match result {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.conn = None;
                }
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}: {}", snippet(&self.response)))
                }
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// The start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}
