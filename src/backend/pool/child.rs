//! One pool position over time: start a child, initialize it (the gateway's own `initialize`),
//! route everything it says, and when it dies fail its requests in flight at once and start
//! another after a capped backoff. Repeated early deaths mark the backend unusable.
//!
//! Routing: a response goes to the session whose request it answers, under that session's
//! id; progress to the session holding the token; a resource update to the sessions subscribed
//! to its URI; list changes to every session; a server→client request (sampling, elicitation,
//! roots) to the one session with calls in flight on this child — with none or several, the
//! child gets an error, since the pool cannot tell whose it is.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Shared, Slot, HEALTHY_AFTER};
use crate::backend::{Context, Event, Outbox};
use crate::error::GatewayError;
use crate::jsonrpc::rewrite::with_param;
use crate::jsonrpc::{code, error_response, Kind, Message};
use crate::retry::Backoff;

/// Early deaths in a row that make the backend unusable.
const CRASH_LOOP: u32 = 3;
/// Ids of server→client requests as the sessions see them.
static ASKED: AtomicU64 = AtomicU64::new(1);

pub(super) async fn run(shared: Arc<Shared>, slot: Arc<Slot>, self_exe: PathBuf) {
    let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) };
    let mut failures: u32 = 0;
    while !shared.stop.is_cancelled() {
        let ctx = Context { self_exe: self_exe.clone(), session_id: Arc::from(format!("pool-{}", slot.index)) };
        let started = Instant::now();
        let why = match shared.stdio.spawn(&ctx) {
            Err(e) => e.0,
            Ok(mut conn) => {
                let why = match initialize(&shared, &conn.tx, &mut conn.events).await {
                    Ok(result) => {
                        shared.initialized.send_replace(Some(result));
                        resubscribe(&shared, &slot, &conn.tx).await;
                        *Shared::lock(&slot.tx) = Some(conn.tx.clone());
                        shared.room.notify_waiters();
                        tracing::info!(backend.name = %shared.name, child = slot.index, "A pool child is serving.");
                        route(&shared, &slot, &mut conn.events).await
                    }
                    Err(why) => why,
                };
                *Shared::lock(&slot.tx) = None;
                fail_in_flight(&shared, &slot, &why);
                conn.stopper.stop().await;
                why
            }
        };
        if shared.stop.is_cancelled() {
            return;
        }
        failures = if started.elapsed() < HEALTHY_AFTER { failures + 1 } else { 1 };
        if failures >= CRASH_LOOP {
            shared.health.failed(&format!("pool child {} keeps failing: {why}", slot.index));
        }
        let wait = backoff.initial.saturating_mul(1 << failures.min(8)).min(backoff.max);
        tracing::warn!(backend.name = %shared.name, child = slot.index, retry_in = ?wait, "A pool child ended: {why}.");
        // Cancel-safe: a sleep and a token.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stop.cancelled() => return,
        }
    }
}

/// The gateway's own `initialize` (documented protocol version and client capabilities), then
/// `notifications/initialized`; the `result` member of the answer.
async fn initialize(shared: &Shared, tx: &Outbox, events: &mut crate::backend::EventQueue) -> Result<Bytes, String> {
    let init = serde_json::json!({"jsonrpc": "2.0", "id": "mcp-edge.initialize", "method": "initialize", "params": {
        "protocolVersion": shared.config.protocol_version,
        "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}},
        "clientInfo": {"name": "mcp-edge-pool", "version": env!("CARGO_PKG_VERSION")}}});
    tx.send(Bytes::from(init.to_string())).await.map_err(|_| "the child closed its stdin")?;
    let answer = async {
        loop {
            let line = match events.recv().await {
                Some(Event::Message(line)) => line,
                Some(Event::Parsed(msg)) => msg.raw,
                Some(Event::Closed(why) | Event::SessionLost(why)) => return Err(why),
                None => return Err("the child is gone".into()),
            };
            let Ok(m) = Message::parse(&line) else { continue };
            if m.id.as_ref().is_some_and(|id| id.as_json() == "\"mcp-edge.initialize\"") {
                return crate::protocol::initialize_result(&line)
                    .map(|(_, result)| result)
                    .ok_or_else(|| format!("initialize failed: {}", String::from_utf8_lossy(&line)));
            }
        }
    };
    let result = tokio::time::timeout(shared.config.queue_timeout, answer)
        .await
        .map_err(|_| "the child did not answer initialize within pool.queue_timeout".to_string())??;
    let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    tx.send(initialized).await.map_err(|_| "the child closed its stdin")?;
    Ok(result)
}

/// A restarted child takes over the subscriptions its position held.
async fn resubscribe(shared: &Shared, slot: &Slot, tx: &Outbox) {
    let uris: Vec<String> = Shared::lock(&shared.subscriptions)
        .iter()
        .filter(|(_, (_, holder))| *holder == Some(slot.index))
        .map(|(uri, _)| uri.clone())
        .collect();
    for uri in uris {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": "mcp-edge.subscribe", "method": "resources/subscribe",
            "params": {"uri": uri}});
        let _ = tx.send(Bytes::from(msg.to_string())).await;
    }
}

/// Routes what the child says until it ends; why it ended.
async fn route(shared: &Arc<Shared>, slot: &Arc<Slot>, events: &mut crate::backend::EventQueue) -> String {
    loop {
        // Cancel-safe: a channel receive and a token.
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shared.stop.cancelled() => return "the gateway is shutting down".into(),
        };
        match event {
            Some(Event::Message(line)) => on_child(shared, slot, line),
            Some(Event::Parsed(msg)) => on_child(shared, slot, msg.raw),
            Some(Event::Closed(why) | Event::SessionLost(why)) => return why,
            None => return "the child is gone".into(),
        }
    }
}

fn on_child(shared: &Arc<Shared>, slot: &Arc<Slot>, line: Bytes) {
    let Ok(msg) = Message::parse(&line) else {
        tracing::warn!(backend.name = %shared.name, "A pool child sent a line that is not a JSON-RPC message; dropped it.");
        return;
    };
    match (msg.kind, msg.method()) {
        (Kind::Result | Kind::Error, _) => response(shared, slot, &msg),
        (Kind::Notification, Some("notifications/progress")) => progress(shared, slot, &msg),
        (Kind::Notification, Some("notifications/resources/updated")) => {
            let uri = msg.param_str("uri");
            let subscribers: Vec<u64> = uri
                .and_then(|u| Shared::lock(&shared.subscriptions).get(&u).map(|(set, _)| set.iter().copied().collect()))
                .unwrap_or_default();
            for key in subscribers {
                shared.deliver(key, Event::Message(line.clone()));
            }
        }
        (Kind::Notification, Some(m)) if m.ends_with("/list_changed") => {
            let all: Vec<u64> = Shared::lock(&shared.sessions).keys().copied().collect();
            for key in all {
                shared.deliver(key, Event::Message(line.clone()));
            }
        }
        (Kind::Notification, _) => {
            // Log messages and the like: to the one session with calls here, else nowhere.
            if let Some(key) = sole_session(slot) {
                shared.deliver(key, Event::Message(line));
            }
        }
        (Kind::Request, _) => ask(shared, slot, &msg),
    }
}

/// A response: to the session whose request it answers, under that session's id.
fn response(shared: &Arc<Shared>, slot: &Slot, msg: &Message) {
    let Some(n) = msg.id.as_ref().and_then(|id| id.as_json().parse::<u64>().ok()) else { return };
    let Some(p) = slot.finish(n, &shared.room) else { return };
    if let Some(entry) = shared.session(p.session) {
        Shared::lock(&entry.outgoing).remove(&p.id);
    }
    if let Some(answer) = msg.answering(&p.id) {
        shared.deliver(p.session, Event::Parsed(Box::new(answer)));
    }
}

fn progress(shared: &Arc<Shared>, slot: &Slot, msg: &Message) {
    let Some(token) = &msg.progress_token else { return };
    let owner = Shared::lock(&slot.routes).tokens.get(token.as_json()).cloned();
    let Some((key, own)) = owner else { return };
    if let Some(b) = with_param(&msg.raw, &["progressToken"], own.as_json()) {
        shared.deliver(key, Event::Message(b));
    }
}

/// A server→client request: to the one session with calls on this child, else an error.
fn ask(shared: &Arc<Shared>, slot: &Slot, msg: &Message) {
    let id = msg.id.clone().expect("requests have ids");
    let target = sole_session(slot).and_then(|k| shared.session(k));
    let Some(entry) = target else {
        let why = format!(
            "mcp-edge pool: `{}` cannot be routed to a client (no single session has a call in flight on this server)",
            msg.method().unwrap_or("a request")
        );
        if let Some(tx) = Shared::lock(&slot.tx).clone() {
            let _ = tx.try_send(error_response(Some(&id), code::INTERNAL_ERROR, &why));
        }
        return;
    };
    let seen = format!("\"mcp-edge.pool.{}\"", ASKED.fetch_add(1, Ordering::Relaxed));
    Shared::lock(&entry.asked).insert(seen.clone(), (slot.index, id));
    if let Some(b) = msg.with_id(&seen) {
        shared.deliver(entry.key, Event::Message(b));
    }
}

/// The session with requests in flight on this child, when there is exactly one.
fn sole_session(slot: &Slot) -> Option<u64> {
    let routes = Shared::lock(&slot.routes);
    let sessions: HashSet<u64> = routes.pending.values().map(|p| p.session).collect();
    (sessions.len() == 1).then(|| *sessions.iter().next().expect("one"))
}

/// A child died: every request in flight on it gets an error at once.
fn fail_in_flight(shared: &Arc<Shared>, slot: &Slot, why: &str) {
    let pending: Vec<_> = {
        let mut routes = Shared::lock(&slot.routes);
        routes.tokens.clear();
        routes.pending.drain().map(|(_, p)| p).collect()
    };
    let err = GatewayError::BackendUnavailable(format!("the pool child serving the request ended: {why}"));
    for p in pending {
        slot.release(&shared.room);
        if let Some(entry) = shared.session(p.session) {
            Shared::lock(&entry.outgoing).remove(&p.id);
        }
        shared.deliver(p.session, Event::Message(err.to_rpc(Some(&p.id))));
    }
}
