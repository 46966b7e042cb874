//! Streamable HTTP upstream: the gateway is the MCP client of a remote server, one upstream
//! session per gateway session.
//!
//! A [`Link`] owns that upstream session: its `Mcp-Session-Id`, the negotiated version, the
//! client's original `initialize` and the state the client set (log level, subscriptions), so
//! that when the upstream forgets the session (404, or a 400 that says so) the link
//! re-initializes it, restores that state and retries the request once — the client sees
//! nothing. Requests are POSTed concurrently; notifications and responses in order. JSON and
//! SSE answers are both followed; a broken SSE answer is resumed with `Last-Event-ID`. The
//! upstream's GET stream carries its server-initiated messages. Must not know about the
//! gateway's sessions or frontends: it only speaks [`Event`]s.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event_stream::Decoder;
use super::upstream::{media_type, read_body, snippet, Upstream, SESSION_HEADER, VERSION_HEADER};
use super::{legacy_sse, Connection, Context, Event, Stopper};
use crate::error::GatewayError;
use crate::jsonrpc::{error_response, Id, Kind, Message};
use crate::retry::{Attempts, Backoff};

/// Events queued towards the session before upstream readers wait (backpressure).
const EVENT_QUEUE: usize = 64;
/// Resume attempts for one broken stream before giving up on it.
const RESUME_ATTEMPTS: u32 = 5;
/// Reconnection delay when the upstream named none.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const ACCEPT_SSE: &str = "text/event-stream";

/// A configured Streamable HTTP upstream.
#[derive(Debug)]
pub struct HttpBackend {
    up: Arc<Upstream>,
}

impl HttpBackend {
    pub fn new(up: Upstream) -> HttpBackend {
        HttpBackend { up: Arc::new(up) }
    }

    pub fn name(&self) -> &str {
        &self.up.name
    }

    pub fn health(&self) -> &super::Health {
        &self.up.health
    }

    /// Opens a link for one gateway session. Nothing is sent until the client's `initialize`.
    pub fn connect(&self, ctx: &Context) -> Connection {
        let (tx, rx) = mpsc::channel(self.up.config.send_queue);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let tasks = TaskTracker::new();
        let span = tracing::info_span!("upstream", backend.name = %self.up.name, session.id = %ctx.session_id);
        let link = Arc::new(Link {
            up: self.up.clone(),
            events: events_tx,
            stop: CancellationToken::new(),
            tasks: tasks.clone(),
            state: Mutex::default(),
            reinit: tokio::sync::Mutex::new(()),
            next_internal: AtomicU64::new(1),
            span,
        });
        tasks.spawn(link.clone().run(rx));
        Connection { tx, events, stopper: Stopper::Upstream(UpstreamStopper { link }) }
    }
}

#[derive(Default)]
struct State {
    /// The upstream's `Mcp-Session-Id`, once it gave one.
    session: Option<HeaderValue>,
    /// Bumped by every re-initialization; old streams and retries compare against it.
    generation: u64,
    version: Option<String>,
    /// The client's `initialize` params, replayed to re-initialize.
    initialize: Option<Box<serde_json::value::RawValue>>,
    /// The params of the client's last `logging/setLevel`.
    log_level: Option<Box<serde_json::value::RawValue>>,
    /// URIs the client subscribed to.
    subscriptions: BTreeSet<String>,
    /// The GET stream of the current generation is running.
    listening: bool,
}

/// How one POST ended.
enum Outcome {
    /// The exchange is over (for a request: its response went to the client).
    Done,
    /// Only for internal requests: the response, kept from the client.
    Answer(Bytes),
    /// The upstream no longer knows the session.
    SessionLost,
    /// The upstream refused `initialize` at the transport level (400/404/405).
    Refused(StatusCode),
    /// The request failed; the client's request gets this error.
    Failed(String),
}

/// Who a POST is for.
#[derive(Clone, Copy)]
enum Purpose<'a> {
    /// The client's own message: everything the upstream answers goes to the client.
    Client(Option<&'a Id>),
    /// The gateway's own request: its response is kept back, the rest goes to the client.
    Internal(&'a Id),
}

impl Purpose<'_> {
    fn id(&self) -> Option<&Id> {
        match self {
            Purpose::Client(id) => *id,
            Purpose::Internal(id) => Some(id),
        }
    }
}

pub(super) struct Link {
    up: Arc<Upstream>,
    events: mpsc::Sender<Event>,
    /// Cancelled when the gateway session ends; every task of the link watches it.
    stop: CancellationToken,
    tasks: TaskTracker,
    state: Mutex<State>,
    /// One re-initialization at a time.
    reinit: tokio::sync::Mutex<()>,
    next_internal: AtomicU64,
    span: tracing::Span,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Bytes>) {
        if self.up.config.sse_fallback {
            // The first message decides the transport, so it is handled before any other.
            let Some(first) = self.recv(&mut rx).await else { return };
            if let Some(init) = Message::parse(&first).ok().filter(|m| m.method() == Some("initialize")) {
                self.observe(&init);
                if let Some(status) = self.call(&init).await {
                    tracing::info!(parent: &self.span, %status, "The upstream refused a Streamable HTTP initialize; trying legacy HTTP+SSE.");
                    let stop = self.stop.clone();
                    legacy_sse::run(self.up.clone(), Some(first), rx, self.events.clone(), stop).await;
                    return;
                }
            }
        }
        while let Some(raw) = self.recv(&mut rx).await {
            let Ok(msg) = Message::parse(&raw) else { continue };
            self.observe(&msg);
            if msg.is_request() {
                let link = self.clone();
                self.tasks.spawn(async move {
                    link.call(&msg).await;
                });
            } else {
                // Inline, so the upstream sees notifications and responses in client order
                // (`notifications/initialized` before the requests that follow it).
                self.deliver(&msg).await;
                if msg.method() == Some("notifications/initialized") {
                    self.listen();
                }
            }
        }
    }

    async fn recv(&self, rx: &mut mpsc::Receiver<Bytes>) -> Option<Bytes> {
        // Cancel-safe: `recv` loses nothing when the stop branch wins.
        tokio::select! {
            m = rx.recv() => m,
            _ = self.stop.cancelled() => None,
        }
    }

    /// Remembers what re-initialization must replay.
    fn observe(&self, msg: &Message) {
        #[derive(serde::Deserialize)]
        struct Params<'a> {
            #[serde(borrow)]
            params: Option<&'a serde_json::value::RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Uri {
            uri: String,
        }
        let method = match msg.method() {
            Some(m @ ("initialize" | "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe")) => m,
            _ => return,
        };
        let Some(params) = serde_json::from_slice::<Params>(&msg.raw).ok().and_then(|p| p.params) else { return };
        let uri = || serde_json::from_str::<Uri>(params.get()).ok().map(|u| u.uri);
        let mut s = self.lock();
        match method {
            "initialize" => s.initialize = Some(params.to_owned()),
            "logging/setLevel" => s.log_level = Some(params.to_owned()),
            "resources/subscribe" => s.subscriptions.extend(uri()),
            _ => {
                if let Some(u) = uri() {
                    s.subscriptions.remove(&u);
                }
            }
        }
    }

    /// POSTs a client request and sees it answered: retried once on a re-initialized session.
    /// Returns the status when an `initialize` was refused at the transport level.
    async fn call(self: &Arc<Self>, msg: &Message) -> Option<StatusCode> {
        let id = msg.id.as_ref().expect("requests have ids");
        let init = msg.method() == Some("initialize");
        let mut retried = false;
        loop {
            let generation = self.generation();
            let outcome = self.exchange(&msg.raw, Purpose::Client(Some(id)), init).await;
            match outcome {
                Outcome::Done | Outcome::Answer(_) => return None,
                Outcome::SessionLost if !retried && !init => {
                    retried = true;
                    if let Err(why) = self.reinitialize(generation).await {
                        self.lost(why).await;
                        return None;
                    }
                }
                Outcome::SessionLost => {
                    self.lost("the upstream forgot the session again right after re-initializing".into()).await;
                    return None;
                }
                Outcome::Refused(status) if self.up.config.sse_fallback => return Some(status),
                Outcome::Refused(status) => {
                    self.reply_error(id, format!("the upstream refused initialize with HTTP {status}")).await;
                    return None;
                }
                Outcome::Failed(why) => {
                    self.reply_error(id, why).await;
                    return None;
                }
            }
        }
    }

    /// POSTs a client notification or response; a lost session is re-initialized first.
    async fn deliver(self: &Arc<Self>, msg: &Message) {
        let generation = self.generation();
        match self.exchange(&msg.raw, Purpose::Client(None), false).await {
            Outcome::SessionLost => match self.reinitialize(generation).await {
                // A response to a request of the forgotten session means nothing to the new
                // one; a notification is worth sending again.
                Ok(()) if msg.kind == Kind::Notification => {
                    let _ = self.exchange(&msg.raw, Purpose::Client(None), false).await;
                }
                Ok(()) => {}
                Err(why) => self.lost(why).await,
            },
            Outcome::Failed(why) => {
                tracing::warn!(parent: &self.span, method = msg.method().unwrap_or("(response)"), "Could not deliver a message upstream: {why}.");
            }
            _ => {}
        }
    }

    /// One POST and everything the upstream answers to it.
    async fn exchange(&self, body: &Bytes, purpose: Purpose<'_>, init: bool) -> Outcome {
        let (session, version) = {
            let s = self.lock();
            if init {
                (None, None)
            } else {
                (s.session.clone(), s.version.clone())
            }
        };
        let build = || {
            let mut req = self.up.request(Method::POST, &self.up.url, ACCEPT_BOTH, Some(body.clone()));
            set_session(&mut req, session.as_ref(), version.as_deref());
            req
        };
        let resp = match self.sending(self.up.send(build)).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Outcome::Failed(e.to_string()),
            None => return Outcome::Done,
        };
        let status = resp.status();
        if !status.is_success() {
            return self.refusal(resp, purpose, session.is_some(), init).await;
        }
        if init {
            if let Some(s) = resp.headers().get(SESSION_HEADER) {
                self.lock().session = Some(s.clone());
            }
        }
        let media = media_type(resp.headers());
        if purpose.id().is_none() {
            // Notifications and responses are acknowledged with 202 and no body.
            return Outcome::Done;
        }
        if status == StatusCode::ACCEPTED {
            return Outcome::Failed("the upstream accepted the request (202) but will not answer it".into());
        }
        match media.as_str() {
            "text/event-stream" => self.read_stream(resp.into_body(), purpose, init, None).await,
            "application/json" => match read_body(resp.into_body(), self.up.config.max_message_bytes).await {
                Ok(body) => self.json_body(&body, purpose, init).await,
                Err(why) => Outcome::Failed(why),
            },
            other => Outcome::Failed(format!("the upstream answered with Content-Type `{other}`")),
        }
    }

    /// A non-2xx answer: the session is gone, `initialize` is refused, or the request failed.
    async fn refusal(&self, resp: http::Response<Incoming>, purpose: Purpose<'_>, had: bool, init: bool) -> Outcome {
        let status = resp.status();
        let body = read_body(resp.into_body(), 64 * 1024).await.unwrap_or_default();
        self.up.metrics.upstream_errors.inc();
        if had && forgot_session(status, &body) {
            return Outcome::SessionLost;
        }
        if init && matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
            return Outcome::Refused(status);
        }
        // A JSON-RPC error for the request itself is the upstream's answer: pass it on.
        if let (Some(id), Ok(m)) = (purpose.id(), Message::parse(&body)) {
            if m.kind == Kind::Error && m.id.as_ref() == Some(id) {
                return self.message(body, purpose, false).await;
            }
        }
        Outcome::Failed(format!("the upstream answered HTTP {status}: {}", snippet(&body)))
    }

    async fn json_body(&self, body: &Bytes, purpose: Purpose<'_>, init: bool) -> Outcome {
        let messages: Vec<Bytes> = match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
            Ok(batch) => batch.iter().map(|m| Bytes::copy_from_slice(m.get().as_bytes())).collect(),
            Err(_) => vec![body.clone()],
        };
        let mut outcome = Outcome::Failed("the upstream's JSON answer holds no response to the request".into());
        for m in messages {
            match self.message(m, purpose, init).await {
                Outcome::Failed(_) => {}
                other => outcome = other,
            }
        }
        outcome
    }

    /// One message from the upstream: the response `purpose` waits for ends the exchange
    /// (kept back when internal), anything else goes to the client.
    async fn message(&self, data: Bytes, purpose: Purpose<'_>, init: bool) -> Outcome {
        let parsed = Message::parse(&data);
        let answers = match (&parsed, purpose.id()) {
            (Ok(m), Some(id)) => matches!(m.kind, Kind::Result | Kind::Error) && m.id.as_ref() == Some(id),
            _ => false,
        };
        if answers && init {
            if let Some((version, _)) = crate::protocol::initialize_result(&data) {
                self.lock().version = Some(version);
            }
        }
        if let (true, Purpose::Internal(_)) = (answers, purpose) {
            return Outcome::Answer(data);
        }
        if parsed.is_err() {
            tracing::warn!(parent: &self.span, "The upstream sent something that is not a JSON-RPC message; dropped it.");
            return Outcome::Failed("not a JSON-RPC message".into());
        }
        self.emit(data).await;
        if answers {
            Outcome::Done
        } else {
            Outcome::Failed("not the response".into())
        }
    }

    /// Reads an SSE answer until the awaited response; a stream that breaks before it is
    /// resumed with `Last-Event-ID` when the upstream gave event ids.
    async fn read_stream(&self, body: Incoming, purpose: Purpose<'_>, init: bool, last: Option<String>) -> Outcome {
        let mut decoder = Decoder::new(self.up.config.max_message_bytes);
        decoder.last_id = last;
        let mut body = Some(body);
        let mut attempts = 0;
        loop {
            if let Some(b) = body.take() {
                match self.pump(b, &mut decoder, purpose, init).await {
                    Ok(Some(outcome)) => return outcome,
                    Ok(None) => {}
                    Err(why) => return Outcome::Failed(why),
                }
            }
            if self.stop.is_cancelled() {
                return Outcome::Done;
            }
            let Some(last) = decoder.last_id.clone() else {
                return Outcome::Failed(
                    "the upstream closed its SSE stream before it answered (no event id to resume from)".into(),
                );
            };
            attempts += 1;
            if attempts > RESUME_ATTEMPTS {
                return Outcome::Failed(format!(
                    "the upstream's SSE stream broke and {RESUME_ATTEMPTS} resumes failed"
                ));
            }
            tokio::time::sleep(decoder.retry.unwrap_or(DEFAULT_RETRY)).await;
            tracing::debug!(parent: &self.span, last_event_id = %last, "Resuming a broken upstream SSE stream.");
            self.up.metrics.upstream_resumes.inc();
            match self.resume(&last).await {
                Ok(b) => body = Some(b),
                Err(Outcome::SessionLost) => return Outcome::SessionLost,
                Err(_) => {}
            }
        }
    }

    /// GET with `Last-Event-ID`: the rest of a broken stream.
    async fn resume(&self, last: &str) -> Result<Incoming, Outcome> {
        let (session, version) = {
            let s = self.lock();
            (s.session.clone(), s.version.clone())
        };
        let build = || {
            let mut req = self.up.request(Method::GET, &self.up.url, ACCEPT_SSE, None);
            set_session(&mut req, session.as_ref(), version.as_deref());
            req.headers_mut().insert("last-event-id", HeaderValue::from_str(last).expect("ids are header-safe"));
            req
        };
        let resp = match self.sending(self.up.send(build)).await {
            Some(Ok(r)) => r,
            _ => return Err(Outcome::Failed("resume failed".into())),
        };
        if resp.status().is_success() && media_type(resp.headers()) == "text/event-stream" {
            return Ok(resp.into_body());
        }
        let status = resp.status();
        let body = read_body(resp.into_body(), 64 * 1024).await.unwrap_or_default();
        if forgot_session(status, &body) {
            return Err(Outcome::SessionLost);
        }
        Err(Outcome::Failed(format!("resume answered HTTP {status}")))
    }

    /// Reads one SSE body: `Some` once the exchange is over, `None` when the body ended first.
    async fn pump(
        &self,
        mut body: Incoming,
        decoder: &mut Decoder,
        purpose: Purpose<'_>,
        init: bool,
    ) -> Result<Option<Outcome>, String> {
        loop {
            // Cancel-safe: a frame not taken stays in the body, and the link is ending anyway.
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = self.stop.cancelled() => return Ok(Some(Outcome::Done)),
            };
            let chunk = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(_)) | None => return Ok(None),
            };
            for event in decoder.feed(&chunk).map_err(|e| e.to_string())? {
                if !event.is_message() || event.data.trim().is_empty() {
                    continue;
                }
                match self.message(Bytes::from(event.data), purpose, init).await {
                    Outcome::Failed(_) => {}
                    done => return Ok(Some(done)),
                }
            }
        }
    }

    async fn emit(&self, data: Bytes) {
        let _ = self.events.send(Event::Message(data)).await;
    }

    async fn reply_error(&self, id: &Id, why: String) {
        let err = GatewayError::BackendUnavailable(why);
        tracing::warn!(parent: &self.span, id = %id, "{err}");
        self.emit(error_response(Some(id), err.rpc_code(), &err.to_string())).await;
    }

    /// The upstream session is gone for good: the gateway session ends so the client gets
    /// a clean 404 and initializes again.
    async fn lost(&self, why: String) {
        tracing::warn!(parent: &self.span, "The upstream session is lost: {why}.");
        let _ = self.events.send(Event::SessionLost(why)).await;
    }

    /// Runs `fut` unless the link stops first (`None`).
    async fn sending<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        // Cancel-safe: dropping a request in flight is what stopping means.
        tokio::select! {
            r = fut => Some(r),
            _ = self.stop.cancelled() => None,
        }
    }

    /// Initializes a new upstream session with the client's original `initialize`, sends
    /// `notifications/initialized`, restores the log level and subscriptions, and reopens
    /// the GET stream. Does nothing when another task already did it since `seen`.
    async fn reinitialize(self: &Arc<Self>, seen: u64) -> Result<(), String> {
        let _one = self.reinit.lock().await;
        let params = {
            let mut s = self.lock();
            if s.generation != seen {
                return Ok(());
            }
            s.listening = false;
            s.initialize.clone().ok_or("the client's initialize is unknown")?
        };
        tracing::info!(parent: &self.span, "The upstream forgot the session; re-initializing it.");
        let answer = self.internal("initialize", Some(params.get()), true).await?;
        if crate::protocol::initialize_result(&answer).is_none() {
            return Err(format!("re-initialize failed: {}", snippet(&answer)));
        }
        self.lock().generation += 1;
        let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        if let Outcome::Failed(why) = self.exchange(&initialized, Purpose::Client(None), false).await {
            return Err(format!("notifications/initialized failed: {why}"));
        }
        let (level, subscriptions) = {
            let s = self.lock();
            (s.log_level.clone(), s.subscriptions.clone())
        };
        if let Some(level) = level {
            self.internal("logging/setLevel", Some(level.get()), false).await?;
        }
        for uri in subscriptions {
            let params = serde_json::json!({ "uri": uri }).to_string();
            self.internal("resources/subscribe", Some(&params), false).await?;
        }
        self.listen();
        self.up.metrics.upstream_reinitializations.inc();
        Ok(())
    }

    /// A request of the gateway's own (its id cannot collide with a client's); its answer.
    async fn internal(&self, method: &str, params: Option<&str>, init: bool) -> Result<Bytes, String> {
        let n = self.next_internal.fetch_add(1, Ordering::Relaxed);
        let id = format!("\"mcp-edge.{n}\"");
        let body = match params {
            Some(p) => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{p}}}"#),
            None => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#),
        };
        let body = Bytes::from(body);
        let id = Message::parse(&body).ok().and_then(|m| m.id).expect("a well-formed request");
        match self.exchange(&body, Purpose::Internal(&id), init).await {
            Outcome::Answer(a) => Ok(a),
            Outcome::Failed(why) => Err(format!("{method} failed: {why}")),
            Outcome::SessionLost => Err(format!("{method}: the upstream forgot the new session")),
            Outcome::Refused(status) => Err(format!("{method} refused with HTTP {status}")),
            Outcome::Done => Err(format!("{method}: no answer")),
        }
    }

    /// Opens the upstream's GET stream for this generation, unless it is open.
    fn listen(self: &Arc<Self>) {
        let generation = {
            let mut s = self.lock();
            if s.listening || s.session.is_none() {
                return;
            }
            s.listening = true;
            s.generation
        };
        let link = self.clone();
        self.tasks.spawn(async move { link.listen_loop(generation).await });
    }

    /// Holds the GET stream: server-initiated messages go to the client; a broken stream is
    /// reopened (with `Last-Event-ID` when there is one) after the upstream's `retry:`.
    async fn listen_loop(self: Arc<Self>, generation: u64) {
        let mut decoder = Decoder::new(self.up.config.max_message_bytes);
        let mut failures =
            Attempts::new(Backoff { initial: DEFAULT_RETRY, max: Duration::from_secs(30) }, Duration::MAX);
        loop {
            if self.stop.is_cancelled() || self.generation() != generation {
                return;
            }
            let (session, version) = {
                let s = self.lock();
                (s.session.clone(), s.version.clone())
            };
            let last = decoder.last_id.clone();
            let build = || {
                let mut req = self.up.request(Method::GET, &self.up.url, ACCEPT_SSE, None);
                set_session(&mut req, session.as_ref(), version.as_deref());
                if let Some(id) = last.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
                    req.headers_mut().insert("last-event-id", id);
                }
                req
            };
            let resp = match self.sending(self.up.send(build)).await {
                None => return,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    tracing::debug!(parent: &self.span, "The upstream GET stream could not open: {e}.");
                    let _ = failures.wait().await;
                    continue;
                }
            };
            let status = resp.status();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                tracing::debug!(parent: &self.span, "The upstream offers no GET stream (405).");
                return;
            }
            if !status.is_success() || media_type(resp.headers()) != "text/event-stream" {
                let body = read_body(resp.into_body(), 64 * 1024).await.unwrap_or_default();
                if forgot_session(status, &body) {
                    self.lock().listening = false;
                    if let Err(why) = self.reinitialize(generation).await {
                        self.lost(why).await;
                    }
                    return;
                }
                tracing::debug!(parent: &self.span, %status, "The upstream GET stream was refused.");
                let _ = failures.wait().await;
                continue;
            }
            failures = Attempts::new(Backoff { initial: DEFAULT_RETRY, max: Duration::from_secs(30) }, Duration::MAX);
            if let Err(why) = self.pump(resp.into_body(), &mut decoder, Purpose::Client(None), false).await {
                tracing::warn!(parent: &self.span, "The upstream GET stream broke: {why}.");
                decoder = Decoder::new(self.up.config.max_message_bytes);
            }
            // Cancel-safe: a sleep.
            tokio::select! {
                _ = tokio::time::sleep(decoder.retry.unwrap_or(DEFAULT_RETRY)) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Ends the upstream session (DELETE), bounded by `stop_wait`.
    async fn delete_session(&self) {
        let (session, version) = {
            let s = self.lock();
            (s.session.clone(), s.version.clone())
        };
        let Some(session) = session else { return };
        let mut req = self.up.request(Method::DELETE, &self.up.url, ACCEPT_BOTH, None);
        set_session(&mut req, Some(&session), version.as_deref());
        let delete = async {
            match self.up.send(|| clone_request(&req)).await {
                Ok(r) => tracing::debug!(parent: &self.span, status = %r.status(), "Ended the upstream session."),
                Err(e) => tracing::debug!(parent: &self.span, "Could not end the upstream session: {e}."),
            }
        };
        let _ = tokio::time::timeout(self.up.config.stop_wait, delete).await;
    }
}

fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::new(Bytes::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r
}

fn set_session(req: &mut Request<Full<Bytes>>, session: Option<&HeaderValue>, version: Option<&str>) {
    if let Some(s) = session {
        req.headers_mut().insert(SESSION_HEADER, s.clone());
    }
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        req.headers_mut().insert(VERSION_HEADER, v);
    }
}

/// Whether an answer to a request that named a session says the upstream no longer has it:
/// 404 (the spec), or the 400 "session not found" some servers send instead.
fn forgot_session(status: StatusCode, body: &[u8]) -> bool {
    if status == StatusCode::NOT_FOUND {
        return true;
    }
    if status != StatusCode::BAD_REQUEST {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("session")
        && ["not found", "no valid", "invalid", "unknown", "expired"].iter().any(|w| text.contains(w))
}

/// Ends an upstream link: stops its tasks, then DELETEs the upstream session.
pub struct UpstreamStopper {
    link: Arc<Link>,
}

impl UpstreamStopper {
    pub async fn stop(self) {
        let link = self.link;
        link.stop.cancel();
        link.tasks.close();
        let _ = tokio::time::timeout(link.up.config.stop_wait, link.tasks.wait()).await;
        link.delete_session().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_sessions_are_recognised() {
        assert!(forgot_session(StatusCode::NOT_FOUND, b""));
        assert!(forgot_session(
            StatusCode::BAD_REQUEST,
            br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#
        ));
        assert!(forgot_session(StatusCode::BAD_REQUEST, b"Session not found"));
        assert!(!forgot_session(StatusCode::BAD_REQUEST, b"Parse error"));
        assert!(!forgot_session(StatusCode::INTERNAL_SERVER_ERROR, b"session not found"));
    }
}
