//! The built-in example MCP server: the default backend, the test fixture and the benchmark
//! backend. It serves the fixture tools, resources and prompts that the official conformance
//! suite calls (see [`fixtures`]), plus `echo`.
//!
//! Runs on stdio (`mcp-edge example-server`) or in-process behind the Streamable HTTP frontend
//! (`--http ADDR`, no child and no pipe: the no-gateway baseline). Either way it is one
//! [`Peer`] per client connection, reading JSON-RPC messages from a channel and writing them to
//! another, so the transport around it does not matter.

mod fixtures;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::codec::FramedRead;

use crate::jsonrpc::codec::LineCodec;
use crate::jsonrpc::{code, Id, Kind, Message};

/// Longest line the example server reads.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// A JSON-RPC error a handler returns.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(code::INVALID_PARAMS, message)
    }
}

/// One client connection of the example server.
pub struct Peer {
    out: mpsc::Sender<Bytes>,
    next_id: AtomicU64,
    /// Server→client requests waiting for the client's response.
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, RpcError>>>>,
    /// Client requests being handled, so `notifications/cancelled` can stop them.
    running: Mutex<HashMap<String, AbortHandle>>,
    pub(crate) subscriptions: Mutex<HashSet<String>>,
    pub(crate) log_level: Mutex<String>,
    pub(crate) client_capabilities: Mutex<Value>,
}

impl Peer {
    pub fn new(out: mpsc::Sender<Bytes>) -> Arc<Peer> {
        Arc::new(Peer {
            out,
            next_id: AtomicU64::new(1),
            waiting: Mutex::default(),
            running: Mutex::default(),
            subscriptions: Mutex::default(),
            log_level: Mutex::new("debug".into()),
            client_capabilities: Mutex::new(Value::Null),
        })
    }

    async fn send(&self, v: Value) {
        let _ = self.out.send(Bytes::from(v.to_string())).await;
    }

    /// Sends a notification to the client.
    pub async fn notify(&self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params})).await;
    }

    /// Sends a request to the client and waits for its answer.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("s{n}");
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("not poisoned").insert(format!("\"{id}\""), tx);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        rx.await.unwrap_or_else(|_| Err(RpcError::new(code::INTERNAL_ERROR, "the client went away")))
    }

    /// Tells the client, after `delay`, that a subscribed resource changed (the watched
    /// resource "changes" once per subscription), unless it unsubscribed meanwhile.
    pub(crate) fn announce_update(self: &Arc<Self>, uri: String, delay: std::time::Duration) {
        let peer = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if peer.subscriptions.lock().expect("not poisoned").contains(&uri) {
                peer.notify("notifications/resources/updated", json!({ "uri": uri })).await;
            }
        });
    }

    /// Handles one incoming line: requests run as tasks, responses wake their waiters.
    pub fn receive(self: &Arc<Self>, line: Bytes) {
        let msg = match Message::parse(&line) {
            Ok(m) => m,
            Err(e) => {
                let peer = self.clone();
                let body = crate::jsonrpc::error_response(None, e.code(), &e.to_string());
                tokio::spawn(async move {
                    let _ = peer.out.send(body).await;
                });
                return;
            }
        };
        let value: Value = serde_json::from_slice(&msg.raw).unwrap_or(Value::Null);
        match msg.kind {
            Kind::Request => self.clone().spawn_request(msg.id.expect("requests have ids"), value),
            Kind::Notification => self.on_notification(&msg),
            Kind::Result | Kind::Error => {
                let Some(id) = msg.id else { return };
                let waiter = self.waiting.lock().expect("not poisoned").remove(id.as_json());
                if let Some(tx) = waiter {
                    let answer = match msg.kind {
                        Kind::Result => Ok(value["result"].clone()),
                        _ => Err(RpcError::new(
                            value["error"]["code"].as_i64().unwrap_or(code::INTERNAL_ERROR),
                            value["error"]["message"].as_str().unwrap_or("error").to_owned(),
                        )),
                    };
                    let _ = tx.send(answer);
                }
            }
        }
    }

    fn on_notification(&self, msg: &Message) {
        if msg.method() == Some("notifications/cancelled") {
            if let Some(id) = &msg.cancelled_id {
                if let Some(task) = self.running.lock().expect("not poisoned").remove(id.as_json()) {
                    task.abort();
                }
            }
        }
    }

    fn spawn_request(self: Arc<Self>, id: Id, request: Value) {
        let peer = self.clone();
        let key = id.as_json().to_owned();
        let mut running = self.running.lock().expect("not poisoned");
        let task = tokio::spawn(async move {
            let method = request["method"].as_str().unwrap_or_default().to_owned();
            let params = request.get("params").cloned().unwrap_or(Value::Null);
            let answer = fixtures::handle(&peer, &method, params).await;
            peer.running.lock().expect("not poisoned").remove(id.as_json());
            let id_value: Value = serde_json::from_str(id.as_json()).unwrap_or(Value::Null);
            let reply = match answer {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id_value, "result": result}),
                Err(e) => {
                    json!({"jsonrpc": "2.0", "id": id_value, "error": {"code": e.code, "message": e.message}})
                }
            };
            peer.send(reply).await;
        });
        running.insert(key, task.abort_handle());
    }
}

/// Serves one client on stdin/stdout until stdin closes.
pub async fn serve_stdio() {
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = rx.recv().await {
            let mut line = Vec::with_capacity(msg.len() + 1);
            line.extend_from_slice(&msg);
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let peer = Peer::new(tx);
    let mut lines = FramedRead::new(tokio::io::stdin(), LineCodec::new(MAX_LINE));
    while let Some(Ok(line)) = lines.next().await {
        if !line.iter().all(u8::is_ascii_whitespace) {
            peer.receive(line);
        }
    }
    drop(peer);
    writer.abort();
}

/// An in-process connection to a fresh example server.
pub fn connect() -> crate::backend::Connection {
    use crate::backend::{Connection, Event, Stopper};
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(256);
    let (events_tx, events) = crate::backend::events(64);
    let peer = Peer::new(out_tx);
    let read = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            peer.receive(line);
        }
    });
    let write = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if events_tx.send(Event::Message(msg)).await.is_err() {
                break;
            }
        }
    });
    Connection { tx: tx.into(), events, stopper: Stopper::Tasks(vec![read.abort_handle(), write.abort_handle()]) }
}

/// Serves Streamable HTTP at `addr/mcp` in-process until `shutdown` resolves.
pub async fn serve_http(addr: SocketAddr, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let gateway = crate::Gateway::bind_in_process(addr).await?;
    eprintln!("mcp-edge example server: Streamable HTTP at http://{}/mcp", gateway.local_addr());
    gateway.run(shutdown).await;
    Ok(())
}
