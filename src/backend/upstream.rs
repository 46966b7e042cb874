//! What every HTTP upstream shares: the pooled hyper client (HTTP/1.1 and HTTP/2 via ALPN,
//! rustls with the `ring` provider), the configured headers, bounded body reads, and sending
//! with connect retries. Knows nothing about MCP sessions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{HeaderValueSource, TlsClientConfig, UpstreamConfig};
use crate::metrics::BackendMetrics;
use crate::retry::{Attempts, Backoff};

pub const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// How long idle pooled connections to an upstream are kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Longest part of an upstream's error body quoted to the client.
const SNIPPET: usize = 200;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured upstream: where it is and how to reach it.
pub struct Upstream {
    pub name: Arc<str>,
    pub url: Uri,
    pub config: UpstreamConfig,
    /// The configured headers, resolved once at start.
    headers: HeaderMap,
    client: HttpClient,
    pub metrics: BackendMetrics,
    /// Unusable while connects fail (`/readyz`).
    pub health: super::Health,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

/// A request that failed before an answer came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made within `connect_timeout`: the request never left.
    #[error("cannot reach the upstream at {url}: {why}")]
    Unreachable { url: String, why: String },
    /// The request may have reached the upstream; it is not retried.
    #[error("the upstream connection failed: {0}")]
    Failed(String),
}

impl Upstream {
    pub fn new(name: &str, config: UpstreamConfig, metrics: BackendMetrics) -> Result<Upstream, String> {
        let url: Uri = config.url.parse().map_err(|e| format!("`url`: {e}"))?;
        let headers = resolve_headers(&config)?;
        let client = http_client(&config.tls, &url, config.connect_timeout, config.http2)?;
        Ok(Upstream { name: Arc::from(name), url, config, headers, client, metrics, health: super::Health::default() })
    }

    /// A request to `uri` with the configured headers. Never carries anything of the client's
    /// own request: only the body the gateway chose and these headers.
    pub fn request(
        &self,
        method: Method,
        uri: &Uri,
        accept: &'static str,
        body: Option<Bytes>,
    ) -> Request<Full<Bytes>> {
        let json = body.is_some();
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if !self.headers.is_empty() {
            headers.extend(self.headers.clone());
        }
        req
    }

    /// Sends a request, retrying connect failures (which never reached the upstream) with
    /// capped, jittered backoff until `connect_timeout` is spent.
    pub async fn send(&self, build: impl Fn() -> Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError> {
        let mut attempts = Attempts::new(Backoff::default(), self.config.connect_timeout);
        loop {
            match self.client.request(build()).await {
                Ok(r) => {
                    self.health.ok();
                    return Ok(r);
                }
                Err(e) if e.is_connect() => {
                    let why = error_chain(&e);
                    if attempts.remaining().is_zero() || !attempts.wait().await {
                        self.metrics.upstream_errors.inc();
                        self.health.failed(&format!("cannot connect: {why}"));
                        return Err(SendError::Unreachable { url: redacted(&self.url), why });
                    }
                    tracing::debug!(backend.name = %self.name, attempt = attempts.made, "Retrying a refused upstream connect: {why}.");
                }
                Err(e) => {
                    self.metrics.upstream_errors.inc();
                    return Err(SendError::Failed(error_chain(&e)));
                }
            }
        }
    }
}

/// A pooled client for `url`'s scheme: rustls with the system roots plus `tls`, HTTP/1.1, and
/// HTTP/2 by ALPN when `http2`.
pub fn http_client(
    tls: &TlsClientConfig,
    url: &Uri,
    connect_timeout: Duration,
    http2: bool,
) -> Result<HttpClient, String> {
    let tls = tls_config(tls, url.scheme_str() == Some("https"))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1();
    let https = match http2 {
        true => builder.enable_http2().wrap_connector(http),
        false => builder.wrap_connector(http),
    };
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(https))
}

/// A URL as clients may see it in an error: no user info, no query (either may hold a
/// credential).
pub fn redacted(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme_str().unwrap_or("http"), url.path())
}

/// Reads a whole body of at most `max` bytes.
pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, String> {
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(format!("the upstream sent a body longer than max_message_bytes ({max} bytes)"))
        }
        Err(e) => Err(format!("the upstream body broke off: {e}")),
    }
}

/// The start of an error body, for a message.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The media type of a response, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn resolve_headers(config: &UpstreamConfig) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, source) in &config.headers {
        let value = match source {
            HeaderValueSource::Value(s) => s.0.clone(),
            HeaderValueSource::Env { env } => std::env::var(env)
                .map_err(|_| format!("`headers.{name}`: the environment variable {env} is not set"))?,
        };
        let name = HeaderName::try_from(name.as_str()).map_err(|_| format!("`headers.{name}`: invalid name"))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| format!("`headers.{name}`: invalid value"))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    Ok(headers)
}

/// The rustls client configuration: system roots (only loaded for https) plus `ca_file`,
/// and the client certificate when configured.
fn tls_config(tls: &TlsClientConfig, https: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = &tls.ca_file {
        let certs = read_certs(path).map_err(|e| format!("`tls.ca_file`: {e}"))?;
        for cert in certs {
            roots.add(cert).map_err(|e| format!("`tls.ca_file`: {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("`tls`: {e}"))?
        .with_root_certificates(roots);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert).map_err(|e| format!("`tls.client_cert`: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("`tls.client_key`: {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("`tls.client_cert`: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?.collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}
