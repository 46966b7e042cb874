//! Many requests in flight on one session, answered out of order, each with its own id.

use futures_util::future::join_all;
use http::StatusCode;
use serde_json::{json, Value};

use crate::common::TestGateway;

#[tokio::test]
async fn twenty_concurrent_calls_keep_their_ids() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let calls = (0..20u64).map(|i| {
        // Alternate number and string ids; later calls finish first.
        let id: Value = if i % 2 == 0 { json!(i) } else { json!(format!("req-{i}")) };
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"ms": 400 - i * 20}}});
        let c = &c;
        async move {
            let r = c.post(&body).await;
            assert_eq!(r.status, StatusCode::OK);
            (id, r.message().await)
        }
    });
    for (id, answer) in join_all(calls).await {
        assert_eq!(answer["id"], id, "the answer carries its request's id exactly");
        assert!(answer["result"]["content"][0]["text"].as_str().unwrap().starts_with("slept"));
    }
}

#[tokio::test]
async fn an_id_already_in_flight_is_refused_in_band() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let slow = json!({"jsonrpc": "2.0", "id": "same", "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 800}}});
    let first = c.post(&slow);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c.post(&slow).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status, StatusCode::OK);
    let refused = second.json().await;
    assert_eq!(refused["id"], "same");
    assert_eq!(refused["error"]["code"], -32006);
    assert!(first.message().await["result"].is_object(), "the first call is unharmed");
}

#[tokio::test]
async fn a_batch_repeating_an_id_is_refused_and_ids_of_two_types_are_two_ids() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-03-26").await;
    let twice =
        json!([{"jsonrpc": "2.0", "id": "x", "method": "ping"}, {"jsonrpc": "2.0", "id": "x", "method": "ping"}]);
    let refused = c.post(&twice).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.json().await["error"]["code"], -32006);
    let resp = c
        .post(&json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": "1", "method": "ping"}]))
        .await;
    assert_eq!(resp.event_ids().await, vec![json!("1"), json!(1)]);
}

#[tokio::test]
async fn a_ten_megabyte_result_arrives_whole() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let answer = c.call_tool("blob", json!({"bytes": 10 * 1024 * 1024})).await;
    let text = answer["result"]["content"][0]["text"].as_str().expect("a text result");
    assert_eq!(text.len(), 10 * 1024 * 1024);
    assert!(text.bytes().all(|b| b == b'x'));
}
