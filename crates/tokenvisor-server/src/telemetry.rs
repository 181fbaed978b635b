//! Telemetry wiring: the subscriber and exporters come from `tokenvisor-telemetry`.
//! Configured by `RUST_LOG`, `TOKENVISOR_LOG_FORMAT` and the standard `OTEL_*` variables.

pub use tokenvisor_telemetry::TelemetryGuard;

/// Installs the global subscriber, the W3C propagator, the meter provider (Prometheus
/// text, OTLP when configured) and the tracer provider (OTLP when configured).
pub fn init() -> TelemetryGuard {
    tokenvisor_telemetry::init()
}
