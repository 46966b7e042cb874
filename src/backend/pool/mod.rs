//! A shared pool of stdio children: a bounded set of long-lived servers, each initialized once
//! by the gateway, serving many sessions at once. For servers that keep no per-client state.
//!
//! Each session gets a [`Connection`] like any backend's; behind it, the pool answers the
//! session's `initialize` from the children's `InitializeResult`, and sends each request to
//! the child with the fewest requests in flight, under an id unique on that child (progress
//! tokens likewise), restoring both exactly on the way back. Server messages are routed only
//! to the sessions they concern (see [`child`]). A session that lets its queue fill up is
//! ended; a child's output is never paused for one client. Must not know about frontends.

mod child;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stdio::StdioBackend;
use super::{Connection, Context, Event, Health, Outbox, Refused};
use crate::config::PoolConfig;
use crate::jsonrpc::Id;
use crate::metrics::BackendMetrics;
use crate::FastMap;

pub use session::{PoolStopper, Port};

/// A configured pool; children start with the first session.
pub struct PoolBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PoolBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBackend").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

/// What the pool's children and sessions share.
pub(crate) struct Shared {
    name: Arc<str>,
    stdio: StdioBackend,
    config: PoolConfig,
    metrics: BackendMetrics,
    pub health: Health,
    slots: Vec<Arc<Slot>>,
    sessions: Mutex<FastMap<u64, Arc<SessionEntry>>>,
    next_session: AtomicU64,
    /// Resource URI → the sessions subscribed to it, and the slot whose child holds the one
    /// subscription (the one the first subscriber's request went to).
    subscriptions: Mutex<HashMap<String, Subscribers>>,
    /// Set when a reload replaced this pool: its children stop once its last session ends.
    retired: std::sync::atomic::AtomicBool,
    /// Requests waiting for a child with room.
    queued: AtomicUsize,
    room: Notify,
    /// The children's `InitializeResult` (the `result` member), once one is ready.
    initialized: watch::Sender<Option<Bytes>>,
    started: OnceLock<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The sessions subscribed to a URI, and the slot whose child holds the subscription.
type Subscribers = (HashSet<u64>, Option<usize>);

/// One position in the pool: the child now in it and the requests in flight on it.
pub(crate) struct Slot {
    index: usize,
    /// Messages towards the live child; `None` while it (re)starts.
    tx: Mutex<Option<Outbox>>,
    in_flight: AtomicUsize,
    routes: Mutex<Routes>,
}

/// The id and token maps of one child.
#[derive(Default)]
struct Routes {
    next: u64,
    /// Child request id → who asked.
    pending: FastMap<u64, Pending>,
    /// Child progress token → the session and its own token.
    tokens: HashMap<String, (u64, Id)>,
}

struct Pending {
    session: u64,
    id: Id,
    token: Option<String>,
}

/// A session of the pool: where its messages go, and its ids in flight on children.
pub(crate) struct SessionEntry {
    key: u64,
    events: super::Events,
    /// The session's request id → (slot, child id), for cancellations.
    outgoing: Mutex<FastMap<Id, (usize, u64)>>,
    /// Server→client requests forwarded to this session: the id it saw → (slot, child's id).
    asked: Mutex<HashMap<String, (usize, Id)>>,
    /// The URIs this session subscribed to.
    subscribed: Mutex<HashSet<String>>,
    ended: CancellationToken,
}

impl PoolBackend {
    pub fn new(stdio: StdioBackend, config: PoolConfig, metrics: BackendMetrics) -> PoolBackend {
        let slots = (0..config.size)
            .map(|index| {
                Arc::new(Slot { index, tx: Mutex::new(None), in_flight: AtomicUsize::new(0), routes: Mutex::default() })
            })
            .collect();
        let shared = Shared {
            name: Arc::from(stdio.name()),
            stdio,
            config,
            metrics,
            health: Health::default(),
            slots,
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            subscriptions: Mutex::default(),
            retired: std::sync::atomic::AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            room: Notify::new(),
            initialized: watch::channel(None).0,
            started: OnceLock::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        PoolBackend { shared: Arc::new(shared) }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// Stops every child (gateway shutdown).
    pub async fn shutdown(&self) {
        self.shared.shutdown().await;
    }

    /// A reload replaced this pool: its children stop once no session uses it.
    pub fn retire(&self) {
        self.shared.retire();
    }

    /// A session's connection to the pool; the first one starts the children.
    pub fn connect(&self, ctx: &Context) -> Connection {
        let shared = &self.shared;
        shared.started.get_or_init(|| {
            for slot in &shared.slots {
                shared.tasks.spawn(child::run(shared.clone(), slot.clone(), ctx.self_exe.clone()));
            }
        });
        session::open(shared.clone(), ctx)
    }
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, key: u64) -> Option<Arc<SessionEntry>> {
        Shared::lock(&self.sessions).get(&key).cloned()
    }

    /// Hands a message to a session without ever waiting: a session whose queue is full is
    /// ended (its last free place carries the reason), so a shared child is never paused.
    fn deliver(self: &Arc<Self>, key: u64, event: Event) {
        let Some(s) = self.session(key) else { return };
        if s.events.capacity() > 1 {
            let _ = s.events.try_send(event);
            return;
        }
        let why = format!(
            "the client did not keep up: over {} messages queued towards it from a shared child (pool.session_buffer)",
            self.config.session_buffer
        );
        tracing::info!(backend.name = %self.name, "Ending a pool session that does not keep up.");
        let _ = s.events.try_send(Event::Closed(why));
        self.forget(key);
    }

    /// Removes a session: cancels its requests in flight on the children and drops its
    /// subscriptions (unsubscribing a child from a URI nobody wants any more).
    fn forget(self: &Arc<Self>, key: u64) {
        let Some(s) = Shared::lock(&self.sessions).remove(&key) else { return };
        s.ended.cancel();
        let outgoing: Vec<(usize, u64)> = Shared::lock(&s.outgoing).drain().map(|(_, v)| v).collect();
        for (slot, child_id) in outgoing {
            let slot = &self.slots[slot];
            if slot.finish(child_id, &self.room).is_some() {
                slot.send(Bytes::from(format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{child_id},"reason":"the client's session ended"}}}}"#
                )));
            }
        }
        let uris: Vec<String> = Shared::lock(&s.subscribed).drain().collect();
        for uri in uris {
            self.unsubscribe(key, &uri);
        }
        self.stop_if_unused();
    }

    /// Drops `key` from a URI's subscribers; the last one out unsubscribes the child that
    /// holds the subscription.
    fn unsubscribe(&self, key: u64, uri: &str) {
        let mut subs = Shared::lock(&self.subscriptions);
        let Some((set, holder)) = subs.get_mut(uri) else { return };
        set.remove(&key);
        if !set.is_empty() {
            return;
        }
        let holder = *holder;
        subs.remove(uri);
        drop(subs);
        if let Some(slot) = holder.and_then(|h| self.slots.get(h)) {
            let msg = serde_json::json!({"jsonrpc": "2.0", "id": "mcp-edge.unsubscribe",
                "method": "resources/unsubscribe", "params": {"uri": uri}});
            slot.send(Bytes::from(msg.to_string()));
        }
    }

    /// Stops every child (gateway shutdown, or a retired pool without sessions).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// A reload replaced this pool: its children stop once no session uses it.
    pub fn retire(self: &Arc<Self>) {
        self.retired.store(true, Ordering::SeqCst);
        self.stop_if_unused();
    }

    fn stop_if_unused(self: &Arc<Self>) {
        if self.retired.load(Ordering::SeqCst) && Shared::lock(&self.sessions).is_empty() {
            self.stop.cancel();
        }
    }

    /// The ready slot with the fewest requests in flight and room for one more.
    fn pick(&self) -> Option<Arc<Slot>> {
        let max = self.config.max_in_flight;
        self.slots
            .iter()
            .filter(|s| s.is_up() && s.in_flight.load(Ordering::SeqCst) < max)
            .min_by_key(|s| s.in_flight.load(Ordering::SeqCst))
            .cloned()
    }

    /// Waits (bounded by `pool.queue` and `pool.queue_timeout`) for a child with room and
    /// takes a place on it.
    async fn acquire(&self, ended: &CancellationToken) -> Result<Arc<Slot>, String> {
        if let Some(slot) = self.take() {
            return Ok(slot);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.config.queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(format!("the pool's queue is full (pool.queue = {})", self.config.queue));
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        let got = loop {
            let room = self.room.notified();
            if let Some(slot) = self.take() {
                break Ok(slot);
            }
            // Cancel-safe: a notification, a deadline and a token.
            tokio::select! {
                _ = room => {}
                _ = tokio::time::sleep_until(deadline) => break Err(format!(
                    "no pool child had room within pool.queue_timeout ({} ms)", self.config.queue_timeout.as_millis())),
                _ = ended.cancelled() => break Err("the session ended".into()),
            }
        };
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.metrics.pool_queue_wait.observe(started.elapsed().as_secs_f64());
        got
    }

    fn take(&self) -> Option<Arc<Slot>> {
        loop {
            let slot = self.pick()?;
            let n = slot.in_flight.fetch_add(1, Ordering::SeqCst);
            if n < self.config.max_in_flight {
                return Some(slot);
            }
            slot.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Slot {
    fn is_up(&self) -> bool {
        Shared::lock(&self.tx).is_some()
    }

    /// Sends to the child without waiting; `false` when it is down or its queue is full.
    fn send(&self, msg: Bytes) -> bool {
        match Shared::lock(&self.tx).as_ref() {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Sends to the child: at once when its stdin queue has room, else from a task that waits
    /// for room, so no caller is held up and none can give up halfway. `down` runs when the
    /// child is down (or goes down before there is room).
    fn send_or_wait(&self, tasks: &TaskTracker, msg: Bytes, down: impl FnOnce() + Send + 'static) {
        let tx = Shared::lock(&self.tx).clone();
        let Some(tx) = tx else { return down() };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(Refused::Gone) => down(),
            Err(Refused::Full(msg)) => {
                tasks.spawn(async move {
                    if tx.send(msg).await.is_err() {
                        down();
                    }
                });
            }
        }
    }

    fn release(&self, room: &Notify) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        room.notify_one();
    }

    /// Takes a request off this child (answered, cancelled, or its session gone): forgets its
    /// id and progress token and frees its place.
    fn finish(&self, child_id: u64, room: &Notify) -> Option<Pending> {
        let p = {
            let mut routes = Shared::lock(&self.routes);
            let p = routes.pending.remove(&child_id)?;
            if let Some(t) = &p.token {
                routes.tokens.remove(t);
            }
            p
        };
        self.release(room);
        Some(p)
    }
}

/// How long a child must live for its exit not to count towards a crash loop.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
