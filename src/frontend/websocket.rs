//! WebSocket on the route path: one JSON-RPC message per text frame, subprotocol `mcp`.
//!
//! A custom transport, outside the MCP specification; `docs/websocket.md` specifies it. Owns
//! the handshake, framing, close codes, pings, and the two ways a client names its session:
//! the upgrade URL (`?session=ID&lastEventId=…`) and an `initialize` carrying `mcpSessionId`
//! (or the `_meta` key [`SESSION_KEY`]). Below this module a connection is just a reader of
//! the session's standalone stream, with [`Delivery::Backpressure`]: a slow client pauses its
//! own session's backend, never anyone else's.
//!
//! Each connection runs two tasks: the reader (client → session; it may wait on the backend's
//! stdin queue) and the writer (session → client, pings, close). They share one outbound queue:
//! the session's frames and the reader's own answers. The writer never waits on the reader, so
//! a full stdin queue cannot deadlock against a full outbound queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{App, Body};
use crate::auth::Caller;
use crate::backend::{self, Backend, Call};
use crate::error::GatewayError;
use crate::jsonrpc::{rewrite, Body as RpcBody, Id, Message, ParseError};
use crate::metrics::{close_class, Live};
use crate::protocol;
use crate::rt::Inline;
use crate::session::{Attach, Delivery, EndReason, EventId, Frame, SessionHandle, Sink, Target, Transport};

/// `_meta` key of the InitializeResult that tells a WebSocket client its session id; a client
/// that sends it (in `initialize` or later) opts in to event ids.
pub const SESSION_KEY: &str = "mcp-edge/sessionId";
/// `_meta` key carrying the event id of each server→client message of an opted-in client.
pub const EVENT_KEY: &str = "mcp-edge/eventId";
/// `_meta` key of a resuming `initialize`: the last event id the client saw.
pub const LAST_EVENT_KEY: &str = "mcp-edge/lastEventId";
/// The SEP draft's top-level session field.
const SEP_SESSION_FIELD: &str = "mcpSessionId";
const SUBPROTOCOL: &str = "mcp";
type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Whether a request asks to upgrade to WebSocket (only HTTP/1.1 can: hyper upgrades nothing
/// else).
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req.version() == http::Version::HTTP_11
        && has_token(req.headers(), http::header::UPGRADE, "websocket")
        && has_token(req.headers(), http::header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks the handshake, resolves a session named in the URL, answers 101 and starts the
/// connection once hyper hands over the socket. Every refusal happens before the upgrade.
pub async fn accept(
    app: Arc<App>,
    route: String,
    backend: Backend,
    mut req: Request<Incoming>,
    cx: super::Context,
) -> Result<Response<Body>, GatewayError> {
    let headers = req.headers();
    if headers.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        // RFC 6455 §4.4: the refusal names the version the gateway speaks.
        let err = GatewayError::InvalidMessage("Sec-WebSocket-Version must be 13".into());
        let mut refusal = super::error_reply(&err, None);
        refusal.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Ok(refusal);
    }
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_key(key.as_bytes()) => key,
        (None, _) => return Err(GatewayError::InvalidMessage("Sec-WebSocket-Key is missing".into())),
        _ => return Err(GatewayError::InvalidMessage("Sec-WebSocket-Key must be one 16-byte value in base64".into())),
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let speaks_mcp = offered.iter().any(|p| p == SUBPROTOCOL);
    if !offered.is_empty() && !speaks_mcp {
        return Err(GatewayError::SubprotocolRequired);
    }
    // A `mcp.auth.<token>` offer was checked with the upgrade request (never echoed, never
    // logged); the connection keeps only who it names.
    let caller = cx.caller;

    let (frames_tx, frames_rx) = mpsc::channel(app.served().config.websocket.send_queue);
    let mut conn =
        Connection { app: app.clone(), route, backend, frames_tx, bound: None, shared: Arc::default(), caller };
    let query = Query::parse(req.uri().query().unwrap_or(""));
    if let Some(id) = query.session {
        let session = app.registry.lookup(&id, &conn.route, &conn.caller)?;
        conn.attach(session, query.last_event_id, None).await?;
        conn.shared().resumable = true;
    }

    let upgrade = hyper::upgrade::on(&mut req);
    let config = socket_config(&app);
    // The connection's place among server.max_connections, kept while the WebSocket lives.
    let place = cx.conn.place;
    // Inline: the exchanges with an HTTP upstream that this task drives answer into it.
    app.upgraded.spawn(Inline::new(async move {
        let _place = place;
        match upgrade.await {
            Ok(io) => {
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                // Split here: a socket passed whole would keep its room in the task for good.
                let (sink, stream) = socket.split();
                conn.run(sink, stream, frames_rx).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "A WebSocket upgrade did not complete.");
                conn.finish(Ending::Dropped);
            }
        }
    }));

    let mut resp = Response::new(super::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", HeaderValue::from_str(&accept_key).expect("base64 is a valid header"));
    if speaks_mcp {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    Ok(resp)
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455 §4.1): 22 base64 digits and
/// `==`.
fn is_key(key: &[u8]) -> bool {
    let digit = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(digit) && key.ends_with(b"==")
}

/// Buffers sized on purpose: a small eager read buffer (idle connections are the common
/// case), no write batching, inbound messages and frames capped.
fn socket_config(app: &App) -> WebSocketConfig {
    let ws = &app.served().config.websocket;
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_message_bytes))
}

/// `?session=…&lastEventId=…` of the upgrade URL.
#[derive(Default)]
pub struct Query {
    pub session: Option<String>,
    pub last_event_id: Option<String>,
}

impl Query {
    pub fn parse(query: &str) -> Query {
        let mut q = Query::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "session" => q.session = Some(percent_decode(v)),
                "lastEventId" => q.last_event_id = Some(percent_decode(v)),
                _ => {}
            }
        }
        q
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a connection ended, seen from the client's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client sent a close frame: it is done with the session.
    ClientClosed,
    /// The connection broke, or the gateway closed it for a fault the client may recover
    /// from: the session waits `resume_grace` for a reconnect.
    Dropped,
}

/// State the reader and writer share (held briefly, never across an await).
#[derive(Default)]
struct Shared {
    /// The `initialize` whose answer publishes the session.
    initializing: Option<(Id, SessionHandle)>,
    /// That `initialize` failed: the reader lets go of the session.
    failed: bool,
    /// The client opted in to event ids.
    resumable: bool,
    /// The client uses the SEP's top-level `mcpSessionId`: answer in kind.
    top_level: bool,
    /// The gateway let go of the session (it ended, or a newer connection took it over):
    /// closing this connection must not touch the session.
    released: bool,
    /// The connection carries a session (which closes it with 1001 on shutdown, after the
    /// errors of its pending requests).
    bound: bool,
}

struct Connection {
    app: Arc<App>,
    route: String,
    backend: Backend,
    /// The sending half of this connection's one outbound queue: handed to the session as a
    /// sink, and used by the reader for its own answers ([`Frame::Message`]) and to stop the
    /// writer ([`Frame::Stop`]).
    frames_tx: mpsc::Sender<Box<Frame>>,
    /// The session this connection carries, and its stream.
    bound: Option<(SessionHandle, u64)>,
    shared: Arc<Mutex<Shared>>,
    /// Who opened the connection: its sessions are bound to that principal.
    caller: Caller,
}

impl Connection {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sink(&self) -> Sink {
        Sink::new(self.frames_tx.clone(), Delivery::Backpressure)
    }

    async fn attach(
        &mut self,
        session: SessionHandle,
        after: Option<String>,
        preface: Option<Bytes>,
    ) -> Result<(), GatewayError> {
        let opened = session.open(Attach::Connection { after, preface }, self.sink())?;
        tracing::info!(session.id = session.id(), "A WebSocket connection resumed its session.");
        self.bound = Some((session, opened.stream));
        self.shared().bound = true;
        Ok(())
    }

    async fn run(
        mut self,
        sink: SplitSink<Socket, WsMessage>,
        stream: SplitStream<Socket>,
        frames: mpsc::Receiver<Box<Frame>>,
    ) {
        let done = CancellationToken::new();
        let clock = Clock::new();
        let writer =
            Writer { app: self.app.clone(), shared: self.shared.clone(), clock: clock.clone(), done: done.clone() };
        // Both halves in this one task: an answer is written by the task that drove its
        // exchange with an HTTP upstream, with no hand-off to a task of its own.
        let mut writer = std::pin::pin!(writer.run(sink, frames));
        let m = self.app.metrics.clone();
        m.websocket_opened.with_label_values(&[&self.route]).inc();
        let live = Live::new(m.websocket_connections.with_label_values(&[&self.route]));
        let out = self.frames_tx.clone();
        // The writer's close code, once it ended (it cancels `done`, which ends the reader).
        let mut written = None;
        let (ending, fault) = {
            let read = self.read(stream, &out, &clock, &done);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    r = &mut read => break r,
                    code = &mut writer, if written.is_none() => written = Some(code),
                }
            }
        };
        let sent = match written {
            Some(code) => code,
            // The writer sends what is queued before the stop (the close frame for a fault),
            // and then stops.
            None => {
                let stop = async {
                    let _ = out.send(Box::new(Frame::Stop(fault))).await;
                    writer.await
                };
                tokio::time::timeout(Duration::from_secs(2), stop).await.ok().flatten()
            }
        };
        done.cancel();
        let class = match (sent, &ending) {
            (Some(code), _) => close_class(Some(code)),
            (None, Ending::ClientClosed) => "client_closed",
            (None, Ending::Dropped) => close_class(None),
        };
        m.websocket_closed.with_label_values(&[&self.route, class]).inc();
        drop(live);
        self.finish(ending);
    }

    /// Tells the session how its connection ended (unless the gateway let go of it first).
    fn finish(&self, ending: Ending) {
        let (initializing, released) = {
            let sh = self.shared();
            (sh.initializing.clone(), sh.released)
        };
        if let Some((_, session)) = initializing {
            session.end(EndReason::InitializeFailed);
            return;
        }
        let Some((session, stream)) = &self.bound else { return };
        if released {
            return;
        }
        match ending {
            Ending::ClientClosed => session.end(EndReason::ClientClosed),
            Ending::Dropped => session.away(*stream),
        }
    }

    async fn read(
        &mut self,
        mut stream: SplitStream<Socket>,
        out: &mpsc::Sender<Box<Frame>>,
        clock: &Clock,
        done: &CancellationToken,
    ) -> (Ending, Option<Box<GatewayError>>) {
        let fault = |err: GatewayError| (Ending::Dropped, Some(Box::new(err)));
        // The exchanges with an HTTP upstream that started at once, driven here between
        // messages rather than each in a task of its own; those left when the connection ends
        // go on by themselves.
        let mut calls = Vec::new();
        loop {
            // Cancel-safe: `next` on a WebSocket stream keeps partial frames in its buffer, and
            // the calls stay in `calls`.
            let next = tokio::select! {
                m = stream.next() => m,
                _ = done.cancelled() => return (Ending::Dropped, None),
                () = backend::drive(&mut calls), if !calls.is_empty() => continue,
            };
            clock.touch();
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    self.app.metrics.websocket_bytes.received.inc_by(text.len() as u64);
                    // Boxed: an idle connection's task keeps no room for a message's handling.
                    Box::pin(self.on_text(Bytes::from(text), out, &mut calls)).await
                }
                Some(Ok(WsMessage::Binary(_))) => return fault(GatewayError::BinaryFrame),
                Some(Ok(WsMessage::Close(_))) => return (Ending::ClientClosed, None),
                Some(Ok(_)) => {} // Pings are answered by the library; pongs only prove life.
                Some(Err(WsError::Capacity(_))) => {
                    let limit = self.app.served().config.websocket.max_message_bytes;
                    return fault(GatewayError::MessageTooLarge(limit));
                }
                // The library refuses such frames but leaves failing the connection to us.
                Some(Err(WsError::Protocol(e))) if !matches!(e, ProtocolError::ResetWithoutClosingHandshake) => {
                    return fault(GatewayError::FrameViolation(e.to_string()));
                }
                Some(Err(WsError::Utf8(_))) => return fault(GatewayError::InvalidUtf8),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "A WebSocket connection broke.");
                    return (Ending::Dropped, None);
                }
                None => return (Ending::Dropped, None),
            }
        }
    }

    /// One client message; the exchanges it started are put in `calls` for the caller to drive.
    async fn on_text(&mut self, bytes: Bytes, out: &mpsc::Sender<Box<Frame>>, calls: &mut Vec<Call>) {
        let reply = |body: Bytes| async move {
            let _ = out.send(Box::new(Frame::Message(body))).await;
        };
        if std::mem::take(&mut self.shared().failed) {
            self.bound = None;
            self.shared().bound = false;
        }
        let body = match RpcBody::parse(&bytes) {
            Ok(b) => b,
            Err(e) => {
                let err = match e {
                    ParseError::Json(_) => GatewayError::BadJson(e.to_string()),
                    ParseError::Invalid(why) => GatewayError::InvalidMessage(why.into()),
                };
                return reply(err.to_rpc(None)).await;
            }
        };
        let batch = matches!(body, RpcBody::Batch(_));
        let mut msgs = body.into_messages();
        let mut named = Named::default();
        for m in msgs.iter_mut() {
            if let Some(stripped) = named.take_from(m) {
                *m = stripped;
            }
        }
        if named.opted_in {
            let mut sh = self.shared();
            sh.resumable = true;
            sh.top_level |= named.top_level;
        }
        let first = &msgs[0];
        let first_request = msgs.iter().find(|m| m.is_request()).and_then(|m| m.id.clone());
        let metrics = self.app.metrics.clone();
        let metrics = &metrics;
        let refuse = |err: GatewayError, id: Option<Id>| async move {
            metrics.count_refusal(&err);
            let _ = out.send(Box::new(Frame::Message(err.to_rpc(id.as_ref())))).await;
        };
        if let Err(e) = super::admit(&self.app, &self.caller, &msgs) {
            // Every request gets its error, so a batch is not left waiting.
            for id in msgs.iter().filter(|m| m.is_request()).filter_map(|m| m.id.clone()) {
                refuse(e.clone(), Some(id)).await;
            }
            return;
        }

        if first.method() == Some("initialize") {
            let id = first.id.clone();
            let result = match (&id, batch, &self.bound) {
                (None, _, _) => Err(GatewayError::InvalidMessage("initialize must be a request".into())),
                (_, true, _) => Err(GatewayError::BatchNotAllowed),
                (_, _, Some(_)) => Err(GatewayError::InvalidMessage("this connection is already initialized".into())),
                // Boxed: once per connection, and an idle connection's task would otherwise keep
                // room for these futures (the backend's connect among them).
                (Some(id), false, None) => match named.session {
                    Some(sid) => Box::pin(self.resume(sid, named.last_event_id, id.clone())).await,
                    None => Box::pin(self.initialize(first.clone(), id.clone())).await,
                },
            };
            if let Err(e) = result {
                refuse(e, id).await;
            }
            return;
        }
        let Some((session, stream)) = self.bound.clone() else {
            if first_request.is_some() {
                refuse(GatewayError::InvalidMessage("send initialize first".into()), first_request).await;
            }
            return;
        };
        if batch && !protocol::allows_batch(session.version().unwrap_or(protocol::ASSUMED_WITHOUT_HEADER)) {
            return refuse(GatewayError::BatchNotAllowed, first_request).await;
        }
        match session.submit(&msgs, Target::Stream(stream)) {
            Ok(_) => calls.extend(session.forward_driven(&msgs).await.unwrap_or_default()),
            Err(e) => refuse(e, first_request).await,
        }
    }

    /// A new session: start it, read its stream, relay `initialize`. The writer publishes the
    /// session when the InitializeResult passes through.
    async fn initialize(&mut self, msg: Message, id: Id) -> Result<(), GatewayError> {
        let session = self.app.registry.start(&self.route, &self.backend, Transport::WebSocket, &self.caller).await?;
        let stream = match session.open(Attach::Connection { after: None, preface: None }, self.sink()) {
            Ok(o) => o.stream,
            Err(e) => {
                session.end(EndReason::InitializeFailed);
                return Err(e);
            }
        };
        {
            let mut sh = self.shared();
            sh.initializing = Some((id, session.clone()));
            sh.bound = true;
        }
        self.bound = Some((session.clone(), stream));
        if let Err(e) = session.submit(std::slice::from_ref(&msg), Target::Stream(stream)) {
            {
                let mut sh = self.shared();
                sh.initializing = None;
                sh.bound = false;
            }
            self.bound = None;
            session.end(EndReason::InitializeFailed);
            return Err(e);
        }
        let _ = session.forward(std::slice::from_ref(&msg)).await;
        Ok(())
    }

    /// An `initialize` naming a live session: answer it from the stored InitializeResult,
    /// then replay what the client missed, then go on live. The backend sees none of it.
    async fn resume(&mut self, sid: String, last_event_id: Option<String>, id: Id) -> Result<(), GatewayError> {
        let session = self.app.registry.lookup(&sid, &self.route, &self.caller)?;
        let result = session.initialize_result().cloned().ok_or(GatewayError::UnknownSession)?;
        let top_level = self.shared().top_level;
        let answer = initialize_answer(&id, &result, session.id(), top_level);
        self.shared().resumable = true;
        self.attach(session, last_event_id, Some(answer)).await
    }
}

/// The gateway-only fields a client message may carry, taken out before the message goes on.
#[derive(Default)]
pub struct Named {
    /// A session named for resumption.
    pub session: Option<String>,
    pub last_event_id: Option<String>,
    pub opted_in: bool,
    pub top_level: bool,
}

impl Named {
    /// Strips `mcpSessionId` and the `mcp-edge/` `_meta` keys; returns the rewritten message
    /// when there was anything to strip.
    pub fn take_from(&mut self, m: &Message) -> Option<Message> {
        let raw = &m.raw[..];
        let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        if !has(SEP_SESSION_FIELD.as_bytes()) && !has(b"mcp-edge/") {
            return None;
        }
        let mut v: Value = serde_json::from_slice(raw).ok()?;
        let obj = v.as_object_mut()?;
        let mut touched = false;
        if let Some(sid) = obj.remove(SEP_SESSION_FIELD) {
            touched = true;
            self.opted_in = true;
            self.top_level = true;
            self.session = self.session.take().or_else(|| sid.as_str().map(str::to_owned));
        }
        if let Some(meta) = obj.get_mut("params").and_then(|p| p.get_mut("_meta")).and_then(Value::as_object_mut) {
            if let Some(sid) = meta.remove(SESSION_KEY) {
                touched = true;
                self.opted_in = true;
                self.session = self.session.take().or_else(|| sid.as_str().map(str::to_owned));
            }
            if let Some(last) = meta.remove(LAST_EVENT_KEY) {
                touched = true;
                self.last_event_id = last.as_str().map(str::to_owned);
            }
            if meta.is_empty() {
                if let Some(params) = obj.get_mut("params").and_then(Value::as_object_mut) {
                    params.remove("_meta");
                }
            }
        }
        if !touched {
            return None;
        }
        Message::parse(&Bytes::from(v.to_string())).ok()
    }
}

/// `{"jsonrpc":"2.0","id":…,"result":{"_meta":{"mcp-edge/sessionId":…},…}}`, with the SEP's
/// top-level `mcpSessionId` too for clients that use it. The rest of the result keeps its text.
fn initialize_answer(id: &Id, result: &Bytes, session_id: &str, top_level: bool) -> Bytes {
    let sid = serde_json::to_string(session_id).expect("a string encodes");
    let result = std::str::from_utf8(result)
        .ok()
        .and_then(|r| rewrite::with_meta(r, SESSION_KEY, &sid))
        .unwrap_or_else(|| format!(r#"{{"_meta":{{{}:{sid}}}}}"#, Value::from(SESSION_KEY)));
    let id = id.as_json();
    let mut answer = String::with_capacity(result.len() + id.len() + 2 * sid.len() + 64);
    for piece in [r#"{"jsonrpc":"2.0","id":"#, id, r#","result":"#, &result] {
        answer.push_str(piece);
    }
    if top_level {
        for piece in [",\"", SEP_SESSION_FIELD, "\":", &sid] {
            answer.push_str(piece);
        }
    }
    answer.push('}');
    Bytes::from(answer)
}

/// Milliseconds since the connection started at the last sign of life from the client.
#[derive(Clone)]
struct Clock {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Clock {
    fn new() -> Clock {
        Clock { start: Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

struct Writer {
    app: Arc<App>,
    shared: Arc<Mutex<Shared>>,
    clock: Clock,
    done: CancellationToken,
}

impl Writer {
    /// Writes until the connection ends; the close code it sent, if any.
    async fn run(self, mut sink: SplitSink<Socket, WsMessage>, mut frames: mpsc::Receiver<Box<Frame>>) -> Option<u16> {
        let ws = &self.app.served().config.websocket;
        let shutdown = self.app.registry.shutdown_signal();
        let mut ping = interval_at(Instant::now() + ws.ping_interval, ws.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let close: Option<(u16, String)> = loop {
            // Cancel-safe: a channel receive, an interval tick and tokens.
            let out = tokio::select! {
                f = frames.recv() => match f.map(|f| *f) {
                    Some(Frame::Event { id, data, .. }) => text(self.outgoing(id, data)),
                    Some(Frame::Message(data) | Frame::Ended { data, .. }) => text(data),
                    Some(Frame::End) => continue,
                    Some(Frame::Closed(reason)) => {
                        self.release();
                        break Some((reason.close_code(), format!("session ended: {}", reason.describe())));
                    }
                    Some(Frame::Replaced) => {
                        self.release();
                        break Some((1000, "replaced by a newer connection of this session".into()));
                    }
                    Some(Frame::Stop(fault)) => break fault.map(|err| (err.ws_close().unwrap_or(1011), err.to_string())),
                    None => break None,
                },
                _ = ping.tick() => {
                    if self.clock.silent_for() > ws.ping_interval + ws.pong_timeout {
                        tracing::debug!("A WebSocket client stopped answering pings; dropping it.");
                        break None;
                    }
                    WsMessage::Ping(Bytes::new())
                }
                _ = self.done.cancelled() => break None,
                // A connection with a session hears of shutdown from it (after its pending
                // requests' errors); one without a session closes here.
                _ = shutdown.cancelled(), if !self.is_bound() => {
                    break Some((1001, "the gateway is shutting down".into()));
                }
            };
            if let WsMessage::Text(t) = &out {
                self.app.metrics.websocket_bytes.sent.inc_by(t.len() as u64);
            }
            match tokio::time::timeout(ws.stall_timeout, sink.send(out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break None,
                Err(_) => {
                    let err = GatewayError::SlowReader;
                    tracing::info!(error = err.name(), "{err}");
                    break Some((err.ws_close().unwrap_or(1008), err.to_string()));
                }
            }
        };
        if let Some((code, reason)) = &close {
            let frame = CloseFrame { code: (*code).into(), reason: truncate(reason, 123).into() };
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(WsMessage::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        self.done.cancel();
        close.map(|(code, _)| code)
    }

    fn is_bound(&self) -> bool {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).bound
    }

    fn release(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).released = true;
    }

    /// A session event as the client gets it: the answer to a pending `initialize` publishes
    /// the session and tells the client its id; opted-in clients get event ids.
    fn outgoing(&self, id: EventId, data: Bytes) -> Bytes {
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut data = data;
        if let Some((init_id, session)) = sh.initializing.clone() {
            let answers_init =
                Message::parse(&data).ok().is_some_and(|m| m.is_response() && m.id.as_ref() == Some(&init_id));
            if answers_init {
                sh.initializing = None;
                match protocol::initialize_result(&data) {
                    Some((version, result)) => {
                        self.app.registry.publish(&session, &version, result.clone());
                        tracing::info!(session.id = session.id(), protocol.version = %version, "A WebSocket session started.");
                        data = initialize_answer(&init_id, &result, session.id(), sh.top_level);
                    }
                    None => {
                        session.end(EndReason::InitializeFailed);
                        sh.failed = true;
                    }
                }
            }
        }
        if sh.resumable {
            data = with_event_id(data, id);
        }
        data
    }
}

/// Adds the event id to `params._meta` of requests and notifications and to `result._meta`
/// of results; error responses cannot carry `_meta` and pass unchanged.
fn with_event_id(data: Bytes, id: EventId) -> Bytes {
    let id = Value::from(id.to_string()).to_string();
    let text = std::str::from_utf8(&data).ok();
    match text.and_then(|t| rewrite::with_message_meta(t, EVENT_KEY, &id)) {
        Some(out) => Bytes::from(out),
        None => data,
    }
}

fn text(b: Bytes) -> WsMessage {
    match String::from_utf8(b.to_vec()) {
        Ok(s) => WsMessage::Text(s.into()),
        Err(e) => WsMessage::Text(String::from_utf8_lossy(e.as_bytes()).into_owned().into()),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_gateway_fields() {
        let m = Message::parse(&Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","mcpSessionId":"s.1","params":{"_meta":{"mcp-edge/lastEventId":"1-4"},"x":1}}"#,
        ))
        .unwrap();
        let mut named = Named::default();
        let stripped = named.take_from(&m).unwrap();
        assert_eq!(named.session.as_deref(), Some("s.1"));
        assert_eq!(named.last_event_id.as_deref(), Some("1-4"));
        assert!(named.top_level && named.opted_in);
        let v: Value = serde_json::from_slice(&stripped.raw).unwrap();
        assert_eq!(v, serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":1}}));
        let plain = Message::parse(&Bytes::from_static(br#"{"jsonrpc":"2.0","method":"x"}"#)).unwrap();
        assert!(Named::default().take_from(&plain).is_none());
    }

    #[test]
    fn event_ids_go_where_meta_may_stand() {
        let id = EventId { stream: 1, seq: 5 };
        let n: Value =
            serde_json::from_slice(&with_event_id(Bytes::from_static(br#"{"jsonrpc":"2.0","method":"m"}"#), id))
                .unwrap();
        assert_eq!(n["params"]["_meta"][EVENT_KEY], "1-5");
        let r: Value =
            serde_json::from_slice(&with_event_id(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), id))
                .unwrap();
        assert_eq!(r["result"]["_meta"][EVENT_KEY], "1-5");
        let e = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}"#);
        assert_eq!(with_event_id(e.clone(), id), e);
    }

    #[test]
    fn handshake_keys() {
        assert!(is_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_key(b"AAAAAAAAAAA="));
        assert!(!is_key(b"not base64 at all!!!!!!!"));
        assert!(!is_key(b"dGhlIHNhbXBsZSBub25jZQ\x00="));
    }

    #[test]
    fn query_and_decoding() {
        let q = Query::parse("session=edge%2D1.ab&lastEventId=1-2&x=y");
        assert_eq!(q.session.as_deref(), Some("edge-1.ab"));
        assert_eq!(q.last_event_id.as_deref(), Some("1-2"));
    }
}
