//! A session's side of the pool: what it sends. `initialize`, `logging/setLevel` and all but
//! the first subscription to a URI are answered by the pool itself; requests go to a child
//! with room under a child-unique id (and progress token); cancellations and answers to the
//! child's own requests are mapped back to the child that should get them.
//!
//! A session has no task here: its [`Port`] routes each message in the sender's task. What
//! must wait — for a child with room, for room in a child's stdin queue — waits in a task of
//! its own, so a sender that gives up halfway (a client gone mid-request) leaves no request
//! half-registered.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{Pending, SessionEntry, Shared, Slot};
use crate::backend::{Connection, Context, Event, Gone, Outbox, Refused, Stopper};
use crate::error::GatewayError;
use crate::jsonrpc::rewrite::with_param;
use crate::jsonrpc::{Id, Kind, Message};

/// Opens a session's connection to the pool.
pub(super) fn open(shared: Arc<Shared>, _ctx: &Context) -> Connection {
    let key = shared.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One place more than the buffer: the reason a session that fell behind is ended.
    let (events_tx, events) = crate::backend::events(shared.config.session_buffer + 1);
    let entry = Arc::new(SessionEntry {
        key,
        events: events_tx,
        outgoing: Default::default(),
        asked: Default::default(),
        subscribed: Default::default(),
        ended: CancellationToken::new(),
    });
    Shared::lock(&shared.sessions).insert(key, entry.clone());
    let port = Port { shared: shared.clone(), entry };
    Connection { tx: Outbox::Pool(port), events, stopper: Stopper::Pool(PoolStopper { shared, key }) }
}

/// A session's way into the pool.
#[derive(Clone)]
pub struct Port {
    shared: Arc<Shared>,
    entry: Arc<SessionEntry>,
}

impl Port {
    /// Routes one message of the session. Waits only for the pool to be ready (`initialize`),
    /// which changes nothing until it is over.
    pub(crate) async fn send(&self, raw: Bytes) -> Result<(), Gone> {
        match Message::parse(&raw) {
            Ok(msg) => self.route(msg).await,
            Err(_) if self.closed() => Err(Gone),
            Err(_) => Ok(()),
        }
    }

    /// [`Port::send`] for a message already parsed, on one line.
    pub(crate) async fn route(&self, msg: Message) -> Result<(), Gone> {
        if self.closed() {
            return Err(Gone);
        }
        on_client(&self.shared, &self.entry, msg).await;
        Ok(())
    }

    /// Routes one message without waiting: a cancellation at once, anything else in a task.
    pub(crate) fn try_send(&self, raw: Bytes) -> Result<(), Refused> {
        if self.closed() {
            return Err(Refused::Gone);
        }
        let Ok(msg) = Message::parse(&raw) else { return Ok(()) };
        if msg.method() == Some("notifications/cancelled") {
            cancel(&self.shared, &self.entry, &msg);
            return Ok(());
        }
        let port = self.clone();
        self.shared.tasks.spawn(async move { on_client(&port.shared, &port.entry, msg).await });
        Ok(())
    }

    fn closed(&self) -> bool {
        self.entry.ended.is_cancelled() || self.shared.stop.is_cancelled()
    }
}

/// Ends a session's part in the pool (the pool and its children stay).
pub struct PoolStopper {
    shared: Arc<Shared>,
    key: u64,
}

impl PoolStopper {
    pub async fn stop(self) {
        self.shared.forget(self.key);
    }
}

async fn on_client(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: Message) {
    match (msg.kind, msg.method()) {
        // Boxed: once per session, and every sender's future would otherwise keep room for it.
        (Kind::Request, Some("initialize")) => Box::pin(initialize(shared, entry, &msg)).await,
        (Kind::Request, Some("logging/setLevel")) => {
            // One child serves many sessions: a level set by one would apply to all.
            reply(shared, entry, &msg, "{}");
        }
        (Kind::Request, Some("resources/subscribe")) => subscribe(shared, entry, msg),
        (Kind::Request, Some("resources/unsubscribe")) => {
            let uri = msg.param_str("uri").unwrap_or_default();
            Shared::lock(&entry.subscribed).remove(&uri);
            shared.unsubscribe(entry.key, &uri);
            reply(shared, entry, &msg, "{}");
        }
        (Kind::Request, _) => forward(shared, entry, msg, None),
        (Kind::Notification, Some("notifications/cancelled")) => cancel(shared, entry, &msg),
        (Kind::Notification, _) => {} // `initialized` was the pool's to send; roots changes are per client.
        (Kind::Result | Kind::Error, Some(_)) | (Kind::Result | Kind::Error, None) => answer(shared, entry, &msg),
    }
}

/// Answers `initialize` from the children's `InitializeResult`, once a child is ready.
async fn initialize(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: &Message) {
    let mut ready = shared.initialized.subscribe();
    let wait = ready.wait_for(Option::is_some);
    let result = match tokio::time::timeout(shared.config.queue_timeout, wait).await {
        Ok(Ok(r)) => r.clone(),
        _ => None,
    };
    match result {
        Some(result) => reply(shared, entry, msg, std::str::from_utf8(&result).unwrap_or("{}")),
        None => {
            let why = shared.health.get().unwrap_or_else(|| "no pool child is ready".into());
            fail(shared, entry, msg.id.as_ref(), &GatewayError::BackendUnavailable(why));
        }
    }
}

/// The first subscriber to a URI subscribes a child; the others are answered at once.
fn subscribe(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: Message) {
    let Some(uri) = msg.param_str("uri") else { return forward(shared, entry, msg, None) };
    Shared::lock(&entry.subscribed).insert(uri.clone());
    let first = {
        let mut subs = Shared::lock(&shared.subscriptions);
        let (set, _) = subs.entry(uri.clone()).or_insert_with(|| (HashSet::new(), None));
        let first = set.is_empty();
        set.insert(entry.key);
        first
    };
    if first {
        forward(shared, entry, msg, Some(uri));
    } else {
        reply(shared, entry, &msg, "{}");
    }
}

/// Sends a request to a child with room (waiting in the bounded queue when none has any).
fn forward(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: Message, subscribes: Option<String>) {
    if let Some(slot) = shared.take() {
        return send_on(shared, entry, &slot, msg, subscribes);
    }
    // Waits in its own task, so the session's later messages (cancellations) are not held up.
    let (shared, entry) = (shared.clone(), entry.clone());
    shared.clone().tasks.spawn(async move {
        shared.metrics.pool_queue_depth.inc();
        let got = shared.acquire(&entry.ended).await;
        shared.metrics.pool_queue_depth.dec();
        match got {
            Ok(slot) => send_on(&shared, &entry, &slot, msg, subscribes),
            Err(why) => fail(&shared, &entry, msg.id.as_ref(), &GatewayError::PoolBusy(why)),
        }
    });
}

/// Sends a request on a slot whose place it holds, under a child-unique id and token.
fn send_on(
    shared: &Arc<Shared>,
    entry: &Arc<SessionEntry>,
    slot: &Arc<Slot>,
    msg: Message,
    subscribes: Option<String>,
) {
    let id = msg.id.clone().expect("requests have ids");
    let (child_id, token) = {
        let mut routes = Shared::lock(&slot.routes);
        routes.next += 1;
        let n = routes.next;
        let token = msg.progress_token.as_ref().map(|t| {
            let child_token = format!("\"pool.{n}\"");
            routes.tokens.insert(child_token.clone(), (entry.key, t.clone()));
            child_token
        });
        routes.pending.insert(n, Pending { session: entry.key, id: id.clone(), token: token.clone() });
        (n, token)
    };
    Shared::lock(&entry.outgoing).insert(id.clone(), (slot.index, child_id));
    if let Some(uri) = subscribes {
        if let Some((_, holder)) = Shared::lock(&shared.subscriptions).get_mut(&uri) {
            *holder = Some(slot.index);
        }
    }
    let mut body = msg.with_id(&child_id.to_string());
    if let (Some(b), Some(t)) = (&body, &token) {
        body = with_param(b, &["_meta", "progressToken"], t);
    }
    let down = {
        let (shared, entry, slot) = (shared.clone(), entry.clone(), slot.clone());
        move || {
            if slot.finish(child_id, &shared.room).is_some() {
                Shared::lock(&entry.outgoing).remove(&id);
                let err = GatewayError::BackendUnavailable("the pool child is restarting".into());
                fail(&shared, &entry, Some(&id), &err);
            }
        }
    };
    match body {
        Some(b) => slot.send_or_wait(&shared.tasks, b, down),
        None => down(),
    }
}

/// A client's `notifications/cancelled`: passed to the child running the request, under its id there.
fn cancel(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: &Message) {
    let Some(id) = &msg.cancelled_id else { return };
    let Some((slot, child_id)) = Shared::lock(&entry.outgoing).remove(id) else { return };
    let slot = &shared.slots[slot];
    if slot.finish(child_id, &shared.room).is_some() {
        if let Some(b) = with_param(&msg.raw, &["requestId"], &child_id.to_string()) {
            slot.send(b);
        }
    }
}

/// The client's answer to a child's request: back to that child, under the child's own id.
fn answer(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: &Message) {
    let Some(id) = &msg.id else { return };
    let asked = Shared::lock(&entry.asked).remove(id.as_json());
    let Some((slot, child_id)) = asked else { return };
    if let Some(b) = msg.with_id(child_id.as_json()) {
        shared.slots[slot].send_or_wait(&shared.tasks, b, || {});
    }
}

fn reply(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, msg: &Message, result: &str) {
    let Some(id) = &msg.id else { return };
    shared.deliver(entry.key, Event::Parsed(Box::new(Message::result(id, result))));
}

fn fail(shared: &Arc<Shared>, entry: &Arc<SessionEntry>, id: Option<&Id>, err: &GatewayError) {
    if id.is_none() {
        return;
    }
    tracing::info!(backend.name = %shared.name, "{err}");
    shared.deliver(entry.key, Event::Message(err.to_rpc(id)));
}
