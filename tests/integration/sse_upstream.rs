//! Legacy HTTP+SSE upstreams: a second gateway serving the 2024-11-05 transport (its legacy
//! frontend in front of the example server) is the upstream, reached with `kind = "sse"` and by
//! the Streamable HTTP backend's fallback.

use std::time::Duration;

use http::StatusCode;
use mcp_edge::config::{BackendConfig, Config};
use serde_json::{json, Value};

use crate::common::{default_config, eventually, procs, TestGateway};

const T: Duration = Duration::from_secs(10);

/// A gateway whose route also serves legacy HTTP+SSE at `/sse` + `/messages`.
async fn legacy_upstream() -> TestGateway {
    let mut c = default_config();
    c.routes[0].sse_path = Some("/sse".into());
    c.routes[0].messages_path = Some("/messages".into());
    TestGateway::start(c).await
}

fn fronting(backend_toml: &str) -> Config {
    let mut c = default_config();
    c.instance_id = "front".into();
    c.backends.insert("example".into(), toml::from_str::<BackendConfig>(backend_toml).unwrap());
    c.validate().unwrap();
    c
}

fn sse_url(upstream: &TestGateway) -> String {
    format!("http://{}/sse", upstream.addr)
}

async fn round_trips(gw: &TestGateway) -> String {
    let mut c = gw.client();
    let init = c.initialize("2025-06-18").await;
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-edge-example");
    let echo = c.call_tool("echo", json!({"message": "via legacy"})).await;
    assert_eq!(echo["result"]["content"][0]["text"], "via legacy");
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": "s", "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 300, "progress_every_ms": 100}, "_meta": {"progressToken": 1}}}))
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let mut sse = resp.sse();
    let mut got: Vec<Value> = Vec::new();
    while let Some(ev) = sse.next_within(T).await {
        if !ev.data.is_empty() {
            got.push(ev.json());
        }
    }
    let progress = got.iter().filter(|m| m["method"] == "notifications/progress").count();
    assert_eq!(progress, 2, "{got:?}");
    assert_eq!(got.last().unwrap()["id"], "s");
    c.session.clone().unwrap()
}

#[tokio::test]
async fn an_sse_backend_serves_a_session_and_ends_it_upstream() {
    let upstream = legacy_upstream().await;
    let before = procs::my_descendants().len();
    let gw = TestGateway::start(fronting(&format!("kind = \"sse\"\nurl = \"{}\"", sse_url(&upstream)))).await;
    let session = round_trips(&gw).await;
    assert!(session.starts_with("front."));
    assert_eq!(procs::my_descendants().len(), before + 2, "one guard and one example child upstream");
    // DELETE ends the gateway session, which closes the upstream stream: its session and child end.
    let mut c = gw.client();
    c.session = Some(session);
    assert_eq!(c.delete().await.status, StatusCode::OK);
    let gone = eventually(T, || procs::my_descendants().len() == before).await;
    assert!(gone, "closing the legacy stream ended the upstream session");
}

#[tokio::test]
async fn the_http_backend_falls_back_to_legacy_sse_when_initialize_is_refused() {
    let upstream = legacy_upstream().await;
    let url = sse_url(&upstream);
    let gw = TestGateway::start(fronting(&format!("kind = \"http\"\nurl = \"{url}\"\nsse_fallback = true"))).await;
    round_trips(&gw).await;
    // Without the fallback the same upstream is a clear backend error, not a hang.
    let strict = TestGateway::start(fronting(&format!("kind = \"http\"\nurl = \"{url}\""))).await;
    let c = strict.client();
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    let body = resp.message().await;
    assert_eq!(body["error"]["code"], -32000, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("refused initialize"), "{body}");
}
