//! Streamable HTTP, session era (2024-11-05 … 2025-11-25): POST, GET and DELETE on a route.
//!
//! Owns everything about HTTP on the wire — header checks, body limits, status codes, the
//! choice between a JSON and an SSE answer, `Mcp-Session-Id` — and nothing about routing
//! messages, which is the session's job. A request answered within `sessions.json_wait` gets
//! `application/json`; a slower one, or one whose stream carries other messages first, gets
//! `text/event-stream` with keep-alives (and, for 2025-11-25 clients, a priming event).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::sse::{self, StreamOptions};
use super::websocket;
use super::{error_reply, json_response, App, Body};
use crate::auth::Caller;
use crate::backend::{Backend, Call};
use crate::error::GatewayError;
use crate::gather::Gather;
use crate::jsonrpc::{Body as RpcBody, Id, Kind, Message, ParseError};
use crate::protocol::{self, Era};
use crate::rt::{self, ConnTimer};
use crate::session::{Attach, Delivery, EndReason, Frame, Opened, SessionHandle, Sink, Target, Transport};

// Names as `HeaderName`s: a lookup by `&str` parses the name again on every request.
const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Serves one HTTP request on a route path (Origin and Host already checked).
pub async fn handle(app: Arc<App>, req: Request<Incoming>, cx: super::Context) -> Response<Body> {
    let route = req.uri().path().to_owned();
    let Some(entry) = app.served().routes.get(&route).cloned() else {
        return error_reply(&GatewayError::NoRoute, None);
    };
    let backend = &entry.backend;
    if entry.websocket && websocket::is_upgrade(&req) {
        return websocket::accept(app.clone(), route, backend.clone(), req, cx)
            .await
            .unwrap_or_else(|e| error_reply(&e, None));
    }
    let span = tracing::debug_span!(
        "request",
        http.method = %req.method(),
        route = %route,
        session.id = tracing::field::Empty,
        jsonrpc.method = tracing::field::Empty,
    );
    let caller = cx.caller;
    let served = async {
        let result = match *req.method() {
            Method::POST => post(&app, &route, backend, &caller, req, cx.conn.timer.as_ref()).await,
            Method::GET => get(&app, &route, &caller, req).await,
            Method::DELETE => delete(&app, &route, &caller, req.headers()),
            _ => Err(GatewayError::MethodNotAllowed("GET, POST, DELETE")),
        };
        result.unwrap_or_else(|e| error_reply(&e, None))
    };
    served.instrument(span).await
}

/// Whether an Accept header admits every one of `mimes` (exactly, or by a wildcard), read in
/// one pass.
pub(super) fn accepts(headers: &HeaderMap, mimes: &[&str]) -> bool {
    // The header SDKs send, `a, b` in the order asked, needs no parsing.
    if headers.get(http::header::ACCEPT).is_some_and(|v| listed_exactly(v.as_bytes(), mimes)) {
        return true;
    }
    let mut missing: u32 = (1 << mimes.len()) - 1;
    for value in headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()) {
        for item in value.split(',') {
            let m = item.split(';').next().unwrap_or("").trim();
            for (i, mime) in mimes.iter().enumerate() {
                if missing & (1 << i) != 0 && admits(m, mime) {
                    missing &= !(1 << i);
                }
            }
            if missing == 0 {
                return true;
            }
        }
    }
    false
}

/// Whether `value` is `mimes` joined by `", "`.
fn listed_exactly(value: &[u8], mimes: &[&str]) -> bool {
    let mut rest = value;
    for (i, mime) in mimes.iter().enumerate() {
        let item = if i == 0 { Some(rest) } else { rest.strip_prefix(b", ") };
        match item.and_then(|r| r.strip_prefix(mime.as_bytes())) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Whether one media range of an Accept header admits `mime`.
fn admits(range: &str, mime: &str) -> bool {
    range.eq_ignore_ascii_case(mime)
        || range == "*/*"
        || range.split_once('/').is_some_and(|(k, sub)| {
            sub == "*" && mime.split_once('/').is_some_and(|(kind, _)| k.eq_ignore_ascii_case(kind))
        })
}

fn header(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What a request's headers say of its session: its id and protocol version, read once.
#[derive(Clone, Copy)]
struct Named<'a> {
    id: Option<&'a str>,
    version: Option<&'a str>,
}

impl<'a> Named<'a> {
    fn of(headers: &'a HeaderMap) -> Named<'a> {
        Named { id: header(headers, SESSION_HEADER), version: header(headers, VERSION_HEADER) }
    }
}

/// The live session a request names (of the caller's own), or the error that says why there
/// is none.
fn session(app: &App, route: &str, caller: &Caller, named: Named<'_>) -> Result<SessionHandle, GatewayError> {
    let id = named.id.ok_or(GatewayError::MissingSession)?;
    let session = app.registry.lookup(id, route, caller)?;
    if let Some(v) = named.version {
        if !protocol::is_supported(v) {
            return Err(GatewayError::UnsupportedVersion(v.into()));
        }
    }
    Ok(session)
}

/// Whether the Content-Type is `application/json` (parameters aside).
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    header(headers, http::header::CONTENT_TYPE)
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON-RPC body, or the 400 that says what is wrong with it.
pub(super) fn parse_body(bytes: &Bytes) -> Result<RpcBody, GatewayError> {
    RpcBody::parse(bytes).map_err(|e| match e {
        ParseError::Json(_) => GatewayError::BadJson(e.to_string()),
        ParseError::Invalid(why) => GatewayError::InvalidMessage(why.into()),
    })
}

/// `timer`: the connection's, when this runs in its task.
pub(super) async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Incoming,
    timer: Option<&ConnTimer>,
) -> Result<Bytes, GatewayError> {
    let limit = app.served().config.server.max_body_bytes;
    let too_large = GatewayError::BodyTooLarge(limit);
    let declared = header(headers, http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    // A body may take `body_read_timeout`, plus a second per `min_body_rate` bytes it has
    // sent: a client trickling bytes (slowloris) is cut off, a large upload at a sane rate
    // is not.
    let server = &app.served().config.server;
    let (grace, rate) = (server.body_read_timeout, server.min_body_rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut body = Limited::new(body, limit);
    let mut gathered = Gather::default();
    loop {
        let deadline = started + grace + std::time::Duration::from_secs_f64(gathered.len() as f64 / rate);
        match rt::timeout_at(timer, deadline, body.frame()).await {
            None => return Err(GatewayError::SlowBody),
            Some(None) => break,
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    gathered.push(data);
                }
            }
            Some(Some(Err(e))) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(too_large)
            }
            Some(Some(Err(e))) => return Err(GatewayError::InvalidMessage(format!("the body could not be read: {e}"))),
        }
    }
    let body = gathered.finish();
    app.metrics.http_bytes.received.inc_by(body.len() as u64);
    Ok(body)
}

async fn post(
    app: &Arc<App>,
    route: &str,
    backend: &Backend,
    caller: &Caller,
    req: Request<Incoming>,
    timer: Option<&ConnTimer>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    if !accepts(headers, &["application/json", "text/event-stream"]) {
        return Err(GatewayError::NotAcceptable("Accept must list application/json and text/event-stream"));
    }
    if !is_json(headers) {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let body = parse_body(&read_body(app, headers, body, timer).await?)?;
    let batch = matches!(body, RpcBody::Batch(_));
    let msgs = with_trace_context(headers, body.into_messages());
    let span = tracing::Span::current();
    span.record("jsonrpc.method", msgs[0].method().unwrap_or("(response)"));
    let named = Named::of(headers);
    if let Some(id) = named.id {
        span.record("session.id", id);
    }
    if protocol::classify(named.version, &msgs[0]) == Era::Stateless {
        return Err(GatewayError::StatelessRequest);
    }
    let is_init = |m: &Message| m.method() == Some("initialize");
    if msgs.iter().any(is_init) {
        if batch {
            return Err(GatewayError::BatchNotAllowed);
        }
        let msg = msgs.into_iter().next().expect("one message");
        if msg.kind != Kind::Request {
            return Err(GatewayError::InvalidMessage("initialize must be a request".into()));
        }
        // Outside a session a refusal is an HTTP status (429 + Retry-After).
        super::admit(app, caller, std::slice::from_ref(&msg))?;
        return initialize(app, route, backend, caller, msg).await;
    }
    let session = session(app, route, caller, named)?;
    // Inside a session a refusal is a JSON-RPC error for each request (SDKs drop a session on
    // most HTTP errors).
    if let Err(e) = super::admit(app, caller, &msgs) {
        return Ok(refuse_in_band(&e, &msgs, batch));
    }
    let version = session.version().unwrap_or(protocol::ASSUMED_WITHOUT_HEADER);
    if batch && !protocol::allows_batch(version) {
        return Err(GatewayError::BatchNotAllowed);
    }
    let first_request = msgs.iter().find(|m| m.is_request()).and_then(|m| m.id.clone());
    let Some(first_request) = first_request else {
        // Only notifications and responses: hand them over and acknowledge.
        session.submit(&msgs, Target::None)?;
        // Bounded like a request's forward: a backend that stopped reading does not hold the
        // client here for ever.
        if let Ok(r) = tokio::time::timeout(app.served().config.sessions.request_timeout, session.forward(&msgs)).await
        {
            r?;
        }
        return Ok(status_only(StatusCode::ACCEPTED));
    };
    let (tx, rx) = mpsc::channel(app.served().config.sessions.stream_queue);
    let opened = match session.submit(&msgs, Target::NewStream(Sink::new(tx, Delivery::Detach))) {
        Ok(o) => o,
        Err(e) if e.status() == StatusCode::OK => return Ok(in_band(&e, &first_request)),
        Err(e) => return Err(e),
    };
    // A failed write means the backend is gone, and a write that waits past the request
    // timeout means it stopped reading: either way the session answers every pending request
    // with an error on `rx`, so the response below still completes.
    // The exchanges that started at once (with an HTTP upstream) are driven here while the
    // answer is awaited; whatever is not over when the response is made goes on by itself.
    let deadline = tokio::time::Instant::now() + app.served().config.sessions.request_timeout;
    let calls = match rt::timeout_at(timer, deadline, session.forward_driven(&msgs)).await {
        Some(Ok(calls)) => calls,
        _ => Vec::new(),
    };
    Ok(respond(app, route, version, opened, (rx, timer), batch, calls).await)
}

/// Waits for `until` while driving `calls` (a call that ends has put its answer where `until`
/// finds it).
///
/// A call answers from this very task, into the queue `until` reads: with this task's waker in
/// that queue the task would wake itself — polled again for nothing under `rt::Inline` (an
/// HTTP/1.1 connection), rescheduled behind the others with a second worker thread woken to
/// take it otherwise. So while the calls run, the queue holds a waker that does nothing, and
/// this task's waker goes back in right after (`until` looks at the queue again then, so
/// nothing is missed).
async fn driving<T>(until: impl std::future::Future<Output = T>, calls: &mut Vec<Call>) -> T {
    use std::task::{Context, Poll};
    let mut until = std::pin::pin!(until);
    std::future::poll_fn(|cx| {
        if !calls.is_empty() {
            if let Poll::Ready(v) = until.as_mut().poll(&mut Context::from_waker(futures_util::task::noop_waker_ref()))
            {
                return Poll::Ready(v);
            }
            crate::backend::poll_calls(calls, cx);
        }
        until.as_mut().poll(cx)
    })
    .await
}

/// A W3C `traceparent` (and `tracestate`) header is passed to the backend in the
/// `params._meta` of each request and notification that does not carry its own.
pub(super) fn with_trace_context(headers: &HeaderMap, msgs: Vec<Message>) -> Vec<Message> {
    let Some(parent) = header(headers, TRACEPARENT).filter(|v| crate::jsonrpc::valid_traceparent(v)) else {
        return msgs;
    };
    let state = header(headers, TRACESTATE).filter(|v| v.len() <= 512 && v.is_ascii());
    msgs.into_iter()
        .map(|m| {
            let m = m.with_meta("traceparent", parent);
            match state {
                Some(s) => m.with_meta("tracestate", s),
                None => m,
            }
        })
        .collect()
}

pub(super) fn status_only(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(super::empty());
    *r.status_mut() = status;
    r
}

/// A failure of one request, answered as its JSON-RPC error with HTTP 200.
fn in_band(err: &GatewayError, id: &Id) -> Response<Body> {
    let mut r = error_reply(err, Some(id));
    *r.status_mut() = StatusCode::OK;
    r
}

/// Every request of a POST refused with the same error, with HTTP 200: one error response,
/// or an array of them for a batch.
fn refuse_in_band(err: &GatewayError, msgs: &[Message], batch: bool) -> Response<Body> {
    let ids: Vec<&Id> = msgs.iter().filter(|m| m.is_request()).filter_map(|m| m.id.as_ref()).collect();
    match (batch, ids.as_slice()) {
        (false, [id]) => in_band(err, id),
        _ => {
            let items: Vec<String> =
                ids.iter().map(|id| String::from_utf8_lossy(&err.to_rpc(Some(id))).into_owned()).collect();
            let mut r = error_reply(err, None);
            *r.body_mut() = super::full(format!("[{}]", items.join(",")));
            *r.status_mut() = StatusCode::OK;
            r
        }
    }
}

/// Options of a POST response stream: SEP-1699 early close applies to these only.
fn stream_options(app: &App, version: &str) -> StreamOptions {
    let s = &app.served().config.sessions;
    let close = !s.sse_close_after.is_zero() && protocol::wants_priming(version);
    StreamOptions { keepalive: s.sse_keepalive, close_after: close.then_some((s.sse_close_after, s.sse_retry)) }
}

pub(super) fn sse_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Answers a POST that carried requests: JSON when the one response comes quickly and alone,
/// SSE otherwise.
async fn respond(
    app: &App,
    route: &str,
    version: &str,
    opened: Opened,
    (mut rx, timer): (mpsc::Receiver<Box<Frame>>, Option<&ConnTimer>),
    batch: bool,
    mut calls: Vec<Call>,
) -> Response<Body> {
    let opts = stream_options(app, version);
    let mut prefix = Vec::new();
    if protocol::wants_priming(version) {
        prefix.push(sse::priming(opened.stream, 0));
    }
    if !batch {
        // Cancel-safe: a frame is either returned or still in the channel.
        let deadline = tokio::time::Instant::now() + app.served().config.sessions.json_wait;
        let first = rt::timeout_at(timer, deadline, driving(rx.recv(), &mut calls));
        match first.await.map(|f| f.map(|f| *f)) {
            Some(Some(Frame::Event { data, last: true, .. })) => return json_response(StatusCode::OK, data),
            Some(Some(Frame::Event { id, data, .. })) => prefix.push(sse::event(id, &data)),
            // The session ended in a way the client must act on (initialize again): say so
            // with the status, as for an unknown session.
            Some(Some(Frame::Ended { data, reason })) => {
                tracing::info!(reason = %reason.describe(), "A request's session ended under it.");
                return json_response(reason.error().status(), data);
            }
            Some(Some(Frame::End | Frame::Closed(_) | Frame::Replaced | Frame::Message(_) | Frame::Stop(_)) | None) => {
                return sse_response(sse::body(prefix, None, opts, sse::Meter::new(&app.metrics, route, "request")))
            }
            None => {}
        }
    }
    sse_response(sse::body(prefix, Some(rx), opts, sse::Meter::new(&app.metrics, route, "request")))
}

/// Ends a session that never got published (initialize failed or the client left).
struct Unpublished(Option<SessionHandle>);

impl Drop for Unpublished {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.end(EndReason::InitializeFailed);
        }
    }
}

/// Starts a session, relays `initialize`, and publishes the session only when the backend
/// answered with an `InitializeResult`: that response alone carries `Mcp-Session-Id`.
async fn initialize(
    app: &Arc<App>,
    route: &str,
    backend: &Backend,
    caller: &Caller,
    msg: Message,
) -> Result<Response<Body>, GatewayError> {
    let id = msg.id.clone().expect("requests have ids");
    let handle = match app.registry.start(route, backend, Transport::Http, caller).await {
        Ok(h) => h,
        Err(e) if e.status() == StatusCode::OK => return Ok(in_band(&e, &id)),
        Err(e) => return Err(e),
    };
    let mut guard = Unpublished(Some(handle.clone()));
    let (tx, mut rx) = mpsc::channel(app.served().config.sessions.stream_queue);
    if let Err(e) = handle.submit(std::slice::from_ref(&msg), Target::NewStream(Sink::new(tx, Delivery::Detach))) {
        // The backend died before the session took the request.
        let e = if e == GatewayError::UnknownSession {
            EndReason::BackendClosed("backend exited".into()).error()
        } else {
            e
        };
        return Ok(in_band(&e, &id));
    }
    let _ = handle.forward(std::slice::from_ref(&msg)).await;
    let mut before = Vec::new();
    let mut last = None;
    while let Some(frame) = rx.recv().await {
        match *frame {
            Frame::Event { id, data, last: true } => {
                last = Some((id, data));
                break;
            }
            Frame::Event { id, data, .. } => before.push(sse::event(id, &data)),
            Frame::End
            | Frame::Closed(_)
            | Frame::Replaced
            | Frame::Message(_)
            | Frame::Ended { .. }
            | Frame::Stop(_) => break,
        }
    }
    let Some((event_id, data)) = last else {
        return Ok(in_band(&GatewayError::SessionEnded("initialize was cancelled".into()), &id));
    };
    let initialized = protocol::initialize_result(&data);
    let mut response = if before.is_empty() {
        json_response(StatusCode::OK, data)
    } else {
        before.push(sse::event(event_id, &data));
        sse_response(sse::body(before, None, stream_options(app, ""), sse::Meter::new(&app.metrics, route, "request")))
    };
    if let Some((version, result)) = initialized {
        app.registry.publish(&handle, &version, result);
        guard.0 = None;
        let value = HeaderValue::from_str(handle.id()).expect("session ids are visible ASCII");
        response.headers_mut().insert(SESSION_HEADER, value);
        tracing::info!(session.id = handle.id(), protocol.version = %version, "A session started.");
    }
    Ok(response)
}

async fn get(
    app: &Arc<App>,
    route: &str,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let headers = req.headers();
    if !accepts(headers, &["text/event-stream"]) {
        return Err(GatewayError::NotAcceptable("Accept must list text/event-stream"));
    }
    let session = session(app, route, caller, Named::of(headers))?;
    let version = session.version().unwrap_or(protocol::ASSUMED_WITHOUT_HEADER);
    let last_event_id = header(headers, "last-event-id").map(str::to_owned);
    let resumed = last_event_id.is_some();
    let (tx, rx) = mpsc::channel(app.served().config.sessions.stream_queue);
    let attach = match last_event_id {
        Some(id) => Attach::After(id),
        None => Attach::Standalone,
    };
    let opened = session.open(attach, Sink::new(tx, Delivery::Detach))?;
    let mut prefix = Vec::new();
    if protocol::wants_priming(version) && !resumed {
        prefix.push(sse::priming(opened.stream, opened.resume_from));
    }
    prefix.extend(opened.replay.iter().map(|(id, data)| sse::event(*id, data)));
    let rx = (!opened.complete).then_some(rx);
    // GET streams are never closed early: a resumed stream carries its request to the end.
    let opts = StreamOptions { close_after: None, ..stream_options(app, version) };
    Ok(sse_response(sse::body(prefix, rx, opts, sse::Meter::new(&app.metrics, route, "get"))))
}

fn delete(app: &App, route: &str, caller: &Caller, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
    let id = session(app, route, caller, Named::of(headers))?.id().to_owned();
    let session = app.registry.remove(&id).ok_or(GatewayError::UnknownSession)?;
    session.end(EndReason::Deleted);
    tracing::info!(session.id = %id, "The client deleted its session.");
    Ok(status_only(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching() {
        let mut h = HeaderMap::new();
        h.insert("accept", "application/json, text/event-stream;q=0.9".parse().unwrap());
        let both = ["application/json", "text/event-stream"];
        assert!(accepts(&h, &both));
        h.insert("accept", "application/json, text/event-stream".parse().unwrap());
        assert!(accepts(&h, &both) && accepts(&h, &["text/event-stream", "application/json"]));
        h.insert("accept", "application/json, text/event-streams".parse().unwrap());
        assert!(!accepts(&h, &both) && accepts(&h, &["application/json"]));
        h.insert("accept", "application/json".parse().unwrap());
        assert!(!accepts(&h, &["text/event-stream"]) && !accepts(&h, &both));
        assert!(accepts(&h, &["application/json"]));
        h.insert("accept", "*/*".parse().unwrap());
        assert!(accepts(&h, &["text/event-stream"]) && accepts(&h, &both));
        assert!(!accepts(&HeaderMap::new(), &["application/json"]));
        h.insert("accept", "Application/*, TEXT/*;q=0.5".parse().unwrap());
        assert!(accepts(&h, &both), "type wildcards");
        h.insert("accept", "text/*".parse().unwrap());
        assert!(!accepts(&h, &["application/json"]), "a wildcard covers its own type only");
        h.insert("accept", "application/json-seq".parse().unwrap());
        assert!(!accepts(&h, &["application/json"]));
        h.insert("accept", "text/event-stream".parse().unwrap());
        h.append("accept", "application/json;q=0.5".parse().unwrap());
        assert!(accepts(&h, &both), "the two across two Accept headers");
    }
}
