//! Backends: what turns JSON-RPC messages into bytes for an MCP server and back.
//!
//! The set is closed, so it is an `enum`. A backend hands the session layer a [`Connection`]:
//! an [`Outbox`] for outgoing messages, a receiver of [`Event`]s, and a [`Stopper`] that ends
//! the server politely and then surely. Must not know about sessions or frontends.

pub mod event_stream;
pub mod guard;
pub mod http;
pub mod legacy_sse;
pub mod pool;
pub mod stdio;
pub mod upstream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::BackendConfig;
use crate::jsonrpc::Message;
use crate::metrics::Metrics;

/// What a backend reports to its session.
#[derive(Debug)]
pub enum Event {
    /// One JSON-RPC message from the server, as a single line without the newline.
    Message(Bytes),
    /// One JSON-RPC message the backend had to parse itself (to see whether it answers a
    /// request it waits for), handed on parsed. Boxed: every session's event queue has a slot
    /// per message, and a message is three times the size of its bytes.
    Parsed(Box<Message>),
    /// The server is gone or broke the protocol; nothing more will arrive.
    Closed(String),
    /// The server forgot this client's session and it could not be restored: the client
    /// must initialize again.
    SessionLost(String),
}

/// Where a backend's events go: straight into the session that reads them when nothing sent
/// before is still queued (in the sender's own task, no hand-off), otherwise through a bounded
/// queue the session's task reads, in order. Made by [`events`].
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    shared: Arc<EventsShared>,
}

struct EventsShared {
    /// Events sent through the queue and not yet applied by the session.
    queued: AtomicUsize,
    /// The session's way in, once it is bound.
    direct: OnceLock<Arc<dyn Direct>>,
}

/// A session that takes a backend's events in the sender's task.
pub trait Direct: Send + Sync {
    /// Applies `event` now, when `queued` (read and raised under the session's own lock) says
    /// nothing is queued before it and the session can take it; otherwise counts it in
    /// `queued` and gives it back, to be sent through the queue.
    fn apply(&self, event: Event, queued: &AtomicUsize) -> Result<(), Event>;
}

/// A bounded events queue of `capacity` and its sending side.
pub fn events(capacity: usize) -> (Events, EventQueue) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(EventsShared { queued: AtomicUsize::new(0), direct: OnceLock::new() });
    (Events { tx, shared: shared.clone() }, EventQueue { rx, shared })
}

impl Events {
    /// Hands an event over, waiting for room in the queue when it cannot be applied at once.
    pub async fn send(&self, event: Event) -> Result<(), Gone> {
        let Some(event) = self.apply(event) else { return Ok(()) };
        // Counted until sent: an event that never goes in is not waited for.
        let uncount = Uncount(&self.shared.queued);
        let permit = self.tx.reserve().await.map_err(|_| Gone)?;
        std::mem::forget(uncount);
        permit.send(event);
        Ok(())
    }

    /// Hands an event over without waiting; gives it back when the queue is full or gone.
    pub fn try_send(&self, event: Event) -> Result<(), mpsc::error::TrySendError<Event>> {
        let Some(event) = self.apply(event) else { return Ok(()) };
        self.tx.try_send(event).inspect_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Free places in the queue.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Applies the event at once when the session can take it; else counts it as queued and
    /// gives it back.
    fn apply(&self, event: Event) -> Option<Event> {
        match self.shared.direct.get() {
            Some(d) => d.apply(event, &self.shared.queued).err(),
            None => {
                self.shared.queued.fetch_add(1, Ordering::SeqCst);
                Some(event)
            }
        }
    }
}

/// Gives back a queued event's count when it was not sent after all.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reading side of a backend's events.
pub struct EventQueue {
    rx: mpsc::Receiver<Event>,
    shared: Arc<EventsShared>,
}

impl EventQueue {
    /// The next queued event; the reader calls [`EventQueue::applied`] once it has applied it.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The event last received is applied: a later one may now be applied at once. Called
    /// under the same lock as [`Direct::apply`] takes.
    pub fn applied(&self) {
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// From now on, events are applied in their sender's task whenever `direct` can.
    pub fn bind(&self, direct: Arc<dyn Direct>) {
        let _ = self.shared.direct.set(direct);
    }
}

/// Facts a backend needs from the gateway to start a server.
#[derive(Clone, Debug)]
pub struct Context {
    /// The mcp-edge executable: `{self}` in commands and the guard process.
    pub self_exe: PathBuf,
    /// For logs only.
    pub session_id: Arc<str>,
}

/// Where a session's messages for its server go, one JSON-RPC message each, without newline.
#[derive(Clone)]
pub enum Outbox {
    /// A bounded queue read by the backend's own task (a child's stdin writer, an upstream
    /// link).
    Queue(mpsc::Sender<Bytes>),
    /// A session of a stdio pool: each message is routed in the sender's own task, so a
    /// session costs the pool no task and no queue of its own.
    Pool(pool::Port),
    /// A Streamable HTTP upstream link: a request is POSTed from a task of its own straight
    /// away when nothing queued must reach the upstream before it; the rest goes through the
    /// link's queue, in order.
    Upstream(http::Port),
}

/// A request's exchange with an upstream, for a caller that waits for its answer to drive in
/// its own task (no hand-off to a task of the exchange's own and back). Dropped before it is
/// over — the caller stopped waiting — it carries on in a task of its own.
pub struct Call(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>);

impl Call {
    /// Boxed: an exchange's future is kilobytes (re-initializing, streams, refusals), and a
    /// task's future is moved whole when it is spawned.
    fn new(exchange: impl std::future::Future<Output = ()> + Send + 'static) -> Call {
        Call(Some(Box::pin(exchange)))
    }

    /// Lets the exchange go on in a task of its own (what dropping it does).
    pub fn detach(self) {
        drop(self);
    }
}

impl std::future::Future for Call {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(exchange) = self.0.as_mut() else { return std::task::Poll::Ready(()) };
        std::task::ready!(exchange.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(())
    }
}

/// Polls each of `calls` once, dropping those that ended.
pub fn poll_calls(calls: &mut Vec<Call>, cx: &mut std::task::Context<'_>) {
    calls.retain_mut(|c| std::future::Future::poll(std::pin::Pin::new(c), cx).is_pending());
}

/// Drives `calls` until every one has ended; cancel-safe (the calls stay in `calls`).
pub async fn drive(calls: &mut Vec<Call>) {
    std::future::poll_fn(|cx| {
        poll_calls(calls, cx);
        if calls.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

impl Drop for Call {
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) the exchange ends with it.
        if let (Some(exchange), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(exchange);
        }
    }
}

/// The backend takes no more messages: it is gone, or the session's part in it ended.
#[derive(Debug)]
pub struct Gone;

impl Outbox {
    /// Hands a message over, waiting for room.
    pub async fn send(&self, msg: Bytes) -> Result<(), Gone> {
        match self {
            Outbox::Queue(tx) => tx.send(msg).await.map_err(|_| Gone),
            Outbox::Pool(port) => port.send(msg).await,
            Outbox::Upstream(port) => port.send(msg).await,
        }
    }

    /// Hands a client's message over, waiting for room: on one line, and already parsed for
    /// the backends that route it. A request that an HTTP upstream link starts at once comes
    /// back as the [`Call`] for the caller to drive (dropped, it goes on by itself).
    pub async fn forward(&self, msg: &Message) -> Result<Option<Call>, Gone> {
        match self {
            Outbox::Queue(tx) => tx.send(msg.single_line()).await.map(|()| None).map_err(|_| Gone),
            Outbox::Pool(port) => port.route(msg.on_one_line()).await.map(|()| None),
            Outbox::Upstream(port) => port.route_driven(msg.clone()).await,
        }
    }

    /// Hands a message over without waiting; gives it back when a queue is full.
    pub fn try_send(&self, msg: Bytes) -> Result<(), Refused> {
        match self {
            Outbox::Queue(tx) => tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(msg) => Refused::Full(msg),
                mpsc::error::TrySendError::Closed(_) => Refused::Gone,
            }),
            Outbox::Pool(port) => port.try_send(msg),
            Outbox::Upstream(port) => port.try_send(msg),
        }
    }
}

/// Why [`Outbox::try_send`] did not take a message.
#[derive(Debug)]
pub enum Refused {
    Full(Bytes),
    Gone,
}

impl From<mpsc::Sender<Bytes>> for Outbox {
    fn from(tx: mpsc::Sender<Bytes>) -> Outbox {
        Outbox::Queue(tx)
    }
}

/// A live connection to one MCP server.
pub struct Connection {
    /// Messages towards the server.
    pub tx: Outbox,
    /// Messages and the final close from the server.
    pub events: EventQueue,
    pub stopper: Stopper,
}

/// Ends a connection's server; see each backend for the sequence.
pub enum Stopper {
    Stdio(stdio::StdioStopper),
    /// A Streamable HTTP upstream: its tasks, then DELETE of the upstream session.
    Upstream(http::UpstreamStopper),
    /// A session of a stdio pool: the pool and its children stay.
    Pool(pool::PoolStopper),
    /// In-process servers and legacy SSE upstreams: their tasks.
    Tasks(Vec<tokio::task::AbortHandle>),
}

impl Stopper {
    /// Stops the server and everything it started; returns when it is gone.
    pub async fn stop(self) {
        match self {
            Stopper::Stdio(s) => s.stop().await,
            Stopper::Upstream(s) => s.stop().await,
            Stopper::Pool(s) => s.stop().await,
            Stopper::Tasks(tasks) => tasks.iter().for_each(|t| t.abort()),
        }
    }
}

/// A configured backend, ready to open connections.
#[derive(Clone, Debug)]
pub enum Backend {
    Stdio(Arc<stdio::StdioBackend>),
    /// A shared pool of stdio children.
    Pool(Arc<pool::PoolBackend>),
    Http(Arc<http::HttpBackend>),
    Sse(Arc<legacy_sse::SseBackend>),
    /// The built-in example server, in-process (`example-server --http`).
    Example,
}

/// Whether a backend works: the reason of its last failure to connect, until a connect
/// succeeds again (`/readyz` reports it).
#[derive(Debug, Default)]
pub struct Health(std::sync::Mutex<Option<String>>);

impl Health {
    pub fn failed(&self, why: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }

    pub fn ok(&self) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_some() {
            *h = None;
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl Backend {
    /// A backend ready to connect; fails when the configuration names what cannot be had
    /// (an unset environment variable, an unreadable certificate).
    pub fn from_config(name: &str, config: &BackendConfig, metrics: &Metrics) -> Result<Backend, ConnectError> {
        let m = metrics.backend(name);
        let upstream = |c: &crate::config::UpstreamConfig| {
            upstream::Upstream::new(name, c.clone(), m.clone())
                .map_err(|e| ConnectError(format!("`backends.{name}.{}", e.trim_start_matches('`'))))
        };
        Ok(match config {
            BackendConfig::Stdio(c) => {
                let stdio = stdio::StdioBackend::new(name, c.clone(), m.clone());
                match &c.pool {
                    Some(p) => Backend::Pool(Arc::new(pool::PoolBackend::new(stdio, p.clone(), m.clone()))),
                    None => Backend::Stdio(Arc::new(stdio)),
                }
            }
            BackendConfig::Http(c) => Backend::Http(Arc::new(http::HttpBackend::new(upstream(c)?))),
            BackendConfig::Sse(c) => Backend::Sse(Arc::new(legacy_sse::SseBackend::new(upstream(c)?))),
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Backend::Stdio(b) => b.name(),
            Backend::Pool(b) => b.name(),
            Backend::Http(b) => b.name(),
            Backend::Sse(b) => b.name(),
            Backend::Example => "example",
        }
    }

    /// Why the backend cannot be used now (its last connect failed), if so.
    pub fn unusable(&self) -> Option<String> {
        match self {
            Backend::Stdio(b) => b.health.get(),
            Backend::Pool(b) => b.health().get(),
            Backend::Http(b) => b.health().get(),
            Backend::Sse(b) => b.health().get(),
            Backend::Example => None,
        }
    }

    /// Descriptors each session costs beyond its client's socket: a per-session stdio child's
    /// three pipes and the guard's liveness pipe; the upstream connection a session's GET
    /// stream holds over HTTP/1.1 (over HTTP/2 every session shares one); nothing for pools.
    pub fn fds_per_session(&self) -> u64 {
        match self {
            Backend::Stdio(_) => 4,
            Backend::Http(b) if b.multiplexed() => 0,
            Backend::Http(_) | Backend::Sse(_) => 1,
            Backend::Pool(_) | Backend::Example => 0,
        }
    }

    /// Stops what the backend runs beyond its sessions (a pool's children); at shutdown.
    pub async fn shutdown(&self) {
        if let Backend::Pool(p) = self {
            p.shutdown().await;
        }
    }

    /// A reload replaced this backend: a pool stops its children once its sessions are gone.
    pub fn retire(&self) {
        if let Backend::Pool(p) = self {
            p.retire();
        }
    }

    /// Opens a connection: for stdio, spawns a child for this session.
    pub async fn connect(&self, ctx: &Context) -> Result<Connection, ConnectError> {
        match self {
            Backend::Stdio(b) => b.spawn(ctx),
            Backend::Pool(b) => Ok(b.connect(ctx)),
            Backend::Http(b) => Ok(b.connect(ctx)),
            Backend::Sse(b) => Ok(b.connect(ctx)),
            Backend::Example => Ok(crate::example::connect()),
        }
    }
}
