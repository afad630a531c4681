//! gRPC requests in the Prometheus metrics and the access log: counted by method and
//! status code (both bounded: the methods of `herald.v1.Herald`, the 17 gRPC codes),
//! timed from the call to its answer (streams: until the stream opened), as the
//! HTTP routes are (`crate::telemetry`).

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::telemetry::MetricSource;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

fn histogram() -> Histogram {
    // The bounds of HTTP's latency histogram, so the two compare.
    Histogram::new(crate::telemetry::HTTP_BUCKETS)
}

/// The gRPC API's metric handles (`herald_grpc_*`).
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics {
    requests: Family<CallLabels, Counter>,
    duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
        }
    }
}

impl MetricSource for GrpcMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_grpc_requests",
            "gRPC calls answered, by method and status code",
            self.requests.clone(),
        );
        registry.register(
            "herald_grpc_request_duration_seconds",
            "Time from a gRPC call to its answer (streams: until the stream opened), by method",
            self.duration.clone(),
        );
    }
}

/// gRPC's name of `code` (`OK`, `INVALID_ARGUMENT`, ...).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call being answered: finished once, with its code.
pub(crate) struct Call {
    method: &'static str,
    start: Instant,
}

impl Call {
    /// A call of `method` (a `herald.v1.Herald` method name) starting now.
    pub(crate) fn start(method: &'static str) -> Self {
        Call {
            method,
            start: Instant::now(),
        }
    }

    /// Records the answer: metrics and one access-log line.
    pub(crate) fn finish(&self, metrics: &GrpcMetrics, code: Code, topic: Option<&str>) {
        let elapsed = self.start.elapsed();
        let code = code_name(code);
        metrics
            .requests
            .get_or_create(&CallLabels {
                method: self.method,
                code,
            })
            .inc();
        metrics
            .duration
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(elapsed.as_secs_f64());
        log_call(self.method, code, elapsed, topic);
    }
}

fn log_call(method: &'static str, code: &'static str, elapsed: Duration, topic: Option<&str>) {
    let latency_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    tracing::info!(target: "herald::access", method = "gRPC", path = method, status = code, latency_ms, topic, route = "grpc", "request");
}
