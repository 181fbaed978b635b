//! A minimal OTLP/HTTP receiver on loopback: accepts `POST /v1/traces` and
//! `POST /v1/metrics` with protobuf bodies, decodes them with `opentelemetry-proto`, and
//! keeps every request for the test to inspect.

pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
pub use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
pub use opentelemetry_proto::tonic::trace::v1::Span;

use prost::Message;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    paths: Vec<String>,
}

/// A running receiver; it stops when dropped.
pub struct OtlpReceiver {
    address: std::net::SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1:0` (spawned on the current runtime; use a multi-thread
    /// runtime when the sender is another process).
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, shared).await;
                });
            }
        });
        OtlpReceiver {
            address,
            received,
            task,
        }
    }

    /// The base URL to put in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let received = self.received.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }

    /// The resource attributes of every trace export.
    pub fn trace_resources(&self) -> Vec<Vec<KeyValue>> {
        let received = self.received.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|request| &request.resource_spans)
            .filter_map(|resource| resource.resource.as_ref().map(|r| r.attributes.clone()))
            .collect()
    }

    /// Every metric data point export received so far, oldest first.
    pub fn metrics(&self) -> Vec<Metric> {
        let received = self.received.lock().unwrap();
        received
            .metrics
            .iter()
            .flat_map(|request| &request.resource_metrics)
            .flat_map(|resource| &resource.scope_metrics)
            .flat_map(|scope| scope.metrics.clone())
            .collect()
    }

    /// The request paths received (`/v1/traces`, `/v1/metrics`).
    pub fn paths(&self) -> Vec<String> {
        self.received.lock().unwrap().paths.clone()
    }
}

/// The value of attribute `key` as text (strings as they are, numbers in decimal).
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        any_value::Value::StringValue(text) => text.clone(),
        any_value::Value::IntValue(number) => number.to_string(),
        any_value::Value::BoolValue(flag) => flag.to_string(),
        any_value::Value::DoubleValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

async fn serve(stream: tokio::net::TcpStream, received: Arc<Mutex<Received>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let status = {
            let mut received = received.lock().unwrap();
            received.paths.push(path.clone());
            match path.as_str() {
                "/v1/traces" => match ExportTraceServiceRequest::decode(body.as_slice()) {
                    Ok(request) => {
                        received.traces.push(request);
                        "200 OK"
                    }
                    Err(_) => "400 Bad Request",
                },
                "/v1/metrics" => match ExportMetricsServiceRequest::decode(body.as_slice()) {
                    Ok(request) => {
                        received.metrics.push(request);
                        "200 OK"
                    }
                    Err(_) => "400 Bad Request",
                },
                _ => "404 Not Found",
            }
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        reader.get_mut().write_all(answer.as_bytes()).await?;
    }
}
