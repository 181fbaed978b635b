//! W3C trace context (`traceparent`, `tracestate`) in and out of HTTP headers, through the
//! globally installed propagator ([`crate::init`] installs `TraceContextPropagator`).

use opentelemetry_http::{HeaderExtractor, HeaderInjector};

/// The remote parent an incoming request carries (`traceparent`), as a context to make a
/// server span its child:
///
/// ```no_run
/// use tracing_opentelemetry::OpenTelemetrySpanExt;
/// # fn handle(headers: &http::HeaderMap) {
/// let span = tracing::info_span!("request", otel.kind = "server");
/// let _ = span.set_parent(tokenvisor_telemetry::extract_parent_context(headers));
/// # }
/// ```
///
/// Set the parent before the span is first entered. Without a valid `traceparent` the
/// context is empty and the span starts a new trace.
pub fn extract_parent_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// Writes the context of `span` into outgoing request `headers` (`traceparent`), so the
/// receiver (a webhook endpoint) can continue the trace. Does nothing without the
/// OpenTelemetry layer.
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// A server span for one HTTP request (OpenTelemetry HTTP semantic conventions: named
/// `{method} {route}`, `http.request.method`, `http.route`, kind server) that continues
/// the caller's trace when the request carries a `traceparent`. Run the handler inside
/// it (`.instrument(span.clone())`) and finish with [`record_http_status`]. `route` is the
/// route template (`/v1/connections/{id}/token`), never the path with ids or a query.
pub fn http_server_span(method: &str, route: &str, headers: &http::HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "http_request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(extract_parent_context(headers));
    span
}

/// Records the response status on a span from [`http_server_span`] (5xx marks it failed).
pub fn record_http_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn a_traceparent_header_becomes_the_remote_parent() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = extract_parent_context(&headers);
        let span = context.span();
        let parent = span.span_context();
        assert!(parent.is_valid() && parent.is_remote());
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");

        let empty = extract_parent_context(&http::HeaderMap::new());
        assert!(!empty.span().span_context().is_valid());
    }

    #[test]
    fn a_server_span_continues_the_incoming_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let span = http_server_span("GET", "/v1/connections/{id}/token", &headers);
            let mut outgoing = http::HeaderMap::new();
            inject_context(&span, &mut outgoing);
            record_http_status(&span, 200);
            assert_eq!(
                span.context().span().span_context().trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert!(
                outgoing["traceparent"]
                    .to_str()
                    .expect("ascii")
                    .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            );
        });
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 1);
        let server = &spans[0];
        assert_eq!(server.name, "GET /v1/connections/{id}/token");
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(server.parent_span_is_remote);
    }
}
