//! A backend that fails: waiting requests get an error at once, the session ends, then 404.

use std::time::{Duration, Instant};

use http::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::common::{default_config, eventually, procs, stdio, TestGateway};

#[tokio::test]
async fn a_child_killed_mid_call_fails_the_call_within_a_second_then_404() {
    let gw = TestGateway::default().await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 60000}}});
    let call = c.post(&body);
    let kill_child = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let server = procs::my_descendants()
            .into_iter()
            .find(|(_, cmd)| cmd.contains("example-server") && !cmd.contains("__guard"))
            .expect("the example server runs as a child");
        kill(Pid::from_raw(server.0), Signal::SIGKILL).unwrap();
        Instant::now()
    };
    let (resp, killed_at) = tokio::join!(call, kill_child);
    let answer = resp.message().await;
    assert!(killed_at.elapsed() < Duration::from_secs(1), "the error came within a second");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["code"], -32000);
    assert!(answer["error"]["message"].as_str().unwrap().contains("signal 9"), "{answer}");
    let mut gone = false;
    for _ in 0..50 {
        let r = c.post(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"})).await;
        if r.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the next request gets 404");
}

#[tokio::test]
async fn a_missing_command_is_a_clear_error_and_no_session() {
    let mut config = default_config();
    stdio(&mut config).command = "no-such-mcp-server-anywhere".into();
    let gw = TestGateway::start(config).await;
    let c = gw.client();
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.headers.get("mcp-session-id").is_none());
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], -32000);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no-such-mcp-server-anywhere") && msg.contains("not found"), "{msg}");
}

#[tokio::test]
async fn a_child_that_exits_at_once_fails_initialize_with_its_status() {
    let mut config = default_config();
    let s = stdio(&mut config);
    s.command = "sh".into();
    s.args = vec!["-c".into(), "exit 3".into()];
    let gw = TestGateway::start(config).await;
    let c = gw.client();
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})).await;
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], -32000);
    assert!(body["error"]["message"].as_str().unwrap().contains("exit status 3"), "{body}");
}

#[tokio::test]
async fn an_over_long_stdout_line_ends_the_session_not_the_gateway() {
    let mut config = default_config();
    stdio(&mut config).max_line_bytes = 4096;
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let mut other = gw.client();
    other.initialize("2025-06-18").await;
    let answer = c.call_tool("echo", json!({"message": "x".repeat(10_000)})).await;
    assert_eq!(answer["error"]["code"], -32000);
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_line_bytes"), "{answer}");
    let mut gone = false;
    for _ in 0..50 {
        if c.post(&json!({"jsonrpc": "2.0", "id": 9, "method": "ping"})).await.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone);
    // The other session never noticed.
    assert_eq!(other.call_tool("echo", json!({"message": "fine"})).await["result"]["content"][0]["text"], "fine");
    // And the failed child is gone.
    assert!(eventually(Duration::from_secs(10), || procs::my_descendants().len() == 2).await);
}
