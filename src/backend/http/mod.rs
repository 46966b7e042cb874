//! Streamable HTTP upstream: the gateway is the MCP client of a remote server, one upstream
//! session per gateway session.
//!
//! A [`Link`] owns that upstream session: its `Mcp-Session-Id`, the negotiated version, the
//! client's original `initialize` and the state the client set (log level, subscriptions), so
//! that when the upstream forgets the session (404, or a 400 that says so) the link
//! re-initializes it, restores that state and retries the request once — the client sees
//! nothing. Requests are POSTed concurrently, each cancellable on its own; notifications and
//! responses go in order: the session's [`Port`] POSTs a request from a task of its own at once
//! unless a notification or response queued before it has not been delivered yet, and queues
//! everything else for the link's task. While a re-initialization runs, no other exchange
//! starts. The
//! upstream's GET stream carries its server-initiated messages. [`exchange`] holds the
//! mechanics of one POST. Must not know about the gateway's sessions or frontends: it only
//! speaks [`Event`]s.

mod exchange;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event_stream::Decoder;
use super::upstream::{
    media_type, read_body, snippet, Outgoing, Upstream, LAST_EVENT_ID, SESSION_HEADER, VERSION_HEADER,
};
use super::{legacy_sse, Call, Connection, Context, Event, Gone, Outbox, Refused, Stopper};
use crate::error::GatewayError;
use crate::jsonrpc::{Id, Kind, Message};
use crate::retry::{Attempts, Backoff};
use crate::FastMap;
use exchange::{Outcome, Purpose};

/// Events queued towards the session before upstream readers wait (backpressure).
const EVENT_QUEUE: usize = 64;
/// Reconnection delay when the upstream named none; and the most a `retry:` may ask for.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
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

    /// Whether every session shares one upstream connection (HTTP/2, offered by ALPN over
    /// `https://`).
    pub fn multiplexed(&self) -> bool {
        self.up.config.http2 && self.up.url.scheme_str() == Some("https")
    }

    /// Opens a link for one gateway session. Nothing is sent until the client's `initialize`.
    pub fn connect(&self, ctx: &Context) -> Connection {
        let (tx, rx) = mpsc::channel(self.up.config.send_queue);
        let (events_tx, events) = super::events(EVENT_QUEUE);
        let tasks = TaskTracker::new();
        let span = tracing::info_span!("upstream", backend.name = %self.up.name, session.id = %ctx.session_id);
        let link = Arc::new(Link {
            up: self.up.clone(),
            events: events_tx,
            stop: CancellationToken::new(),
            tasks: tasks.clone(),
            state: Mutex::default(),
            gate: tokio::sync::RwLock::new(()),
            requests: Mutex::default(),
            next_internal: AtomicU64::new(1),
            // With a fallback, the first message decides the transport before any other goes.
            ordered: AtomicUsize::new(usize::from(self.up.config.sse_fallback)),
            span,
        });
        tasks.spawn(link.clone().run(rx));
        let port = Port { link: link.clone(), queue: tx };
        Connection { tx: Outbox::Upstream(port), events, stopper: Stopper::Upstream(UpstreamStopper { link }) }
    }
}

/// A session's way to its link (see the module documentation for the order it keeps).
#[derive(Clone)]
pub struct Port {
    link: Arc<Link>,
    queue: mpsc::Sender<Bytes>,
}

impl Port {
    pub(crate) async fn send(&self, raw: Bytes) -> Result<(), Gone> {
        match Message::parse(&raw) {
            Ok(msg) => self.route(msg).await,
            Err(_) => self.enqueue(raw).await,
        }
    }

    /// [`Port::send`] for a message already parsed.
    pub(crate) async fn route(&self, msg: Message) -> Result<(), Gone> {
        self.route_driven(msg).await.map(|call| call.map_or((), Call::detach))
    }

    /// [`Port::route`] that gives back a request's exchange, when it starts at once, for the
    /// caller to drive.
    pub(crate) async fn route_driven(&self, msg: Message) -> Result<Option<Call>, Gone> {
        match self.direct(msg)? {
            Ok(call) => Ok(Some(call)),
            Err(msg) => self.enqueue(msg.raw).await.map(|()| None),
        }
    }

    pub(crate) fn try_send(&self, raw: Bytes) -> Result<(), Refused> {
        let raw = match Message::parse(&raw) {
            Ok(msg) => match self.direct(msg).map_err(|Gone| Refused::Gone)? {
                Err(msg) => msg.raw,
                Ok(call) => {
                    call.detach();
                    return Ok(());
                }
            },
            Err(_) => raw,
        };
        let permit = match self.queue.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Err(Refused::Full(raw)),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Refused::Gone),
        };
        self.put(permit, raw);
        Ok(())
    }

    async fn enqueue(&self, raw: Bytes) -> Result<(), Gone> {
        let permit = self.queue.reserve().await.map_err(|_| Gone)?;
        self.put(permit, raw);
        Ok(())
    }

    /// Queues a message for the link's task, counted in `ordered` until the task handled it.
    fn put(&self, permit: mpsc::Permit<'_, Bytes>, raw: Bytes) {
        self.link.ordered.fetch_add(1, Ordering::SeqCst);
        permit.send(raw);
    }

    /// Starts a request's exchange when nothing queued must go before it; gives back what
    /// must be queued.
    fn direct(&self, msg: Message) -> Result<Result<Call, Message>, Gone> {
        if self.link.stop.is_cancelled() {
            return Err(Gone);
        }
        if !msg.is_request() || self.link.ordered.load(Ordering::SeqCst) > 0 {
            return Ok(Err(msg));
        }
        self.link.observe(&msg);
        Ok(Ok(self.link.start_call(msg)))
    }
}

#[derive(Default)]
struct State {
    /// The upstream's `Mcp-Session-Id`, once it gave one.
    session: Option<HeaderValue>,
    /// Bumped by every re-initialization; a lost session is re-initialized once per generation.
    generation: u64,
    /// The negotiated protocol version, as the header that carries it.
    version: Option<HeaderValue>,
    /// The client's `initialize` params, replayed to re-initialize.
    initialize: Option<Box<serde_json::value::RawValue>>,
    /// The params of the client's last `logging/setLevel`.
    log_level: Option<Box<serde_json::value::RawValue>>,
    /// URIs the client subscribed to.
    subscriptions: BTreeSet<String>,
    /// Ends the GET stream of the current generation, while one runs.
    listening: Option<CancellationToken>,
}

/// What an exchange sends with: the session it belongs to.
#[derive(Clone)]
struct Snapshot {
    session: Option<HeaderValue>,
    version: Option<HeaderValue>,
    generation: u64,
}

pub(super) struct Link {
    up: Arc<Upstream>,
    events: super::Events,
    /// Cancelled when the gateway session ends; every task of the link watches it.
    stop: CancellationToken,
    tasks: TaskTracker,
    state: Mutex<State>,
    /// Client exchanges hold it shared while they send; a re-initialization holds it alone,
    /// so nothing reaches the new upstream session before it is ready.
    gate: tokio::sync::RwLock<()>,
    /// The client requests in flight, each cancellable on its own (`notifications/cancelled`,
    /// the gateway's timeout).
    requests: Mutex<FastMap<Id, CancellationToken>>,
    next_internal: AtomicU64,
    /// Messages queued for the link's task and not yet handled, plus one while the transport
    /// is undecided (`sse_fallback`): requests go straight to a task of their own only at 0.
    ordered: AtomicUsize,
    span: tracing::Span,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot { session: s.session.clone(), version: s.version.clone(), generation: s.generation }
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Bytes>) {
        if self.up.config.sse_fallback {
            // The first message decides the transport, so it is handled before any other.
            let Some(first) = self.recv(&mut rx).await else { return };
            let Ok(msg) = Message::parse(&first) else { return };
            self.observe(&msg);
            if msg.method() == Some("initialize") && msg.is_request() {
                if let Some(status) = self.call(&msg, self.track(&msg)).await {
                    tracing::info!(parent: &self.span, %status, "The upstream refused a Streamable HTTP initialize; trying legacy HTTP+SSE.");
                    let stop = self.stop.clone();
                    legacy_sse::run(self.up.clone(), Some(first), rx, self.events.clone(), stop).await;
                    return;
                }
            } else {
                self.dispatch(msg).await;
            }
            // Streamable HTTP it is: the first message and the undecided transport.
            self.ordered.fetch_sub(2, Ordering::SeqCst);
        }
        while let Some(raw) = self.recv(&mut rx).await {
            if let Ok(msg) = Message::parse(&raw) {
                self.observe(&msg);
                self.dispatch(msg).await;
            }
            self.ordered.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A request's exchange, cancellable from now on, counted among the link's tasks (which
    /// its stop waits for) whoever drives it.
    fn start_call(self: &Arc<Self>, msg: Message) -> Call {
        let cancel = self.track(&msg);
        let link = self.clone();
        Call::new(self.tasks.track_future(async move {
            link.call(&msg, cancel).await;
        }))
    }

    /// Runs a request's exchange in a task of its own.
    fn spawn_call(self: &Arc<Self>, msg: Message) {
        self.start_call(msg).detach();
    }

    /// Registers a request in flight: `notifications/cancelled` for its id cancels the token.
    fn track(&self, msg: &Message) -> CancellationToken {
        let cancel = self.stop.child_token();
        let id = msg.id.clone().expect("requests have ids");
        self.requests().insert(id, cancel.clone());
        cancel
    }

    async fn dispatch(self: &Arc<Self>, msg: Message) {
        if msg.is_request() {
            self.spawn_call(msg);
            return;
        }
        // Inline, so the upstream sees notifications and responses in client order
        // (`notifications/initialized` before the requests that follow it).
        self.deliver(&msg).await;
        if msg.method() == Some("notifications/initialized") {
            self.listen();
        }
    }

    async fn recv(&self, rx: &mut mpsc::Receiver<Bytes>) -> Option<Bytes> {
        // Cancel-safe: `recv` loses nothing when the stop branch wins.
        tokio::select! {
            m = rx.recv() => m,
            _ = self.stop.cancelled() => None,
        }
    }

    /// Remembers what re-initialization must replay, and applies cancellations.
    fn observe(&self, msg: &Message) {
        let method = match msg.method() {
            Some("notifications/cancelled") => {
                let token = msg.cancelled_id.as_ref().and_then(|id| self.requests().get(id).cloned());
                if let Some(t) = token {
                    t.cancel();
                }
                return;
            }
            Some(m @ ("initialize" | "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe")) => m,
            _ => return,
        };
        #[derive(serde::Deserialize)]
        struct Params<'a> {
            #[serde(borrow)]
            params: Option<&'a serde_json::value::RawValue>,
        }
        let Some(params) = serde_json::from_slice::<Params>(&msg.raw).ok().and_then(|p| p.params) else { return };
        let mut s = self.lock();
        match method {
            "initialize" => s.initialize = Some(params.to_owned()),
            "logging/setLevel" => s.log_level = Some(params.to_owned()),
            "resources/subscribe" => s.subscriptions.extend(msg.param_str("uri")),
            _ => {
                if let Some(u) = msg.param_str("uri") {
                    s.subscriptions.remove(&u);
                }
            }
        }
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, FastMap<Id, CancellationToken>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// POSTs a client request and sees it answered: retried once on a re-initialized session
    /// when the upstream refused the POST itself for a forgotten session. Returns the status
    /// when an `initialize` was refused at the transport level.
    async fn call(self: &Arc<Self>, msg: &Message, cancel: CancellationToken) -> Option<StatusCode> {
        let id = msg.id.as_ref().expect("requests have ids");
        let init = msg.method() == Some("initialize");
        let mut retried = false;
        let refused = loop {
            match self.exchange(&msg.raw, Purpose::Client(Some(id)), init, &cancel).await {
                Outcome::Done | Outcome::Answer(_) => break None,
                Outcome::SessionLost(seen) if !retried && !init => {
                    retried = true;
                    if let Err(why) = Box::pin(self.reinitialize(seen)).await {
                        self.lost(why).await;
                        break None;
                    }
                }
                Outcome::SessionLost(_) => {
                    self.lost("the upstream forgot the session again right after re-initializing".into()).await;
                    break None;
                }
                Outcome::Refused(status) if self.up.config.sse_fallback => break Some(status),
                Outcome::Refused(status) => {
                    self.reply_error(id, format!("the upstream refused initialize with HTTP {status}")).await;
                    break None;
                }
                Outcome::Failed(why) => {
                    // A cancelled request is answered by nobody: the client gave up on it.
                    if !cancel.is_cancelled() {
                        self.reply_error(id, why).await;
                    }
                    break None;
                }
            }
        };
        self.requests().remove(id);
        refused
    }

    /// POSTs a client notification or response, bounded by `ack_timeout`; a lost session is
    /// re-initialized first.
    async fn deliver(self: &Arc<Self>, msg: &Message) {
        let ack = self.up.config.ack_timeout;
        let attempt = async {
            match self.exchange(&msg.raw, Purpose::Client(None), false, &self.stop).await {
                Outcome::SessionLost(seen) => match self.reinitialize(seen).await {
                    // A response to a request of the forgotten session means nothing to the
                    // new one; a notification is worth sending again.
                    Ok(()) if msg.kind == Kind::Notification => {
                        self.exchange(&msg.raw, Purpose::Client(None), false, &self.stop).await
                    }
                    Ok(()) => Outcome::Done,
                    Err(why) => {
                        self.lost(why).await;
                        Outcome::Done
                    }
                },
                other => other,
            }
        };
        let why = match tokio::time::timeout(ack, attempt).await {
            Ok(Outcome::Failed(why)) => why,
            Ok(_) => return,
            Err(_) => format!("no answer within ack_timeout ({} ms)", ack.as_millis()),
        };
        let what = msg.method().unwrap_or("a response");
        tracing::warn!(parent: &self.span, method = what, "Could not deliver a message upstream: {why}.");
    }

    async fn emit(&self, data: Bytes) {
        let _ = self.events.send(Event::Message(data)).await;
    }

    async fn reply_error(&self, id: &Id, why: String) {
        let err = GatewayError::BackendUnavailable(why);
        tracing::warn!(parent: &self.span, id = %id, "{err}");
        self.emit(err.to_rpc(Some(id))).await;
    }

    /// The upstream session is gone for good: the gateway session ends so the client gets
    /// a clean 404 and initializes again.
    async fn lost(&self, why: String) {
        tracing::warn!(parent: &self.span, "The upstream session is lost: {why}.");
        let _ = self.events.send(Event::SessionLost(why)).await;
    }

    /// Runs `fut` unless `cancel` fires first (`None`).
    async fn until<T>(cancel: &CancellationToken, fut: impl std::future::Future<Output = T>) -> Option<T> {
        // Cancel-safe: dropping a request in flight is what cancelling means. Biased: no
        // random pick per poll, and an answer that is there wins over a late cancel.
        tokio::select! {
            biased;
            r = fut => Some(r),
            _ = cancel.cancelled() => None,
        }
    }

    /// Initializes a new upstream session with the client's original `initialize`, sends
    /// `notifications/initialized`, restores the log level and subscriptions, and reopens
    /// the GET stream — alone, while no client exchange runs. Does nothing when another task
    /// already did it since generation `seen`.
    async fn reinitialize(self: &Arc<Self>, seen: u64) -> Result<(), String> {
        let _alone = self.gate.write().await;
        let params = {
            let mut s = self.lock();
            if s.generation != seen {
                return Ok(());
            }
            if let Some(old) = s.listening.take() {
                old.cancel();
            }
            s.initialize.clone().ok_or("the client's initialize is unknown")?
        };
        tracing::info!(parent: &self.span, "The upstream forgot the session; re-initializing it.");
        let answer = self.internal("initialize", Some(params.get()), true).await?;
        if crate::protocol::initialize_result(&answer).is_none() {
            return Err(format!("re-initialize failed: {}", snippet(&answer)));
        }
        let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        if let Outcome::Failed(why) = self.exchange(&initialized, Purpose::Internal(None), false, &self.stop).await {
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
        self.lock().generation += 1;
        self.up.metrics.upstream_reinitializations.inc();
        self.listen();
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
        match self.exchange(&body, Purpose::Internal(Some(&id)), init, &self.stop).await {
            Outcome::Answer(a) => Ok(a),
            Outcome::Failed(why) => Err(format!("{method} failed: {why}")),
            Outcome::SessionLost(_) => Err(format!("{method}: the upstream forgot the new session")),
            Outcome::Refused(status) => Err(format!("{method} refused with HTTP {status}")),
            Outcome::Done => Err(format!("{method}: no answer")),
        }
    }

    /// Opens the upstream's GET stream for this generation, unless it is open.
    fn listen(self: &Arc<Self>) {
        let token = {
            let mut s = self.lock();
            if s.listening.is_some() || s.session.is_none() {
                return;
            }
            let token = self.stop.child_token();
            s.listening = Some(token.clone());
            token
        };
        let link = self.clone();
        self.tasks.spawn(async move { link.listen_loop(token).await });
    }

    /// Holds the GET stream: server-initiated messages go to the client; a broken stream is
    /// reopened (with `Last-Event-ID` when there is one) after the upstream's `retry:`. Ends
    /// with its generation (`token`). An upstream that answers the GET with 405 — or with 404,
    /// which some servers send for a method they lack — has no GET stream; a forgotten
    /// session is found and re-initialized by the next POST.
    async fn listen_loop(self: Arc<Self>, token: CancellationToken) {
        let mut decoder = Decoder::new(self.up.config.max_message_bytes);
        let backoff = Backoff { initial: DEFAULT_RETRY, max: MAX_RETRY };
        let mut failures = Attempts::new(backoff, Duration::MAX);
        loop {
            let snap = self.snapshot();
            let last = decoder.last_id.clone();
            let mut req = self.up.request(Method::GET, &self.up.url, ACCEPT_SSE, None);
            set_session(&mut req, &snap);
            if let Some(id) = last.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
                req.header(LAST_EVENT_ID, id);
            }
            let resp = match Link::until(&token, self.up.send(&req)).await {
                None => return,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    tracing::debug!(parent: &self.span, "The upstream GET stream could not open: {e}.");
                    if Link::until(&token, failures.wait()).await.is_none() {
                        return;
                    }
                    continue;
                }
            };
            let status = resp.status();
            if status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND {
                tracing::debug!(parent: &self.span, %status, "The upstream offers no GET stream for this session.");
                return;
            }
            if !status.is_success() || media_type(resp.headers()) != "text/event-stream" {
                let body = Link::until(&token, read_body(resp.into_body(), 64 * 1024)).await;
                let body = body.and_then(Result::ok).unwrap_or_default();
                if forgot_session(status, &body) {
                    return;
                }
                tracing::debug!(parent: &self.span, %status, "The upstream GET stream was refused.");
                if Link::until(&token, failures.wait()).await.is_none() {
                    return;
                }
                continue;
            }
            failures = Attempts::new(backoff, Duration::MAX);
            decoder.reset();
            if let Err(why) = self.pump(resp.into_body(), &mut decoder, Purpose::Client(None), false, &token).await {
                tracing::warn!(parent: &self.span, "The upstream GET stream broke: {why}.");
                decoder = Decoder::new(self.up.config.max_message_bytes);
            }
            let wait = decoder.retry.unwrap_or(DEFAULT_RETRY).min(MAX_RETRY);
            if Link::until(&token, tokio::time::sleep(wait)).await.is_none() {
                return;
            }
        }
    }

    /// Ends the upstream session (DELETE), bounded by `stop_wait`.
    async fn delete_session(&self) {
        let snap = self.snapshot();
        if snap.session.is_none() {
            return;
        }
        let mut req = self.up.request(Method::DELETE, &self.up.url, ACCEPT_BOTH, None);
        set_session(&mut req, &snap);
        let delete = async {
            match self.up.send(&req).await {
                Ok(r) => tracing::debug!(parent: &self.span, status = %r.status(), "Ended the upstream session."),
                Err(e) => tracing::debug!(parent: &self.span, "Could not end the upstream session: {e}."),
            }
        };
        let _ = tokio::time::timeout(self.up.config.stop_wait, delete).await;
    }
}

fn set_session(req: &mut Outgoing, snap: &Snapshot) {
    if let Some(s) = &snap.session {
        req.header(SESSION_HEADER, s.clone());
    }
    if let Some(v) = &snap.version {
        req.header(VERSION_HEADER, v.clone());
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
        // Every await of the link's tasks is under `stop`: they end at once.
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
