//! Capturing what tokenvisor emits: spans through the OpenTelemetry SDK's in-memory
//! exporter and log lines through the binary's own formatter, into a scoped (thread-local)
//! subscriber so that other tests are not affected. Use it in current-thread tests
//! (`#[tokio::test]`), where every actor and task runs on the test's thread.

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use tokenvisor_telemetry;
pub use tracing_opentelemetry;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokenvisor_telemetry::LogFormat;
use tracing_subscriber::layer::SubscriberExt;

/// Spans and log lines captured while the guard of [`Capture::start`] is alive.
pub struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    logs: Arc<Mutex<Vec<u8>>>,
}

struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Registered but never used: enables nothing, and tells every callsite "ask me each time".
struct AskEachTime;

impl tracing::Subscriber for AskEachTime {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// tracing caches each callsite's interest. While a single dispatcher is registered,
/// tracing-core computes the interest of a callsite first hit on another thread from
/// *that* thread's default (none: "never"), and a scoped capture then misses the span or
/// event for good. Two dispatchers that are always registered keep every interest at
/// "sometimes", so each thread's current dispatcher decides.
fn keep_interest_dynamic() {
    static KEEPERS: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEEPERS.get_or_init(|| [tracing::Dispatch::new(AskEachTime), tracing::Dispatch::new(AskEachTime)]);
}

impl Capture {
    /// Installs a thread-local subscriber that records everything (TRACE): log lines in
    /// `format` exactly as the binary writes them, and every span to the in-memory exporter.
    pub fn start(format: LogFormat) -> (Capture, tracing::subscriber::DefaultGuard) {
        keep_interest_dynamic();
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer_logs = logs.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(tokenvisor_telemetry::fmt_layer(
                format,
                move || SharedBuffer(writer_logs.clone()),
                false,
            ))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tokenvisor-tests")));
        let guard = tracing::subscriber::set_default(subscriber);
        (
            Capture {
                exporter,
                provider,
                logs,
            },
            guard,
        )
    }

    /// Every span ended so far.
    pub fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().unwrap()
    }

    /// Ended spans named `name`, in the order they ended.
    pub fn spans_named(&self, name: &str) -> Vec<SpanData> {
        self.spans().into_iter().filter(|span| span.name == name).collect()
    }

    /// The log lines written so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Everything recorded, as text to search: log lines, span names, attributes, events
    /// (names and attributes), links' attributes and statuses.
    pub fn everything(&self) -> String {
        let mut text = self.logs();
        for span in self.spans() {
            text.push_str(&format!("\n{} {:?}", span.name, span.status));
            for attribute in &span.attributes {
                text.push_str(&format!("\n{}={}", attribute.key, attribute.value));
            }
            for event in &span.events.events {
                text.push_str(&format!("\nevent {}", event.name));
                for attribute in &event.attributes {
                    text.push_str(&format!(" {}={}", attribute.key, attribute.value));
                }
            }
            for link in &span.links.links {
                for attribute in &link.attributes {
                    text.push_str(&format!("\nlink {}={}", attribute.key, attribute.value));
                }
            }
        }
        text
    }
}

/// The value of attribute `key` of `span`.
pub fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == Key::new(key.to_owned()))
        .map(|attribute| attribute.value.clone())
}

/// The value of attribute `key` of `span` as text (`None` when absent).
pub fn attribute_text(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(|value| value.as_str().into_owned())
}

/// Whether `child`'s parent is `parent` (same trace, parent span id).
pub fn is_child_of(child: &SpanData, parent: &SpanData) -> bool {
    child.span_context.trace_id() == parent.span_context.trace_id()
        && child.parent_span_id == parent.span_context.span_id()
}

/// Whether `span` starts a trace.
pub fn is_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID
}

/// Whether `span` links to `target`.
pub fn links_to(span: &SpanData, target: &SpanData) -> bool {
    span.links
        .links
        .iter()
        .any(|link| link.span_context.span_id() == target.span_context.span_id())
}
