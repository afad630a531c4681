//! OpenTelemetry trace export over OTLP (HTTP/protobuf), behind the `otel` cargo
//! feature and the `otlp-endpoint` option.
//!
//! Why it looks like this:
//! - **Off twice by default.** Without the feature none of this is compiled (the
//!   default binary has no OpenTelemetry crate in its graph, and [`enabled`] is a
//!   constant `false` the compiler removes); with it, spans are only made once
//!   `init_logging` installed the exporter and called `enable`. So a build with the
//!   feature but no endpoint pays one relaxed atomic load per publish and per fan-out
//!   batch, and nothing per subscriber.
//! - **Two spans.** `publish` (topic, message id, event kind) covers
//!   `Herald::publish`: the store commit and the hand-off to the broker. `deliver`
//!   is one span per subscriber write of a traced message (transport, subscriber id,
//!   outcome, events accepted), child of that message's `publish` span.
//! - **The parent travels as an OpenTelemetry context, not a `tracing::Span`.** The
//!   fan-out runs in another task, after `publish` returned; the shared event carries
//!   the publish span's context (trace and span id, an `Arc` clone). Holding the
//!   `tracing::Span` itself would keep the publish span open until the last
//!   subscriber drained the event, stretching its duration over every slow reader.
//! - **Plain HTTP, blocking client on the exporter's own thread.** The SDK's batch
//!   processor runs on a dedicated thread and exports with a blocking `reqwest`
//!   client: nothing runs on the server's runtime, no TLS stack (send to a local
//!   collector or agent), no OpenSSL, no gRPC/tonic.
//! - **Only herald's spans are exported.** The OpenTelemetry layer has its own filter
//!   (herald's spans, and herald's warnings and errors as span events), independent of
//!   `log-level`/`RUST_LOG`, so quieting the log does not silence the traces and the
//!   exporter's own HTTP client never traces itself.

#[cfg(feature = "otel")]
pub use imp::*;

/// Whether this binary was built with the `otel` feature.
pub const COMPILED: bool = cfg!(feature = "otel");

/// Whether spans are being made and exported (the exporter is installed).
#[inline(always)]
pub fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        imp::ENABLED.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The trace exporter, if one runs; [`Exporter::shutdown`] flushes what is buffered.
/// Empty (and its shutdown a no-op) when `otlp-endpoint` is off or the feature is out.
#[derive(Debug, Default)]
#[must_use = "shut the exporter down on exit, or buffered spans are lost"]
pub struct Exporter {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Exporter {
    /// Stops span creation, exports what is buffered (bounded wait) and stops the
    /// exporter thread. Call it outside the async runtime: it blocks.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            imp::ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(imp::SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "flushing OpenTelemetry spans failed");
            }
        }
    }
}

/// `otlp-endpoint` as the URL spans are posted to: a base URL (`http://host:4318`)
/// gets OTLP's `/v1/traces` appended, as `OTEL_EXPORTER_OTLP_ENDPOINT` does; a URL
/// already ending in `/v1/traces` is kept. Plain `http://` only.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| "expected a URL such as http://127.0.0.1:4318".to_string())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported (herald has no TLS stack for OTLP): send to a local collector over http://"
                    .into(),
            );
        }
        _ => return Err("expected an http:// URL such as http://127.0.0.1:4318".into()),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err("expected an http:// URL with a host, e.g. http://127.0.0.1:4318".into());
    }
    if uri.query().is_some() {
        return Err("the URL must not have a query string".into());
    }
    let trimmed = endpoint.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        Ok(trimmed.to_string())
    } else {
        Ok(format!("{trimmed}/v1/traces"))
    }
}

#[cfg(feature = "otel")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Level;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use super::Exporter;
    use crate::hub::{DeliverOutcome, SharedEvent, Transport};
    use crate::model::Message;

    pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);

    /// The `tracing` target of herald's trace spans. The log layer leaves these out,
    /// so tracing costs the log nothing and log lines look the same with it on.
    pub const TARGET: &str = "herald::otel";

    /// How long one export request may take.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long the final flush on exit may take (a down collector must not hold up
    /// a shutdown for long).
    pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

    /// The parent of the `deliver` spans: the publish span's OpenTelemetry context.
    pub type TraceContext = opentelemetry::Context;

    /// Builds the OTLP exporter for `traces_url` (see [`super::traces_url`]) and the
    /// `tracing` layer that feeds it. Spans are only made after [`enable`].
    pub fn layer<S>(
        traces_url: &str,
        service_name: &str,
    ) -> anyhow::Result<(impl Layer<S> + Send + Sync + 'static, Exporter)>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_string())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("herald");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("herald")
                    && (meta.is_span() || *meta.level() <= Level::WARN)
            }));
        let exporter = Exporter {
            provider: Some(provider),
        };
        Ok((layer, exporter))
    }

    /// Starts making spans (call once the layer is installed).
    pub fn enable() {
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// The `publish` span of `message`.
    pub fn publish_span(message: &Message) -> tracing::Span {
        tracing::info_span!(
            target: TARGET,
            "publish",
            topic = %message.topic,
            message_id = %message.id,
            event = message.event.as_str(),
        )
    }

    /// The OpenTelemetry context of `span`, for its `deliver` children.
    pub fn context(span: &tracing::Span) -> TraceContext {
        span.context()
    }

    /// Opens one `deliver` span per traced event of `batch`, for the subscriber
    /// `subscriber` on `transport` (they end in [`finish_deliver`]).
    pub fn deliver_spans(
        batch: &[std::sync::Arc<SharedEvent>],
        transport: Transport,
        subscriber: u64,
    ) -> Vec<tracing::Span> {
        batch
            .iter()
            .filter_map(|event| {
                let parent = event.trace.as_ref()?;
                let span = tracing::info_span!(
                    target: TARGET,
                    parent: None,
                    "deliver",
                    transport = transport.as_str(),
                    subscriber = int(subscriber),
                    batch = int(batch.len()),
                    outcome = tracing::field::Empty,
                    accepted = tracing::field::Empty,
                );
                let _ = span.set_parent(parent.clone());
                Some(span)
            })
            .collect()
    }

    /// `n` as the signed integer OpenTelemetry attributes hold (tracing-opentelemetry
    /// would export an unsigned value as a string).
    fn int<T: TryInto<i64>>(n: T) -> i64 {
        n.try_into().unwrap_or(i64::MAX)
    }

    /// Records what became of the write on the `deliver` spans and ends them.
    pub fn finish_deliver(spans: Vec<tracing::Span>, outcome: DeliverOutcome, accepted: usize) {
        let outcome = match outcome {
            DeliverOutcome::Accepted => "accepted",
            DeliverOutcome::Skipped => "skipped",
            DeliverOutcome::Overflowed => "overflowed",
            DeliverOutcome::Closed => "closed",
        };
        for span in spans {
            span.record("outcome", outcome);
            span.record("accepted", int(accepted));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_otlp_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://collector:4318/").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://gw/otlp").as_deref(),
            Ok("http://gw/otlp/v1/traces")
        );
        assert!(traces_url("https://collector:4318").is_err());
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("http://").is_err());
        assert!(traces_url("not a url").is_err());
    }
}
