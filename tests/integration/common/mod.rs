//! Test harness: the real gateway in-process on 127.0.0.1:0, a small MCP-over-HTTP client that
//! reads JSON and SSE answers, and process-tree helpers. Nothing here is mocked.

#![allow(dead_code)]

pub mod client;
pub mod process;
pub mod procs;
pub mod raw;
pub mod tls;
pub mod upstream;
pub mod ws;

use std::time::Duration;

use mcp_edge::config::{self, Config, Overrides, ServerOverrides, Source};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use client::{Client, Response};

/// The mcp-edge binary built for this test run.
pub const EXE: &str = env!("CARGO_BIN_EXE_mcp-edge");

/// The shipped configuration (the example server over stdio), listening on a free port.
pub fn default_config() -> Config {
    let overrides = Overrides {
        server: Some(ServerOverrides { listen: Some("127.0.0.1:0".parse().unwrap()) }),
        admin: Some(config::AdminOverrides { enabled: Some(true), listen: Some("127.0.0.1:0".parse().unwrap()) }),
        ..Default::default()
    };
    let mut c = config::load(&Source::BuiltIn, &overrides).expect("the built-in config loads");
    c.instance_id = "test".into();
    c
}

/// The stdio backend of `default_config`, for tests to adjust.
pub fn stdio(c: &mut Config) -> &mut config::StdioConfig {
    match c.backends.get_mut("example").expect("example backend") {
        config::BackendConfig::Stdio(s) => s,
        other => panic!("not a stdio backend: {other:?}"),
    }
}

/// A gateway running in this process; shut down on `stop` or on drop.
pub struct TestGateway {
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), when on.
    pub admin: Option<std::net::SocketAddr>,
    /// Applies a new configuration as SIGHUP would.
    pub reloader: mcp_edge::Reloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(config: Config) -> TestGateway {
        let gw = mcp_edge::Gateway::bind(config, EXE.into()).await.expect("binds");
        let addr = gw.local_addr();
        let admin = gw.admin_addr();
        let reloader = gw.reloader();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        TestGateway { url: format!("http://{addr}/mcp"), addr, admin, reloader, stop: Some(tx), task: Some(task) }
    }

    pub async fn default() -> TestGateway {
        TestGateway::start(default_config()).await
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Runs the shutdown sequence and waits for it to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("shutdown finishes").unwrap();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls an async `check` every 20 ms until it holds or `within` passes (for what the gateway
/// frees or fetches in the background: a session's slot, a stream's place, keys).
pub async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
