//! Sessions: the gateway's own object behind every client, whatever transport carries it.
//!
//! A session is a core (the [`actor`]) that owns the table of in-flight requests, its
//! logical streams and its replay buffer, and a task that feeds it its backend connection's
//! messages and its timers. Frontends reach the core through a [`SessionHandle`], which applies
//! a client's messages to it at once, and never see the backend's I/O; the session never sees
//! sockets, only [`Sink`]s. The [`Registry`] maps published ids to handles and bounds how
//! many sessions exist.

mod actor;
pub mod buffer;

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use rand::RngCore;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Caller;
use crate::backend::{self, Backend};
use crate::config::SessionConfig;
use crate::error::GatewayError;
use crate::jsonrpc::Message;
pub use buffer::EventId;

/// What a session sends towards one open stream. Queues carry frames boxed: a tokio channel
/// allocates its first block of 32 slots when it is made, and 32 boxes take 256 bytes where 32
/// frames took 2 KiB — on every idle WebSocket connection's queue, and on every POST's answer
/// queue, which then fits the allocator's per-thread cache.
#[derive(Debug)]
pub enum Frame {
    /// One server→client message. `last` marks the final message of a request stream.
    Event { id: EventId, data: Bytes, last: bool },
    /// The stream has nothing more (its requests were cancelled).
    End,
    /// The session ended; nothing more will come on any stream.
    Closed(EndReason),
    /// Another reader took this stream over (a newer connection of the session).
    Replaced,
    /// A message outside the stream's numbering (the answer to a resuming `initialize`).
    Message(Bytes),
    /// The last answer of a request stream, sent as the session ends for `reason`: the error
    /// of a request that must be retried in a new session (the frontend shows the reason's
    /// HTTP status when it still can).
    Ended { data: Bytes, reason: EndReason },
    /// Never from a session: a frontend's reader that shares the queue with its session tells
    /// its writer to stop after what is queued — closing with the error's code when there is
    /// one (a WebSocket connection).
    Stop(Option<Box<GatewayError>>),
}

/// What a session does when a reader's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Drop the reader (an HTTP response body); it may resume with `Last-Event-ID`.
    Detach,
    /// Hold the message and stop reading the backend until the reader catches up (a
    /// WebSocket, which closes itself when it stays stuck).
    Backpressure,
}

/// The sending side of one open stream.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Box<Frame>>,
    delivery: Delivery,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Box<Frame>>, delivery: Delivery) -> Sink {
        Sink { tx, delivery }
    }

    /// Whether a reader is still there.
    pub fn is_live(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Where the requests of a submission are answered.
#[derive(Debug)]
pub enum Target {
    /// A new stream of their own, read by this sink (one HTTP POST).
    NewStream(Sink),
    /// An existing stream (the stream of a WebSocket connection).
    Stream(u64),
    /// Nowhere: the submission holds no request.
    None,
}

/// Which stream a reader attaches to.
#[derive(Debug)]
pub enum Attach {
    /// HTTP GET: the standalone stream; refused while it has a live reader.
    Standalone,
    /// HTTP GET with `Last-Event-ID`: that stream, replacing its reader; events after the id
    /// are returned in [`Opened::replay`].
    After(String),
    /// A WebSocket connection: the standalone stream, replacing any reader. `preface` goes
    /// first, then events after `after` (or, without it, those never delivered) are replayed
    /// through the sink.
    Connection { after: Option<String>, preface: Option<Bytes> },
}

/// The transport that created a session (a metrics label; the session itself does not care).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
    LegacySse,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "websocket",
            Transport::LegacySse => "legacy_sse",
        }
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EndReason {
    Deleted,
    Idle,
    InitializeFailed,
    BackendClosed(String),
    Shutdown,
    /// The client closed its WebSocket connection with a close frame, or its legacy SSE stream.
    ClientClosed,
    /// The client of a legacy SSE stream took no message for `legacy_sse.stall_timeout`.
    Stalled,
    /// The client's WebSocket dropped and it did not come back within `resume_grace`.
    GraceExpired,
    /// The client was away and the replay buffer lost messages it had not seen.
    ReplayOverflow,
    /// The upstream forgot the session and re-initializing it failed.
    UpstreamLost(String),
}

impl EndReason {
    /// A short name for the reason (a metrics label).
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Deleted => "delete",
            EndReason::Idle => "idle",
            EndReason::InitializeFailed => "initialize_failed",
            EndReason::BackendClosed(_) => "backend_exit",
            EndReason::Shutdown => "shutdown",
            EndReason::ClientClosed => "client_closed",
            EndReason::Stalled => "stalled",
            EndReason::GraceExpired => "grace_expired",
            EndReason::ReplayOverflow => "replay_overflow",
            EndReason::UpstreamLost(_) => "upstream_lost",
        }
    }

    /// What happened, in words (logs, tombstones, errors).
    pub fn describe(&self) -> String {
        match self {
            EndReason::Deleted => "deleted by the client".into(),
            EndReason::Idle => "idle timeout".into(),
            EndReason::InitializeFailed => "initialize failed".into(),
            EndReason::BackendClosed(why) => why.clone(),
            EndReason::Shutdown => "the gateway is shutting down".into(),
            EndReason::ClientClosed => "the client closed its connection".into(),
            EndReason::Stalled => "the client took no message for legacy_sse.stall_timeout".into(),
            EndReason::GraceExpired => "the client did not reconnect within sessions.resume_grace".into(),
            EndReason::UpstreamLost(why) => format!("the upstream session was lost ({why})"),
            EndReason::ReplayOverflow => {
                "the replay buffer overflowed while the client was away (sessions.replay_buffer_*)".into()
            }
        }
    }

    /// The error an in-flight request gets when its session ends for this reason.
    pub fn error(&self) -> GatewayError {
        match self {
            EndReason::BackendClosed(why) => GatewayError::BackendUnavailable(why.clone()),
            // The client must initialize again: the same answer as for an unknown session.
            EndReason::UpstreamLost(_) => GatewayError::SessionGone(self.describe()),
            other => GatewayError::SessionEnded(other.describe()),
        }
    }

    /// The WebSocket close code a connection of the session gets.
    pub fn close_code(&self) -> u16 {
        match self {
            EndReason::BackendClosed(_) => 1011,
            EndReason::Shutdown => 1001,
            _ => 1000,
        }
    }
}

/// What an opened stream starts with.
#[derive(Debug)]
pub struct Opened {
    /// The logical stream's number (for the priming event id).
    pub stream: u64,
    /// Events to send before live ones (replay after `Last-Event-ID`).
    pub replay: Vec<(EventId, Bytes)>,
    /// The stream was already complete: end after the replay.
    pub complete: bool,
    /// The sequence a priming event for this stream carries: events after it are live.
    pub resume_from: u64,
}

/// What a session's task is told by its handles. The reason is boxed: every session's
/// command queue allocates room for 32 commands up front, and most sessions are idle.
enum Command {
    /// A handle changed what the task waits for (an earlier deadline, a reader): look again.
    Wake,
    End(Box<EndReason>),
}

struct Inner {
    id: Arc<str>,
    /// The route path the session was created on; the id means nothing on another route.
    route: Arc<str>,
    commands: mpsc::Sender<Command>,
    core: actor::Core,
    backend: backend::Outbox,
    /// The protocol version the backend answered `initialize` with.
    version: OnceLock<Box<str>>,
    /// The backend's `InitializeResult` (the `result` member), to answer a resuming client.
    initialize_result: OnceLock<Bytes>,
    /// Who started the session (routes with `auth`): nobody else can use its id.
    caller: Caller,
}

/// A cheap, clonable handle to a live session.
#[derive(Clone)]
pub struct SessionHandle(Arc<Inner>);

impl SessionHandle {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// The negotiated protocol version (set once `initialize` succeeded).
    pub fn version(&self) -> Option<&str> {
        self.0.version.get().map(|v| &**v)
    }

    /// The backend's `InitializeResult`, once the session is published.
    pub fn initialize_result(&self) -> Option<&Bytes> {
        self.0.initialize_result.get()
    }

    /// Who started the session, and what it may use.
    pub fn caller(&self) -> &Caller {
        &self.0.caller
    }

    /// Hands client messages to the session: requests are registered to be answered on
    /// `target`, cancellations are applied. The caller then sends them to the backend.
    pub fn submit(&self, msgs: &[Message], target: Target) -> Result<Opened, GatewayError> {
        let (opened, wake) = {
            let mut core = actor::lock(&self.0.core);
            let opened = core.on_client(msgs, target);
            (opened, core.wants_wake())
        };
        if wake {
            self.wake();
        }
        opened
    }

    /// Writes messages to the backend, waiting for room in its queue.
    pub async fn forward(&self, msgs: &[Message]) -> Result<(), GatewayError> {
        // Exchanges nobody drives go on in tasks of their own.
        self.forward_driven(msgs).await.map(|calls| calls.into_iter().for_each(backend::Call::detach))
    }

    /// [`SessionHandle::forward`] for a caller that waits for the answers: the exchanges
    /// with an HTTP upstream that started at once, for the caller to drive (dropped, they go
    /// on by themselves).
    pub async fn forward_driven(&self, msgs: &[Message]) -> Result<Vec<backend::Call>, GatewayError> {
        let mut calls = Vec::new();
        for m in msgs {
            calls.extend(self.0.backend.forward(m).await.map_err(|_| gone())?);
        }
        Ok(calls)
    }

    /// Attaches a reader to a stream.
    pub fn open(&self, attach: Attach, sink: Sink) -> Result<Opened, GatewayError> {
        let opened = actor::lock(&self.0.core).on_open(attach, sink);
        // The reader may have been handed more than its queue holds, or taken over a stuck
        // one: the task looks again at what it waits for.
        self.wake();
        opened
    }

    /// Tells the session that the WebSocket reading `stream` dropped.
    pub fn away(&self, stream: u64) {
        let wake = {
            let mut core = actor::lock(&self.0.core);
            core.on_away(stream);
            core.wants_wake()
        };
        if wake {
            self.wake();
        }
    }

    /// Wakes the session's task. A full queue holds commands that wake it anyway.
    fn wake(&self) {
        let _ = self.0.commands.try_send(Command::Wake);
    }

    /// Asks the session to end; returns at once.
    pub fn end(&self, reason: EndReason) {
        let tx = self.0.commands.clone();
        tokio::spawn(async move { tx.send(Command::End(Box::new(reason))).await });
    }
}

fn gone() -> GatewayError {
    GatewayError::UnknownSession
}

/// Counts requests in flight across the instance so shutdown can wait for them.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    zero: Notify,
}

impl InFlight {
    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    fn sub(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::SeqCst) == n {
            self.zero.notify_waiters();
        }
    }

    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves when no request is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.zero.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// All sessions of this instance.
pub struct Registry {
    instance_id: String,
    /// Limits and timeouts for new sessions; replaced on reload (a session keeps its own copy).
    config: std::sync::RwLock<Arc<SessionConfig>>,
    sessions: DashMap<Arc<str>, SessionHandle, foldhash::fast::RandomState>,
    /// Sessions that exist, published or still initializing; bounded by `max_sessions`.
    slots: AtomicUsize,
    metrics: Arc<crate::metrics::Metrics>,
    /// Per-route caps (`routes[].max_sessions`) and the sessions each route holds: route path
    /// → (cap, live sessions). Caps change on reload; counts carry over.
    route_caps: DashMap<String, (AtomicUsize, AtomicUsize)>,
    /// `principals.max_sessions`, and the live sessions of each principal.
    principal_cap: AtomicUsize,
    by_principal: DashMap<Arc<str>, usize>,
    draining: AtomicBool,
    in_flight: Arc<InFlight>,
    /// Session tasks and their backend stops, awaited on shutdown.
    tasks: TaskTracker,
    /// Cancelled once on shutdown; every session task watches it.
    shutdown: CancellationToken,
    self_exe: std::path::PathBuf,
    /// Recently ended sessions and why, so a late request learns more than "not found".
    ended: Mutex<VecDeque<(Arc<str>, String)>>,
}

/// How many ended sessions are remembered for their reason.
const TOMBSTONES: usize = 1024;

/// A session's places among the instance's, its route's and its principal's sessions, given
/// back when the session's task ends.
struct Slot {
    registry: Arc<Registry>,
    route: Option<Arc<str>>,
    principal: Option<Arc<str>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let r = &self.registry;
        r.slots.fetch_sub(1, Ordering::SeqCst);
        if let Some(cap) = self.route.as_ref().and_then(|route| r.route_caps.get(&**route)) {
            cap.1.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(principal) = &self.principal {
            if let Some(mut n) = r.by_principal.get_mut(principal) {
                *n -= 1;
            }
            r.by_principal.remove_if(principal, |_, n| *n == 0);
        }
    }
}

impl Registry {
    /// `route_caps`: route path → most sessions that route may hold (besides `max_sessions`).
    pub fn new(
        instance_id: String,
        config: SessionConfig,
        self_exe: std::path::PathBuf,
        route_caps: impl IntoIterator<Item = (String, usize)>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            instance_id,
            config: std::sync::RwLock::new(Arc::new(config.clone())),
            sessions: DashMap::default(),
            slots: AtomicUsize::new(0),
            metrics,
            route_caps: DashMap::new(),
            principal_cap: AtomicUsize::new(usize::MAX),
            by_principal: DashMap::new(),
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            self_exe,
            ended: Mutex::new(VecDeque::new()),
        });
        registry.reconfigure(config, route_caps);
        registry
    }

    /// The limits and timeouts new sessions get.
    pub fn config(&self) -> Arc<SessionConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sessions one principal may hold (`principals.max_sessions`).
    pub fn set_principal_cap(&self, max: usize) {
        self.principal_cap.store(max, Ordering::SeqCst);
    }

    /// New limits for new sessions (a reload): the instance cap, timeouts and buffers, and
    /// the per-route caps. Live sessions keep what they started with.
    pub fn reconfigure(&self, config: SessionConfig, route_caps: impl IntoIterator<Item = (String, usize)>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        let caps: std::collections::HashMap<String, usize> = route_caps.into_iter().collect();
        for entry in self.route_caps.iter() {
            if !caps.contains_key(entry.key()) {
                entry.value().0.store(usize::MAX, Ordering::SeqCst);
            }
        }
        for (path, max) in caps {
            self.route_caps
                .entry(path)
                .or_insert_with(|| (AtomicUsize::new(max), AtomicUsize::new(0)))
                .0
                .store(max, Ordering::SeqCst);
        }
    }

    /// Unpublishes a session (DELETE): from now on its id gets 404.
    pub fn remove(&self, id: &str) -> Option<SessionHandle> {
        let removed = self.sessions.remove(id).map(|(_, h)| h);
        if let Some(h) = &removed {
            self.remember_end(h.0.id.clone(), &EndReason::Deleted);
        }
        removed
    }

    /// The live session `id` on `route` started by `caller`'s principal, or the error a client
    /// gets for it: 404, saying why when the session ended recently. A session of another
    /// principal is not found, exactly as an unknown id is.
    pub fn lookup(&self, id: &str, route: &str, caller: &Caller) -> Result<SessionHandle, GatewayError> {
        match self.get(id).filter(|h| h.route() == route) {
            Some(h) if h.caller().name() == caller.name() => return Ok(h),
            Some(_) => {
                tracing::warn!(session.id = %id, "A session id was presented by a principal that does not own it.");
                return Err(GatewayError::UnknownSession);
            }
            None => {}
        }
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        match ended.iter().find(|(e, _)| &**e == id) {
            Some((_, why)) => Err(GatewayError::SessionGone(why.clone())),
            None => Err(GatewayError::UnknownSession),
        }
    }

    fn remember_end(&self, id: Arc<str>, reason: &EndReason) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() == TOMBSTONES {
            ended.pop_front();
        }
        ended.push_back((id, reason.describe()));
    }

    pub fn get(&self, id: &str) -> Option<SessionHandle> {
        self.sessions.get(id).map(|h| h.clone())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// A fresh id: `<instance>.<128 random bits in hex>`.
    fn mint_id(&self) -> Arc<str> {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let mut id = String::with_capacity(self.instance_id.len() + 33);
        id.push_str(&self.instance_id);
        id.push('.');
        for b in bytes {
            let _ = write!(id, "{b:02x}");
        }
        Arc::from(id)
    }

    /// Starts a session that is not yet visible to clients: connects the backend and runs the
    /// session task. [`Registry::publish`] makes it visible once `initialize` succeeded.
    pub async fn start(
        self: &Arc<Self>,
        route: &str,
        backend: &Backend,
        transport: Transport,
        caller: &Caller,
    ) -> Result<SessionHandle, GatewayError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(GatewayError::ShuttingDown);
        }
        let config = self.config();
        // The instance's place, then the route's, then the principal's; the slot gives back
        // whichever were taken, when the session ends or when a later one is refused.
        let mut slot = Slot { registry: self.clone(), route: None, principal: None };
        if self.slots.fetch_add(1, Ordering::SeqCst) >= config.max_sessions {
            return Err(GatewayError::TooManySessions(config.max_sessions));
        }
        {
            // Every route's sessions are counted, capped or not, so a cap set by a reload
            // counts the sessions already there.
            let cap = self
                .route_caps
                .entry(route.to_owned())
                .or_insert_with(|| (AtomicUsize::new(usize::MAX), AtomicUsize::new(0)));
            let (max, live) = (cap.0.load(Ordering::SeqCst), &cap.1);
            if live.fetch_add(1, Ordering::SeqCst) >= max {
                live.fetch_sub(1, Ordering::SeqCst);
                return Err(GatewayError::RouteFull(route.to_owned(), max));
            }
            slot.route = Some(Arc::from(route));
        }
        if let Some(name) = caller.name() {
            let cap = self.principal_cap.load(Ordering::SeqCst);
            let mut held = self.by_principal.entry(name.clone()).or_insert(0);
            if *held >= cap {
                drop(held);
                self.by_principal.remove_if(name, |_, n| *n == 0);
                return Err(GatewayError::PrincipalFull(cap));
            }
            *held += 1;
            slot.principal = Some(name.clone());
        }
        let id = self.mint_id();
        let ctx = backend::Context { self_exe: self.self_exe.clone(), session_id: id.clone() };
        let conn = backend.connect(&ctx).await.map_err(|e| GatewayError::BackendUnavailable(e.0))?;
        let (commands, rx) = mpsc::channel(64);
        let (in_flight, metrics, grants) =
            (self.in_flight.clone(), actor::RouteMetrics::new(&self.metrics, route), caller.1.clone());
        let core = Arc::new(Mutex::new(actor::Actor::new(config, conn.tx.clone(), in_flight, metrics, grants)));
        conn.events.bind(Arc::new(actor::Direct::new(&core, &commands)));
        let handle = SessionHandle(Arc::new(Inner {
            id: id.clone(),
            route: Arc::from(route),
            commands,
            core: core.clone(),
            backend: conn.tx.clone(),
            version: OnceLock::new(),
            initialize_result: OnceLock::new(),
            caller: caller.clone(),
        }));
        let m = &self.metrics;
        let shutdown = self.shutdown.clone();
        let registry = self.clone();
        let span = tracing::info_span!("session", session.id = %handle.id(), route = route, backend.name = backend.name(), transport = transport.label());
        m.sessions_created.with_label_values(&[route, transport.label()]).inc();
        let live = crate::metrics::Live::new(m.sessions.with_label_values(&[route, transport.label()]));
        let ended = m.sessions_ended.clone();
        let route_label: Arc<str> = Arc::from(route);
        let session_id = ctx.session_id;
        self.tasks.spawn(async move {
            let reason = actor::Actor::run(core, rx, conn.events, shutdown).await;
            ended.with_label_values(&[&route_label, reason.label()]).inc();
            drop(live);
            if registry.sessions.remove(&*session_id).is_some() {
                registry.remember_end(session_id.clone(), &reason);
            }
            tracing::info!(parent: &span, reason = %reason.describe(), "The session ended.");
            // Boxed, as the end in `run`: an idle session's task keeps no room for its ending.
            Box::pin(conn.stopper.stop()).await;
            drop(slot);
        });
        Ok(handle)
    }

    /// Makes an initialized session visible under its id.
    pub fn publish(&self, handle: &SessionHandle, version: &str, initialize_result: Bytes) {
        let _ = handle.0.version.set(version.into());
        let _ = handle.0.initialize_result.set(initialize_result);
        self.sessions.insert(handle.0.id.clone(), handle.clone());
        // The session task may have ended (backend gone) before the insert: it removed the id
        // already, so take the stale entry out again.
        if handle.0.commands.is_closed() {
            self.sessions.remove(&handle.0.id);
        }
    }

    /// Cancelled when shutdown ends every session; connections without a session watch it.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Refuses new sessions from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Ends every session (their in-flight requests get an error) and waits until their
    /// backends are stopped.
    pub async fn end_all(&self) {
        self.start_draining();
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
