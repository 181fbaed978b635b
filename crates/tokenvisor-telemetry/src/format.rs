//! Log line formats that carry the OpenTelemetry trace and span ids of the span an event
//! happens in, so a log line leads to its trace.
//!
//! The ids come from the OpenTelemetry context that `tracing-opentelemetry` attaches while
//! a span is entered; without that layer (or outside any span) no ids are written.

use crate::config::LogFormat;
use opentelemetry::trace::TraceContextExt;
use std::fmt::Write as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The trace and span ids (lowercase hex) of the OpenTelemetry span current on this thread.
pub fn current_trace_ids() -> Option<(String, String)> {
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// The fmt layer of the binary: `format` lines written to `writer`, with trace ids.
/// Tests use it with a capturing writer to see exactly what the binary would print.
pub fn fmt_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .fmt_fields(DefaultFields::new())
                .event_format(TextWithTraceIds {
                    inner: tracing_subscriber::fmt::format().with_ansi(ansi),
                }),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonWithTraceIds),
        ),
    }
}

/// The default text format, with ` trace_id=… span_id=…` at the end of the line.
pub struct TextWithTraceIds<F> {
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for TextWithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_trace_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}")
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, `fields` (the
/// event's other fields), `span` (the innermost span: `name` and its fields), `spans`
/// (names, outermost first), `trace_id` and `span_id`.
pub struct JsonWithTraceIds;

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert(
            "message".into(),
            visitor.message.map(serde_json::Value::String).unwrap_or_default(),
        );
        if !visitor.fields.is_empty() {
            line.insert("fields".into(), serde_json::Value::Object(visitor.fields));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let mut innermost = None;
            for span in scope.from_root() {
                names.push(serde_json::Value::String(span.name().into()));
                let mut object = serde_json::Map::new();
                object.insert("name".into(), span.name().into());
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(serde_json::Value::Object(parsed)) = serde_json::from_str(&fields.fields)
                {
                    object.extend(parsed);
                }
                innermost = Some(object);
            }
            if let Some(innermost) = innermost {
                line.insert("span".into(), serde_json::Value::Object(innermost));
            }
            line.insert("spans".into(), serde_json::Value::Array(names));
        }
        if let Some((trace_id, span_id)) = current_trace_ids() {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl JsonVisitor {
    fn insert(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().into(), value);
        }
    }
}

impl tracing::field::Visit for JsonVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.insert(field, text.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.insert(field, value.into());
    }
}
