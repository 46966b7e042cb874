//! Legacy HTTP+SSE, the 2024-11-05 transport, on a route's `sse_path` and `messages_path`.
//!
//! `GET sse_path` starts a session on the route's backend and answers an event stream whose
//! first event, `endpoint`, names where to POST (`messages_path?sessionId=ID`); every
//! server→client message follows as `event: message`. Each POST hands client messages to the
//! session and gets 202; their answers go out on the stream. Owns the query-string session
//! name, the pump from the session to the stream, and ending the session with its stream —
//! legacy clients cannot resume. Routing stays in the session layer: the stream is the reader
//! of its session's standalone stream with [`Delivery::Backpressure`], like a WebSocket, so
//! nothing is lost for a slow client, and a client that takes nothing for
//! `legacy_sse.stall_timeout` is cut off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::sse::{self, StreamOptions};
use super::streamable_http::{accepts, is_json, parse_body, read_body, sse_response, status_only};
use super::websocket::percent_decode;
use super::{error_reply, App, Body, Context, Route};
use crate::auth::Caller;
use crate::config::RouteConfig;
use crate::error::GatewayError;
use crate::jsonrpc::{Body as RpcBody, Id, Message};
use crate::protocol;
use crate::server::ConnectionCut;
use crate::session::{Attach, Delivery, EndReason, Frame, SessionHandle, Sink, Target, Transport};

/// What a legacy path serves.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The route whose backend the path uses and whose sessions it carries.
    pub route: String,
    pub role: Role,
}

#[derive(Clone, Debug)]
pub enum Role {
    /// `GET`: the event stream, which announces where to POST.
    Events { messages_path: String },
    /// `POST`: client messages for the session of an open event stream.
    Messages,
}

/// The legacy endpoints of the routes being served, by path.
pub fn endpoints(routes: &[RouteConfig], served: &HashMap<String, Route>) -> HashMap<String, Endpoint> {
    let mut out = HashMap::new();
    for r in routes.iter().filter(|r| served.contains_key(&r.path)) {
        let (Some(sse), Some(messages)) = (&r.sse_path, &r.messages_path) else { continue };
        let events = Role::Events { messages_path: messages.clone() };
        out.insert(sse.clone(), Endpoint { route: r.path.clone(), role: events });
        out.insert(messages.clone(), Endpoint { route: r.path.clone(), role: Role::Messages });
    }
    out
}

/// Open event streams by session id: a POST finds its session here, published or not.
#[derive(Default)]
pub struct Streams(DashMap<String, Arc<EventStream>>);

/// One open event stream and the session it carries.
struct EventStream {
    route: String,
    session: SessionHandle,
    /// The session's standalone stream, which this event stream reads.
    stream: u64,
    /// The response body's queue, for the gateway's own in-band answers; weak, so the body
    /// ends when the pump lets go of it.
    direct: mpsc::WeakSender<Box<Frame>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The `initialize` whose answer publishes the session.
    initializing: Option<Id>,
    /// `initialize` succeeded: the session is in the registry.
    published: bool,
}

impl EventStream {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This transport's rules: `initialize` first, once and alone; batches only where the
    /// negotiated version has them. An admitted `initialize` is marked pending (`Ok(true)`).
    fn admit(&self, msgs: &[Message], batch: bool) -> Result<bool, GatewayError> {
        let mut st = self.state();
        if let Some(init) = msgs.iter().find(|m| m.method() == Some("initialize")) {
            let id = init.id.clone().filter(|_| init.is_request());
            return match (id, batch) {
                (None, _) => Err(GatewayError::InvalidMessage("initialize must be a request".into())),
                (_, true) => Err(GatewayError::BatchNotAllowed),
                _ if st.published || st.initializing.is_some() => {
                    Err(GatewayError::InvalidMessage("this session is already initialized".into()))
                }
                (id, false) => {
                    st.initializing = id;
                    Ok(true)
                }
            };
        }
        if !st.published && msgs.iter().any(Message::is_request) {
            return Err(GatewayError::InvalidMessage("send initialize first".into()));
        }
        if batch && !protocol::allows_batch(self.session.version().unwrap_or(protocol::ASSUMED_WITHOUT_HEADER)) {
            return Err(GatewayError::BatchNotAllowed);
        }
        Ok(false)
    }

    /// Sends the JSON-RPC error of a request refused inside the session on the event stream,
    /// where the client waits for its answer.
    async fn answer_in_band(&self, err: &GatewayError, id: Option<&Id>, within: Duration) {
        super::log_error(err);
        let Some(tx) = self.direct.upgrade() else { return };
        let body = err.to_rpc(id);
        let _ = tokio::time::timeout(within, tx.send(Box::new(Frame::Message(body)))).await;
    }
}

/// Serves one request on a legacy path (Origin and Host already checked).
pub async fn handle(app: Arc<App>, endpoint: Endpoint, req: Request<Incoming>, cx: Context) -> Response<Body> {
    let result = match (&endpoint.role, req.method()) {
        (Role::Events { messages_path }, &Method::GET) => open(&app, &endpoint.route, messages_path, req, cx).await,
        (Role::Messages, &Method::POST) => post(&app, &endpoint.route, req, &cx.caller).await,
        (Role::Events { .. }, _) => Err(GatewayError::MethodNotAllowed("GET")),
        (Role::Messages, _) => Err(GatewayError::MethodNotAllowed("POST")),
    };
    result.unwrap_or_else(|e| error_reply(&e, None))
}

/// `GET sse_path`: starts a session, attaches this stream as its reader and answers the stream,
/// `endpoint` event first.
async fn open(
    app: &Arc<App>,
    route: &str,
    messages_path: &str,
    req: Request<Incoming>,
    cx: Context,
) -> Result<Response<Body>, GatewayError> {
    if !accepts(req.headers(), &["text/event-stream"]) {
        return Err(GatewayError::NotAcceptable("Accept must list text/event-stream"));
    }
    let Some(backend) = app.served().routes.get(route).map(|r| r.backend.clone()) else {
        return Err(GatewayError::NoRoute);
    };
    let session = app.registry.start(route, &backend, Transport::LegacySse, &cx.caller).await.map_err(|e| match e {
        GatewayError::BackendUnavailable(why) => GatewayError::BackendStartFailed(why),
        other => other,
    })?;
    let (tx, frames) = mpsc::channel(app.served().config.legacy_sse.send_queue);
    let attach = Attach::Connection { after: None, preface: None };
    let stream = match session.open(attach, Sink::new(tx, Delivery::Backpressure)) {
        Ok(opened) => opened.stream,
        Err(e) => {
            session.end(EndReason::InitializeFailed);
            return Err(e);
        }
    };
    // One frame between the pump and the body: the pump waits exactly as long as the client.
    let (out, body_rx) = mpsc::channel(1);
    let id = session.id().to_owned();
    let conn = Arc::new(EventStream {
        route: route.to_owned(),
        session,
        stream,
        direct: out.downgrade(),
        state: Mutex::default(),
    });
    app.legacy.0.insert(id.clone(), conn.clone());
    tokio::spawn(Pump { app: app.clone(), conn, cut: cx.conn.cut }.run(frames, out));
    tracing::debug!(session.id = %id, "A legacy SSE stream opened.");
    let endpoint = format!("event: endpoint\ndata: {messages_path}?sessionId={}\n\n", encode(&id));
    let opts = StreamOptions { keepalive: app.served().config.sessions.sse_keepalive, close_after: None };
    let meter = sse::Meter::new(&app.metrics, route, "legacy");
    Ok(sse_response(sse::body(vec![endpoint.into()], Some(body_rx), opts, meter)))
}

/// `POST messages_path?sessionId=ID`: hands the messages to the session; 202.
async fn post(
    app: &Arc<App>,
    route: &str,
    req: Request<Incoming>,
    caller: &Caller,
) -> Result<Response<Body>, GatewayError> {
    let id = session_param(req.uri().query().unwrap_or("")).ok_or(GatewayError::MissingSessionParam)?;
    let conn = find(app, &id, route, caller)?;
    if !is_json(req.headers()) {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let body = parse_body(&read_body(app, headers, body, None).await?)?;
    let batch = matches!(body, RpcBody::Batch(_));
    let msgs = super::streamable_http::with_trace_context(headers, body.into_messages());
    if let Err(e) = super::admit(app, caller, &msgs) {
        app.metrics.count_refusal(&e);
        let within = app.served().config.legacy_sse.stall_timeout;
        for id in msgs.iter().filter(|m| m.is_request()).filter_map(|m| m.id.as_ref()) {
            conn.answer_in_band(&e, Some(id), within).await;
        }
        return Ok(status_only(StatusCode::ACCEPTED));
    }
    let initialize = conn.admit(&msgs, batch)?;
    let first_request = msgs.iter().find(|m| m.is_request()).and_then(|m| m.id.clone());
    if let Err(e) = conn.session.submit(&msgs, Target::Stream(conn.stream)) {
        if initialize {
            conn.state().initializing = None;
        }
        if e.status() != StatusCode::OK {
            return Err(e);
        }
        conn.answer_in_band(&e, first_request.as_ref(), app.served().config.legacy_sse.stall_timeout).await;
        return Ok(status_only(StatusCode::ACCEPTED));
    }
    // A backend that stopped reading: its session answers the requests with errors, on the
    // stream, once their timeout passes.
    let _ = tokio::time::timeout(app.served().config.sessions.request_timeout, conn.session.forward(&msgs)).await;
    Ok(status_only(StatusCode::ACCEPTED))
}

/// The session a POST names: `sessionId` (TypeScript SDK) or `session_id` (Python SDK).
pub fn session_param(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "sessionId" || *k == "session_id")
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

/// The open event stream of session `id` on `route` (of the caller's own), or the 404 that
/// says why there is none.
fn find(app: &App, id: &str, route: &str, caller: &Caller) -> Result<Arc<EventStream>, GatewayError> {
    let open = app.legacy.0.get(id).map(|c| c.clone());
    if let Some(conn) = open.filter(|c| c.route == route && c.session.caller().name() == caller.name()) {
        return Ok(conn);
    }
    // Not (or no longer) carried by an event stream: 404, saying why when the session ended
    // recently. A live session of another transport or principal is unknown here too.
    app.registry.lookup(id, route, caller).and(Err(GatewayError::UnknownSession))
}

/// Percent-encodes a session id for a query value (ids are visible ASCII).
pub fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How an event stream ended.
enum Ending {
    /// The client closed the stream: the session ends with it.
    ClientGone,
    /// The client took nothing for `legacy_sse.stall_timeout`: cut off, the session ends.
    Stalled,
    /// The session let go of the stream (it ended, or another connection took it over).
    Released,
}

/// Moves a session's messages into the response body, one at a time.
struct Pump {
    app: Arc<App>,
    conn: Arc<EventStream>,
    /// Closes the stream's connection, the one way to stop a client that stopped reading.
    cut: ConnectionCut,
}

impl Pump {
    async fn run(self, mut frames: mpsc::Receiver<Box<Frame>>, out: mpsc::Sender<Box<Frame>>) {
        let stall = self.app.served().config.legacy_sse.stall_timeout;
        let ending = loop {
            // Cancel-safe: a channel receive and the body's closing; neither loses a frame.
            let frame = tokio::select! {
                f = frames.recv() => f.map(|f| *f),
                _ = out.closed() => break Ending::ClientGone,
            };
            let data = match frame {
                Some(Frame::Event { data, .. }) => self.outgoing(data),
                Some(Frame::Message(data) | Frame::Ended { data, .. }) => data,
                Some(Frame::End) => continue,
                Some(Frame::Closed(_) | Frame::Replaced | Frame::Stop(_)) | None => break Ending::Released,
            };
            match tokio::time::timeout(stall, out.send(Box::new(Frame::Message(data)))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Ending::ClientGone,
                Err(_) => break Ending::Stalled,
            }
        };
        self.finish(ending);
    }

    /// A session message as the client gets it. The answer to a pending `initialize`
    /// publishes the session, or, when it is not an `InitializeResult`, ends it.
    fn outgoing(&self, data: Bytes) -> Bytes {
        let mut st = self.conn.state();
        let Some(init) = st.initializing.clone() else { return data };
        let answers = Message::parse(&data).is_ok_and(|m| m.is_response() && m.id.as_ref() == Some(&init));
        if !answers {
            return data;
        }
        st.initializing = None;
        let session = &self.conn.session;
        match protocol::initialize_result(&data) {
            Some((version, result)) => {
                self.app.registry.publish(session, &version, result);
                st.published = true;
                tracing::info!(session.id = session.id(), protocol.version = %version, "A legacy SSE session started.");
            }
            None => session.end(EndReason::InitializeFailed),
        }
        data
    }

    fn finish(&self, ending: Ending) {
        let session = &self.conn.session;
        self.app.legacy.0.remove_if(session.id(), |_, c| Arc::ptr_eq(c, &self.conn));
        match ending {
            Ending::ClientGone => {
                tracing::info!(
                    session.id = session.id(),
                    "The client closed its legacy SSE stream; ending its session."
                );
                session.end(EndReason::ClientClosed);
            }
            Ending::Stalled => {
                tracing::info!(session.id = session.id(), "A legacy SSE client stopped reading; cutting it off.");
                session.end(EndReason::Stalled);
                self.cut.cut();
            }
            Ending::Released => tracing::debug!(session.id = session.id(), "A legacy SSE stream ended."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_encoding() {
        assert_eq!(session_param("sessionId=a.1").as_deref(), Some("a.1"));
        assert_eq!(session_param("x=1&session_id=b%2B.2").as_deref(), Some("b+.2"));
        assert_eq!(session_param("sessionId="), None);
        assert_eq!(session_param("other=1"), None);
        assert_eq!(encode("edge-1.ab"), "edge-1.ab");
        assert_eq!(encode("a&b#c+d.e"), "a%26b%23c%2Bd.e");
        assert_eq!(session_param(&format!("sessionId={}", encode("a&b#c+d.e"))).as_deref(), Some("a&b#c+d.e"));
    }
}
