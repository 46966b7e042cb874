//! Each abuse limit's over-limit answer: per principal (sessions, request rate), per session
//! (requests in flight, GET streams), per connection (slow heads, slow bodies, idle), and a
//! flood from one principal that must not slow another down.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{alice, bob, keyed_config};
use crate::common::{default_config, eventually_async, TestGateway};

fn call(id: u64) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}})
}

#[tokio::test]
async fn a_principal_over_its_rate_gets_json_rpc_errors_inside_and_429_outside() {
    let mut c = keyed_config();
    c.principals.requests_per_second = 2.0;
    c.principals.burst = 4;
    let gw = TestGateway::start(c).await;
    let mut a = alice(&gw);
    a.initialize("2025-06-18").await; // 1 of 4
    for i in 0..3 {
        let r = a.post(&call(100 + i)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.message().await["result"].is_object(), "within the burst");
    }
    let limited = a.post(&call(200)).await;
    assert_eq!(limited.status, StatusCode::OK, "inside a session the answer is in-band");
    let body = limited.json().await;
    assert_eq!(body["id"], 200);
    assert_eq!(body["error"]["code"], -32007);
    let wait = body["error"]["data"]["retryAfterMs"].as_u64().expect("a retry hint");
    assert!(wait > 0 && wait <= 500, "{wait}");
    // Outside a session: an HTTP status with Retry-After.
    let mut again = alice(&gw);
    let r = again
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    // Another principal has its own bucket.
    let mut b = bob(&gw);
    b.initialize("2025-06-18").await;
    assert!(b.call_tool("echo", json!({"message": "b"})).await["result"].is_object());
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    assert!(a.call_tool("echo", json!({"message": "later"})).await["result"].is_object());
    again.session = None;
}

#[tokio::test]
async fn a_principal_over_its_session_cap_gets_429() {
    let mut c = keyed_config();
    c.principals.max_sessions = 2;
    let gw = TestGateway::start(c).await;
    let mut one = alice(&gw);
    one.initialize("2025-06-18").await;
    let mut two = alice(&gw);
    two.initialize("2025-06-18").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = alice(&gw).post(&init).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.json().await["error"]["message"].as_str().unwrap().contains("principals.max_sessions"));
    // Bob is not counted against alice.
    bob(&gw).initialize("2025-06-18").await;
    // A session ended gives its place back.
    assert_eq!(two.delete().await.status, StatusCode::OK);
    let three = alice(&gw);
    let admitted =
        eventually_async(Duration::from_secs(3), || async { three.post(&init).await.status == StatusCode::OK });
    assert!(admitted.await, "the deleted session's place is free again");
}

#[tokio::test]
async fn a_session_over_max_in_flight_gets_a_json_rpc_error() {
    let mut c = default_config();
    c.sessions.max_in_flight = 2;
    let gw = TestGateway::start(c).await;
    let mut client = gw.client();
    client.initialize("2025-06-18").await;
    let sleep = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 3000}}});
    // Both answer with a stream after sessions.json_wait (1 s), still in flight.
    let (one, two) = (sleep(11), sleep(12));
    let (first, second) = tokio::join!(client.post(&one), client.post(&two));
    let third = client.post(&sleep(13)).await;
    assert_eq!(third.status, StatusCode::OK);
    let body = third.json().await;
    assert_eq!(body["id"], 13);
    assert_eq!(body["error"]["code"], -32007, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("sessions.max_in_flight"));
    assert!(body["error"]["data"]["retryAfterMs"].is_u64());
    assert!(first.message().await["result"].is_object() && second.message().await["result"].is_object());
    assert!(client.call_tool("echo", json!({"message": "free again"})).await["result"].is_object());
}

#[tokio::test]
async fn get_streams_over_max_streams_get_429() {
    let mut c = default_config();
    c.sessions.max_streams = 1;
    let gw = TestGateway::start(c).await;
    let mut client = gw.client();
    client.initialize("2025-06-18").await;
    let held = client.get_stream(&[]).await;
    assert_eq!(held.status, StatusCode::OK);
    let over = client.get_stream(&[]).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers.contains_key("retry-after"));
    drop(held);
    let reopened =
        eventually_async(Duration::from_secs(3), || async { client.get_stream(&[]).await.status == StatusCode::OK });
    assert!(reopened.await, "a closed stream frees its place");
}

/// Reads until the peer closes (Ok) or `within` passes (Err); returns what was read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<String, String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Err(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let mut c = default_config();
    c.server.header_read_timeout = Duration::from_millis(500);
    let gw = TestGateway::start(c).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_ok(), "the connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(400), "not before the timeout");
    // Others are served meanwhile and after.
    gw.client().initialize("2025-06-18").await;
}

#[tokio::test]
async fn a_trickling_body_gets_408_and_the_connection_is_closed() {
    let mut c = default_config();
    c.server.body_read_timeout = Duration::from_millis(500);
    c.server.min_body_rate = 1000;
    let gw = TestGateway::start(c).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n\
               Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    });
    let mut s = trickle.await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("closed");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("slower than server.min_body_rate"), "{got}");

    // A large body at a sane rate is fine.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "x".repeat(200_000), "version": "0"}}});
    assert_eq!(gw.client().post(&big).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_streaming_one_is_not() {
    let mut c = default_config();
    c.server.idle_timeout = Duration::from_millis(1500);
    c.sessions.sse_keepalive = Duration::from_millis(300);
    let gw = TestGateway::start(c).await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut idle, Duration::from_secs(6)).await.expect("the idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(1200), "{:?}", started.elapsed());
    // A GET stream with keep-alives lives on past the idle timeout.
    let mut client = gw.client();
    client.initialize("2025-06-18").await;
    let mut stream = client.get_stream(&[]).await.sse();
    let alive = tokio::time::timeout(Duration::from_secs(3), async { while stream.next().await.is_some() {} }).await;
    assert!(alive.is_err(), "the stream stayed open for 3 s");
    assert!(stream.comments >= 5, "keep-alives kept it busy ({})", stream.comments);
}

/// p99 of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// `n` sequential calls, `gap` apart (a well-behaved client under its rate), timed.
async fn timed_calls(c: &crate::common::Client, n: usize, gap: Duration) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        let r = c.call_tool("echo", json!({"message": "b"})).await;
        assert!(r["result"].is_object(), "{r}");
        out.push(t.elapsed());
    }
    out
}

/// One principal sends up to 10,000 requests as fast as it can: past its rate they are refused
/// in-band with the documented error, and another principal, calling meanwhile under its own
/// rate, is never refused and gets every answer. Its latency is printed here; the 2x-p99
/// target is measured in the benchmark (`scripts/bench`, release build, separate processes),
/// not asserted in a test that shares two cores with everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_principal_is_refused_in_band_while_another_is_served() {
    let mut c = keyed_config();
    // Bob calls every 5 ms (under 200/s); alice floods at thousands per second.
    c.principals.requests_per_second = 300.0;
    c.principals.burst = 300;
    let gw = TestGateway::start(c).await;
    let mut a = alice(&gw);
    a.initialize("2025-06-18").await;
    let mut b = bob(&gw);
    b.initialize("2025-06-18").await;
    let gap = Duration::from_millis(5);
    timed_calls(&b, 50, gap).await; // warm up
    let baseline = p99(timed_calls(&b, 300, gap).await);

    let a = std::sync::Arc::new(a);
    let limited = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for w in 0..4u64 {
        let (a, limited, stop) = (a.clone(), limited.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0;
            for i in 0..2_500u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let resp = a.post(&call(1_000_000 + w * 10_000 + i)).await;
                assert_eq!(resp.status, StatusCode::OK, "in-band, never an HTTP error inside a session");
                let body = resp.message().await;
                match body["error"]["code"].as_i64() {
                    Some(-32007) => {
                        assert!(body["error"]["data"]["retryAfterMs"].as_u64().is_some(), "{body}");
                        limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(other) => panic!("an undocumented answer to the flood: {other}: {body}"),
                    None => assert!(body["result"].is_object(), "{body}"),
                }
                sent += 1;
            }
            sent
        }));
    }
    let during = p99(timed_calls(&b, 300, gap).await);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for f in flooders {
        sent += f.await.unwrap();
    }
    let refused = limited.load(std::sync::atomic::Ordering::Relaxed);
    println!("baseline p99 {baseline:?}, p99 during a flood of {sent} requests ({refused} refused): {during:?}");
    assert!(refused > 0, "the flood hit the rate limit ({refused} of {sent})");
}

#[tokio::test]
async fn over_websocket_a_limited_request_gets_a_json_rpc_error_and_the_connection_stays() {
    use crate::common::ws::{try_connect, ws_url};
    let mut c = keyed_config();
    c.principals.requests_per_second = 1.0;
    c.principals.burst = 3;
    let gw = TestGateway::start(c).await;
    let url = ws_url(&gw.url, "");
    let mut ws = try_connect(&url, &["mcp", "mcp.auth.alice-key-0123456789"], &[]).await.expect("opens");
    ws.initialize(None).await; // 1 of 3
    for _ in 0..2 {
        let (r, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
        assert!(r["result"].is_object(), "{r}");
    }
    let (limited, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
    assert_eq!(limited["error"]["code"], -32007, "{limited}");
    assert!(limited["error"]["data"]["retryAfterMs"].as_u64().is_some_and(|ms| ms <= 1000));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (r, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "again"}})).await;
    assert_eq!(r["result"]["content"][0]["text"], "again", "the same connection goes on");
}
