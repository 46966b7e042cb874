//! Every HTTP-level refusal the gateway makes, with its status and JSON-RPC code.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::client::ACCEPT_BOTH;
use crate::common::{default_config, Client, TestGateway};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

async fn expect(resp: crate::common::Response, status: StatusCode, code: Option<i64>) -> Value {
    assert_eq!(resp.status, status);
    let body = resp.json().await;
    if let Some(code) = code {
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    body
}

#[tokio::test]
async fn header_and_body_checks() {
    let gw = TestGateway::default().await;
    let c = Client::new(&gw.url);
    let json = ("content-type", "application/json");

    let only_json = c.raw(Method::POST, &[("accept", "application/json"), json], INIT).await;
    expect(only_json, StatusCode::NOT_ACCEPTABLE, Some(-32600)).await;
    let no_accept = c.raw(Method::POST, &[json], INIT).await;
    assert_eq!(no_accept.status, StatusCode::NOT_ACCEPTABLE);
    let text = c.raw(Method::POST, &[("accept", ACCEPT_BOTH), ("content-type", "text/plain")], INIT).await;
    expect(text, StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(-32600)).await;
    let bad = c.raw(Method::POST, &[("accept", ACCEPT_BOTH), json], "{not json").await;
    let body = expect(bad, StatusCode::BAD_REQUEST, Some(-32700)).await;
    assert_eq!(body["id"], Value::Null);
    let not_rpc = c.raw(Method::POST, &[("accept", ACCEPT_BOTH), json], r#"{"id":1,"method":"x"}"#).await;
    expect(not_rpc, StatusCode::BAD_REQUEST, Some(-32600)).await;
    let get_json = c.raw(Method::GET, &[("accept", "application/json")], "").await;
    assert_eq!(get_json.status, StatusCode::NOT_ACCEPTABLE);
    let put = c.raw(Method::PUT, &[("accept", ACCEPT_BOTH), json], INIT).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers["allow"], "GET, POST, DELETE");
    let mut other = Client::new(&gw.url.replace("/mcp", "/elsewhere"));
    other.session = None;
    assert_eq!(other.raw(Method::POST, &[("accept", ACCEPT_BOTH), json], INIT).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let mut config = default_config();
    config.server.max_body_bytes = 1024;
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let big = "x".repeat(2048);
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": big}}})).await;
    expect(resp, StatusCode::PAYLOAD_TOO_LARGE, Some(-32600)).await;
    // The session is untouched.
    let ok = c.call_tool("echo", json!({"message": "small"})).await;
    assert_eq!(ok["result"]["content"][0]["text"], "small");
}

#[tokio::test]
async fn session_header_rules() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"});
    expect(c.post(&list).await, StatusCode::BAD_REQUEST, Some(-32600)).await;
    assert_eq!(c.get_stream(&[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.delete().await.status, StatusCode::BAD_REQUEST);
    c.session = Some("test.00000000000000000000000000000000".into());
    expect(c.post(&list).await, StatusCode::NOT_FOUND, Some(-32001)).await;
    assert_eq!(c.get_stream(&[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn protocol_version_header_rules() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    c.version = "1999-01-01".into();
    expect(c.post(&list).await, StatusCode::BAD_REQUEST, Some(-32600)).await;
    // Another supported version is not an error: the negotiated one rules.
    c.version = "2025-03-26".into();
    let ok = c.post(&list).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.message().await["result"]["tools"].is_array());
}

#[tokio::test]
async fn batches_only_for_2025_03_26_and_never_with_initialize() {
    let gw = TestGateway::default().await;
    let c = Client::new(&gw.url);
    let init: Value = serde_json::from_str(INIT).unwrap();
    expect(c.post(&json!([init])).await, StatusCode::BAD_REQUEST, Some(-32600)).await;

    let mut newer = gw.client();
    newer.initialize("2025-06-18").await;
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]);
    expect(newer.post(&batch).await, StatusCode::BAD_REQUEST, Some(-32600)).await;

    let mut older = gw.client();
    older.initialize("2025-03-26").await;
    let resp = older.post(&json!([
        {"jsonrpc": "2.0", "id": "a", "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "b"}}}
    ])).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.event_ids().await, vec![json!("a"), json!(2)]);
}

#[tokio::test]
async fn a_stateless_probe_is_refused_at_once_with_invalid_request() {
    let gw = TestGateway::default().await;
    let c = Client::new(&gw.url);
    let probe = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}});
    let body = expect(
        c.post_with(&probe, &[("mcp-protocol-version", "2026-07-28")]).await,
        StatusCode::BAD_REQUEST,
        Some(-32600),
    )
    .await;
    assert!(!matches!(body["error"]["code"].as_i64(), Some(-32022..=-32020)));
    expect(c.post(&probe).await, StatusCode::BAD_REQUEST, Some(-32600)).await;
}

#[tokio::test]
async fn foreign_origins_and_hosts_get_403() {
    let gw = TestGateway::default().await;
    let c = Client::new(&gw.url);
    let base = [("accept", ACCEPT_BOTH), ("content-type", "application/json")];
    let with = |extra: (&'static str, &'static str)| {
        let mut h = base.to_vec();
        h.push(extra);
        h
    };
    let evil_origin = c.raw(Method::POST, &with(("origin", "https://evil.example")), INIT).await;
    expect(evil_origin, StatusCode::FORBIDDEN, Some(-32600)).await;
    let evil_host = c.raw(Method::POST, &with(("host", "evil.example.com")), INIT).await;
    expect(evil_host, StatusCode::FORBIDDEN, Some(-32600)).await;
    let local_origin = c.raw(Method::POST, &with(("origin", "http://localhost:5173")), INIT).await;
    assert_eq!(local_origin.status, StatusCode::OK);
    assert!(local_origin.headers.contains_key("mcp-session-id"));
}

#[tokio::test]
async fn a_second_standalone_get_stream_gets_409() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let first = c.get_stream(&[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(c.get_stream(&[]).await.status, StatusCode::CONFLICT);
    drop(first);
    // Once the first is gone, a new one may open.
    let mut reopened = false;
    for _ in 0..50 {
        if c.get_stream(&[]).await.status == StatusCode::OK {
            reopened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reopened);
    let unknown = c.get_stream(&[("last-event-id", "999-1")]).await;
    expect(unknown, StatusCode::BAD_REQUEST, Some(-32600)).await;
}

#[tokio::test]
async fn max_sessions_gives_503_with_retry_after_and_frees_on_delete() {
    let mut config = default_config();
    config.sessions.max_sessions = 2;
    let gw = TestGateway::start(config).await;
    let mut a = gw.client();
    a.initialize("2025-06-18").await;
    let mut b = gw.client();
    b.initialize("2025-06-18").await;
    let c = Client::new(&gw.url);
    let refused = c.raw(Method::POST, &[("accept", ACCEPT_BOTH), ("content-type", "application/json")], INIT).await;
    assert_eq!(refused.headers["retry-after"], "1");
    expect(refused, StatusCode::SERVICE_UNAVAILABLE, Some(-32007)).await;
    // Existing sessions keep working.
    assert_eq!(a.request("ping", json!({})).await["result"], json!({}));
    a.delete().await;
    assert!(initializes_within_two_seconds(&c).await, "a deleted session frees its slot");
}

/// Whether `initialize` succeeds again within 2 s (a freed slot is freed asynchronously).
async fn initializes_within_two_seconds(c: &Client) -> bool {
    let headers = [("accept", ACCEPT_BOTH), ("content-type", "application/json")];
    let initializes = || async { c.raw(Method::POST, &headers, INIT).await.status == StatusCode::OK };
    crate::common::eventually_async(std::time::Duration::from_secs(2), initializes).await
}

#[tokio::test]
async fn a_route_cap_refuses_that_route_only() {
    let mut config = default_config();
    config.routes[0].max_sessions = Some(1);
    let mut other = config.routes[0].clone();
    other.path = "/other".into();
    other.max_sessions = None;
    config.routes.push(other);
    let gw = TestGateway::start(config).await;
    let mut a = gw.client();
    a.initialize("2025-06-18").await;
    let c = Client::new(&gw.url);
    let refused = c.raw(Method::POST, &[("accept", ACCEPT_BOTH), ("content-type", "application/json")], INIT).await;
    assert_eq!(refused.headers["retry-after"], "1");
    let body = refused.bytes().await;
    assert!(String::from_utf8_lossy(&body).contains("routes.max_sessions of `/mcp` (1)"));
    let mut elsewhere = Client::new(&format!("http://{}/other", gw.addr));
    elsewhere.initialize("2025-06-18").await;
    a.delete().await;
    assert!(initializes_within_two_seconds(&c).await, "a deleted session frees its route's slot");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_close_while_the_others_are_served() {
    use crate::common::ws::{connect, ws_url};
    let mut config = default_config();
    config.server.max_connections = 2;
    let gw = TestGateway::start(config).await;
    let mut first = connect(&ws_url(&gw.url, "")).await;
    first.initialize(None).await;
    let mut second = connect(&ws_url(&gw.url, "")).await;
    second.initialize(None).await;
    // A third connection: a raw socket, so the client's own pool cannot reuse one of the two.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    third.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1") && answer.contains("server.max_connections (2)"), "{answer}");
    let (pong, _) = first.request("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}), "the connections inside the cap are served");
    drop(second);
    let mut freed = false;
    for _ in 0..100 {
        if let Ok(mut ws) = crate::common::ws::try_connect(&ws_url(&gw.url, ""), &["mcp"], &[]).await {
            ws.initialize(None).await;
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed connection frees its place");
}
