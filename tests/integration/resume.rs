//! A dropped SSE stream resumes with `Last-Event-ID`: nothing lost, nothing twice.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::common::{default_config, TestGateway};

const T: Duration = Duration::from_secs(10);

fn seq(id: &str) -> u64 {
    id.split_once('-').unwrap().1.parse().unwrap()
}

/// Calls `sleep` with progress every 100 ms; reads `keep` events of the POST stream and drops it.
async fn call_and_drop(c: &crate::common::Client, keep: usize) -> (Vec<(String, serde_json::Value)>, String) {
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"ms": 700, "progress_every_ms": 100}, "_meta": {"progressToken": "t"}}})).await;
    let mut sse = resp.sse();
    let priming = sse.next_within(T).await.expect("a priming event");
    assert_eq!(priming.data, "", "the first event primes the stream");
    let mut seen = Vec::new();
    let mut last = priming.id.clone().expect("the priming event has an id");
    for _ in 0..keep {
        let ev = sse.next_within(T).await.expect("an event");
        last = ev.id.clone().expect("events have ids");
        seen.push((last.clone(), ev.json()));
    }
    drop(sse);
    (seen, last)
}

async fn resume_all(c: &crate::common::Client, last: &str) -> Vec<(String, serde_json::Value)> {
    let resp = c.get_stream(&[("last-event-id", last)]).await;
    assert_eq!(resp.status, http::StatusCode::OK);
    let mut sse = resp.sse();
    let mut out = Vec::new();
    while let Some(ev) = sse.next_within(T).await {
        out.push((ev.id.clone().unwrap(), ev.json()));
    }
    out
}

fn assert_whole(events: &[(String, serde_json::Value)]) {
    let ids: Vec<&String> = events.iter().map(|(id, _)| id).collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
    let seqs: Vec<u64> = ids.iter().map(|i| seq(i)).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no event lost: {ids:?}");
    let progress = events.iter().filter(|(_, v)| v["method"] == "notifications/progress").count();
    assert_eq!(progress, 6, "ticks at 100..600 ms");
    let (_, last) = events.last().unwrap();
    assert_eq!(last["id"], 42);
    assert_eq!(last["result"]["content"][0]["text"], "slept 700 ms");
}

#[tokio::test]
async fn a_stream_dropped_mid_call_resumes_after_the_call_ended() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-11-25").await;
    let (mut events, last) = call_and_drop(&c, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    events.extend(resume_all(&c, &last).await);
    assert_whole(&events);
}

#[tokio::test]
async fn a_stream_dropped_mid_call_resumes_live() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-11-25").await;
    let (mut events, last) = call_and_drop(&c, 1).await;
    events.extend(resume_all(&c, &last).await);
    assert_whole(&events);
}

#[tokio::test]
async fn the_gateway_closes_long_streams_with_retry_and_the_client_resumes() {
    let mut config = default_config();
    config.sessions.sse_close_after = Duration::from_millis(200);
    config.sessions.json_wait = Duration::from_millis(20);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-11-25").await;
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 600}}})).await;
    let mut sse = resp.sse();
    let priming = sse.next_within(T).await.unwrap();
    assert_eq!(priming.data, "");
    let retry = sse.next_within(T).await.expect("a retry hint before the stream ends");
    assert_eq!(retry.retry, Some(1000));
    assert!(sse.next_within(T).await.is_none(), "the stream ended");
    let rest = resume_all(&c, priming.id.as_deref().unwrap()).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1["id"], 9);

    // Older clients never get priming events or early closes.
    let mut old = gw.client();
    old.initialize("2025-06-18").await;
    let r = old.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 400}}})).await;
    let mut sse = r.sse();
    let first = sse.next_within(T).await.unwrap();
    assert_eq!(first.json()["id"], 1, "no priming event, no retry: the response itself");
}

#[tokio::test]
async fn a_get_after_unseen_messages_were_evicted_still_opens() {
    let mut config = default_config();
    config.sessions.replay_buffer_messages = 4;
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    // Six resource updates arrive while no stream is open; the buffer keeps the last four.
    for _ in 0..6 {
        c.request("resources/subscribe", json!({"uri": "test://watched-resource"})).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = c.get_stream(&[]).await;
    assert_eq!(resp.status, http::StatusCode::OK, "no 410 for a reader that named no event");
    let mut sse = resp.sse();
    let mut got = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), sse.next()).await {
        assert_eq!(ev.json()["method"], "notifications/resources/updated");
        got += 1;
    }
    assert_eq!(got, 4, "the buffered messages, none twice");
}
