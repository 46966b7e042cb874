//! The admin listener: `/metrics` scraped while connections, streams, sessions and calls come and
//! go — every gauge moves and returns to its baseline, counters match what was done, and the
//! exposition parses with a real Prometheus text parser; `/healthz` and `/readyz`.

use std::time::Duration;

use http::{Method, StatusCode};
use mcp_edge::config::BackendConfig;
use prometheus_parse::{Sample, Scrape, Value as PValue};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::upstream::refused_url;
use crate::common::ws::{connect, ws_url};
use crate::common::{default_config, Client, TestGateway};

/// One scrape of `/metrics`, parsed.
pub struct Metrics(Vec<Sample>);

impl Metrics {
    pub async fn scrape(admin: std::net::SocketAddr) -> Metrics {
        let resp = Client::new(&format!("http://{admin}/metrics")).raw(Method::GET, &[], "").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(resp.content_type().starts_with("text/plain; version=0.0.4"));
        let text = String::from_utf8(resp.bytes().await.to_vec()).unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses");
        Metrics(scrape.samples)
    }

    /// The value of `name` with exactly these labels among its own (absent: 0).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
                PValue::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
                PValue::Summary(_) => 0.0,
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.metric == name)
    }
}

async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (StatusCode, Value) {
    let resp = Client::new(&format!("http://{admin}{path}")).raw(Method::GET, &[], "").await;
    let status = resp.status;
    (status, resp.json().await)
}

const R: (&str, &str) = ("route", "/mcp");

#[tokio::test]
async fn gauges_follow_connections_streams_and_sessions_back_to_baseline() {
    let gw = TestGateway::default().await;
    let admin = gw.admin.expect("the admin listener is on");
    let base = Metrics::scrape(admin).await;
    assert!(
        base.has("mcp_edge_build_info") && base.has("process_resident_memory_bytes") && base.has("process_open_fds")
    );
    assert_eq!(base.get("mcp_edge_limit", &[("limit", "max_sessions"), ("route", "")]), 1000.0);
    assert_eq!(base.get("mcp_edge_websocket_connections", &[R]), 0.0);

    // Three WebSocket sessions and one HTTP session with its GET stream.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&ws_url(&gw.url, "")).await;
        ws.initialize(None).await;
        sockets.push(ws);
    }
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let get = c.get_stream(&[]).await.sse();
    let echo = c.call_tool("echo", json!({"message": "m"})).await;
    assert_eq!(echo["result"]["content"][0]["text"], "m");
    let odd = c.request("x/not-a-method", json!({})).await;
    assert!(odd.get("error").is_some());

    // A call in flight while scraping.
    let slow = c.call_tool("sleep", json!({"ms": 600}));
    let during = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Metrics::scrape(admin).await
    };
    let (_, m) = tokio::join!(slow, during);
    assert_eq!(m.get("mcp_edge_websocket_connections", &[R]), 3.0);
    assert_eq!(m.get("mcp_edge_websocket_connections_opened_total", &[R]), 3.0);
    assert_eq!(m.get("mcp_edge_sessions", &[R, ("transport", "websocket")]), 3.0);
    assert_eq!(m.get("mcp_edge_sessions", &[R, ("transport", "http")]), 1.0);
    assert_eq!(m.get("mcp_edge_sessions_created_total", &[R]), 4.0);
    assert_eq!(m.get("mcp_edge_sse_streams", &[R, ("kind", "get")]), 1.0);
    assert_eq!(m.get("mcp_edge_requests_in_flight", &[R]), 1.0);
    assert_eq!(m.get("mcp_edge_backend_processes", &[("backend", "example")]), 4.0);
    assert!(m.get("mcp_edge_received_bytes_total", &[("transport", "websocket")]) > 0.0);
    assert!(m.get("mcp_edge_sent_bytes_total", &[("transport", "http")]) > 0.0);

    // Everything ends: clean closes, a DELETE.
    for mut ws in sockets {
        ws.stream.close(Some(CloseFrame { code: 1000.into(), reason: "".into() })).await.unwrap();
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut ws.stream).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }
    assert_eq!(c.delete().await.status, StatusCode::OK);
    drop(get);
    let mut last = None;
    for _ in 0..200 {
        let m = Metrics::scrape(admin).await;
        let settled = m.get("mcp_edge_websocket_connections", &[R]) == 0.0
            && m.get("mcp_edge_sessions", &[R]) == 0.0
            && m.get("mcp_edge_sse_streams", &[R]) == 0.0
            && m.get("mcp_edge_backend_processes", &[("backend", "example")]) == 0.0;
        last = Some(m);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let m = last.unwrap();
    assert_eq!(m.get("mcp_edge_websocket_connections", &[R]), 0.0, "connections back to baseline");
    assert_eq!(m.get("mcp_edge_sessions", &[R]), 0.0, "sessions back to baseline");
    assert_eq!(m.get("mcp_edge_sse_streams", &[R]), 0.0, "streams back to baseline");
    assert_eq!(m.get("mcp_edge_requests_in_flight", &[R]), 0.0);
    assert_eq!(m.get("mcp_edge_backend_processes", &[("backend", "example")]), 0.0, "children gone");
    assert_eq!(m.get("mcp_edge_websocket_connections_closed_total", &[R, ("code", "client_closed")]), 3.0);
    assert_eq!(m.get("mcp_edge_sessions_ended_total", &[R, ("reason", "client_closed")]), 3.0);
    assert_eq!(m.get("mcp_edge_sessions_ended_total", &[R, ("reason", "delete")]), 1.0);
    assert_eq!(m.get("mcp_edge_backend_spawns_total", &[("backend", "example")]), 4.0);
    assert_eq!(m.get("mcp_edge_backend_exits_total", &[("backend", "example")]), 4.0);
    assert_eq!(m.get("mcp_edge_backend_crashes_total", &[("backend", "example")]), 0.0);
    let calls = [R, ("method", "tools/call"), ("outcome", "ok")];
    assert_eq!(m.get("mcp_edge_requests_total", &calls), 2.0, "echo and sleep");
    assert_eq!(m.get("mcp_edge_requests_total", &[R, ("method", "other"), ("outcome", "error")]), 1.0);
    assert_eq!(m.get("mcp_edge_requests_total", &[R, ("method", "initialize")]), 4.0);
    assert_eq!(m.get("mcp_edge_request_duration_seconds_count", &[R, ("method", "tools/call")]), 2.0);
    assert!(m.0.iter().all(|s| !s.labels.values().any(|v| v.contains("test."))), "no session id as a label");
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let gw = TestGateway::default().await;
    let admin = gw.admin.unwrap();
    let c = Client::new(&gw.url);
    let foreign =
        c.post_with(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}), &[("origin", "https://evil.example")]).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let mut unknown = Client::new(&gw.url);
    unknown.session = Some("test.nope".into());
    assert_eq!(unknown.request_status("ping").await, StatusCode::NOT_FOUND);
    let bad = c
        .raw(
            Method::POST,
            &[("accept", "application/json, text/event-stream"), ("content-type", "application/json")],
            "{",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let m = Metrics::scrape(admin).await;
    assert_eq!(m.get("mcp_edge_rejections_total", &[("reason", "origin")]), 1.0);
    assert_eq!(m.get("mcp_edge_rejections_total", &[("reason", "not_found")]), 1.0);
    assert_eq!(m.get("mcp_edge_rejections_total", &[("reason", "bad_request")]), 1.0);
}

#[tokio::test]
async fn healthz_and_readyz_say_alive_and_ready_or_why_not() {
    let gw = TestGateway::default().await;
    let admin = gw.admin.unwrap();
    assert_eq!(admin_get(admin, "/healthz").await.0, StatusCode::OK);
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ready")));

    // A backend whose upstream cannot be reached makes the instance unready until it can.
    let mut config = default_config();
    let down: BackendConfig =
        toml::from_str(&format!("kind = \"http\"\nurl = \"{}\"\nconnect_timeout = \"300ms\"", refused_url().await))
            .unwrap();
    config.backends.insert("example".into(), down);
    let gw = TestGateway::start(config).await;
    let admin = gw.admin.unwrap();
    assert_eq!(admin_get(admin, "/readyz").await.0, StatusCode::OK, "ready until a connect fails");
    let c = gw.client();
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    assert_eq!(resp.message().await["error"]["code"], -32000);
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("backend `example` is unusable: cannot connect") && reasons.contains("refused"), "{body}");
    let m = Metrics::scrape(admin).await;
    assert_eq!(m.get("mcp_edge_ready", &[]), 0.0);
    assert!(m.get("mcp_edge_upstream_errors_total", &[("backend", "example")]) >= 1.0);
}
