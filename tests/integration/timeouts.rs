//! Request timeouts at the gateway, reset by progress; client cancellation.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use crate::common::{default_config, TestGateway};

#[tokio::test]
async fn a_silent_request_times_out_and_progress_keeps_it_alive() {
    let mut config = default_config();
    config.sessions.request_timeout = Duration::from_millis(400);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;

    let start = Instant::now();
    let timed_out = c.call_tool("sleep", json!({"ms": 3000})).await;
    assert_eq!(timed_out["error"]["code"], -32004, "{timed_out}");
    assert!(start.elapsed() < Duration::from_millis(2500), "answered at the timeout, not at the end");

    let kept = c
        .request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 1200, "progress_every_ms": 100},
            "_meta": {"progressToken": 1}}),
        )
        .await;
    assert_eq!(kept["result"]["content"][0]["text"], "slept 1200 ms", "{kept}");
}

#[tokio::test]
async fn a_cancelled_request_ends_its_stream_and_the_session_goes_on() {
    let mut config = default_config();
    config.sessions.json_wait = Duration::from_millis(50);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 30000}}})).await;
    let mut sse = resp.sse();
    let cancel =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77, "reason": "user"}});
    assert_eq!(c.post(&cancel).await.status, StatusCode::ACCEPTED);
    assert!(sse.next_within(Duration::from_secs(5)).await.is_none(), "the stream ends without a response");
    let pong = c.request("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}));
}

/// CPU time this process has used (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After the command: state(0) … utime(11) stime(12), in clock ticks (100 per second).
    Duration::from_millis((f[11] + f[12]) * 10)
}

#[tokio::test]
async fn a_call_that_outlives_the_idle_timeout_neither_ends_the_session_nor_spins() {
    let mut config = default_config();
    config.sessions.idle_timeout = Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let before = cpu_time();
    let answer = c.call_tool("sleep", json!({"ms": 1500})).await;
    let used = cpu_time() - before;
    assert_eq!(answer["result"]["content"][0]["text"], "slept 1500 ms");
    // A session task waking in a loop would burn a core for the whole 1.5 s.
    assert!(used < Duration::from_millis(600), "the gateway used {used:?} of CPU while waiting");
}

#[tokio::test]
async fn progress_for_a_request_not_in_flight_is_dropped() {
    let mut config = default_config();
    let s = crate::common::stdio(&mut config);
    s.command = "sh".into();
    s.args = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/fixtures/ghost_progress.sh").into()];
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x", "arguments": {}}}))
        .await;
    // Had the stale progress been passed on, it would have come first, on an SSE stream.
    assert_eq!(resp.content_type(), "application/json", "only the answer came");
    assert_eq!(resp.json().await["id"], 5);
}
