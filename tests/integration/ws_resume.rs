//! A session outlives its WebSocket: resume by URL or by initialize, across transports, with
//! exactly the missed messages replayed; overflow and an expired grace end it clearly.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::ws::{connect, refusal, session_id, try_connect, ws_url, Ws};
use crate::common::{default_config, TestGateway};

fn event_id(v: &Value) -> String {
    let meta = if v.get("method").is_some() { &v["params"]["_meta"] } else { &v["result"]["_meta"] };
    meta["mcp-edge/eventId"].as_str().unwrap_or_else(|| panic!("no event id: {v}")).to_owned()
}

fn seq(id: &str) -> u64 {
    id.split_once('-').unwrap().1.parse().unwrap()
}

/// Opts in, starts a call that reports progress 19 times over ~1 s, reads `keep` messages,
/// then drops the connection without a close frame.
async fn start_and_drop(url: &str, keep: usize) -> (String, Vec<Value>) {
    let mut ws = connect(url).await;
    let sid = session_id(&ws.initialize(Some(json!({"mcp-edge/sessionId": null}))).await);
    ws.send(&json!({"jsonrpc": "2.0", "id": "call", "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"ms": 1000, "progress_every_ms": 50}, "_meta": {"progressToken": "t"}}}))
    .await;
    let mut seen = Vec::new();
    while seen.len() < keep {
        seen.push(ws.json().await);
    }
    drop(ws);
    (sid, seen)
}

/// Reads until the call's response.
async fn rest(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = ws.json().await;
        let done = v["id"] == "call";
        out.push(v);
        if done {
            return out;
        }
    }
}

fn assert_exactly_once_in_order(all: &[Value]) {
    let seqs: Vec<u64> = all.iter().map(|v| seq(&event_id(v))).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>(), "no gap, no repeat, in order");
    let progress = all.iter().filter(|v| v["method"] == "notifications/progress").count();
    assert_eq!(progress, 19, "every progress notification of the call");
    assert_eq!(all.last().unwrap()["result"]["content"][0]["text"], "slept 1000 ms");
}

#[tokio::test]
async fn resume_by_url_replays_exactly_the_missed_messages() {
    let gw = TestGateway::default().await;
    let (sid, mut seen) = start_and_drop(&ws_url(&gw.url, ""), 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // more progress happens while away
    let last = event_id(seen.last().unwrap());
    let mut ws = connect(&ws_url(&gw.url, &format!("session={sid}&lastEventId={last}"))).await;
    seen.extend(rest(&mut ws).await);
    assert_exactly_once_in_order(&seen);
}

#[tokio::test]
async fn resume_by_initialize_answers_from_the_stored_result_then_replays() {
    let gw = TestGateway::default().await;
    let (sid, mut seen) = start_and_drop(&ws_url(&gw.url, ""), 3).await;
    let last = event_id(seen.last().unwrap());
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.send(&json!({"jsonrpc": "2.0", "id": "again", "method": "initialize", "mcpSessionId": sid,
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"},
                   "_meta": {"mcp-edge/lastEventId": last}}}))
        .await;
    let answer = ws.json().await;
    assert_eq!(answer["id"], "again");
    assert_eq!(answer["result"]["serverInfo"]["name"], "mcp-edge-example", "the stored InitializeResult");
    assert_eq!(answer["mcpSessionId"], sid.as_str(), "answered in kind to a client using mcpSessionId");
    assert_eq!(session_id(&answer), sid);
    seen.extend(rest(&mut ws).await);
    assert_exactly_once_in_order(&seen);
    // The backend was not initialized twice: the session simply goes on.
    let (pong, _) = ws.request("ping", json!({})).await;
    assert!(pong.get("result").is_some());
}

#[tokio::test]
async fn an_http_session_can_move_to_websocket_and_back() {
    let gw = TestGateway::default().await;
    let mut http = gw.client();
    http.initialize("2025-06-18").await;
    let sid = http.session.clone().unwrap();
    let mut ws = connect(&ws_url(&gw.url, &format!("session={sid}"))).await;
    let (echo, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "via ws"}})).await;
    assert_eq!(echo["result"]["content"][0]["text"], "via ws");

    // The reverse: a WebSocket session used over HTTP, and its stream resumed with Last-Event-ID.
    let mut ws2 = connect(&ws_url(&gw.url, "")).await;
    let sid2 = session_id(&ws2.initialize(Some(json!({"mcp-edge/sessionId": null}))).await);
    let (echo, _) = ws2.request("tools/call", json!({"name": "echo", "arguments": {"message": "first"}})).await;
    let first_id = event_id(&echo);
    ws2.send(&json!({"jsonrpc": "2.0", "id": "second", "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "second"}}})).await;
    let second = ws2.json().await;
    drop(ws2);
    let mut h2 = gw.client();
    h2.session = Some(sid2);
    let r = h2.call_tool("echo", json!({"message": "via http"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "via http");
    let resp = h2.get_stream(&[("last-event-id", &first_id)]).await;
    assert_eq!(resp.status, 200);
    let mut sse = resp.sse();
    let ev = sse.next_within(Duration::from_secs(10)).await.expect("the replay");
    assert_eq!(ev.id.as_deref(), Some(event_id(&second).as_str()), "one numbering for both transports");
    let replayed = ev.json();
    assert_eq!(replayed["id"], "second");
    assert_eq!(replayed["result"]["content"], second["result"]["content"]);
}

#[tokio::test]
async fn an_overflowing_replay_buffer_ends_the_session_with_a_clear_error() {
    let mut config = default_config();
    config.sessions.replay_buffer_messages = 8;
    let gw = TestGateway::start(config).await;
    let (sid, _) = start_and_drop(&ws_url(&gw.url, ""), 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // 19 progress messages while away
    let (status, body) =
        refusal(try_connect(&ws_url(&gw.url, &format!("session={sid}")), &["mcp"], &[]).await.err().unwrap());
    assert_eq!(status, 404);
    assert!(body.contains("replay buffer overflowed"), "{body}");
}

#[tokio::test]
async fn a_dropped_session_lives_for_the_grace_period_only() {
    let mut config = default_config();
    config.sessions.resume_grace = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    let sid = session_id(&ws.initialize(None).await);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) =
        refusal(try_connect(&ws_url(&gw.url, &format!("session={sid}")), &["mcp"], &[]).await.err().unwrap());
    assert_eq!(status, 404);
    assert!(body.contains("did not reconnect"), "{body}");
}
