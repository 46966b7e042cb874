//! What every HTTP upstream shares: its open connections (HTTP/1.1 and HTTP/2 via ALPN,
//! rustls with the `ring` provider; `connections`), the configured headers, bounded body
//! reads, and sending with connect retries. Knows nothing about MCP sessions.

mod connections;
mod h1;

pub use connections::{Body, Connections};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{HeaderValueSource, TlsClientConfig, UpstreamConfig};
use crate::metrics::BackendMetrics;
use crate::retry::{Attempts, Backoff};

pub const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Longest part of an upstream's error body quoted to the client.
const SNIPPET: usize = 200;

/// One configured upstream: where it is and how to reach it.
pub struct Upstream {
    pub name: Arc<str>,
    pub url: Uri,
    pub config: UpstreamConfig,
    /// The configured headers, resolved once at start.
    headers: Arc<HeaderMap>,
    connections: Arc<Connections>,
    pub metrics: BackendMetrics,
    /// Unusable while connects fail (`/readyz`).
    pub health: super::Health,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

/// A request to the upstream as the gateway makes it: a method, a target, what it accepts, the
/// body it chose (JSON), the headers of this exchange and the configured ones. Written straight
/// onto an HTTP/1.1 connection (no header map built and hashed for it); made into an
/// `http::Request` for HTTP/2. Kept whole, so that a request turned away by a connection the
/// upstream had just closed goes out again on another.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    accept: &'static str,
    pub body: Option<Bytes>,
    /// This exchange's own headers (the MCP session's, `Last-Event-ID`).
    own: Vec<(HeaderName, HeaderValue)>,
    configured: Arc<HeaderMap>,
}

impl Outgoing {
    /// A request with no configured headers.
    pub fn new(method: Method, uri: Uri, accept: &'static str, body: Option<Bytes>) -> Outgoing {
        Outgoing { method, uri, accept, body, own: Vec::new(), configured: Arc::default() }
    }

    /// Adds a header of this exchange.
    pub fn header(&mut self, name: HeaderName, value: HeaderValue) {
        self.own.push((name, value));
    }

    pub fn accept(&self) -> &'static str {
        self.accept
    }

    /// This exchange's own headers, in the order they were added.
    pub fn own(&self) -> &[(HeaderName, HeaderValue)] {
        &self.own
    }

    pub fn configured(&self) -> &HeaderMap {
        &self.configured
    }

    /// The request as an `http::Request` to `uri` (HTTP/2 wants the absolute form).
    pub fn to_http(&self, uri: Uri) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone().unwrap_or_default()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static(self.accept));
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        }
        for (name, value) in &self.own {
            headers.insert(name, value.clone());
        }
        headers.extend(self.configured.iter().map(|(n, v)| (n.clone(), v.clone())));
        req
    }
}

/// The media type of every request body the gateway sends.
pub const JSON: &str = "application/json";

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
        let headers = Arc::new(resolve_headers(&config)?);
        let open = metrics.upstream_connections.clone();
        let connections = connections(&config.tls, &url, config.connect_timeout, config.http2, open)?;
        Ok(Upstream {
            name: Arc::from(name),
            url,
            config,
            headers,
            connections,
            metrics,
            health: super::Health::default(),
        })
    }

    /// A request to `uri` with the configured headers. Never carries anything of the client's
    /// own request: only the body the gateway chose and these headers.
    pub fn request(&self, method: Method, uri: &Uri, accept: &'static str, body: Option<Bytes>) -> Outgoing {
        // Built whole: `..Outgoing::new(..)` would make (and drop) an empty map's `Arc` first.
        let (own, configured) = (Vec::new(), Arc::clone(&self.headers));
        Outgoing { method, uri: uri.clone(), accept, body, own, configured }
    }

    /// Sends a request, retrying connect failures (which never reached the upstream) with
    /// capped, jittered backoff until `connect_timeout` is spent.
    pub async fn send(&self, req: &Outgoing) -> Result<Response<Body>, SendError> {
        let mut attempts = Attempts::new(Backoff::default(), self.config.connect_timeout);
        loop {
            // Boxed: the exchange is a large future, and every task that sends (a session's
            // GET stream above all, idle for hours) would otherwise keep room for it.
            match Box::pin(self.connections.send(req)).await {
                Ok(r) => {
                    self.health.ok();
                    return Ok(r);
                }
                Err(connections::Failure::Connect(why)) => {
                    if attempts.remaining().is_zero() || !attempts.wait().await {
                        self.metrics.upstream_errors.inc();
                        self.health.failed(&format!("cannot connect: {why}"));
                        return Err(SendError::Unreachable { url: redacted(&self.url), why });
                    }
                    tracing::debug!(backend.name = %self.name, attempt = attempts.made, "Retrying a refused upstream connect: {why}.");
                }
                Err(connections::Failure::Send(why)) => {
                    self.metrics.upstream_errors.inc();
                    return Err(SendError::Failed(why));
                }
            }
        }
    }
}

/// Connections to `url`'s origin: rustls with the system roots plus `tls`, HTTP/1.1, and
/// HTTP/2 by ALPN when `http2`.
pub fn connections(
    tls: &TlsClientConfig,
    url: &Uri,
    connect_timeout: Duration,
    http2: bool,
    open: prometheus::IntGauge,
) -> Result<Arc<Connections>, String> {
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
    Connections::new(url, https, open).map(Arc::new)
}

/// A URL as clients may see it in an error: no user info, no query (either may hold a
/// credential).
pub fn redacted(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme_str().unwrap_or("http"), url.path())
}

/// Reads a whole body of at most `max` bytes.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, String> {
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut gathered = crate::gather::Gather::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    gathered.push(data);
                }
            }
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(format!("the upstream sent a body longer than max_message_bytes ({max} bytes)"))
            }
            Err(e) => return Err(format!("the upstream body broke off: {e}")),
        }
    }
    Ok(gathered.finish())
}

/// The start of an error body, for a message.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The media type of a response, lowercased, without parameters (copied only when it was
/// not lowercase already).
pub fn media_type(headers: &HeaderMap) -> std::borrow::Cow<'_, str> {
    let m = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    let m = m.map(str::trim).unwrap_or_default();
    match m.bytes().any(|b| b.is_ascii_uppercase()) {
        true => m.to_ascii_lowercase().into(),
        false => m.into(),
    }
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
