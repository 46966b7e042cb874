//! Configuration: figment layers (built-in defaults, the TOML file, `MCP_EDGE_*` environment
//! variables, command-line flags) extracted into typed structs that refuse unknown keys, then
//! checked by [`Config::validate`]. Secrets serialize as `***`, so printing a config can never
//! leak them. Must not start anything.

mod auth;
pub mod duration;
mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use auth::{
    AllowRule, ApiKeyConfig, ApiKeyEntry, AuthConfig, JwtConfig, PrincipalLimits, TlsServerConfig, JWT_ALGORITHMS,
};
pub use load::{load, AdminOverrides, LoadError, LogOverrides, Overrides, ServerOverrides, Source, UpstreamKind};

/// The shipped `gateway.toml`: the configuration used when no file is given or found.
pub const DEFAULT_TOML: &str = include_str!("../../gateway.toml");

/// The placeholder in a stdio `command` that stands for the running mcp-edge executable.
pub const SELF_EXE: &str = "{self}";

/// The whole, validated configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every session id (`<instance_id>.<random>`); no `.` allowed.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub legacy_sse: LegacySseConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub principals: PrincipalLimits,
    #[serde(default)]
    pub log: LogConfig,
    /// Endpoint paths, each bound to a named backend.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the client listener.
    pub listen: SocketAddr,
    /// Origins allowed besides loopback ones (`http://localhost:3000`); `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Host header values accepted besides loopback names when bound to a loopback address.
    pub allowed_hosts: Vec<String>,
    /// Client connections held at once (HTTP and WebSocket); one more is answered 503 and
    /// closed. 0 derives it from the open-file limit (see docs/operations.md).
    pub max_connections: usize,
    /// Largest POST body accepted (413 above it).
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM/SIGINT before they are cut.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// After SIGTERM/SIGINT, how long the instance keeps serving (with `/readyz` at 503) before
    /// it stops accepting, so load balancers stop sending new work first.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// A client that has not sent a whole request head this long after connecting (or after
    /// its previous response, on a kept-alive connection) is disconnected.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A request body may take this long, plus one second per `min_body_rate` bytes received;
    /// a slower client gets 408 and is disconnected.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must keep up after `body_read_timeout`.
    pub min_body_rate: usize,
    /// A connection with no request in progress and no bytes moving for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// TLS termination: serve `https://` and `wss://` with this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsServerConfig>,
    /// Threads that run connections, sessions and backend I/O. 0: one per CPU the process may
    /// use. Read at start.
    pub worker_threads: usize,
}

impl ServerConfig {
    /// The most `worker_threads` may ask for.
    pub const MAX_WORKER_THREADS: usize = 1024;
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: 0,
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            idle_timeout: Duration::from_secs(300),
            tls: None,
            worker_threads: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Live sessions per instance; `initialize` over it gets 503 with `Retry-After`.
    pub max_sessions: usize,
    /// A session with no request, no in-flight call and no open stream for this long ends.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A request with no response and no progress for this long gets an error and is
    /// cancelled at the backend.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Server→client messages kept per session for `Last-Event-ID` replay.
    pub replay_buffer_messages: usize,
    /// Bytes kept per session for replay; the oldest events go first past either bound.
    pub replay_buffer_bytes: usize,
    /// Interval of `:` keep-alive comments on open SSE streams.
    #[serde(with = "duration")]
    pub sse_keepalive: Duration,
    /// A request answered within this time gets a plain JSON response; a slower one, or one
    /// that streams notifications first, gets an SSE stream.
    #[serde(with = "duration")]
    pub json_wait: Duration,
    /// Close request streams of 2025-11-25+ clients after this long with a `retry:` hint,
    /// so they resume with `Last-Event-ID` (SEP-1699 polling); `"0s"` keeps streams open.
    #[serde(with = "duration")]
    pub sse_close_after: Duration,
    /// The `retry:` value sent when a stream is closed early.
    #[serde(with = "duration")]
    pub sse_retry: Duration,
    /// Messages queued towards one open stream before a slow reader is cut off (it may
    /// resume from the replay buffer).
    pub stream_queue: usize,
    /// How long a session whose WebSocket dropped (without a close frame) waits for the
    /// client to reconnect and resume it.
    #[serde(with = "duration")]
    pub resume_grace: Duration,
    /// Requests one session may have in flight; one more gets a JSON-RPC error (-32007).
    pub max_in_flight: usize,
    /// GET streams (standalone and resumed) one session may hold open at once; request
    /// streams are bounded by `max_in_flight`.
    pub max_streams: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_sessions: 1000,
            idle_timeout: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(10 * 60),
            replay_buffer_messages: 256,
            replay_buffer_bytes: 8 * 1024 * 1024,
            sse_keepalive: Duration::from_secs(15),
            json_wait: Duration::from_millis(1000),
            sse_close_after: Duration::ZERO,
            sse_retry: Duration::from_secs(1),
            stream_queue: 64,
            resume_grace: Duration::from_secs(60),
            max_in_flight: 256,
            max_streams: 4,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Largest inbound message (one JSON-RPC message per text frame); a larger one closes the
    /// connection with 1009. Outbound messages are not capped below this.
    pub max_message_bytes: usize,
    /// Messages queued towards one connection; when full, the session stops reading its
    /// backend until the client catches up.
    pub send_queue: usize,
    /// A client that takes no message for this long is closed with 1008 (its session waits
    /// `sessions.resume_grace` for a reconnect).
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
    /// Interval of the gateway's pings.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// A connection silent for `ping_interval` + this long is dropped.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// Read buffer per connection; messages larger than it still arrive, in several reads.
    pub read_buffer_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: 4 * 1024 * 1024,
            send_queue: 64,
            stall_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(20),
            read_buffer_bytes: 1024,
        }
    }
}

/// The legacy HTTP+SSE transport (2024-11-05), served on routes that set `sse_path`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LegacySseConfig {
    /// Messages queued towards one event stream; when full, the session stops reading its
    /// backend until the client catches up.
    pub send_queue: usize,
    /// A client that takes no message for this long while one waits is cut off, and its
    /// session ends (legacy clients cannot resume).
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
}

impl Default for LegacySseConfig {
    fn default() -> Self {
        LegacySseConfig { send_queue: 64, stall_timeout: Duration::from_secs(30) }
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Its address; keep it off the client listener's network.
    pub listen: SocketAddr,
    /// TLS termination for the admin listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsServerConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 9470)), tls: None }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `mcp_edge=debug`; `RUST_LOG` overrides.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Endpoint path, e.g. `/mcp`.
    pub path: String,
    /// Name of an entry in `[backends]`.
    pub backend: String,
    /// Accept WebSocket upgrades on this path; when off, an upgrade request is served as
    /// plain Streamable HTTP.
    #[serde(default = "yes")]
    pub websocket: bool,
    /// Legacy HTTP+SSE (2024-11-05): the path of the event stream (`GET`), e.g. `/sse`.
    /// Set together with `messages_path`; absent, the route offers no legacy transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_path: Option<String>,
    /// Legacy HTTP+SSE: the path clients POST their messages to, e.g. `/messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_path: Option<String>,
    /// Most live sessions this route may hold (within `sessions.max_sessions`), so that one
    /// backend cannot take every session of the instance; absent, only the instance cap applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// The route's public URL (`https://mcp.example.com/mcp`): the audience tokens must name
    /// and the `resource` of its protected-resource metadata. Required with `auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Who may use the route; absent, anyone who passes the Origin and Host checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Allow-lists of tools, resources and prompts by principal or scope (needs `auth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
}

fn yes() -> bool {
    true
}

/// The closed set of backend kinds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    Stdio(StdioConfig),
    /// A Streamable HTTP upstream (the gateway is its MCP client).
    Http(UpstreamConfig),
    /// A legacy HTTP+SSE (2024-11-05) upstream: `url` is its SSE endpoint.
    Sse(UpstreamConfig),
}

/// An MCP server reached over HTTP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The upstream's MCP endpoint (`http://` or `https://`).
    pub url: String,
    /// Extra request headers: the gateway's own upstream credentials. A value is either a
    /// string (a secret, printed as `***`) or `{ env = "VAR" }`, read from the gateway's
    /// environment at start.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueSource>,
    /// Longest wait for a TCP (and TLS) connection; connect errors are retried within it.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Largest upstream response body or SSE event accepted.
    #[serde(default = "default_max_line_bytes")]
    pub max_message_bytes: usize,
    /// `http` only: when the upstream refuses a POSTed `initialize` with 400, 404 or 405,
    /// try the legacy HTTP+SSE transport at the same URL (the spec's client fallback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sse_fallback: bool,
    /// Longest wait for the upstream to accept a notification or response (its 202); past it
    /// the message is dropped with a warning, so one stuck POST cannot hold up the session.
    #[serde(default = "default_ack_timeout", with = "duration")]
    pub ack_timeout: Duration,
    /// Offer HTTP/2 by ALPN to an `https://` upstream. HTTP/2 carries every session over one
    /// connection, whose concurrent streams the upstream caps (often at 100) while each
    /// session holds a GET stream open; HTTP/1.1 (the default) pools a connection per stream.
    #[serde(default)]
    pub http2: bool,
    /// Longest wait for the upstream DELETE when a session ends.
    #[serde(default = "default_stop_wait", with = "duration")]
    pub stop_wait: Duration,
    /// Messages queued towards the upstream before senders wait.
    #[serde(default = "default_stdin_queue")]
    pub send_queue: usize,
    #[serde(default)]
    pub tls: TlsClientConfig,
}

/// Where an upstream header's value comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum HeaderValueSource {
    Value(Secret),
    Env { env: String },
}

/// TLS towards an upstream: the system's roots, plus an extra CA, plus a client certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    /// PEM file of extra CA certificates trusted besides the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the upstream (with `client_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// Program to run; `{self}` is the running mcp-edge executable.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory of the child; the gateway's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables set for the child (values are secrets: printed as `***`).
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// Variables passed through from the gateway's own environment when set.
    #[serde(default = "default_env_allow")]
    pub env_allow: Vec<String>,
    /// Longest stdout line (one JSON-RPC message) accepted from the child.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Each wait of the stop sequence: close stdin, wait, SIGTERM the group, wait, SIGKILL.
    #[serde(default = "default_stop_wait", with = "duration")]
    pub stop_wait: Duration,
    /// Messages queued towards the child's stdin before senders wait.
    #[serde(default = "default_stdin_queue")]
    pub stdin_queue: usize,
    /// Serve every session from a shared pool of long-lived children instead of one child per
    /// session; only for servers that keep no per-client state (docs/configuration.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolConfig>,
}

/// A shared pool of stdio children.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Children in the pool.
    pub size: usize,
    /// Requests in flight on one child; more wait in the queue.
    #[serde(default = "default_pool_in_flight")]
    pub max_in_flight: usize,
    /// Requests waiting for a child across the pool; beyond it a request gets `-32007`.
    #[serde(default = "default_pool_queue")]
    pub queue: usize,
    /// Longest wait in the queue before a request gets `-32007`.
    #[serde(default = "default_pool_queue_timeout", with = "duration")]
    pub queue_timeout: Duration,
    /// Messages queued towards one session; a session that lets more pile up is ended, so a
    /// slow client never pauses a shared child.
    #[serde(default = "default_pool_session_buffer")]
    pub session_buffer: usize,
    /// The protocol version the gateway initializes each child with (and answers clients with).
    #[serde(default = "default_pool_version")]
    pub protocol_version: String,
}

fn default_pool_in_flight() -> usize {
    64
}
fn default_pool_queue() -> usize {
    1024
}
fn default_pool_queue_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_session_buffer() -> usize {
    256
}
fn default_pool_version() -> String {
    "2025-06-18".into()
}

impl PoolConfig {
    /// A pool of `size` children with the documented defaults.
    pub fn of(size: usize) -> PoolConfig {
        PoolConfig {
            size,
            max_in_flight: default_pool_in_flight(),
            queue: default_pool_queue(),
            queue_timeout: default_pool_queue_timeout(),
            session_buffer: default_pool_session_buffer(),
            protocol_version: default_pool_version(),
        }
    }
}

/// A configured secret: usable in code, `***` when serialized or debug-printed.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn default_env_allow() -> Vec<String> {
    ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"].map(String::from).to_vec()
}
fn default_max_line_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_stop_wait() -> Duration {
    Duration::from_secs(2)
}
fn default_stdin_queue() -> usize {
    64
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The host name with every character an id may not hold (`.`, and anything outside
/// visible ASCII) replaced by `-`.
pub fn default_instance_id() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let id: String = host.chars().map(|c| if c.is_ascii_graphic() && c != '.' { c } else { '-' }).collect();
    if id.is_empty() {
        "edge".into()
    } else {
        id
    }
}

/// A configuration that loads but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{key}`: {reason}")]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid { key: key.into(), reason: reason.into() }
}

impl UpstreamConfig {
    fn validate(&self, at: &str) -> Result<(), Invalid> {
        let key = |k: &str| format!("{at}.{k}");
        let uri: http::Uri = self.url.parse().map_err(|e| invalid(key("url"), format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(key("url"), "must be an http:// or https:// URL with a host"));
        }
        for (name, value) in &self.headers {
            let name_key = key(&format!("headers.{name}"));
            let header: http::HeaderName = name.parse().map_err(|_| invalid(&name_key, "not a valid header name"))?;
            let own = [
                "host",
                "content-length",
                "content-type",
                "accept",
                "mcp-session-id",
                "mcp-protocol-version",
                "last-event-id",
            ];
            if own.contains(&header.as_str()) {
                return Err(invalid(name_key, "is set by the gateway itself"));
            }
            match value {
                HeaderValueSource::Value(v) if http::HeaderValue::from_str(&v.0).is_err() => {
                    return Err(invalid(name_key, "not a valid header value"))
                }
                HeaderValueSource::Env { env } if env.is_empty() => {
                    return Err(invalid(name_key, "names no environment variable"))
                }
                _ => {}
            }
        }
        for (k, d) in [("connect_timeout", self.connect_timeout), ("ack_timeout", self.ack_timeout)] {
            if d.is_zero() {
                return Err(invalid(key(k), "must be longer than 0s"));
            }
        }
        if self.max_message_bytes == 0 || self.send_queue == 0 {
            let k = if self.send_queue == 0 { "send_queue" } else { "max_message_bytes" };
            return Err(invalid(key(k), "must be greater than 0"));
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(invalid(key("tls"), "client_cert and client_key go together"));
        }
        let files = [
            ("ca_file", &self.tls.ca_file),
            ("client_cert", &self.tls.client_cert),
            ("client_key", &self.tls.client_key),
        ];
        for (k, path) in files {
            if let Some(p) = path.as_ref().filter(|p| !p.is_file()) {
                return Err(invalid(key(&format!("tls.{k}")), format!("no readable file at {}", p.display())));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    /// A route at `path` served by `backend`, every other key at its default.
    pub fn new(path: &str, backend: &str) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            backend: backend.into(),
            websocket: true,
            sse_path: None,
            messages_path: None,
            max_sessions: None,
            public_url: None,
            auth: None,
            allow: Vec::new(),
        }
    }

    /// `public_url`, `auth` and `allow` of route `i`.
    fn validate_access(&self, i: usize) -> Result<(), Invalid> {
        let at = |k: &str| format!("routes[{i}].{k}");
        if let Some(url) = &self.public_url {
            let uri: http::Uri = url.parse().map_err(|e| invalid(at("public_url"), format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() || uri.query().is_some() {
                return Err(invalid(at("public_url"), "must be an http:// or https:// URL with a host and no query"));
            }
        }
        if let Some(auth) = &self.auth {
            if self.public_url.is_none() {
                return Err(invalid(
                    at("public_url"),
                    "is required with `auth`: tokens must name it as their audience",
                ));
            }
            auth.validate(&at("auth"))?;
        }
        if !self.allow.is_empty() && self.auth.is_none() {
            return Err(invalid(at("allow"), "needs `auth`: rules name principals and scopes"));
        }
        for (j, rule) in self.allow.iter().enumerate() {
            rule.validate(&at(&format!("allow[{j}]")))?;
        }
        Ok(())
    }
}

impl Config {
    /// Checks what types alone cannot: references, uniqueness, non-zero bounds.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.instance_id.is_empty() || !self.instance_id.chars().all(|c| c.is_ascii_graphic() && c != '.') {
            return Err(invalid("instance_id", "must be visible ASCII without `.`"));
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one route is needed"));
        }
        let mut paths = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path.starts_with('/') {
                return Err(invalid(format!("routes[{i}].path"), "must start with `/`"));
            }
            if r.max_sessions == Some(0) {
                return Err(invalid(format!("routes[{i}].max_sessions"), "must be greater than 0"));
            }
            if !paths.insert(&r.path) {
                return Err(invalid(format!("routes[{i}].path"), format!("`{}` is used twice", r.path)));
            }
            r.validate_access(i)?;
            if !self.backends.contains_key(&r.backend) {
                return Err(invalid(
                    format!("routes[{i}].backend"),
                    format!("no backend named `{}` in [backends]", r.backend),
                ));
            }
        }
        self.check_legacy_paths()?;
        self.principals.validate()?;
        if let Some(tls) = &self.server.tls {
            tls.validate("server.tls")?;
        }
        if let Some(tls) = &self.admin.tls {
            tls.validate("admin.tls")?;
        }
        let nonzero = [
            ("sessions.max_in_flight", self.sessions.max_in_flight),
            ("sessions.max_streams", self.sessions.max_streams),
            ("server.min_body_rate", self.server.min_body_rate),
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("sessions.max_sessions", self.sessions.max_sessions),
            ("sessions.replay_buffer_messages", self.sessions.replay_buffer_messages),
            ("sessions.replay_buffer_bytes", self.sessions.replay_buffer_bytes),
            ("sessions.stream_queue", self.sessions.stream_queue),
            ("websocket.max_message_bytes", self.websocket.max_message_bytes),
            ("websocket.send_queue", self.websocket.send_queue),
            ("websocket.read_buffer_bytes", self.websocket.read_buffer_bytes),
            ("legacy_sse.send_queue", self.legacy_sse.send_queue),
        ];
        for (key, v) in nonzero {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.server.worker_threads > ServerConfig::MAX_WORKER_THREADS {
            let most = ServerConfig::MAX_WORKER_THREADS;
            return Err(invalid("server.worker_threads", format!("must be at most {most} (0: one per CPU)")));
        }
        for (key, d) in [
            ("sessions.idle_timeout", self.sessions.idle_timeout),
            ("sessions.request_timeout", self.sessions.request_timeout),
            ("sessions.sse_keepalive", self.sessions.sse_keepalive),
            ("websocket.stall_timeout", self.websocket.stall_timeout),
            ("websocket.ping_interval", self.websocket.ping_interval),
            ("websocket.pong_timeout", self.websocket.pong_timeout),
            ("legacy_sse.stall_timeout", self.legacy_sse.stall_timeout),
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if self.server.idle_timeout <= self.sessions.sse_keepalive {
            return Err(invalid(
                "server.idle_timeout",
                "must be longer than sessions.sse_keepalive, or open streams would be closed as idle",
            ));
        }
        for (name, b) in &self.backends {
            match b {
                BackendConfig::Stdio(s) => {
                    let key = |k: &str| format!("backends.{name}.{k}");
                    if s.command.trim().is_empty() {
                        return Err(invalid(key("command"), "must not be empty"));
                    }
                    if s.max_line_bytes == 0 {
                        return Err(invalid(key("max_line_bytes"), "must be greater than 0"));
                    }
                    if s.stdin_queue == 0 {
                        return Err(invalid(key("stdin_queue"), "must be greater than 0"));
                    }
                    if let Some(p) = &s.pool {
                        let sizes = [
                            ("pool.size", p.size),
                            ("pool.max_in_flight", p.max_in_flight),
                            ("pool.queue", p.queue),
                            ("pool.session_buffer", p.session_buffer),
                        ];
                        if let Some((k, _)) = sizes.iter().find(|(_, v)| *v == 0) {
                            return Err(invalid(key(k), "must be greater than 0"));
                        }
                        if !crate::protocol::is_supported(&p.protocol_version)
                            || p.protocol_version.as_str() < "2025-03-26"
                        {
                            return Err(invalid(
                                key("pool.protocol_version"),
                                "must be a session-era revision from 2025-03-26 on",
                            ));
                        }
                    }
                }
                BackendConfig::Http(u) | BackendConfig::Sse(u) => u.validate(&format!("backends.{name}"))?,
            }
        }
        Ok(())
    }

    /// `sse_path` and `messages_path`: both or neither, and each a path no route or other
    /// legacy endpoint uses.
    fn check_legacy_paths(&self) -> Result<(), Invalid> {
        let mut taken: std::collections::HashSet<&str> = self.routes.iter().map(|r| r.path.as_str()).collect();
        for (i, r) in self.routes.iter().enumerate() {
            let (sse, messages) = match (&r.sse_path, &r.messages_path) {
                (None, None) => continue,
                (Some(s), Some(m)) => (s, m),
                (Some(_), None) => {
                    return Err(invalid(format!("routes[{i}].messages_path"), "must be set with `sse_path`"))
                }
                (None, Some(_)) => {
                    return Err(invalid(format!("routes[{i}].sse_path"), "must be set with `messages_path`"))
                }
            };
            for (key, path) in [("sse_path", sse), ("messages_path", messages)] {
                let key = format!("routes[{i}].{key}");
                if !path.starts_with('/') || path.contains(['?', '#']) || !path.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(invalid(key, "must be a path starting with `/`, of visible ASCII without `?` or `#`"));
                }
                if !taken.insert(path) {
                    return Err(invalid(key, format!("`{path}` is already used by a route or a legacy endpoint")));
                }
            }
        }
        Ok(())
    }

    /// The configuration as TOML, secrets masked: what `mcp-edge check` prints.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Config {
        toml::from_str(DEFAULT_TOML).expect("the shipped gateway.toml parses")
    }

    #[test]
    fn the_shipped_file_states_the_built_in_defaults() {
        let c = shipped();
        c.validate().unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.sessions, SessionConfig::default());
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.websocket, WebSocketConfig::default());
        assert_eq!(c.legacy_sse, LegacySseConfig::default());
        assert!(c.routes.iter().all(|r| r.sse_path.is_none() && r.messages_path.is_none()));
        assert!(c.routes.iter().all(|r| r.websocket));
        let BackendConfig::Stdio(s) = &c.backends["example"] else { panic!("stdio") };
        assert_eq!(s.command, SELF_EXE);
        assert_eq!(s.env_allow, default_env_allow());
        assert_eq!(s.max_line_bytes, default_max_line_bytes());
        assert_eq!(s.stop_wait, default_stop_wait());
        assert_eq!(s.stdin_queue, default_stdin_queue());
    }

    /// Every key path of a value, with array items and map entries generalised.
    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                out.push(k.clone());
                keys(&format!("{prefix}{k}."), v, out);
            }
        }
        if let toml::Value::Array(a) = v {
            a.iter().for_each(|v| keys(prefix, v, out));
        }
    }

    #[test]
    fn every_key_is_documented() {
        let mut c = shipped();
        let Some(BackendConfig::Stdio(s)) = c.backends.get_mut("example") else { panic!("stdio") };
        s.cwd = Some("/".into());
        s.env.insert("K".into(), Secret("v".into()));
        s.pool = Some(PoolConfig::of(4));
        c.routes[0].sse_path = Some("/sse".into());
        c.routes[0].messages_path = Some("/messages".into());
        c.routes[0].max_sessions = Some(10);
        let tls = TlsServerConfig { cert_file: "/c.pem".into(), key_file: "/k.pem".into() };
        c.server.tls = Some(tls.clone());
        c.admin.tls = Some(tls);
        c.routes[0].public_url = Some("https://mcp.example.com/mcp".into());
        let mut second = c.routes[0].clone();
        c.routes[0].auth = Some(
            toml::from_str(
                r#"kind = "jwt"
                issuer = "https://auth.example.com"
                jwks_url = "https://auth.example.com/jwks.json"
                jwks_file = "/jwks.json""#,
            )
            .unwrap(),
        );
        second.auth = Some(
            toml::from_str(
                r#"kind = "api_key"
                keys = [{ principal = "p", sha256 = "00", env = "K", scopes = ["s"] }]"#,
            )
            .unwrap(),
        );
        second.allow = vec![toml::from_str(
            r#"principals = ["p"]
            scopes = ["s"]"#,
        )
        .unwrap()];
        c.routes.push(second);
        let remote: BackendConfig = toml::from_str(
            r#"kind = "http"
            url = "https://mcp.example.com/mcp"
            headers = { "x-api-key" = { env = "KEY" }, "x-static" = "v" }
            sse_fallback = true
            http2 = true
            tls = { ca_file = "/ca.pem", client_cert = "/c.pem", client_key = "/k.pem" }"#,
        )
        .unwrap();
        c.backends.insert("remote".into(), remote);
        let value = toml::Value::try_from(&c).unwrap();
        let mut all = Vec::new();
        keys("", &value, &mut all);
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
        for key in all.iter().filter(|k| !["example", "K", "remote", "x-api-key", "x-static"].contains(&k.as_str())) {
            let documented = doc.contains(&format!("`{key}`"))
                || doc.contains(&format!("[{key}"))
                || doc.contains(&format!("[[{key}"));
            assert!(documented, "docs/configuration.md does not describe `{key}`");
            assert!(DEFAULT_TOML.contains(key.as_str()), "gateway.toml does not mention `{key}`");
        }
        assert!(all.len() > 25, "walked the whole configuration");
    }

    #[test]
    fn legacy_paths_come_in_pairs_of_their_own() {
        let with = |sse: Option<&str>, messages: Option<&str>| {
            let mut c = shipped();
            c.routes[0].sse_path = sse.map(Into::into);
            c.routes[0].messages_path = messages.map(Into::into);
            c.validate().map_err(|e| e.key)
        };
        assert_eq!(with(Some("/sse"), Some("/messages")), Ok(()));
        assert_eq!(with(Some("/sse"), None), Err("routes[0].messages_path".into()));
        assert_eq!(with(None, Some("/messages")), Err("routes[0].sse_path".into()));
        assert_eq!(with(Some("sse"), Some("/messages")), Err("routes[0].sse_path".into()));
        assert_eq!(with(Some("/sse"), Some("/mcp")), Err("routes[0].messages_path".into()));
        assert_eq!(with(Some("/sse"), Some("/sse")), Err("routes[0].messages_path".into()));
        assert_eq!(with(Some("/sse"), Some("/m?x=1")), Err("routes[0].messages_path".into()));
        assert_eq!(with(Some("/sse"), Some("/m\ndata: x")), Err("routes[0].messages_path".into()));
    }

    #[test]
    fn upstreams_are_checked_and_their_header_values_masked() {
        let check = |backend: &str| {
            let mut c = shipped();
            c.backends.insert("example".into(), toml::from_str(backend).unwrap());
            c.validate().map(|_| c).map_err(|e| e.key)
        };
        let ok =
            check("kind = \"http\"\nurl = \"http://127.0.0.1:9/mcp\"\nheaders = { \"x-k\" = \"hunter2\" }").unwrap();
        assert!(!ok.to_toml().contains("hunter2") && ok.to_toml().contains("***"));
        assert_eq!(check("kind = \"sse\"\nurl = \"ftp://x/sse\""), Err("backends.example.url".into()));
        assert_eq!(
            check("kind = \"http\"\nurl = \"http://h/mcp\"\nheaders = { \"bad name\" = \"v\" }"),
            Err("backends.example.headers.bad name".into())
        );
        assert_eq!(
            check("kind = \"http\"\nurl = \"http://h/mcp\"\nheaders = { \"mcp-session-id\" = \"v\" }"),
            Err("backends.example.headers.mcp-session-id".into())
        );
        assert_eq!(
            check("kind = \"http\"\nurl = \"http://h/mcp\"\ntls = { client_cert = \"/c.pem\" }"),
            Err("backends.example.tls".into())
        );
        assert_eq!(
            check("kind = \"http\"\nurl = \"http://h/mcp\"\ntls = { ca_file = \"/nonexistent.pem\" }"),
            Err("backends.example.tls.ca_file".into())
        );
    }

    #[test]
    fn secrets_never_print() {
        let mut c = shipped();
        let Some(BackendConfig::Stdio(s)) = c.backends.get_mut("example") else { panic!("stdio") };
        s.env.insert("TOKEN".into(), Secret("hunter2".into()));
        assert!(!c.to_toml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
