//! The whole life of a session: initialize, use, GET stream, DELETE, then 404 everywhere.

use http::StatusCode;
use serde_json::json;

use crate::common::{Client, TestGateway};

#[tokio::test]
async fn a_session_is_born_used_and_deleted() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();

    let init = c.initialize("2025-06-18").await;
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-edge-example");
    let sid = c.session.clone().unwrap();
    let (prefix, random) = sid.split_once('.').expect("<instance>.<random>");
    assert_eq!(prefix, "test");
    assert!(random.len() >= 32 && sid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "visible ASCII: {sid}");

    let tools = c.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"echo") && names.contains(&"test_sampling"), "{names:?}");

    let echoed = c.call_tool("echo", json!({"message": "hello through the gateway"})).await;
    assert_eq!(echoed["result"]["content"][0]["text"], "hello through the gateway");

    let get = c.get_stream(&[]).await;
    assert_eq!(get.status, StatusCode::OK);
    assert!(get.is_sse());
    assert_eq!(get.headers["cache-control"], "no-cache");
    assert_eq!(get.headers["x-accel-buffering"], "no");

    let del = c.delete().await;
    assert_eq!(del.status, StatusCode::OK);
    // The GET stream of a deleted session ends.
    let mut stream = get.sse();
    assert!(stream.next_within(std::time::Duration::from_secs(5)).await.is_none());

    let after = c.post(&json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"})).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(after.json().await["error"]["code"], -32001);
    assert_eq!(c.get_stream(&[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.delete().await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn session_ids_are_minted_only_for_a_successful_initialize() {
    let gw = TestGateway::default().await;
    let c = Client::new(&gw.url);
    // The example server refuses an initialize without params: no session id may be minted.
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"})).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.headers.get("mcp-session-id").is_none());
    let body = resp.json().await;
    assert!(body.get("error").is_some(), "{body}");
}

#[tokio::test]
async fn every_session_era_revision_initializes() {
    let gw = TestGateway::default().await;
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let mut c = gw.client();
        let r = c.initialize(v).await;
        assert_eq!(r["result"]["protocolVersion"], v);
        let pong = c.request("ping", json!({})).await;
        assert_eq!(pong["result"], json!({}));
    }
}

#[tokio::test]
async fn notifications_and_responses_get_202_with_an_empty_body() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let r = c.post(&json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.bytes().await.is_empty());
    let r = c.post(&json!({"jsonrpc": "2.0", "id": "unknown", "result": {}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn each_route_has_its_own_sessions() {
    let mut config = crate::common::default_config();
    let backend = config.backends["example"].clone();
    config.backends.insert("other".into(), backend);
    config.routes.push(mcp_edge::config::RouteConfig::new("/other", "other"));
    let gw = TestGateway::start(config).await;
    let mut a = gw.client();
    a.initialize("2025-06-18").await;
    let mut b = Client::new(&gw.url.replace("/mcp", "/other"));
    b.initialize("2025-06-18").await;
    assert_eq!(b.call_tool("echo", json!({"message": "on /other"})).await["result"]["content"][0]["text"], "on /other");
    // A session id means nothing on another route.
    b.session = a.session.clone();
    let crossed = b.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    assert_eq!(crossed.status, StatusCode::NOT_FOUND);
    assert_eq!(b.delete().await.status, StatusCode::NOT_FOUND);
    assert_eq!(a.request("ping", json!({})).await["result"], json!({}), "the session lives on at its own route");
}

#[tokio::test]
async fn an_idle_session_ends_and_its_child_goes() {
    let mut config = crate::common::default_config();
    config.sessions.idle_timeout = std::time::Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    // A GET stream keeps the session alive past its idle timeout.
    let get = c.get_stream(&[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));
    drop(get);
    // Watch the child, not the session: a request would count as activity.
    let gone = crate::common::eventually(std::time::Duration::from_secs(10), || {
        crate::common::procs::my_descendants().is_empty()
    })
    .await;
    assert!(gone, "the idle session ended and its child was stopped");
    let r = c.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
