//! Legacy HTTP+SSE (2024-11-05) on `sse_path` and `messages_path`: the endpoint event, answers
//! on the stream, server→client requests, every refusal, and the session ending with its stream.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::client::SseReader;
use crate::common::{default_config, eventually, procs, stdio, Client, Response, TestGateway};

const WAIT: Duration = Duration::from_secs(20);
const JSON: (&str, &str) = ("content-type", "application/json");
const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{"sampling":{}},"clientInfo":{"name":"legacy","version":"1"}}}"#;

/// The shipped configuration with the legacy pair on `/mcp`; `marker` tags its children.
fn legacy_config(marker: &str) -> mcp_edge::config::Config {
    let mut c = default_config();
    c.routes[0].sse_path = Some("/sse".into());
    c.routes[0].messages_path = Some("/messages".into());
    stdio(&mut c).env.insert("LEGACY_SSE_TEST".into(), mcp_edge::config::Secret(marker.into()));
    c
}

/// The example servers started for `marker`'s gateway (found by their environment).
fn children(marker: &str) -> Vec<i32> {
    let tag = format!("LEGACY_SSE_TEST={marker}");
    procs::my_descendants()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("example-server") && !cmd.contains("__guard"))
        .filter(|(pid, _)| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|v| v == tag.as_bytes())
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// A legacy client: the open event stream and the URL it announced.
struct Legacy {
    events: SseReader,
    /// `http://ADDR/messages?sessionId=ID`
    post_url: String,
    session: String,
}

impl Legacy {
    async fn open(gw: &TestGateway) -> Legacy {
        let resp = Client::new(&format!("http://{}/sse", gw.addr))
            .raw(Method::GET, &[("accept", "text/event-stream")], Bytes::new())
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.headers["content-type"], "text/event-stream");
        assert_eq!(resp.headers["cache-control"], "no-cache");
        assert_eq!(resp.headers["x-accel-buffering"], "no");
        let mut events = resp.sse();
        let first = events.next_within(WAIT).await.expect("the endpoint event");
        assert_eq!(first.event.as_deref(), Some("endpoint"));
        assert_eq!(first.id, None, "legacy streams carry no event ids");
        let session = first.data.strip_prefix("/messages?sessionId=").expect("a relative URI").to_owned();
        assert!(session.starts_with("test."), "{session}");
        Legacy { events, post_url: format!("http://{}{}", gw.addr, first.data), session }
    }

    async fn post(&self, body: &Value) -> Response {
        Client::new(&self.post_url).raw(Method::POST, &[JSON], body.to_string()).await
    }

    /// POSTs and expects 202 with an empty body.
    async fn send(&self, body: &Value) {
        let resp = self.post(body).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{body}");
        assert!(resp.bytes().await.is_empty(), "202 has an empty body");
    }

    /// The next message on the stream.
    async fn next(&mut self) -> Value {
        let ev = self.events.next_within(WAIT).await.expect("a message, not the end of the stream");
        assert_eq!(ev.event.as_deref(), Some("message"));
        ev.json()
    }

    async fn initialize(&mut self) -> Value {
        self.send(&serde_json::from_str(INIT).unwrap()).await;
        let result = self.next().await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        result
    }
}

#[tokio::test]
async fn the_stream_announces_its_endpoint_and_carries_every_answer() {
    let gw = TestGateway::start(legacy_config("answers")).await;
    let mut c = Legacy::open(&gw).await;
    let init = c.initialize().await;
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-edge-example");

    c.send(&json!({"jsonrpc": "2.0", "id": "e", "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hello legacy"}}})).await;
    let echo = c.next().await;
    assert_eq!(echo["id"], "e");
    assert_eq!(echo["result"]["content"][0]["text"], "hello legacy");

    // Progress and the result of a call, in order, on the one stream.
    c.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}}})).await;
    for step in [0, 50, 100] {
        let p = c.next().await;
        assert_eq!(p["method"], "notifications/progress");
        assert_eq!(p["params"]["progress"], step);
    }
    assert_eq!(c.next().await["id"], 3);

    // The Python SDK's parameter name works too.
    let url = c.post_url.replace("sessionId=", "session_id=");
    let resp = Client::new(&url).raw(Method::POST, &[JSON], r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    assert_eq!(c.next().await, json!({"jsonrpc": "2.0", "id": 4, "result": {}}));
}

#[tokio::test]
async fn a_server_request_and_its_answer_cross_the_two_halves() {
    let gw = TestGateway::start(legacy_config("sampling")).await;
    let mut c = Legacy::open(&gw).await;
    c.initialize().await;
    c.send(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}}})).await;
    let ask = c.next().await;
    assert_eq!(ask["method"], "sampling/createMessage");
    c.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant", "content": {"type": "text", "text": "hello"}, "model": "m"}})).await;
    let done = c.next().await;
    assert_eq!(done["id"], 5);
    assert_eq!(done["result"]["content"][0]["text"], "LLM response: hello");
}

#[tokio::test]
async fn shutdown_ends_the_stream_at_once() {
    let gw = TestGateway::start(legacy_config("shutdown")).await;
    let mut c = Legacy::open(&gw).await;
    c.initialize().await;
    let started = std::time::Instant::now();
    gw.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    assert!(c.events.next_within(WAIT).await.is_none(), "the stream ended");
    assert!(children("shutdown").is_empty(), "the child stopped");
}

async fn expect(resp: Response, status: StatusCode, code: i64) -> Value {
    assert_eq!(resp.status, status);
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

#[tokio::test]
async fn refusals_name_what_is_wrong() {
    let mut config = legacy_config("refusals");
    config.server.max_body_bytes = 1024;
    let gw = TestGateway::start(config).await;
    let c = Legacy::open(&gw).await;
    let at = |path: &str| Client::new(&format!("http://{}{path}", gw.addr));
    let init = Bytes::from_static(INIT.as_bytes());

    let unknown = at("/messages?sessionId=test.nope").raw(Method::POST, &[JSON], init.clone()).await;
    expect(unknown, StatusCode::NOT_FOUND, -32001).await;
    let body =
        expect(at("/messages").raw(Method::POST, &[JSON], init.clone()).await, StatusCode::BAD_REQUEST, -32600).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("sessionId"), "{body}");
    let bad = Client::new(&c.post_url).raw(Method::POST, &[JSON], "{not json").await;
    assert_eq!(expect(bad, StatusCode::BAD_REQUEST, -32700).await["id"], Value::Null);
    let text = Client::new(&c.post_url).raw(Method::POST, &[("content-type", "text/plain")], init.clone()).await;
    expect(text, StatusCode::UNSUPPORTED_MEDIA_TYPE, -32600).await;
    let big = json!({"jsonrpc": "2.0", "method": "x", "params": {"pad": "x".repeat(2048)}});
    expect(c.post(&big).await, StatusCode::PAYLOAD_TOO_LARGE, -32600).await;
    let early = c.post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})).await;
    expect(early, StatusCode::BAD_REQUEST, -32600).await;

    let evil = ("origin", "https://evil.example");
    let foreign = at("/sse").raw(Method::GET, &[("accept", "text/event-stream"), evil], Bytes::new()).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let foreign = Client::new(&c.post_url).raw(Method::POST, &[JSON, evil], init.clone()).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let no_accept = at("/sse").raw(Method::GET, &[("accept", "application/json")], Bytes::new()).await;
    assert_eq!(no_accept.status, StatusCode::NOT_ACCEPTABLE);
    let post_to_sse = at("/sse").raw(Method::POST, &[JSON], init.clone()).await;
    assert_eq!(post_to_sse.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post_to_sse.headers["allow"], "GET");
    let get_messages = at("/messages?sessionId=x").raw(Method::GET, &[], Bytes::new()).await;
    assert_eq!(get_messages.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_messages.headers["allow"], "POST");

    // A refused POST leaves the session usable.
    let mut c = c;
    assert_eq!(c.initialize().await["id"], 1);
    let again = c.post(&serde_json::from_str(INIT).unwrap()).await;
    expect(again, StatusCode::BAD_REQUEST, -32600).await;
}

#[tokio::test]
async fn closing_the_stream_ends_the_session_and_its_child() {
    let gw = TestGateway::start(legacy_config("close")).await;
    let mut c = Legacy::open(&gw).await;
    c.initialize().await;
    let running = children("close");
    assert_eq!(running.len(), 1, "one child for the session");
    let Legacy { events, post_url, session } = c;
    drop(events);
    assert!(
        eventually(WAIT, || !procs::alive(running[0])).await,
        "the child of session {session} stopped after its stream closed"
    );
    let after = Client::new(&post_url).raw(Method::POST, &[JSON], r#"{"jsonrpc":"2.0","method":"x"}"#).await;
    let body = expect(after, StatusCode::NOT_FOUND, -32001).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("closed"), "{body}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_session_ends() {
    let mut config = legacy_config("stall");
    config.legacy_sse.stall_timeout = Duration::from_millis(500);
    config.legacy_sse.send_queue = 4;
    let gw = TestGateway::start(config).await;
    // A raw socket with a small, fixed receive buffer: read the head and the endpoint event,
    // then nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut sock = socket.connect(gw.addr).await.unwrap();
    let get = format!("GET /sse HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n", gw.addr);
    sock.write_all(get.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("event: endpoint") || !head.ends_with(b"\n\n") {
        let mut b = [0u8; 1];
        assert_eq!(sock.read(&mut b).await.unwrap(), 1, "the stream stays open");
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap().trim().to_owned();
    let post_url = format!("http://{}{path}", gw.addr);
    let post = |body: String| {
        let url = post_url.clone();
        async move { Client::new(&url).raw(Method::POST, &[JSON], body).await.status }
    };
    assert_eq!(post(INIT.into()).await, StatusCode::ACCEPTED);
    assert!(eventually(WAIT, || children("stall").len() == 1).await, "the session's child runs");
    let child = children("stall");

    // Answers of 512 KiB until the socket buffers are full and the session is cut off (a post
    // may wait on the paused backend: move on after a while).
    let big = "x".repeat(512 * 1024);
    for i in 0..200 {
        if !procs::alive(child[0]) {
            break;
        }
        let call = json!({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": big}}});
        let _ = tokio::time::timeout(Duration::from_millis(100), post(call.to_string())).await;
    }
    assert!(eventually(WAIT, || !procs::alive(child[0])).await, "the stuck session ended");
    let resp = Client::new(&post_url).raw(Method::POST, &[JSON], r#"{"jsonrpc":"2.0","method":"x"}"#).await;
    let body = expect(resp, StatusCode::NOT_FOUND, -32001).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("stall_timeout"), "{body}");
    // The gateway closed the connection: reading drains what was sent, then ends (or resets).
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut rest)).await.expect("the connection was closed");
}
