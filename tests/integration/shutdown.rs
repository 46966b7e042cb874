//! SIGTERM: in-flight calls finish (up to the grace period), then streams end, children stop,
//! and the process exits 0.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::process::{config_file, GatewayProcess};
use crate::common::{procs, Client};

#[tokio::test]
async fn sigterm_during_a_long_call_lets_it_finish_then_exits_cleanly() {
    let mut gw = GatewayProcess::spawn(&[]);
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    let mut get = c.get_stream(&[]).await.sse();
    let family: Vec<i32> = procs::descendants(gw.pid()).into_iter().map(|(p, _)| p).collect();
    assert_eq!(family.len(), 2);

    let call = c.call_tool("sleep", json!({"ms": 1500}));
    let term = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.signal(Signal::SIGTERM);
    };
    let (answer, ()) = tokio::join!(call, term);
    assert_eq!(answer["result"]["content"][0]["text"], "slept 1500 ms", "the in-flight call finished: {answer}");
    assert!(get.next_within(Duration::from_secs(10)).await.is_none(), "the GET stream ended");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(family.iter().all(|p| !procs::alive(*p)), "children stopped");
    for phase in ["Shutdown 1/4", "Shutdown 2/4", "Shutdown 3/4", "Shutdown 4/4", "Shutdown complete"] {
        assert!(gw.logged(phase), "logged {phase}");
    }
}

#[tokio::test]
async fn calls_longer_than_the_grace_period_are_cut_with_an_error() {
    let body = format!("{}\n", mcp_edge::config::DEFAULT_TOML)
        .replace("shutdown_grace = \"30s\"", "shutdown_grace = \"300ms\"");
    let (_dir, path) = config_file(&body);
    let mut gw = GatewayProcess::spawn(&["--config", &path]);
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    let call = c.call_tool("sleep", json!({"ms": 60000}));
    let term = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.signal(Signal::SIGTERM);
    };
    let started = std::time::Instant::now();
    let (answer, ()) = tokio::join!(call, term);
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_before_the_process_exits() {
    use crate::common::ws::{connect, ws_url};
    let mut gw = GatewayProcess::spawn(&[]);
    let mut with_session = connect(&ws_url(&gw.url, "")).await;
    with_session.initialize(None).await;
    let mut without = connect(&ws_url(&gw.url, "")).await;
    gw.signal(Signal::SIGTERM);
    assert_eq!(with_session.close_code().await, Some(1001));
    assert_eq!(without.close_code().await, Some(1001));
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}

/// The whole drain, in order: `/readyz` turns 503 at once while the instance still serves for
/// `drain_delay`; the call in flight completes; then the WebSocket gets 1001, the GET stream
/// ends, the process exits 0 and leaves no descendant.
#[tokio::test]
async fn the_drain_reports_unready_first_then_finishes_calls_then_closes() {
    use crate::common::ws::{connect, ws_url};
    use std::time::Instant;
    let body = format!("{}\n", mcp_edge::config::DEFAULT_TOML).replace("drain_delay = \"0s\"", "drain_delay = \"1s\"");
    let (_dir, path) = config_file(&body);
    let mut gw = GatewayProcess::spawn(&["--config", &path]);
    let readyz = Client::new(&format!("http://{}/readyz", gw.admin));
    assert_eq!(readyz_status(&readyz).await, http::StatusCode::OK);

    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    let mut get = c.get_stream(&[]).await.sse();
    let family: Vec<i32> = procs::descendants(gw.pid()).into_iter().map(|(p, _)| p).collect();
    assert_eq!(family.len(), 4, "two sessions: a guard and a server each");

    let call = c.call_tool("sleep", json!({"ms": 2500}));
    let drain = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.signal(Signal::SIGTERM);
        let signalled = Instant::now();
        let mut unready_after = None;
        while signalled.elapsed() < Duration::from_secs(2) {
            if readyz_status(&readyz).await == http::StatusCode::SERVICE_UNAVAILABLE {
                unready_after = Some(signalled.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Still serving within drain_delay: a new request on the session is answered.
        let during = c.request("ping", json!({})).await;
        (unready_after, during, signalled)
    };
    let (answer, (unready_after, during, signalled)) = tokio::join!(call, drain);
    let unready_after = unready_after.expect("/readyz turned 503");
    assert!(unready_after < Duration::from_millis(500), "at once: {unready_after:?}");
    assert_eq!(during["result"], json!({}), "the instance serves on during drain_delay");
    assert_eq!(answer["result"]["content"][0]["text"], "slept 2500 ms", "the call in flight completed");
    assert_eq!(ws.close_code().await, Some(1001), "then the WebSocket is told the gateway goes away");
    assert!(signalled.elapsed() >= Duration::from_secs(1), "not before drain_delay");
    assert!(get.next_within(Duration::from_secs(10)).await.is_none(), "the GET stream ended");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(family.iter().all(|p| !procs::alive(*p)), "no descendant left");
    assert!(procs::descendants(gw.pid()).is_empty());
    assert!(gw.logged("Shutdown 0/4"));
}

async fn readyz_status(c: &Client) -> http::StatusCode {
    c.raw(http::Method::GET, &[], "").await.status
}
