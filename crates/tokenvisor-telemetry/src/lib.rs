//! Telemetry for tokenvisor: building the pipeline, and (for the `tokenvisor` binary
//! only) installing it process-wide.
//!
//! - `config`: what to do, from `RUST_LOG`, `TOKENVISOR_LOG_FORMAT` and the standard `OTEL_*`
//!   variables ([`TelemetryConfig`]);
//! - `format`: log lines as text or JSON, with the trace and span ids of their span;
//! - `propagation`: W3C `traceparent` in and out of HTTP headers ([`extract_parent_context`]),
//!   through whatever propagator the process installed;
//! - this file: [`build`] makes the pipeline (tracer provider, meter provider with
//!   Prometheus text, OTLP/HTTP exporters when configured) and installs **nothing**: a host
//!   that embeds tokenvisor can take its providers, its [`Pipeline::meter`] or its layers and
//!   wire them as it likes. [`Pipeline::install`], [`init`] and [`init_with`] are the only
//!   functions that touch process-wide state (the global subscriber, tracer and meter
//!   providers and the W3C propagator); they exist for the binary, which calls one of them
//!   once at start-up. No function of this crate installs a rustls crypto provider: the
//!   OTLP exporters get an HTTP client built with an explicit one
//!   ([`tokenvisor_provider::tls::rustls_client_config`]).

mod config;
mod format;
mod propagation;

pub use config::{ConfigError, LogFormat, TelemetryConfig};
pub use format::{JsonWithTraceIds, TextWithTraceIds, current_trace_ids, fmt_layer};
pub use propagation::{extract_parent_context, http_server_span, inject_context, record_http_status};

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Renders the current metrics as Prometheus text exposition.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// How long shutdown waits for each exporter to flush.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The timeout of one OTLP export request (the SDK's default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the tracer and meter tokenvisor's pipeline hands out.
pub const INSTRUMENTATION_NAME: &str = "tokenvisor";

/// Keeps the telemetry pipeline alive; shut it down to flush.
#[derive(Default)]
pub struct TelemetryGuard {
    metrics: Option<MetricsRenderer>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("metrics", &self.metrics.is_some())
            .field("tracer_provider", &self.tracer_provider.is_some())
            .field("meter_provider", &self.meter_provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// The Prometheus renderer, when metrics are enabled.
    pub fn prometheus(&self) -> Option<MetricsRenderer> {
        self.metrics.clone()
    }

    /// Flushes and stops the exporters: every span ended so far is exported, and metrics
    /// get a final export. Blocks for at most a few seconds per exporter.
    pub fn shutdown(self) {
        if let Some(provider) = &self.tracer_provider
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("warning: failed to flush trace export: {error}");
        }
        if let Some(provider) = &self.meter_provider
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("warning: failed to flush metrics export: {error}");
        }
    }
}

/// A telemetry pipeline that is built but not installed: nothing process-wide has been
/// touched. Take what you need from it ([`Pipeline::meter`] for
/// `TokenvisorConfig::meter`, [`Pipeline::tracer_provider`] for your own
/// `tracing-opentelemetry` layer), or [`install`](Pipeline::install) it (binaries only).
pub struct Pipeline {
    config: TelemetryConfig,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    metrics: Option<MetricsRenderer>,
    problems: Vec<String>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("metrics", &self.metrics.is_some())
            .field("problems", &self.problems)
            .finish()
    }
}

impl Pipeline {
    /// The tracer provider: it always exists (spans get ids, an incoming `traceparent` is
    /// continued) and exports over OTLP/HTTP when traces are configured.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider: Prometheus text always, OTLP/HTTP when metrics are configured.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// The `tokenvisor` meter of [`Pipeline::meter_provider`], to pass as
    /// `TokenvisorConfig::meter` without installing the meter provider globally.
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meter_provider.meter(INSTRUMENTATION_NAME)
    }

    /// The Prometheus renderer, when its exporter could be built.
    pub fn prometheus(&self) -> Option<MetricsRenderer> {
        self.metrics.clone()
    }

    /// What could not be built (an exporter, the Prometheus reader); the pipeline works
    /// without it. [`Pipeline::install`] logs these once the subscriber is in place.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// A guard that flushes this pipeline's exporters on shutdown, without installing
    /// anything.
    pub fn into_guard(self) -> TelemetryGuard {
        TelemetryGuard {
            metrics: self.metrics,
            tracer_provider: Some(self.tracer_provider),
            meter_provider: Some(self.meter_provider),
        }
    }

    /// Installs the pipeline **process-wide**: the global subscriber (`EnvFilter`, fmt
    /// layer on stderr, `tracing-opentelemetry` layer), the global tracer and meter
    /// providers and the W3C trace-context propagator. For binaries, once, at start-up; a
    /// library never calls it. A subscriber already installed is kept (and reported).
    pub fn install(self) -> TelemetryGuard {
        let Self {
            config,
            tracer_provider,
            meter_provider,
            metrics,
            mut problems,
        } = self;
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        let tracer = tracer_provider.tracer(INSTRUMENTATION_NAME);
        let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|error| {
            problems.push(format!("RUST_LOG={} is invalid ({error}); using info", config.filter));
            EnvFilter::new("info")
        });
        let ansi = config.log_format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer(config.log_format, std::io::stderr, ansi).with_filter(
                tracing_subscriber::filter::filter_fn(audit_in_log_lines(&config.filter)),
            ))
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::filter_fn(not_actor_lifetime_span)),
            )
            .try_init();
        if installed.is_err() {
            problems.push("a global tracing subscriber was already installed; keeping it".into());
        }
        for problem in problems {
            tracing::error!("{problem}");
        }
        tracing::debug!(
            traces = config.export_traces,
            metrics = config.export_metrics,
            format = ?config.log_format,
            "telemetry initialised"
        );
        TelemetryGuard {
            metrics,
            tracer_provider: Some(tracer_provider),
            meter_provider: Some(meter_provider),
        }
    }
}

/// Installs the global pipeline from the environment ([`TelemetryConfig::from_env`]):
/// [`build`] then [`Pipeline::install`]. For the binary. A configuration it refuses (e.g.
/// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) is logged as an error and export stays off; logs
/// and Prometheus metrics still work.
pub fn init() -> TelemetryGuard {
    match TelemetryConfig::from_env() {
        Ok(config) => init_with(config),
        Err(error) => {
            let fallback = TelemetryConfig {
                filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                log_format: std::env::var("TOKENVISOR_LOG_FORMAT")
                    .ok()
                    .and_then(|value| LogFormat::parse(&value).ok())
                    .unwrap_or_default(),
                ..TelemetryConfig::default()
            };
            let guard = init_with(fallback);
            tracing::error!(error = %error, "telemetry export is off: its configuration is refused");
            guard
        }
    }
}

/// Installs the global pipeline described by `config` ([`build`] then
/// [`Pipeline::install`]). For the binary. Export failures are logged and never stop the
/// process.
pub fn init_with(config: TelemetryConfig) -> TelemetryGuard {
    build(config).install()
}

/// Builds the pipeline described by `config` without installing anything process-wide
/// (no subscriber, no global provider, no propagator, no rustls crypto provider). What
/// could not be built is in [`Pipeline::problems`].
pub fn build(config: TelemetryConfig) -> Pipeline {
    let resource = resource(&config);
    let mut problems = Vec::new();
    let http_client = if config.export_traces || config.export_metrics {
        match otlp_http_client() {
            Ok(client) => Some(client),
            Err(error) => {
                problems.push(format!("failed to build the OTLP HTTP client: {error}"));
                None
            }
        }
    } else {
        None
    };

    // Traces: the provider always exists so spans have ids (log lines carry them, an
    // incoming traceparent is continued); it exports only when configured.
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if config.export_traces
        && let Some(client) = &http_client
    {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .build()
        {
            Ok(exporter) => tracer_builder = tracer_builder.with_batch_exporter(exporter),
            Err(error) => problems.push(format!("failed to build the OTLP span exporter: {error}")),
        }
    }
    let tracer_provider = tracer_builder.build();

    // Metrics: Prometheus text always, OTLP when configured.
    let mut meter_builder = SdkMeterProvider::builder().with_resource(resource);
    let mut metrics: Option<MetricsRenderer> = None;
    match prometheus_reader() {
        Ok((reader, render)) => {
            meter_builder = meter_builder.with_reader(reader);
            metrics = Some(render);
        }
        Err(error) => problems.push(format!("failed to build the Prometheus exporter: {error}")),
    }
    if config.export_metrics
        && let Some(client) = &http_client
    {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .build()
        {
            Ok(exporter) => meter_builder = meter_builder.with_periodic_exporter(exporter),
            Err(error) => problems.push(format!("failed to build the OTLP metric exporter: {error}")),
        }
    }
    let meter_provider = meter_builder.build();
    Pipeline {
        config,
        tracer_provider,
        meter_provider,
        metrics,
        problems,
    }
}

/// The blocking HTTP client of the OTLP exporters (they export from their own threads),
/// with TLS from an explicit rustls crypto provider: reqwest is built without a default
/// one in this workspace, and installing one process-wide is the host's decision. Built
/// on a thread of its own, as the exporter itself does, because a blocking client may not
/// be created inside an async runtime.
fn otlp_http_client() -> Result<reqwest::blocking::Client, String> {
    std::thread::Builder::new()
        .name("tokenvisor-otlp-client".into())
        .spawn(|| {
            let tls = tokenvisor_provider::tls::rustls_client_config().map_err(|error| error.to_string())?;
            reqwest::blocking::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|error| error.to_string())
        })
        .map_err(|error| error.to_string())?
        .join()
        .map_err(|_| "the thread building it panicked".to_owned())?
}

/// The tracing target of the audit trail's events: one INFO event per audited request
/// (token read, proxied call, change), emitted inside the request's server span so that
/// the OpenTelemetry layer exports it as an event of that span. There is no OTLP logs
/// pipeline: span events are how audit events leave the process.
pub const AUDIT_TARGET: &str = "tokenvisor::audit";

/// Whether the binary's log lines show audit events: only when the `RUST_LOG` directive
/// names [`AUDIT_TARGET`] (`RUST_LOG=info,tokenvisor::audit=info`); otherwise they go to
/// the span (and the audit table) only, not one log line per token read.
fn audit_in_log_lines(filter: &str) -> impl Fn(&tracing::Metadata<'_>) -> bool + Send + Sync + 'static {
    let shown = filter.contains(AUDIT_TARGET);
    move |metadata| shown || metadata.target() != AUDIT_TARGET
}

/// ractor wraps each actor's whole life in an `Actor` span (target `ractor`): useful
/// context in log lines, but as OpenTelemetry spans they would stay open for days and
/// hold every span created inside an actor in one endless trace. They are kept out of the
/// OpenTelemetry layer (tokenvisor's own spans set their parents explicitly).
pub fn not_actor_lifetime_span(metadata: &tracing::Metadata<'_>) -> bool {
    !metadata.target().starts_with("ractor")
}

/// The resource: the SDK's detectors (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with
/// `service.name` defaulting to `tokenvisor` and `service.version` set.
fn resource(config: &TelemetryConfig) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| attrs.contains("service.name="));
    let mut builder = Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        builder = builder.with_service_name(config.default_service_name.clone());
    }
    builder.build()
}

/// A metric reader for a meter provider, and the function that renders what it reads as
/// Prometheus text (the admin API's `GET /metrics`).
pub fn prometheus_reader()
-> Result<(opentelemetry_prometheus::PrometheusExporter, MetricsRenderer), opentelemetry_sdk::error::OTelSdkError> {
    let registry = prometheus::Registry::new();
    let reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()?;
    Ok((reader, Arc::new(move || render_prometheus(&registry))))
}

/// Prometheus text exposition of everything in `registry`.
pub fn render_prometheus(registry: &prometheus::Registry) -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|error| format!("# failed to encode metrics: {error}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_with(filter: &str) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt_layer(LogFormat::Text, move || writer.clone(), false)
                .with_filter(tracing_subscriber::filter::filter_fn(audit_in_log_lines(filter))),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: AUDIT_TARGET, action = "token_read", "audit");
            tracing::info!("connection deactivated");
        });
        String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8")
    }

    #[test]
    fn audit_events_stay_out_of_log_lines_unless_rust_log_names_them() {
        let quiet = logged_with("info");
        assert!(quiet.contains("connection deactivated"), "{quiet}");
        assert!(!quiet.contains("token_read"), "{quiet}");
        let shown = logged_with("info,tokenvisor::audit=info");
        assert!(
            shown.contains("token_read") && shown.contains("connection deactivated"),
            "{shown}"
        );
    }

    #[test]
    fn prometheus_text_reflects_the_instruments_of_the_meter_provider() {
        let (reader, render) = prometheus_reader().expect("reader");
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let meter = provider.meter("tokenvisor");
        let refreshes = meter.u64_counter("tokenvisor.refreshes").build();
        refreshes.add(
            3,
            &[KeyValue::new("provider", "zoho"), KeyValue::new("outcome", "success")],
        );
        refreshes.add(
            1,
            &[KeyValue::new("provider", "zoho"), KeyValue::new("outcome", "transient")],
        );
        let duration = meter
            .f64_histogram("tokenvisor.refresh.duration")
            .with_unit("s")
            .build();
        duration.record(0.2, &[KeyValue::new("provider", "zoho")]);
        let text = render();
        assert!(
            text.contains(r#"tokenvisor_refreshes_total{outcome="success",provider="zoho"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokenvisor_refreshes_total{outcome="transient",provider="zoho"} 1"#),
            "{text}"
        );
        assert!(text.contains("tokenvisor_refresh_duration_seconds_count"), "{text}");
    }
}
