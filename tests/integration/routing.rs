//! Server→client traffic reaches the right stream of the right session, and client answers
//! reach the backend that asked.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::common::TestGateway;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn logs_and_progress_travel_on_the_request_stream_before_its_response() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": "log-1", "method": "tools/call",
        "params": {"name": "test_tool_with_logging", "arguments": {}}}))
        .await;
    let mut sse = resp.sse();
    let mut methods = Vec::new();
    while let Some(ev) = sse.next_within(T).await {
        assert_eq!(ev.event.as_deref(), Some("message"));
        let v = ev.json();
        methods.push(v["method"].as_str().map(str::to_owned).unwrap_or_else(|| format!("response {}", v["id"])));
    }
    assert_eq!(
        methods,
        ["notifications/message", "notifications/message", "notifications/message", "response \"log-1\""]
    );

    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p-8"}}}))
        .await;
    let mut sse = resp.sse();
    let mut progress = Vec::new();
    let mut result = None;
    while let Some(ev) = sse.next_within(T).await {
        let v = ev.json();
        if v["method"] == "notifications/progress" {
            assert_eq!(v["params"]["progressToken"], "p-8");
            progress.push(v["params"]["progress"].as_i64().unwrap());
        } else {
            result = Some(v);
        }
    }
    assert_eq!(progress, [0, 50, 100]);
    assert_eq!(result.unwrap()["id"], 8);
}

#[tokio::test]
async fn sampling_and_elicitation_round_trip_through_the_gateway() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "test_sampling", "arguments": {"prompt": "Say hi"}}}))
        .await;
    let mut sse = resp.sse();
    let ask = sse.next_within(T).await.expect("a sampling request").json();
    assert_eq!(ask["method"], "sampling/createMessage");
    assert_eq!(ask["params"]["messages"][0]["content"]["text"], "Say hi");
    let answer = json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "hi from the client"}, "model": "m", "stopReason": "endTurn"}});
    assert_eq!(c.post(&answer).await.status, StatusCode::ACCEPTED);
    let done = sse.next_within(T).await.expect("the tool result").json();
    assert_eq!(done["id"], 3);
    assert_eq!(done["result"]["content"][0]["text"], "LLM response: hi from the client");

    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "test_elicitation", "arguments": {"message": "Who are you?"}}}))
        .await;
    let mut sse = resp.sse();
    let ask = sse.next_within(T).await.expect("an elicitation request").json();
    assert_eq!(ask["method"], "elicitation/create");
    let answer = json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {"username": "u", "email": "e@x"}}});
    assert_eq!(c.post(&answer).await.status, StatusCode::ACCEPTED);
    let done = sse.next_within(T).await.expect("the tool result").json();
    assert!(done["result"]["content"][0]["text"].as_str().unwrap().contains("action=accept"));
}

#[tokio::test]
async fn unrelated_messages_go_to_the_get_stream_of_their_own_session_only() {
    let gw = TestGateway::default().await;
    let mut a = gw.client();
    a.initialize("2025-06-18").await;
    let mut b = gw.client();
    b.initialize("2025-06-18").await;
    let mut a_stream = a.get_stream(&[]).await.sse();
    let mut b_stream = b.get_stream(&[]).await.sse();

    let sub = a.request("resources/subscribe", json!({"uri": "test://watched-resource"})).await;
    assert_eq!(sub["result"], json!({}));
    let update = a_stream.next_within(T).await.expect("an update").json();
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], "test://watched-resource");
    let leaked = tokio::time::timeout(Duration::from_millis(500), b_stream.next()).await;
    assert!(leaked.is_err(), "session B saw A's notification: {leaked:?}");
}

#[tokio::test]
async fn messages_sent_while_no_stream_is_open_wait_for_the_next_get() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    c.request("resources/subscribe", json!({"uri": "test://watched-resource"})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut stream = c.get_stream(&[]).await.sse();
    let update = stream.next_within(T).await.expect("the buffered update").json();
    assert_eq!(update["method"], "notifications/resources/updated");
}

#[tokio::test]
async fn long_calls_get_sse_with_keep_alive_comments() {
    let mut config = crate::common::default_config();
    config.sessions.sse_keepalive = Duration::from_millis(100);
    config.sessions.json_wait = Duration::from_millis(20);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let quick = c.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 0}}})).await;
    assert_eq!(quick.content_type(), "application/json", "a quick answer is plain JSON");
    let slow = c.post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 650}}})).await;
    assert_eq!(slow.headers["x-accel-buffering"], "no");
    let mut sse = slow.sse();
    let done = sse.next_within(T).await.expect("the response").json();
    assert_eq!(done["id"], 2);
    assert!(sse.comments >= 3, "keep-alive comments while waiting: {}", sse.comments);
}

#[tokio::test]
async fn server_requests_skip_a_stream_nobody_reads() {
    let mut config = crate::common::default_config();
    config.sessions.json_wait = Duration::from_millis(20);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    // Call A is still in flight, but its client dropped the stream.
    let a = c.post(&json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 20000}}})).await;
    drop(a.sse());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Call B needs sampling: the request must reach B's live stream, not A's dead one.
    let b = c
        .post(&json!({"jsonrpc": "2.0", "id": "b", "method": "tools/call",
        "params": {"name": "test_sampling", "arguments": {"prompt": "p"}}}))
        .await;
    let mut sse = b.sse();
    let ask = sse.next_within(T).await.expect("the sampling request on B's stream").json();
    assert_eq!(ask["method"], "sampling/createMessage");
}
