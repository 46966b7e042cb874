//! WebSocket on the route path: handshake, framing, concurrency, server→client requests and
//! every close code.

use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::ws::{connect, refusal, session_id, try_connect, ws_url, Got};
use crate::common::{default_config, procs, TestGateway};

#[tokio::test]
async fn the_handshake_echoes_mcp_and_refuses_foreign_subprotocols() {
    let gw = TestGateway::default().await;
    let url = ws_url(&gw.url, "");
    let ws = try_connect(&url, &["mcp"], &[]).await.unwrap();
    assert_eq!(ws.protocol.as_deref(), Some("mcp"));
    let plain = try_connect(&url, &[], &[]).await.unwrap();
    assert_eq!(plain.protocol, None, "nothing offered, nothing echoed");
    let with_token = try_connect(&url, &["mcp", "mcp.auth.eyJhbGciOi.secret"], &[]).await.unwrap();
    assert_eq!(with_token.protocol.as_deref(), Some("mcp"), "the credential is never echoed");
    let (status, body) = refusal(try_connect(&url, &["graphql-ws"], &[]).await.err().unwrap());
    assert_eq!(status, 400);
    assert!(body.contains("mcp"), "{body}");
    let (status, _) = refusal(try_connect(&url, &["mcp"], &[("origin", "https://evil.example")]).await.err().unwrap());
    assert_eq!(status, 403);
    let (status, _) = refusal(try_connect(&ws_url(&gw.url, "session=test.nope"), &["mcp"], &[]).await.err().unwrap());
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_route_without_websocket_serves_the_upgrade_as_plain_http() {
    let mut config = default_config();
    config.routes[0].websocket = false;
    let gw = TestGateway::start(config).await;
    let (status, _) = refusal(try_connect(&ws_url(&gw.url, ""), &["mcp"], &[]).await.err().unwrap());
    assert_eq!(status, 406, "a GET without Accept: text/event-stream, as Streamable HTTP answers it");
}

#[tokio::test]
async fn fifty_requests_in_flight_on_one_connection_keep_their_ids() {
    let gw = TestGateway::default().await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    let ids: Vec<Value> = (0..50).map(|i| if i % 2 == 0 { json!(i) } else { json!(format!("s-{i}")) }).collect();
    for (i, id) in ids.iter().enumerate() {
        let ms = (50 - i) * 10; // later requests finish first
        ws.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": ms}}})).await;
    }
    let mut answered = Vec::new();
    while answered.len() < ids.len() {
        let v = ws.json().await;
        assert!(v["result"]["content"][0]["text"].as_str().unwrap().starts_with("slept"), "{v}");
        answered.push(v["id"].clone());
    }
    assert_ne!(answered, ids, "answered out of order");
    let mut sorted = answered.clone();
    sorted.sort_by_key(|v| v.to_string());
    let mut expected = ids.clone();
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(sorted, expected, "every id exactly once, numbers as numbers and strings as strings");
}

#[tokio::test]
async fn a_server_request_reaches_the_connection_and_its_answer_the_backend() {
    let gw = TestGateway::default().await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    ws.send(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}}})).await;
    let ask = ws.json().await;
    assert_eq!(ask["method"], "sampling/createMessage");
    ws.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "hello"}, "model": "m"}}))
        .await;
    let done = ws.json().await;
    assert_eq!(done["id"], 5);
    assert_eq!(done["result"]["content"][0]["text"], "LLM response: hello");
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_stays() {
    let gw = TestGateway::default().await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.send_raw(Message::Text("{not json".into())).await;
    let err = ws.json().await;
    assert_eq!(err["error"]["code"], -32700);
    assert_eq!(err["id"], Value::Null);
    ws.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    assert_eq!(ws.json().await["error"]["code"], -32600, "initialize first");
    ws.initialize(None).await;
    ws.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {}})).await;
    assert_eq!(ws.json().await["error"]["code"], -32600, "one initialize per connection");
    let (pong, _) = ws.request("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}));
}

#[tokio::test]
async fn close_codes() {
    let mut config = default_config();
    config.websocket.max_message_bytes = 1024;
    let gw = TestGateway::start(config).await;
    let url = ws_url(&gw.url, "");

    let mut binary = connect(&url).await;
    binary.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(binary.close_code().await, Some(1003));

    let mut big = connect(&url).await;
    big.initialize(None).await;
    big.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x".repeat(4096)}}})).await;
    assert_eq!(big.close_code().await, Some(1009));

    // A normal end: the client closes, the session ends with it.
    let mut normal = connect(&url).await;
    let sid = session_id(&normal.initialize(None).await);
    normal.stream.close(None).await.unwrap();
    let mut http = gw.client();
    http.session = Some(sid);
    let mut ended = false;
    for _ in 0..100 {
        let r = http.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
        if r.status == 404 {
            assert!(r.json().await["error"]["message"].as_str().unwrap().contains("closed its connection"));
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ended, "a clean close ends the session");

    // Shutdown: 1001, for connections with and without a session.
    let mut last = connect(&url).await;
    last.initialize(None).await;
    let mut unbound = connect(&url).await;
    gw.stop().await;
    assert_eq!(last.close_code().await, Some(1001));
    assert_eq!(unbound.close_code().await, Some(1001));
}

#[tokio::test]
async fn backend_death_fails_pending_requests_then_closes_with_1011() {
    let gw = TestGateway::default().await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    ws.send(&json!({"jsonrpc": "2.0", "id": "long", "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 60000}}})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = procs::my_descendants()
        .into_iter()
        .find(|(_, c)| c.contains("example-server") && !c.contains("__guard"))
        .unwrap();
    kill(Pid::from_raw(server.0), Signal::SIGKILL).unwrap();
    let err = ws.json().await;
    assert_eq!(err["id"], "long");
    assert_eq!(err["error"]["code"], -32000);
    assert_eq!(ws.close_code().await, Some(1011));
}

#[tokio::test]
async fn a_newer_connection_of_the_session_closes_the_older_with_1000() {
    let gw = TestGateway::default().await;
    let mut first = connect(&ws_url(&gw.url, "")).await;
    let sid = session_id(&first.initialize(None).await);
    let mut second = connect(&ws_url(&gw.url, &format!("session={sid}"))).await;
    assert_eq!(first.close_code().await, Some(1000));
    let (pong, _) = second.request("ping", json!({})).await;
    // A resuming connection gets event ids, in `_meta` where a result may carry it.
    assert!(pong["result"]["_meta"]["mcp-edge/eventId"].is_string(), "the session goes on: {pong}");
}

#[tokio::test]
async fn a_reader_that_never_reads_is_cut_off_and_nobody_else_waits() {
    let mut config = default_config();
    config.websocket.send_queue = 4;
    config.websocket.stall_timeout = Duration::from_millis(800);
    let gw = TestGateway::start(config).await;
    let mut slow = connect(&ws_url(&gw.url, "")).await;
    slow.initialize(None).await;
    let mut other = gw.client();
    other.initialize("2025-06-18").await;

    // 400 answers of 64 KiB each, and the slow client reads none of them.
    let flood = tokio::spawn(async move {
        let big = "y".repeat(64 * 1024);
        for i in 0..400 {
            let msg = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": big}}});
            match tokio::time::timeout(Duration::from_secs(2), slow.try_send(&msg)).await {
                Ok(Ok(())) => {}
                // The gateway stopped reading (backpressure reached us), or already cut us off.
                Err(_) | Ok(Err(_)) => break,
            }
        }
        slow
    });
    // Meanwhile another session is served at full speed.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = other.call_tool("echo", json!({"message": "unaffected"})).await;
        assert_eq!(r["result"]["content"][0]["text"], "unaffected");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the other session waited {:?}", started.elapsed());

    let mut slow = flood.await.unwrap();
    let mut answers = 0;
    let code = loop {
        match slow.next().await {
            Got::Json(_) => answers += 1,
            Got::Close(code, _) => break code,
            Got::Gone => break None,
            Got::Ping => {}
        }
    };
    assert!(answers < 400, "the backend was paused, not drained into memory");
    // The close frame queues behind the answers the client never read; when the gateway gives
    // up waiting for room and closes the socket, the kernel may reset the connection and lose
    // it. Either way the gateway closed the connection for being stuck (1008), as it counts.
    if code.is_none() {
        let admin = gw.admin.expect("the admin listener is on");
        let m = crate::metrics::Metrics::scrape(admin).await;
        let stuck = m.get("mcp_edge_websocket_connections_closed_total", &[("code", "client_error")]);
        assert_eq!(stuck, 1.0, "the gateway closed the stuck client with a client-error code");
    } else {
        assert_eq!(code, Some(1008), "closed for being stuck, after {answers} answers");
    }
}

#[tokio::test]
async fn the_gateway_pings_and_drops_a_silent_client() {
    let mut config = default_config();
    config.websocket.ping_interval = Duration::from_millis(100);
    config.websocket.pong_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    assert!(matches!(ws.next().await, Got::Ping));
    // Stop reading (so no pongs go out) for longer than interval + timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut ended = false;
    for _ in 0..50 {
        match ws.next().await {
            Got::Close(_, _) | Got::Gone => {
                ended = true;
                break;
            }
            _ => {}
        }
    }
    assert!(ended, "a client that stops answering pings is dropped");
    let _ = join_all(Vec::<std::future::Ready<()>>::new()).await;
}
