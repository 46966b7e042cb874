//! mcp-edge: the front door for MCP servers.
//!
//! # Layout
//!
//! - [`config`]: figment layers → typed, validated configuration.
//! - [`protocol`]: protocol revisions and the one decision "which era is this request".
//! - [`jsonrpc`]: envelopes, ids, error bodies, bounded line framing.
//! - [`error`]: every client-visible failure and how it is shown (one place).
//! - [`session`]: registry, the per-session task that routes messages, replay buffer.
//! - [`frontend`]: Streamable HTTP (POST/GET/DELETE, SSE), WebSocket, legacy HTTP+SSE,
//!   Origin/Host checks.
//! - [`backend`]: stdio children (through a guard process), Streamable HTTP and legacy SSE
//!   upstreams.
//! - [`retry`]: the one backoff policy of every outbound path.
//! - [`server`]: listener and accept loop.
//! - [`example`]: the built-in example MCP server (default backend, test fixture).
//!
//! `main` and the tests both use [`Gateway::bind`] and [`Gateway::run`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod error;
pub mod example;
pub mod frontend;
pub mod jsonrpc;
pub mod protocol;
pub mod retry;
pub mod server;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frontend::App;

/// Longest wait for connections to close once every session has ended.
const CONNECTION_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A gateway whose listener is bound.
pub struct Gateway {
    app: Arc<App>,
    listener: TcpListener,
}

fn config_listen(app: &App) -> SocketAddr {
    app.config.server.listen
}

impl Gateway {
    /// Binds the configured listener (port 0 picks a free port; see [`Gateway::local_addr`]).
    /// `self_exe` is the mcp-edge executable, used for `{self}` commands and the guard.
    pub async fn bind(config: Config, self_exe: PathBuf) -> std::io::Result<Gateway> {
        let app = App::new(config, self_exe)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = TcpListener::bind(config_listen(&app)).await?;
        Ok(Gateway { app, listener })
    }

    /// The example server served in-process at `addr/mcp` (no child, no pipe).
    pub async fn bind_in_process(addr: SocketAddr) -> std::io::Result<Gateway> {
        let overrides =
            config::Overrides { server: Some(config::ServerOverrides { listen: Some(addr) }), ..Default::default() };
        let config = config::load(&config::Source::BuiltIn, &overrides)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let route = frontend::Route { backend: backend::Backend::Example, websocket: true };
        let routes = [("/mcp".to_string(), route)].into();
        let listener = TcpListener::bind(addr).await?;
        Ok(Gateway { app: App::with_routes(config, PathBuf::new(), routes), listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains in phases: stop accepting; let in-flight
    /// requests finish for up to `server.shutdown_grace`; end every session (streams close,
    /// children stop); wait briefly for connections to close.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway { app, listener } = self;
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "Listening.");
        let stop = CancellationToken::new();
        let accept = tokio::spawn(server::accept_loop(listener, app.clone(), stop.clone()));
        shutdown.await;

        tracing::info!("Shutdown 1/4: stopped accepting connections and sessions.");
        stop.cancel();
        app.registry.start_draining();
        let graceful = accept.await.expect("the accept loop does not panic");
        let connections = tokio::spawn(graceful.shutdown());

        let grace = app.config.server.shutdown_grace;
        let waiting = app.registry.in_flight().get();
        tracing::info!(in_flight = waiting, grace = ?grace, "Shutdown 2/4: letting in-flight requests finish.");
        if tokio::time::timeout(grace, app.registry.in_flight().drained()).await.is_err() {
            tracing::warn!(
                in_flight = app.registry.in_flight().get(),
                "The grace period ran out; cutting the remaining requests."
            );
        }

        tracing::info!(sessions = app.registry.len(), "Shutdown 3/4: ending sessions, streams and children.");
        app.registry.end_all().await;

        tracing::info!("Shutdown 4/4: closing connections.");
        app.upgraded.close();
        let closed = async {
            let _ = connections.await;
            app.upgraded.wait().await;
        };
        if tokio::time::timeout(CONNECTION_CLOSE_WAIT, closed).await.is_err() {
            tracing::warn!("Some connections did not close in time.");
        }
        tracing::info!("Shutdown complete.");
    }
}
