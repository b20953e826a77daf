//! Span export over OTLP/HTTP with protobuf (feature `otlp`): `opentelemetry-otlp`'s exporter
//! through a small hyper client of this crate ([`HyperClient`]; no reqwest, no tonic, no TLS
//! stack of its own).
//!
//! The exporter runs on the [`SpanSink`](crate::span::SpanSink)'s thread, whose tokio
//! runtime drives the client: a request never waits for an export. Each export is one
//! `POST` of an `ExportTraceServiceRequest` (`content-type: application/x-protobuf`) to the
//! endpoint, over a new HTTP/1.1 connection, bounded by [`OtlpConfig::timeout`].
//!
//! ```no_run
//! use mesh_telemetry::otlp::{OtlpConfig, exporter};
//! use mesh_telemetry::span::{SpanOptions, SpanSink};
//!
//! let config = OtlpConfig::new("http://127.0.0.1:4318");
//! let sink = SpanSink::new(exporter(&config).unwrap(), SpanOptions::default()).unwrap();
//! # drop(sink);
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's URL. A URL without a path (`http://otel-collector:4318`) gets OTLP's
    /// `/v1/traces`; one with a path is used as written. `http` only.
    pub endpoint: String,
    /// How long one export (connect, send, answer) may take. Default: 10s (OTLP's
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` default).
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Exports to `endpoint` with the default timeout.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The URL spans are posted to: the endpoint, with `/v1/traces` when it has no path.
    pub fn traces_url(&self) -> Result<Uri, OtlpError> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|e| OtlpError(format!("endpoint {:?}: {e}", self.endpoint)))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(OtlpError(format!(
                "endpoint {:?}: an http:// URL with a host is required",
                self.endpoint
            )));
        }
        if matches!(uri.path(), "" | "/") && uri.query().is_none() {
            let base = self.endpoint.trim_end_matches('/');
            return format!("{base}/v1/traces")
                .parse()
                .map_err(|e| OtlpError(format!("endpoint {:?}: {e}", self.endpoint)));
        }
        Ok(uri)
    }
}

/// A configuration the exporter cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct OtlpError(String);

impl OtlpError {
    /// An error saying `what`.
    pub fn new(what: impl Into<String>) -> Self {
        OtlpError(what.into())
    }
}

/// The OTLP/HTTP (protobuf) span exporter for `config`, for a
/// [`SpanSink`](crate::span::SpanSink).
pub fn exporter(config: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
    let url = config.traces_url()?;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(HyperClient {
            timeout: config.timeout,
        })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.to_string())
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| OtlpError(e.to_string()))
}

/// An [`HttpClient`] over hyper's HTTP/1.1 client: one connection per export, within a
/// timeout. Runs on the tokio runtime of the task that awaits it (the span sink's thread).
#[derive(Debug, Clone)]
pub struct HyperClient {
    /// The bound on one request (connect, send, whole answer).
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for HyperClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        match tokio::time::timeout(self.timeout, send(request)).await {
            Ok(r) => r,
            Err(_) => Err("OTLP export timed out".into()),
        }
    }
}

async fn send(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let host = parts.uri.host().ok_or("no host in the OTLP endpoint")?;
    let port = parts.uri.port_u16().unwrap_or(80);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.to_owned());
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // origin form on the wire, the authority in Host
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    parts
        .headers
        .insert(http::header::HOST, http::HeaderValue::from_str(&authority)?);
    let res = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
