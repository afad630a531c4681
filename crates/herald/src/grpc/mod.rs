//! The gRPC API (`listen-grpc`, docs/GRPC.md): `herald.v1.Herald` (publish, batch
//! publish, delete, clear, subscribe, poll, stats), `grpc.health.v1.Health`, and,
//! with `grpc-reflection`, server reflection, served by tonic over HTTP/2 on a
//! listener of its own.
//!
//! It exists for backends: a typed client in any language, streams with HTTP/2 flow
//! control, and the standard health protocol Kubernetes probes with. It is a thin
//! adapter like the HTTP API: it turns its messages into the core's domain types
//! (`convert`), calls `core::Herald` and the subscription core (`service`), and
//! turns domain errors into statuses with ntfy's codes in the details (`status`).
//! It shares the HTTP API's state (`api::AppState`: access control, visitor limits,
//! subscription slots), so every rule is the same on both, in cluster mode too.
//! No TLS here: it stays with the ingress (docs/GRPC.md).

pub mod codec;
mod convert;
mod health;
mod metrics;
mod service;
mod status;

/// The code generated from `proto/herald/v1/herald.proto` (by `build.rs`):
/// messages, the server trait, and a client (used by the tests).
#[allow(
    clippy::all,
    clippy::allow_attributes_without_reason,
    missing_docs,
    reason = "generated code"
)]
pub mod proto {
    tonic::include_proto!("herald.v1");
}

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub(crate) use metrics::GrpcMetrics;

use crate::api::AppState;

/// `herald.proto`'s descriptor set, for reflection.
const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));

/// HTTP/2 flow-control window per stream and per connection (the RFC 9113 default;
/// a subscriber sends almost nothing, and what the server sends is bounded by the
/// client's windows and `subscriber-queue-size`).
const WINDOW: u32 = 65_535;

/// Concurrent calls on one connection.
const MAX_STREAMS: u32 = 256;

/// What a gRPC call may send at most: a batch of `service::BATCH_MAX` messages of
/// `message-size-limit` (and their other fields). Longer calls are refused by tonic
/// from the length prefix, before the message is buffered.
fn max_request_bytes(message_size_limit: usize) -> usize {
    message_size_limit
        .saturating_add(2048)
        .saturating_mul(service::BATCH_MAX)
        .min(64 << 20)
}

/// Serves the gRPC API on `listener` until `stop` is cancelled, then stops
/// accepting and lets the calls under way finish (streams end first: the hub
/// closes them with UNAVAILABLE when the server drains).
pub(crate) async fn serve(
    listener: TcpListener,
    state: AppState,
    metrics: GrpcMetrics,
    reflection: bool,
    stop: CancellationToken,
) {
    let config = state.herald.config().clone();
    let herald = proto::herald_server::HeraldServer::new(service::HeraldService {
        state: state.clone(),
        metrics,
    })
    .max_decoding_message_size(max_request_bytes(config.message_size_limit));
    let health = tonic_health::pb::health_server::HealthServer::new(health::HealthService {
        herald: state.herald.clone(),
        stop: stop.clone(),
    });
    let (reflection_v1, reflection_v1alpha) = if reflection {
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        (builder().build_v1().ok(), builder().build_v1alpha().ok())
    } else {
        (None, None)
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        // Keepalive by HTTP/2 PING; a peer that does not answer within the grace
        // WebSocket peers get is gone, and its streams with it.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(crate::subscribe::PONG_GRACE))
        .http2_max_header_list_size(u32::try_from(config.limits.max_header_size).unwrap_or(u32::MAX))
        .add_service(herald)
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "gRPC listener failed");
    }
}
