//! The shared stdio pool: many sessions over a few long-lived children, every message to the
//! session it concerns with its own id, and a crashed child replaced while the others serve.

use std::collections::HashMap;
use std::time::Duration;

use mcp_edge::config::PoolConfig;
use serde_json::{json, Value};

use crate::common::ws::{connect, ws_url, Ws};
use crate::common::{default_config, eventually, procs, stdio, TestGateway};

async fn pooled(size: usize) -> TestGateway {
    pooled_with(PoolConfig::of(size)).await
}

async fn pooled_with(pool: PoolConfig) -> TestGateway {
    let mut c = default_config();
    c.sessions.max_sessions = 500;
    stdio(&mut c).pool = Some(pool);
    TestGateway::start(c).await
}

/// The example servers serving the pool (not their guards).
fn servers() -> Vec<i32> {
    procs::my_descendants()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("example-server") && !cmd.contains("__guard"))
        .map(|(p, _)| p)
        .collect()
}

async fn session(gw: &TestGateway) -> Ws {
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    ws
}

#[tokio::test]
async fn sixty_four_sessions_share_four_children_and_every_answer_finds_its_caller() {
    // Every call is sent at once: the queue holds them all (going over it is tested apart).
    let gw = pooled_with(PoolConfig { queue: 64 * 100, ..PoolConfig::of(4) }).await;
    let mut sessions = Vec::new();
    for _ in 0..64 {
        sessions.push(session(&gw).await);
    }
    assert!(eventually(Duration::from_secs(10), || servers().len() == 4).await, "four children, not one per session");
    let runs = sessions.into_iter().enumerate().map(|(s, mut ws)| async move {
        // 100 calls in flight at once per session, ids mixing numbers and strings that every
        // session reuses: the pool must keep them apart.
        let mut expected = HashMap::new();
        for i in 0..100u64 {
            let id = if i % 2 == 0 { json!(i) } else { json!(format!("r{i}")) };
            let message = format!("s{s}-c{i}");
            ws.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": message}}}))
                .await;
            expected.insert(id.to_string(), message);
        }
        while !expected.is_empty() {
            let v = ws.json().await;
            let want = expected
                .remove(&v["id"].to_string())
                .unwrap_or_else(|| panic!("session {s} got an answer it did not ask for: {v}"));
            assert_eq!(v["result"]["content"][0]["text"], want, "session {s}: {v}");
        }
        ws
    });
    let sessions = futures_util::future::join_all(runs).await;
    assert_eq!(servers().len(), 4, "still four children");
    drop(sessions);
}

#[tokio::test]
async fn progress_and_resource_updates_reach_only_their_sessions() {
    let gw = pooled(2).await;
    let mut a = session(&gw).await;
    let mut b = session(&gw).await;
    // Both use the same progress token; each must get only its own ticks.
    let call = |ms: u64| json!({"name": "sleep", "arguments": {"ms": ms, "progress_every_ms": 100}, "_meta": {"progressToken": 1}});
    let (ra, rb) = tokio::join!(a.request("tools/call", call(350)), b.request("tools/call", call(550)));
    let ticks = |notes: &[Value]| {
        notes
            .iter()
            .filter(|n| n["method"] == "notifications/progress")
            .map(|n| n["params"]["total"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ticks(&ra.1), vec![json!(350); 3], "a: its own three ticks, token restored: {:?}", ra.1);
    assert_eq!(ticks(&rb.1), vec![json!(550); 5], "b: its own five ticks: {:?}", rb.1);
    assert!(ra.1.iter().chain(&rb.1).all(|n| n["params"]["progressToken"] == 1));

    // Only the subscriber hears of the update.
    let (answer, _) = a.request("resources/subscribe", json!({"uri": "test://watched-resource"})).await;
    assert_eq!(answer["result"], json!({}));
    let update = a.json().await;
    assert_eq!(update["method"], "notifications/resources/updated");
    let (pong, heard) = b.request("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}));
    assert!(heard.is_empty(), "b is not subscribed and hears nothing: {heard:?}");
}

#[tokio::test]
async fn a_server_request_reaches_the_one_session_with_a_call_in_flight() {
    let gw = pooled(2).await;
    let mut a = session(&gw).await;
    a.send(&json!({"jsonrpc": "2.0", "id": "s", "method": "tools/call",
        "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}}}))
        .await;
    let ask = a.json().await;
    assert_eq!(ask["method"], "sampling/createMessage");
    a.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "pooled"}, "model": "m", "stopReason": "endTurn"}}))
        .await;
    let answer = a.json().await;
    assert_eq!(answer["id"], "s");
    assert_eq!(answer["result"]["content"][0]["text"], "LLM response: pooled");
}

#[tokio::test]
async fn a_killed_child_fails_only_its_calls_and_is_replaced() {
    let gw = pooled(2).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(&gw).await);
    }
    assert!(eventually(Duration::from_secs(10), || servers().len() == 2).await);
    // Two long calls per session, spread over both children.
    for (s, ws) in sessions.iter_mut().enumerate() {
        for i in 0..2 {
            ws.send(&json!({"jsonrpc": "2.0", "id": format!("{s}-{i}"), "method": "tools/call",
                "params": {"name": "sleep", "arguments": {"ms": 1500}}}))
                .await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = servers()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let started = std::time::Instant::now();
    let reads = sessions.iter_mut().map(|ws| async move {
        let mut got = Vec::new();
        for _ in 0..2 {
            let v = ws.json().await;
            got.push((v, started.elapsed()));
        }
        got
    });
    let (mut failed, mut done) = (0, 0);
    for (v, at) in futures_util::future::join_all(reads).await.into_iter().flatten() {
        if v.get("error").is_some() {
            assert_eq!(v["error"]["code"], -32000, "{v}");
            assert!(at < Duration::from_millis(1000), "failed at once, not at the end of the call ({at:?})");
            failed += 1;
        } else {
            assert_eq!(v["result"]["content"][0]["text"], "slept 1500 ms");
            done += 1;
        }
    }
    assert_eq!(failed + done, 8);
    assert!(
        failed == 4 && done == 4,
        "the calls on the dead child failed, the others completed: {failed} failed, {done} done"
    );
    assert!(
        eventually(Duration::from_secs(10), || servers().len() == 2 && !servers().contains(&victim)).await,
        "replaced"
    );
    for ws in sessions.iter_mut() {
        let (answer, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "again"}})).await;
        assert_eq!(answer["result"]["content"][0]["text"], "again", "every session is served again");
    }
}
