//! A small MCP client over Streamable HTTP, enough to drive the gateway byte by byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Http;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

pub struct Client {
    pub url: String,
    http: Http<HttpConnector, Full<Bytes>>,
    pub session: Option<String>,
    pub version: String,
    /// `Authorization` sent with every request of the helpers (`Bearer …`).
    pub authorization: Option<String>,
    next_id: AtomicU64,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

pub struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
    /// Comments (`: keep-alive`) seen so far.
    pub comments: usize,
}

impl Client {
    pub fn new(url: &str) -> Client {
        Client {
            url: url.to_owned(),
            http: Http::builder(TokioExecutor::new()).build_http(),
            session: None,
            version: "2025-06-18".into(),
            authorization: None,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request with exactly these headers (plus Host) and body.
    pub async fn raw(&self, method: Method, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response {
        let mut req = Request::builder().method(method).uri(&self.url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self.http.request(req).await.expect("the gateway answers");
        let (parts, body) = resp.into_parts();
        Response { status: parts.status, headers: parts.headers, body }
    }

    /// The headers a well-behaved client sends, plus `extra`.
    fn headers<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![("accept", ACCEPT_BOTH), ("content-type", "application/json")];
        if let Some(s) = &self.session {
            h.push(("mcp-session-id", s.as_str()));
            h.push(("mcp-protocol-version", self.version.as_str()));
        }
        if let Some(a) = &self.authorization {
            h.push(("authorization", a.as_str()));
        }
        h.extend_from_slice(extra);
        h
    }

    /// A client that sends `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Client {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    pub async fn post(&self, body: &Value) -> Response {
        self.post_with(body, &[]).await
    }

    pub async fn post_with(&self, body: &Value, extra: &[(&str, &str)]) -> Response {
        self.raw(Method::POST, &self.headers(extra), body.to_string()).await
    }

    pub async fn get_stream(&self, extra: &[(&str, &str)]) -> Response {
        let mut h = vec![("accept", "text/event-stream")];
        if let Some(s) = &self.session {
            h.push(("mcp-session-id", s.as_str()));
            h.push(("mcp-protocol-version", self.version.as_str()));
        }
        if let Some(a) = &self.authorization {
            h.push(("authorization", a.as_str()));
        }
        h.extend_from_slice(extra);
        self.raw(Method::GET, &h, Bytes::new()).await
    }

    pub async fn delete(&self) -> Response {
        let h = self.headers(&[]);
        self.raw(Method::DELETE, &h, Bytes::new()).await
    }

    /// `initialize` + `notifications/initialized`; keeps the session id.
    pub async fn initialize(&mut self, version: &str) -> Value {
        let id = self.next_id();
        let resp = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
                "protocolVersion": version,
                "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}},
                "clientInfo": {"name": "mcp-edge-tests", "version": "0"}}}))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "initialize succeeds");
        let session = resp.headers.get("mcp-session-id").expect("a session id").to_str().unwrap().to_owned();
        let result = resp.message().await;
        self.version = result["result"]["protocolVersion"].as_str().unwrap_or(version).to_owned();
        self.session = Some(session);
        let ack = self.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(ack.status, StatusCode::ACCEPTED);
        result
    }

    /// Sends a request and returns its JSON-RPC response, from JSON or SSE.
    pub async fn request(&self, method: &str, params: Value) -> Value {
        let id = self.next_id();
        let resp = self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        assert_eq!(resp.status, StatusCode::OK, "{method} is answered");
        resp.message().await
    }

    /// The HTTP status of a request with empty params (its body is dropped).
    pub async fn request_status(&self, method: &str) -> StatusCode {
        let id = self.next_id();
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})).await.status
    }

    pub async fn call_tool(&self, name: &str, args: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": args})).await
    }
}

impl Response {
    pub async fn bytes(self) -> Bytes {
        self.body.collect().await.expect("a whole body").to_bytes()
    }

    pub async fn json(self) -> Value {
        let b = self.bytes().await;
        serde_json::from_slice(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)))
    }

    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn is_sse(&self) -> bool {
        self.content_type().starts_with("text/event-stream")
    }

    pub fn sse(self) -> SseReader {
        assert!(self.is_sse(), "expected an SSE stream, got {}", self.content_type());
        SseReader { body: self.body, buf: Vec::new(), comments: 0 }
    }

    /// The JSON-RPC response in this answer: the body, or the first response event.
    pub async fn message(self) -> Value {
        if !self.is_sse() {
            return self.json().await;
        }
        let mut sse = self.sse();
        while let Some(ev) = sse.next_within(Duration::from_secs(30)).await {
            let v = ev.json();
            if v.get("result").is_some() || v.get("error").is_some() {
                return v;
            }
        }
        panic!("the stream ended without a response");
    }

    /// The ids of every event on this SSE answer, to its end, sorted by their JSON text.
    pub async fn event_ids(self) -> Vec<Value> {
        let mut sse = self.sse();
        let mut ids = Vec::new();
        while let Some(ev) = sse.next_within(Duration::from_secs(10)).await {
            ids.push(ev.json()["id"].clone());
        }
        ids.sort_by_key(|v| v.to_string());
        ids
    }
}

impl SseReader {
    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(ev) = self.parse_one() {
                return Some(ev);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// [`SseReader::next`] with a deadline; panics if it passes.
    pub async fn next_within(&mut self, d: Duration) -> Option<SseEvent> {
        tokio::time::timeout(d, self.next()).await.expect("an SSE event or the end in time")
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block[..end]).into_owned();
            let mut ev = SseEvent::default();
            let mut any = false;
            for line in text.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) =
                    line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
                any = true;
                match field {
                    "id" => ev.id = Some(value.to_owned()),
                    "event" => ev.event = Some(value.to_owned()),
                    "data" => ev.data.push_str(value),
                    "retry" => ev.retry = value.parse().ok(),
                    _ => {}
                }
            }
            if any {
                return Some(ev);
            }
        }
    }
}
