//! No process outlives its session or the gateway: not the child, not its grandchildren,
//! not even when the gateway is killed with SIGKILL.

use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::process::{config_file, stdio_config, GatewayProcess};
use crate::common::{eventually, procs, Client, TestGateway, EXE};

#[tokio::test]
async fn two_hundred_sessions_opened_and_ended_leave_no_process_behind() {
    let gw = TestGateway::default().await;
    let baseline = procs::my_descendants().len();
    let mut peak = 0;
    for _batch in 0..10 {
        let clients = join_all((0..20).map(|_| async {
            let mut c = gw.client();
            c.initialize("2025-06-18").await;
            c
        }))
        .await;
        peak = peak.max(procs::my_descendants().len() - baseline);
        join_all(clients.iter().map(|c| async {
            assert_eq!(c.call_tool("echo", json!({"message": "x"})).await["result"]["content"][0]["text"], "x");
            assert_eq!(c.delete().await.status, http::StatusCode::OK);
        }))
        .await;
    }
    assert_eq!(peak, 40, "each live session had its guard and its server");
    let back = eventually(Duration::from_secs(20), || procs::my_descendants().len() == baseline).await;
    assert!(back, "descendants left: {:?}", procs::my_descendants());
}

#[tokio::test]
async fn killing_the_gateway_with_sigkill_kills_children_and_grandchildren() {
    // The backend starts a grandchild (`sleep`) before becoming the example server, as
    // `npx` → `node` does.
    let script = format!("sleep 300 & exec {EXE} example-server");
    let (_dir, path) = config_file(&stdio_config("sh", &format!("[\"-c\", \"{script}\"]"), ""));
    let gw = GatewayProcess::spawn(&["--config", &path]);
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    let found = eventually(Duration::from_secs(10), || {
        procs::descendants(gw.pid()).iter().any(|(_, cmd)| cmd.starts_with("sleep 300"))
    })
    .await;
    assert!(found, "the grandchild runs: {:?}", procs::descendants(gw.pid()));
    let family: Vec<i32> = procs::descendants(gw.pid()).into_iter().map(|(p, _)| p).collect();
    assert!(family.len() >= 3, "guard, server and grandchild: {family:?}");

    gw.signal(Signal::SIGKILL);
    let all_gone = eventually(Duration::from_secs(10), || family.iter().all(|p| !procs::alive(*p))).await;
    assert!(all_gone, "still alive: {:?}", family.iter().filter(|p| procs::alive(**p)).collect::<Vec<_>>());
}

#[tokio::test]
async fn ending_a_session_kills_grandchildren_too() {
    let script = format!("sleep 300 & exec {EXE} example-server");
    let (_dir, path) = config_file(&stdio_config("sh", &format!("[\"-c\", \"{script}\"]"), "stop_wait = \"200ms\""));
    let gw = GatewayProcess::spawn(&["--config", &path]);
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    assert!(eventually(Duration::from_secs(10), || procs::descendants(gw.pid()).len() >= 3).await);
    let family: Vec<i32> = procs::descendants(gw.pid()).into_iter().map(|(p, _)| p).collect();
    c.delete().await;
    let all_gone = eventually(Duration::from_secs(10), || family.iter().all(|p| !procs::alive(*p))).await;
    assert!(all_gone, "the grandchild outlived its session");
}
