//! The command line: `check`, configuration layering, quick mode.

use std::process::Command;

use crate::common::process::{config_file, stdio_config, GatewayProcess, TempDir};
use crate::common::{Client, EXE};

fn check(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(EXE).arg("check").args(args).envs(env.iter().copied()).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_prints_the_effective_config_with_secrets_masked() {
    let (dir, path) = config_file(&stdio_config("node", "[\"server.js\"]", "env = { API_TOKEN = \"s3cret-value\" }"));
    let (code, out, _) = check(&["--config", &path], &[], &dir.0);
    assert_eq!(code, 0);
    assert!(out.contains("API_TOKEN = \"***\""), "{out}");
    assert!(!out.contains("s3cret-value"));
    assert!(out.contains("max_sessions = 1000"), "defaults are filled in: {out}");
}

#[test]
fn invalid_configs_name_the_file_key_and_reason() {
    let (dir, path) = config_file(&format!("{}\n[server]\nlisten_addr = \"x\"\n", stdio_config("node", "[]", "")));
    let (code, _, err) = check(&["--config", &path], &[], &dir.0);
    assert_eq!(code, 2);
    assert!(err.contains("listen_addr") && err.contains(&path), "{err}");

    let (dir, path) = config_file(&format!("instance_id = \"a.b\"\n{}", stdio_config("node", "[]", "")));
    let (code, _, err) = check(&["--config", &path], &[], &dir.0);
    assert_eq!(code, 2);
    assert!(err.contains("instance_id") && err.contains("without `.`"), "{err}");

    let (dir, path) = config_file("[[routes]]\npath = \"/mcp\"\nbackend = \"missing\"\n");
    let (code, _, err) = check(&["--config", &path], &[], &dir.0);
    assert_eq!(code, 2);
    assert!(err.contains("routes[0].backend") && err.contains("missing"), "{err}");
}

#[test]
fn check_and_run_report_a_backend_that_cannot_be_set_up() {
    let (dir, path) = config_file(
        "[[routes]]\npath = \"/mcp\"\nbackend = \"remote\"\n[backends.remote]\nkind = \"http\"\n\
         url = \"https://mcp.example.com/mcp\"\nheaders = { \"x-api-key\" = { env = \"EDGE_TEST_UNSET_VARIABLE\" } }\n",
    );
    let (code, _, err) = check(&["--config", &path], &[], &dir.0);
    assert_eq!(code, 2);
    assert!(err.contains("`backends.remote.headers.x-api-key`") && err.contains("EDGE_TEST_UNSET_VARIABLE"), "{err}");
    let run = Command::new(EXE).args(["run", "--config", &path, "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("EDGE_TEST_UNSET_VARIABLE"));
    let (code, out, _) = check(&["--config", &path], &[("EDGE_TEST_UNSET_VARIABLE", "k")], &dir.0);
    assert_eq!(code, 0, "with the variable set the backend is fine");
    assert!(out.contains("env = \"EDGE_TEST_UNSET_VARIABLE\"") && !out.contains("= \"k\""), "{out}");
}

#[test]
fn layers_apply_in_order_file_then_env_then_flags() {
    let dir = TempDir::new();
    let (code, out, _) =
        check(&[], &[("MCP_EDGE_INSTANCE_ID", "edge-7"), ("MCP_EDGE_SESSIONS__MAX_SESSIONS", "12")], &dir.0);
    assert_eq!(code, 0);
    assert!(out.contains("instance_id = \"edge-7\"") && out.contains("max_sessions = 12"), "{out}");
    let (_, out, _) = check(&["--instance-id", "edge-9"], &[("MCP_EDGE_INSTANCE_ID", "edge-7")], &dir.0);
    assert!(out.contains("instance_id = \"edge-9\""), "{out}");
    let (code, _, err) = check(&[], &[("MCP_EDGE_NO_SUCH_KEY", "1")], &dir.0);
    assert_eq!(code, 2, "unknown environment keys are errors too");
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn without_a_file_the_built_in_default_is_the_shipped_gateway_toml() {
    let empty = TempDir::new();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let (_, built_in, _) = check(&["--instance-id", "x"], &[], &empty.0);
    let (_, from_file, _) = check(&["--instance-id", "x", "--config", shipped], &[], &empty.0);
    assert_eq!(built_in, from_file);
    assert!(built_in.contains("command = \"{self}\""));
}

#[tokio::test]
async fn quick_mode_serves_one_stdio_command_at_mcp() {
    let cmd = format!("'{EXE}' example-server");
    let gw = GatewayProcess::spawn(&["--stdio", &cmd]);
    let mut c = Client::new(&gw.url);
    c.initialize("2025-06-18").await;
    let r = c.call_tool("echo", serde_json::json!({"message": "quick"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "quick");
}

#[tokio::test]
async fn the_example_server_serves_streamable_http_in_process() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(EXE)
        .args(["example-server", "--http", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("Streamable HTTP at ").nth(1).map(str::to_owned))
        .expect("the example server prints its URL");
    std::thread::spawn(move || lines.for_each(drop));
    let mut c = Client::new(&url);
    c.initialize("2025-11-25").await;
    let r = c.call_tool("echo", serde_json::json!({"message": "no gateway, no child"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "no gateway, no child");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

/// The `workers` field of the gateway's `Listening.` line.
fn logged_workers(gw: &GatewayProcess) -> Option<u64> {
    gw.logs.lock().unwrap().iter().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "Listening.").then(|| v["workers"].as_u64())?
    })
}

#[tokio::test]
async fn server_worker_threads_sizes_the_runtime_and_the_start_line_says_so() {
    let shipped = mcp_edge::config::DEFAULT_TOML;
    assert!(shipped.contains("worker_threads = 0"), "the shipped file shows the key");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    for (value, expected) in [(0, cpus), (1, 1), (3, 3)] {
        let (_dir, path) = config_file(&shipped.replace("worker_threads = 0", &format!("worker_threads = {value}")));
        let gw = GatewayProcess::spawn(&["--config", &path]);
        assert_eq!(logged_workers(&gw), Some(expected), "worker_threads = {value}");
        let mut c = Client::new(&gw.url);
        c.initialize("2025-06-18").await;
        let r = c.call_tool("echo", serde_json::json!({"message": "threads"})).await;
        assert_eq!(r["result"]["content"][0]["text"], "threads", "worker_threads = {value} serves");
    }

    let dir = TempDir::new();
    let (code, _, err) = check(&[], &[("MCP_EDGE_SERVER__WORKER_THREADS", "5000")], &dir.0);
    assert_eq!(code, 2);
    assert!(err.contains("server.worker_threads") && err.contains("at most 1024"), "{err}");
}
