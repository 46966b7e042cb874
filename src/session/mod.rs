//! Sessions: the gateway's own object behind every client, whatever transport carries it.
//!
//! A session is a task (the [`actor`]) that owns its backend connection, the table of
//! in-flight requests, its logical streams and its replay buffer. Frontends talk to it through
//! a [`SessionHandle`] with bounded channels and never see the backend's I/O; the session never
//! sees sockets, only [`Sink`]s. The [`Registry`] maps published ids to handles and bounds how
//! many sessions exist.

mod actor;
pub mod buffer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{self, Backend};
use crate::config::SessionConfig;
use crate::error::GatewayError;
use crate::jsonrpc::Message;
pub use buffer::EventId;

/// What a session sends towards one open stream.
#[derive(Debug)]
pub enum Frame {
    /// One server→client message. `last` marks the final message of a request stream.
    Event { id: EventId, data: Bytes, last: bool },
    /// The stream has nothing more (its requests were cancelled, or the session ended).
    End,
}

/// The sending side of one open stream (an HTTP response body, later a WebSocket).
pub type Sink = mpsc::Sender<Frame>;

/// Why a session ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EndReason {
    Deleted,
    Idle,
    InitializeFailed,
    BackendClosed(String),
    Shutdown,
}

impl EndReason {
    /// The error an in-flight request gets when its session ends for this reason.
    pub fn error(&self) -> GatewayError {
        match self {
            EndReason::BackendClosed(why) => GatewayError::BackendUnavailable(why.clone()),
            EndReason::Deleted => GatewayError::SessionEnded("deleted by the client".into()),
            EndReason::Idle => GatewayError::SessionEnded("idle timeout".into()),
            EndReason::InitializeFailed => GatewayError::SessionEnded("initialize failed".into()),
            EndReason::Shutdown => GatewayError::SessionEnded("the gateway is shutting down".into()),
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

enum Command {
    /// Client messages of one POST; requests among them get a stream fed to `sink`.
    Client {
        msgs: Vec<Message>,
        sink: Option<Sink>,
        reply: oneshot::Sender<Result<Opened, GatewayError>>,
    },
    /// A GET: the standalone stream, or a resumed one with `Last-Event-ID`.
    Open {
        last_event_id: Option<String>,
        sink: Sink,
        reply: oneshot::Sender<Result<Opened, GatewayError>>,
    },
    End(EndReason),
}

struct Inner {
    id: Arc<str>,
    /// The route path the session was created on; the id means nothing on another route.
    route: Arc<str>,
    commands: mpsc::Sender<Command>,
    backend: mpsc::Sender<Bytes>,
    /// The protocol version the backend answered `initialize` with.
    version: OnceLock<Box<str>>,
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

    /// Hands client messages to the session: requests are registered (and get a stream that
    /// feeds `sink`), cancellations are applied. The caller then sends them to the backend.
    pub async fn submit(&self, msgs: Vec<Message>, sink: Option<Sink>) -> Result<Opened, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Client { msgs, sink, reply }).await?;
        rx.await.map_err(|_| gone())?
    }

    /// Writes messages to the backend, waiting for room in its queue.
    pub async fn forward(&self, msgs: &[Message]) -> Result<(), GatewayError> {
        for m in msgs {
            self.0.backend.send(m.single_line()).await.map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Opens the standalone stream, or resumes a stream after `Last-Event-ID`.
    pub async fn open(&self, last_event_id: Option<String>, sink: Sink) -> Result<Opened, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Open { last_event_id, sink, reply }).await?;
        rx.await.map_err(|_| gone())?
    }

    /// Asks the session to end; returns at once.
    pub fn end(&self, reason: EndReason) {
        let tx = self.0.commands.clone();
        tokio::spawn(async move { tx.send(Command::End(reason)).await });
    }

    async fn command(&self, c: Command) -> Result<(), GatewayError> {
        self.0.commands.send(c).await.map_err(|_| gone())
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
    config: SessionConfig,
    sessions: DashMap<Arc<str>, SessionHandle>,
    /// Sessions that exist, published or still initializing; bounded by `max_sessions`.
    slots: AtomicUsize,
    draining: AtomicBool,
    in_flight: Arc<InFlight>,
    /// Session tasks and their backend stops, awaited on shutdown.
    tasks: TaskTracker,
    /// Cancelled once on shutdown; every session task watches it.
    shutdown: CancellationToken,
    self_exe: std::path::PathBuf,
}

/// Frees a session slot when the session's task ends.
struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    pub fn new(instance_id: String, config: SessionConfig, self_exe: std::path::PathBuf) -> Arc<Registry> {
        Arc::new(Registry {
            instance_id,
            config,
            sessions: DashMap::new(),
            slots: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            self_exe,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Unpublishes a session (DELETE): from now on its id gets 404.
    pub fn remove(&self, id: &str) -> Option<SessionHandle> {
        self.sessions.remove(id).map(|(_, h)| h)
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
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Arc::from(format!("{}.{hex}", self.instance_id))
    }

    /// Starts a session that is not yet visible to clients: connects the backend and runs the
    /// session task. [`Registry::publish`] makes it visible once `initialize` succeeded.
    pub async fn start(self: &Arc<Self>, route: &str, backend: &Backend) -> Result<SessionHandle, GatewayError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(GatewayError::ShuttingDown);
        }
        if self.slots.fetch_add(1, Ordering::SeqCst) >= self.config.max_sessions {
            self.slots.fetch_sub(1, Ordering::SeqCst);
            return Err(GatewayError::TooManySessions(self.config.max_sessions));
        }
        let slot = Slot(self.clone());
        let id = self.mint_id();
        let ctx = backend::Context { self_exe: self.self_exe.clone(), session_id: id.clone() };
        let conn = backend.connect(&ctx).await.map_err(|e| GatewayError::BackendUnavailable(e.0))?;
        let (commands, rx) = mpsc::channel(64);
        let handle = SessionHandle(Arc::new(Inner {
            id: id.clone(),
            route: Arc::from(route),
            commands,
            backend: conn.tx.clone(),
            version: OnceLock::new(),
        }));
        let actor = actor::Actor::new(self.config.clone(), conn.tx.clone(), self.in_flight.clone());
        let shutdown = self.shutdown.clone();
        let registry = self.clone();
        let span = tracing::info_span!("session", session.id = %handle.id(), backend.name = backend.name());
        self.tasks.spawn(async move {
            let reason = actor.run(rx, conn.events, shutdown).await;
            registry.sessions.remove(&*ctx.session_id);
            tracing::info!(parent: &span, reason = ?reason, "The session ended.");
            conn.stopper.stop().await;
            drop(slot);
        });
        Ok(handle)
    }

    /// Makes an initialized session visible under its id.
    pub fn publish(&self, handle: &SessionHandle, version: &str) {
        let _ = handle.0.version.set(version.into());
        self.sessions.insert(handle.0.id.clone(), handle.clone());
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
