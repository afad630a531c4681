//! OpenTelemetry trace export (`--features otel`, `otlp-endpoint`): the real binary
//! posts OTLP/HTTP protobuf to a tiny collector run by the test, with a `publish`
//! span per message and a `deliver` span per subscriber write, child of it.
//!
//! The collector decodes just enough protobuf (a field walker, no generated code)
//! to check span names, attributes, the parent link and the service name.

#![cfg(feature = "otel")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::fixture::{Launch, TestServer, eventually};

const SERVICE: &str = "herald-otel-test";

/// One request the collector received.
#[derive(Debug, Clone)]
struct Posted {
    path: String,
    content_type: String,
    body: Bytes,
}

/// A minimal OTLP/HTTP collector on `127.0.0.1:0` that records every request.
struct Collector {
    url: String,
    posted: Arc<Mutex<Vec<Posted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("collector address")
        );
        let posted = Arc::new(Mutex::new(Vec::new()));
        let log = posted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = match req.into_body().collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            log.lock().unwrap().push(Posted {
                                path,
                                content_type,
                                body,
                            });
                            // An empty ExportTraceServiceResponse: full success.
                            let resp = Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { url, posted, task }
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<SpanInfo> {
        self.posted()
            .iter()
            .flat_map(|p| decode_request(&p.body).unwrap_or_else(|| panic!("bad protobuf")))
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the test checks of an exported span.
#[derive(Debug, Clone)]
struct SpanInfo {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<(String, Attr)>,
    /// `service.name` of the resource the span came with.
    service: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Other,
}

impl SpanInfo {
    fn attr(&self, key: &str) -> Option<&Attr> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

// ---- a protobuf field walker (wire format only) ----

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let value = buf.get(..len)?;
                buf = buf.get(len..)?;
                Field::Bytes(value)
            }
            5 => {
                buf = buf.get(4..)?;
                Field::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

/// The length-delimited fields number `num` of `msg`.
fn messages(msg: &[u8], num: u64) -> Option<Vec<&[u8]>> {
    Some(
        fields(msg)?
            .into_iter()
            .filter_map(|(n, f)| match f {
                Field::Bytes(b) if n == num => Some(b),
                _ => None,
            })
            .collect(),
    )
}

fn string(msg: &[u8], num: u64) -> Option<String> {
    let bytes = messages(msg, num)?.first().copied().unwrap_or_default();
    String::from_utf8(bytes.to_vec()).ok()
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1;
/// bool_value = 2; int_value = 3; ... }`.
fn key_values(msg: &[u8], num: u64) -> Option<Vec<(String, Attr)>> {
    let mut out = Vec::new();
    for kv in messages(msg, num)? {
        let key = string(kv, 1)?;
        let value = messages(kv, 2)?.first().copied().unwrap_or_default();
        let attr = match fields(value)?.into_iter().next() {
            Some((1, Field::Bytes(s))) => Attr::Str(String::from_utf8(s.to_vec()).ok()?),
            Some((3, Field::Varint(n))) => Attr::Int(n as i64),
            _ => Attr::Other,
        };
        out.push((key, attr));
    }
    Some(out)
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`,
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }`,
/// `ScopeSpans { repeated Span spans = 2 }`, `Span { trace_id = 1; span_id = 2;
/// parent_span_id = 4; name = 5; attributes = 9 }`.
fn decode_request(body: &[u8]) -> Option<Vec<SpanInfo>> {
    let mut out = Vec::new();
    for resource_spans in messages(body, 1)? {
        let resource = messages(resource_spans, 1)?
            .first()
            .copied()
            .unwrap_or_default();
        let service = key_values(resource, 1)?
            .into_iter()
            .find_map(|(k, v)| match v {
                Attr::Str(s) if k == "service.name" => Some(s),
                _ => None,
            })
            .unwrap_or_default();
        for scope_spans in messages(resource_spans, 2)? {
            for span in messages(scope_spans, 2)? {
                let bytes = |num| {
                    messages(span, num).map(|v| v.first().copied().unwrap_or_default().to_vec())
                };
                out.push(SpanInfo {
                    name: string(span, 5)?,
                    trace_id: bytes(1)?,
                    span_id: bytes(2)?,
                    parent_span_id: bytes(4)?,
                    attributes: key_values(span, 9)?,
                    service: service.clone(),
                });
            }
        }
    }
    Some(out)
}

// ---- the tests ----

fn launch(collector: &Collector, envs: &[(&str, &str)]) -> TestServer {
    TestServer::launch(Launch {
        args: vec![
            "--otlp-endpoint".into(),
            collector.url.clone(),
            "--otlp-service-name".into(),
            SERVICE.into(),
        ],
        envs: envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Launch::default()
    })
}

/// Publishes one message to `topic` with one `/json` subscriber; returns its id once
/// the subscriber has it.
async fn publish_to_one_subscriber(server: &TestServer, topic: &str) -> String {
    let mut stream = server.stream(&format!("/{topic}/json")).await;
    assert_eq!(stream.next_json().await["event"], "open");
    let published = server.publish(topic, "traced").await;
    let got = stream.next_non_keepalive().await;
    assert_eq!(got["message"], "traced");
    published["id"].as_str().expect("message id").to_string()
}

/// The `publish` span of `id` and the `deliver` spans under it, once both arrived.
fn find_trace(spans: &[SpanInfo], id: &str) -> Option<(SpanInfo, Vec<SpanInfo>)> {
    let publish = spans
        .iter()
        .find(|s| s.name == "publish" && s.attr("message_id") == Some(&Attr::Str(id.into())))?;
    let deliver: Vec<SpanInfo> = spans
        .iter()
        .filter(|s| s.name == "deliver" && s.parent_span_id == publish.span_id)
        .cloned()
        .collect();
    (!deliver.is_empty()).then(|| (publish.clone(), deliver))
}

fn check_trace(collector: &Collector, publish: &SpanInfo, deliver: &[SpanInfo], topic: &str) {
    for p in collector.posted() {
        assert_eq!(p.path, "/v1/traces");
        assert_eq!(p.content_type, "application/x-protobuf");
        let has = |needle: &[u8]| p.body.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"publish") || has(b"deliver"),
            "no span names in a post"
        );
    }
    assert_eq!(publish.service, SERVICE);
    assert_eq!(publish.attr("topic"), Some(&Attr::Str(topic.into())));
    assert_eq!(publish.attr("event"), Some(&Attr::Str("message".into())));
    assert_eq!(publish.span_id.len(), 8);
    assert_eq!(publish.trace_id.len(), 16);
    assert_eq!(
        deliver.len(),
        1,
        "one subscriber, one deliver span: {deliver:?}"
    );
    let d = &deliver[0];
    assert_eq!(
        d.trace_id, publish.trace_id,
        "deliver is in the publish trace"
    );
    assert_eq!(d.attr("transport"), Some(&Attr::Str("json".into())));
    assert_eq!(d.attr("outcome"), Some(&Attr::Str("accepted".into())));
    assert_eq!(d.attr("accepted"), Some(&Attr::Int(1)));
}

#[tokio::test]
async fn publish_and_deliver_spans_are_exported() {
    let collector = Collector::start().await;
    // Export every 100 ms instead of the SDK's 5 s, so spans arrive while running.
    let mut server = launch(&collector, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    let id = publish_to_one_subscriber(&server, "traced").await;
    let (publish, deliver) = eventually(Duration::from_secs(15), "exported spans", || {
        let found = find_trace(&collector.spans(), &id);
        async move { found }
    })
    .await;
    check_trace(&collector, &publish, &deliver, "traced");
    assert!(server.stop().success(), "{}", server.log_text());
}

#[tokio::test]
async fn buffered_spans_are_flushed_on_shutdown() {
    let collector = Collector::start().await;
    // The SDK's default 5 s export interval: only the flush on exit sends these now.
    let mut server = launch(&collector, &[]);
    let id = publish_to_one_subscriber(&server, "flushed").await;
    assert!(server.stop().success(), "{}", server.log_text());
    let (publish, deliver) = eventually(Duration::from_secs(5), "flushed spans", || {
        let found = find_trace(&collector.spans(), &id);
        async move { found }
    })
    .await;
    check_trace(&collector, &publish, &deliver, "flushed");
}
