//! Every failure a client can see, and the one place that decides how it is shown: HTTP
//! status, JSON-RPC code, WebSocket close code (later transports), log level. `docs/errors.md`
//! is generated from [`GatewayError::catalog`] and a test keeps the two equal.

use std::time::Duration;

use http::StatusCode;

use crate::jsonrpc::code;

/// Who caused a failure; decides the log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Client,
    Backend,
    Gateway,
}

/// A failure that reaches a client.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GatewayError {
    #[error("Parse error: {0}")]
    BadJson(String),
    #[error("Invalid Request: {0}")]
    InvalidMessage(String),
    #[error("Not Acceptable: {0}")]
    NotAcceptable(&'static str),
    #[error("Unsupported Media Type: Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Payload Too Large: the body exceeds server.max_body_bytes ({0} bytes)")]
    BodyTooLarge(usize),
    #[error("Bad Request: Mcp-Session-Id header is required")]
    MissingSession,
    #[error("Bad Request: the sessionId query parameter is required")]
    MissingSessionParam,
    #[error("Session not found")]
    UnknownSession,
    #[error("Session not found: it ended ({0})")]
    SessionGone(String),
    #[error("Bad Request: unsupported MCP-Protocol-Version `{0}` (supported: {supported})", supported = crate::protocol::SUPPORTED.join(", "))]
    UnsupportedVersion(String),
    #[error("Bad Request: batches are allowed only for sessions at protocol 2025-03-26, and never with initialize")]
    BatchNotAllowed,
    #[error("Bad Request: this endpoint serves the session era of MCP (2024-11-05 to 2025-11-25); send initialize")]
    StatelessRequest,
    #[error("Service Unavailable: sessions.max_sessions ({0}) reached")]
    TooManySessions(usize),
    #[error("Service Unavailable: routes.max_sessions of `{0}` ({1}) reached")]
    RouteFull(String, usize),
    #[error("Forbidden: Origin `{0}` is not allowed (server.allowed_origins)")]
    OriginForbidden(String),
    #[error("Forbidden: Host `{0}` is not allowed (server.allowed_hosts)")]
    HostForbidden(String),
    /// Carries the methods the path serves, for `Allow`.
    #[error("Method Not Allowed")]
    MethodNotAllowed(&'static str),
    #[error("Bad Request: the client offers WebSocket subprotocols but not `mcp`")]
    SubprotocolRequired,
    #[error("Unsupported Data: send each JSON-RPC message as a text frame")]
    BinaryFrame,
    #[error("Message Too Big: over websocket.max_message_bytes ({0} bytes)")]
    MessageTooLarge(usize),
    #[error("Policy Violation: the client took no message for websocket.stall_timeout")]
    SlowReader,
    /// A frame RFC 6455 forbids (unmasked, a stray continuation, a reserved opcode or bit …).
    #[error("Protocol Error: {0}")]
    FrameViolation(String),
    #[error("Invalid Frame Payload Data: a text message must be UTF-8")]
    InvalidUtf8,
    #[error("Not Found: no route at this path")]
    NoRoute,
    #[error("Conflict: this session already has an open GET stream")]
    StreamConflict,
    #[error("Bad Request: Last-Event-ID `{0}` names no stream of this session")]
    UnknownEventId(String),
    #[error("Gone: events after `{0}` are no longer buffered (sessions.replay_buffer_*); initialize a new session")]
    ReplayGap(String),
    #[error("Service Unavailable: the gateway is shutting down")]
    ShuttingDown,
    #[error("Backend unavailable: {0}")]
    BackendUnavailable(String),
    /// A legacy SSE stream needs its backend before any request exists to fail in-band.
    #[error("Bad Gateway: the backend could not be started: {0}")]
    BackendStartFailed(String),
    #[error("Request timed out after {} ms without a response or progress", .0.as_millis())]
    RequestTimeout(Duration),
    #[error("Session ended: {0}")]
    SessionEnded(String),
    #[error("Overloaded: {0}; retry shortly")]
    PoolBusy(String),
    #[error("Invalid Request: id {0} is already in flight on this session")]
    DuplicateId(String),
    /// Carries the `WWW-Authenticate` challenge.
    #[error("Unauthorized: {why}")]
    Unauthorized { challenge: String, why: String },
    #[error("Forbidden: the token lacks a required scope ({needed})")]
    InsufficientScope { challenge: String, needed: String },
    #[error("Forbidden: {0} (routes.allow)")]
    Denied(String),
    #[error("Too Many Requests: over principals.requests_per_second; retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    #[error("Too Many Requests: principals.max_sessions ({0}) reached for this principal")]
    PrincipalFull(usize),
    #[error(
        "Overloaded: sessions.max_in_flight ({0}) requests are in flight on this session; retry when one completes"
    )]
    TooManyInFlight(usize),
    #[error("Too Many Requests: sessions.max_streams ({0}) GET streams are open on this session")]
    TooManyStreams(usize),
    #[error("Request Timeout: the body arrived slower than server.min_body_rate allows")]
    SlowBody,
}

impl GatewayError {
    /// HTTP status when the failure answers a whole HTTP request; `200` for failures that are
    /// answered in-band, as a JSON-RPC error for one request inside a response or stream.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            InsufficientScope { .. } => StatusCode::FORBIDDEN,
            RateLimited(_) | PrincipalFull(_) | TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            SlowBody => StatusCode::REQUEST_TIMEOUT,
            BadJson(_)
            | InvalidMessage(_)
            | MissingSession
            | MissingSessionParam
            | UnsupportedVersion(_)
            | BatchNotAllowed
            | StatelessRequest
            | UnknownEventId(_) => StatusCode::BAD_REQUEST,
            NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnknownSession | SessionGone(_) | NoRoute => StatusCode::NOT_FOUND,
            TooManySessions(_) | RouteFull(..) | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            OriginForbidden(_) | HostForbidden(_) => StatusCode::FORBIDDEN,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BackendStartFailed(_) => StatusCode::BAD_GATEWAY,
            SubprotocolRequired => StatusCode::BAD_REQUEST,
            // Faults of a WebSocket connection: they close it, they answer no HTTP request.
            BinaryFrame | MessageTooLarge(_) | SlowReader | FrameViolation(_) | InvalidUtf8 => StatusCode::BAD_REQUEST,
            StreamConflict => StatusCode::CONFLICT,
            ReplayGap(_) => StatusCode::GONE,
            BackendUnavailable(_)
            | RequestTimeout(_)
            | SessionEnded(_)
            | DuplicateId(_)
            | PoolBusy(_)
            | Denied(_)
            | TooManyInFlight(_) => StatusCode::OK,
        }
    }

    /// The JSON-RPC error code in the body.
    pub fn rpc_code(&self) -> i64 {
        use GatewayError::*;
        match self {
            BadJson(_) => code::PARSE_ERROR,
            UnknownSession | SessionGone(_) => code::SESSION_NOT_FOUND,
            BackendUnavailable(_) | BackendStartFailed(_) => code::BACKEND_UNAVAILABLE,
            RequestTimeout(_) => code::REQUEST_TIMEOUT,
            SessionEnded(_) | ShuttingDown => code::SESSION_ENDED,
            TooManySessions(_) | RouteFull(..) | PoolBusy(_) | RateLimited(_) | PrincipalFull(_)
            | TooManyInFlight(_) | TooManyStreams(_) => code::OVERLOADED,
            DuplicateId(_) => code::DUPLICATE_ID,
            Unauthorized { .. } => code::UNAUTHORIZED,
            InsufficientScope { .. } | Denied(_) => code::FORBIDDEN,
            // Requests the gateway refuses as malformed or not allowed.
            _ => code::INVALID_REQUEST,
        }
    }

    /// The close code of a WebSocket connection that this failure ends.
    pub fn ws_close(&self) -> Option<u16> {
        match self {
            GatewayError::FrameViolation(_) => Some(1002),
            GatewayError::BinaryFrame => Some(1003),
            GatewayError::InvalidUtf8 => Some(1007),
            GatewayError::SlowReader => Some(1008),
            GatewayError::MessageTooLarge(_) => Some(1009),
            _ => None,
        }
    }

    /// Whether a WebSocket upgrade request can be refused with this (as an HTTP status).
    fn applies_to_upgrade(&self) -> bool {
        use GatewayError::*;
        matches!(
            self,
            InvalidMessage(_)
                | UnknownSession
                | SessionGone(_)
                | OriginForbidden(_)
                | HostForbidden(_)
                | NoRoute
                | SubprotocolRequired
                | ReplayGap(_)
                | UnknownEventId(_)
                | Unauthorized { .. }
                | InsufficientScope { .. }
                | PrincipalFull(_)
                | RateLimited(_)
        )
    }

    /// Whether the failure exists only on a WebSocket connection (it closes it).
    fn websocket_only(&self) -> bool {
        self.ws_close().is_some()
    }

    /// Seconds for a `Retry-After` header, where retrying later can help.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after_ms().map(|ms| ms.div_ceil(1000).max(1))
    }

    /// When retrying can help: milliseconds to wait, also given in-band as the JSON-RPC
    /// error's `data.retryAfterMs` (inside a session, limits answer with a JSON-RPC error).
    pub fn retry_after_ms(&self) -> Option<u64> {
        use GatewayError::*;
        match self {
            RateLimited(wait) => Some((wait.as_millis() as u64).max(1)),
            TooManySessions(_) | RouteFull(..) | ShuttingDown | PrincipalFull(_) | TooManyStreams(_)
            | TooManyInFlight(_) | PoolBusy(_) => Some(1000),
            _ => None,
        }
    }

    /// The JSON-RPC error response for request `id` (with `data.retryAfterMs` when retrying
    /// can help).
    pub fn to_rpc(&self, id: Option<&crate::jsonrpc::Id>) -> bytes::Bytes {
        let data = self.retry_after_ms().map(|ms| format!(r#"{{"retryAfterMs":{ms}}}"#));
        crate::jsonrpc::error_response_with_data(id, self.rpc_code(), &self.to_string(), data.as_deref())
    }

    /// The `WWW-Authenticate` header of a 401 or 403.
    pub fn challenge(&self) -> Option<&str> {
        match self {
            GatewayError::Unauthorized { challenge, .. } | GatewayError::InsufficientScope { challenge, .. } => {
                Some(challenge)
            }
            _ => None,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            GatewayError::MethodNotAllowed(methods) => Some(methods),
            _ => None,
        }
    }

    /// How a refusal of a whole HTTP request is counted (`rejections_total{reason}`);
    /// `None` for failures answered in-band or that refuse nothing.
    pub fn rejection(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            // Refusals of a request inside a session, answered in-band: counted all the same.
            TooManyInFlight(_) => return Some("limit"),
            Denied(_) => return Some("forbidden"),
            _ if self.status() == StatusCode::OK || self.websocket_only() => return None,
            _ => {}
        }
        Some(match self {
            BodyTooLarge(_) | TooManySessions(_) | RouteFull(..) | PrincipalFull(_) | TooManyStreams(_) => "limit",
            SlowBody => "slow_client",
            RateLimited(_) => "rate_limit",
            Unauthorized { .. } => "unauthorized",
            InsufficientScope { .. } => "forbidden",
            OriginForbidden(_) => "origin",
            HostForbidden(_) => "host",
            UnknownSession | SessionGone(_) | NoRoute => "not_found",
            ShuttingDown => "draining",
            _ if self.cause() == Cause::Client => "bad_request",
            _ => "backend",
        })
    }

    pub fn cause(&self) -> Cause {
        use GatewayError::*;
        match self {
            BackendUnavailable(_) | BackendStartFailed(_) => Cause::Backend,
            TooManySessions(_) | RouteFull(..) | ShuttingDown | RequestTimeout(_) | SessionEnded(_) | PoolBusy(_) => {
                Cause::Gateway
            }
            _ => Cause::Client,
        }
    }

    /// Client mistakes are routine (debug); backend trouble is a warning; the gateway's own
    /// limits are worth an info line.
    pub fn log_level(&self) -> tracing::Level {
        match self.cause() {
            Cause::Client => tracing::Level::DEBUG,
            Cause::Gateway => tracing::Level::INFO,
            Cause::Backend => tracing::Level::WARN,
        }
    }

    /// One example of every variant, in the order of the documentation table. A new variant
    /// must be added here; the `catalog_is_complete` test counts them.
    pub fn catalog() -> Vec<GatewayError> {
        use GatewayError::*;
        vec![
            BadJson("expected value at line 1 column 1".into()),
            InvalidMessage("\"jsonrpc\" must be \"2.0\"".into()),
            NotAcceptable("Accept must list application/json and text/event-stream"),
            UnsupportedMediaType,
            BodyTooLarge(4 * 1024 * 1024),
            MissingSession,
            MissingSessionParam,
            UnknownSession,
            SessionGone("idle timeout".into()),
            UnsupportedVersion("1999-01-01".into()),
            BatchNotAllowed,
            StatelessRequest,
            TooManySessions(1000),
            RouteFull("/mcp".into(), 100),
            OriginForbidden("https://evil.example".into()),
            HostForbidden("evil.example.com".into()),
            MethodNotAllowed("GET, POST, DELETE"),
            SubprotocolRequired,
            BinaryFrame,
            MessageTooLarge(4 * 1024 * 1024),
            SlowReader,
            FrameViolation("Received an unmasked frame from client".into()),
            InvalidUtf8,
            NoRoute,
            StreamConflict,
            UnknownEventId("9-1".into()),
            ReplayGap("1-7".into()),
            ShuttingDown,
            BackendUnavailable("backend exited (exit status 1)".into()),
            BackendStartFailed("connection refused".into()),
            RequestTimeout(Duration::from_secs(600)),
            SessionEnded("deleted".into()),
            PoolBusy("the pool's queue is full (pool.queue = 1024)".into()),
            DuplicateId("7".into()),
            Unauthorized {
                challenge:
                    r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#
                        .into(),
                why: "the token has expired".into(),
            },
            InsufficientScope {
                challenge: r#"Bearer error="insufficient_scope", scope="mcp:tools""#.into(),
                needed: "mcp:tools".into(),
            },
            Denied("tool `reset` is not allowed for this principal".into()),
            RateLimited(Duration::from_millis(250)),
            PrincipalFull(100),
            TooManyInFlight(256),
            TooManyStreams(4),
            SlowBody,
        ]
    }

    /// Short name of the variant, as used in the documentation table.
    pub fn name(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadJson(_) => "bad_json",
            InvalidMessage(_) => "invalid_message",
            NotAcceptable(_) => "not_acceptable",
            UnsupportedMediaType => "unsupported_media_type",
            BodyTooLarge(_) => "body_too_large",
            MissingSession => "missing_session",
            MissingSessionParam => "missing_session_param",
            UnknownSession => "unknown_session",
            SessionGone(_) => "session_gone",
            UnsupportedVersion(_) => "unsupported_version",
            BatchNotAllowed => "batch_not_allowed",
            StatelessRequest => "stateless_request",
            TooManySessions(_) => "too_many_sessions",
            RouteFull(..) => "route_full",
            OriginForbidden(_) => "origin_forbidden",
            HostForbidden(_) => "host_forbidden",
            MethodNotAllowed(_) => "method_not_allowed",
            SubprotocolRequired => "subprotocol_required",
            BinaryFrame => "binary_frame",
            MessageTooLarge(_) => "message_too_large",
            SlowReader => "slow_reader",
            FrameViolation(_) => "frame_violation",
            InvalidUtf8 => "invalid_utf8",
            NoRoute => "no_route",
            StreamConflict => "stream_conflict",
            UnknownEventId(_) => "unknown_event_id",
            ReplayGap(_) => "replay_gap",
            ShuttingDown => "shutting_down",
            BackendUnavailable(_) => "backend_unavailable",
            BackendStartFailed(_) => "backend_start_failed",
            RequestTimeout(_) => "request_timeout",
            SessionEnded(_) => "session_ended",
            PoolBusy(_) => "pool_busy",
            DuplicateId(_) => "duplicate_id",
            Unauthorized { .. } => "unauthorized",
            InsufficientScope { .. } => "insufficient_scope",
            Denied(_) => "denied",
            RateLimited(_) => "rate_limited",
            PrincipalFull(_) => "principal_full",
            TooManyInFlight(_) => "too_many_in_flight",
            TooManyStreams(_) => "too_many_streams",
            SlowBody => "slow_body",
        }
    }

    /// The Markdown table of `docs/errors.md`.
    pub fn markdown_table() -> String {
        let mut out = String::from(
            "| error | HTTP status | WebSocket | JSON-RPC code | log level | example message |\n|---|---|---|---|---|---|\n",
        );
        for e in Self::catalog() {
            let ws = match (e.ws_close(), e.status()) {
                (Some(code), _) => format!("close {code}"),
                (None, StatusCode::OK) => "JSON-RPC error".to_string(),
                (None, s) if e.applies_to_upgrade() => format!("{} before the upgrade", s.as_u16()),
                (None, _) => "JSON-RPC error".to_string(),
            };
            let status = if e.websocket_only() {
                "—".to_string()
            } else if e.status() == StatusCode::OK {
                "200, in-band (JSON-RPC error for that request)".to_string()
            } else {
                let mut s = e.status().as_u16().to_string();
                if e.retry_after().is_some() {
                    s.push_str(" + Retry-After");
                }
                s
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} |\n",
                e.name(),
                status,
                ws,
                e.rpc_code(),
                e.log_level().as_str().to_lowercase(),
                e.to_string().replace('|', "\\|"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_complete() {
        let names: std::collections::HashSet<_> = GatewayError::catalog().iter().map(|e| e.name()).collect();
        assert_eq!(names.len(), GatewayError::catalog().len());
        assert_eq!(names.len(), 42, "add new variants to catalog()");
    }

    #[test]
    fn docs_errors_md_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md");
        let doc = std::fs::read_to_string(path).expect("docs/errors.md exists");
        let table = GatewayError::markdown_table();
        if std::env::var_os("MCP_EDGE_UPDATE_DOCS").is_some() {
            let start = doc.find("<!-- table -->").expect("marker") + "<!-- table -->\n".len();
            let end = doc.find("<!-- /table -->").expect("end marker");
            let updated = format!("{}{}{}", &doc[..start], table, &doc[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert!(
            doc.contains(&table),
            "docs/errors.md is out of date: run MCP_EDGE_UPDATE_DOCS=1 cargo test docs_errors_md"
        );
    }
}
