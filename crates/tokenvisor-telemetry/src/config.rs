//! What the telemetry pipeline does, read from the standard variables: `RUST_LOG`,
//! `TOKENVISOR_LOG_FORMAT`, and OpenTelemetry's `OTEL_*` (export is off unless an OTLP
//! endpoint is configured).

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text, one line per event, trace ids at the end.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, `fields`,
    /// `span`, `spans`, `trace_id`, `span_id`).
    Json,
}

impl LogFormat {
    /// `text` or `json` (case-insensitive).
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" | "pretty" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(ConfigError(format!(
                "TOKENVISOR_LOG_FORMAT={other} is not supported; use text or json"
            ))),
        }
    }
}

/// A configuration the telemetry pipeline refuses, with the reason in operator terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The telemetry pipeline's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive (`RUST_LOG`, default `info`). It applies to log lines and
    /// spans alike.
    pub filter: String,
    /// Text or JSON log lines (`TOKENVISOR_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Export spans over OTLP/HTTP (an endpoint for traces is configured).
    pub export_traces: bool,
    /// Export metrics over OTLP/HTTP (an endpoint for metrics is configured).
    pub export_metrics: bool,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub default_service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            log_format: LogFormat::Text,
            export_traces: false,
            export_metrics: false,
            default_service_name: "tokenvisor".into(),
        }
    }
}

impl TelemetryConfig {
    /// Reads the process environment (see [`TelemetryConfig::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`:
    /// - `RUST_LOG` (default `info`), `TOKENVISOR_LOG_FORMAT` (`text`, `json`);
    /// - traces are exported when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    ///   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_TRACES_EXPORTER=none`;
    ///   metrics likewise with `..._METRICS_ENDPOINT` and `OTEL_METRICS_EXPORTER`;
    ///   `OTEL_SDK_DISABLED=true` turns both off;
    /// - the protocol (`OTEL_EXPORTER_OTLP[_TRACES|_METRICS]_PROTOCOL`) must be
    ///   `http/protobuf` (the default): gRPC and JSON are refused with an explanation.
    ///
    /// The remaining standard variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`,
    /// `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`) are read by the OpenTelemetry SDK itself.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let filter = set("RUST_LOG").unwrap_or_else(|| "info".into());
        let log_format = match set("TOKENVISOR_LOG_FORMAT") {
            Some(value) => LogFormat::parse(&value)?,
            None => LogFormat::Text,
        };
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let generic_endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let signal = |signal: &str| -> Result<bool, ConfigError> {
            let upper = signal.to_ascii_uppercase();
            let exporter = set(&format!("OTEL_{upper}_EXPORTER")).unwrap_or_else(|| "otlp".into());
            let wanted = !disabled
                && !exporter.trim().eq_ignore_ascii_case("none")
                && (generic_endpoint || set(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")).is_some());
            if !wanted {
                return Ok(false);
            }
            if !exporter.trim().eq_ignore_ascii_case("otlp") {
                return Err(ConfigError(format!(
                    "OTEL_{upper}_EXPORTER={exporter} is not supported; use otlp or none"
                )));
            }
            let protocol = set(&format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"))
                .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .unwrap_or_else(|| "http/protobuf".into());
            check_protocol(&protocol)?;
            Ok(true)
        };
        Ok(Self {
            filter,
            log_format,
            export_traces: signal("traces")?,
            export_metrics: signal("metrics")?,
            default_service_name: "tokenvisor".into(),
        })
    }
}

fn check_protocol(protocol: &str) -> Result<(), ConfigError> {
    match protocol.trim().to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(()),
        "grpc" => Err(ConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported by tokenvisor: it exports OTLP over \
             HTTP/protobuf only. Set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and point \
             OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP receiver (port 4318)"
                .into(),
        )),
        other => Err(ConfigError(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; use http/protobuf"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TelemetryConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_configured_means_text_logs_at_info_and_no_export() {
        let config = config(&[]).expect("valid");
        assert_eq!(config, TelemetryConfig::default());
    }

    #[test]
    fn the_generic_endpoint_turns_on_both_signals() {
        let config = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).expect("valid");
        assert!(config.export_traces);
        assert!(config.export_metrics);
    }

    #[test]
    fn a_signal_endpoint_turns_on_only_that_signal_and_none_turns_it_off() {
        let config = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]).expect("valid");
        assert!(config.export_traces);
        assert!(!config.export_metrics);
        let config = config_with_off();
        assert!(!config.export_traces);
        assert!(config.export_metrics);
    }

    fn config_with_off() -> TelemetryConfig {
        config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])
        .expect("valid")
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .expect("valid");
        assert!(!config.export_traces && !config.export_metrics);
    }

    #[test]
    fn grpc_is_refused_with_the_fix_in_the_message() {
        let error = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect_err("grpc refused");
        assert!(error.0.contains("http/protobuf"), "{error}");
        assert!(error.0.contains("4318"), "{error}");
        let ok = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert!(ok.is_ok(), "the signal's protocol wins: {ok:?}");
    }

    #[test]
    fn grpc_is_irrelevant_when_nothing_is_exported() {
        assert!(config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_ok());
    }

    #[test]
    fn log_format_and_filter_come_from_their_variables() {
        let config = config(&[("TOKENVISOR_LOG_FORMAT", "JSON"), ("RUST_LOG", "debug")]).expect("valid");
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.filter, "debug");
        assert!(LogFormat::parse("xml").is_err());
    }
}
