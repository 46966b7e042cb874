//! A WebSocket MCP client for the tests: raw frames, JSON helpers, close codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const T: Duration = Duration::from_secs(10);

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the gateway chose.
    pub protocol: Option<String>,
    next_id: u64,
}

/// What arrived.
#[derive(Debug)]
pub enum Got {
    Json(Value),
    Close(Option<u16>, String),
    Ping,
    /// The connection ended without a close frame.
    Gone,
}

/// `ws://…` for an `http://…/mcp` URL, with an optional query.
pub fn ws_url(http_url: &str, query: &str) -> String {
    let base = http_url.replacen("http://", "ws://", 1);
    if query.is_empty() {
        base
    } else {
        format!("{base}?{query}")
    }
}

/// Connects offering `protocols`, with extra headers.
pub async fn try_connect(url: &str, protocols: &[&str], headers: &[(&str, &str)]) -> Result<Ws, Error> {
    let mut req = url.into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (stream, resp) = tokio_tungstenite::connect_async(req).await?;
    let protocol = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
    Ok(Ws { stream, protocol, next_id: 1 })
}

pub async fn connect(url: &str) -> Ws {
    try_connect(url, &["mcp"], &[]).await.expect("the WebSocket opens")
}

/// The HTTP status of a refused upgrade, and its body.
pub fn refusal(err: Error) -> (u16, String) {
    match err {
        Error::Http(resp) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

impl Ws {
    pub async fn send(&mut self, v: &Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.expect("the frame is sent");
    }

    /// Sends a message, or says why it could not (the connection is gone).
    pub async fn try_send(&mut self, v: &Value) -> Result<(), Error> {
        self.stream.send(Message::Text(v.to_string().into())).await
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("the frame is sent");
    }

    /// The next frame of interest (pongs skipped).
    pub async fn next(&mut self) -> Got {
        loop {
            match tokio::time::timeout(T, self.stream.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(t))) => return Got::Json(serde_json::from_str(&t).expect("JSON")),
                Some(Ok(Message::Close(f))) => {
                    let f: Option<CloseFrame> = f;
                    return Got::Close(
                        f.as_ref().map(|f| u16::from(f.code)),
                        f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(Message::Ping(_))) => return Got::Ping,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Got::Gone,
            }
        }
    }

    /// The next JSON message (pings skipped); panics on anything else.
    pub async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Got::Json(v) => return v,
                Got::Ping => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Got::Close(code, _) => return code,
                Got::Gone => return None,
                _ => continue,
            }
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `initialize` (with `meta` as `params._meta` when given) and `notifications/initialized`.
    pub async fn initialize(&mut self, meta: Option<Value>) -> Value {
        let mut params = json!({"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
            "clientInfo": {"name": "ws-test", "version": "1"}});
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        self.send(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})).await;
        let answer = self.json().await;
        assert!(answer["result"]["protocolVersion"].is_string(), "initialize succeeded: {answer}");
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        answer
    }

    /// Sends a request and returns its response; other messages before it are returned too.
    pub async fn request(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        let id = self.next_id();
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        let mut before = Vec::new();
        loop {
            let v = self.json().await;
            if v["id"] == id && v.get("method").is_none() {
                return (v, before);
            }
            before.push(v);
        }
    }
}

/// The session id a WebSocket InitializeResult tells.
pub fn session_id(init: &Value) -> String {
    init["result"]["_meta"]["mcp-edge/sessionId"].as_str().expect("the session id in result._meta").to_owned()
}
