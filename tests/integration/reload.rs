//! SIGHUP reloads the configuration file: new routes and limits apply to new sessions while live
//! sessions keep their backend, and the log level changes; keys that need a restart (the instance id, the worker threads)
//! keep their values and the log says so;
//! an invalid file changes nothing and the log names the key.

use std::time::Duration;

use http::StatusCode;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::process::{config_file, GatewayProcess};
use crate::common::{eventually, Client};

fn base() -> String {
    mcp_edge::config::DEFAULT_TOML.replace("# instance_id = \"edge-1\"", "instance_id = \"edge-1\"")
}

async fn initialize_status(url: &str) -> StatusCode {
    let c = Client::new(url);
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    resp.status
}

#[tokio::test]
async fn sighup_applies_a_changed_file_and_keeps_the_old_one_when_invalid() {
    let (dir, path) = config_file(&base());
    let mut gw = GatewayProcess::spawn(&["--config", &path]);
    let mut live = Client::new(&gw.url);
    live.initialize("2025-06-18").await;
    let second = gw.url.replace("/mcp", "/second");
    assert_eq!(initialize_status(&second).await, StatusCode::NOT_FOUND, "no /second route yet");

    // A new route, a cap on /mcp that the live session already fills, a new instance id.
    let changed = format!(
        "{}\n[[routes]]\npath = \"/second\"\nbackend = \"example\"\n",
        base()
            .replace("instance_id = \"edge-1\"", "instance_id = \"edge-2\"")
            .replace("# max_sessions = 100", "max_sessions = 1")
            .replace("level = \"info\"", "level = \"debug\"")
            .replace("worker_threads = 0", "worker_threads = 1")
    );
    std::fs::write(dir.0.join("gateway.toml"), changed).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || gw.logged("The configuration was reloaded")).await);
    assert!(gw.logged("need a restart") && gw.logged("instance_id"), "the log names what needs a restart");
    assert!(gw.logged("server.worker_threads"), "the log names every key that needs a restart");

    assert!(!gw.logged("Started a stdio child"), "debug lines are filtered at first");
    assert_eq!(initialize_status(&second).await, StatusCode::OK, "the new route serves");
    assert!(
        eventually(Duration::from_secs(5), || gw.logged("Started a stdio child")).await,
        "the new log level applies"
    );
    assert_eq!(
        initialize_status(&gw.url).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the new cap applies to new sessions"
    );
    assert_eq!(live.request("ping", json!({})).await["result"], json!({}), "the live session goes on");
    let mut fresh = Client::new(&second);
    fresh.initialize("2025-06-18").await;
    assert!(fresh.session.unwrap().starts_with("edge-1."), "the instance id keeps its value until a restart");

    // An invalid file: the log names the key, the old configuration stays.
    std::fs::write(dir.0.join("gateway.toml"), format!("listen_addr = \"x\"\n{}", base())).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || gw.logged("was not reloaded")).await);
    assert!(gw.logged("listen_addr"), "the error names the key");
    assert_eq!(initialize_status(&second).await, StatusCode::OK, "the old configuration stays");

    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}
