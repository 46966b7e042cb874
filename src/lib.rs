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
//! - [`gather`]: a request or response body's frames gathered into one buffer.
//! - [`retry`]: the one backoff policy of every outbound path.
//! - [`server`]: listener and accept loop.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`metrics`]: every Prometheus metric, in one struct built from a registry passed in.
//! - [`example`]: the built-in example MCP server (default backend, test fixture).
//!
//! `main` and the tests both use [`Gateway::bind`] and [`Gateway::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod example;
pub mod frontend;
pub mod gather;
pub mod jsonrpc;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod retry;
pub mod rt;
pub mod server;
pub mod session;
pub mod tls;

/// A hash map on the path of every call, hashed with foldhash (seeded at random) instead of
/// SipHash, which costs several times more per lookup. Its keys are the gateway's own (session
/// and child ids, route paths) or a client's request ids in a map bounded by that session's
/// `max_in_flight`, so keys made to collide could slow only the session that sent them.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What the fuzz targets in `fuzz/` call besides the public modules: the ways a client names
/// its session. Not an API; it may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::frontend::legacy_sse::{encode as legacy_encode, session_param as legacy_session_param};
    pub use crate::frontend::websocket::{percent_decode, Named, Query};
}

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

/// A gateway whose listeners are bound.
pub struct Gateway {
    app: Arc<App>,
    listener: TcpListener,
    /// The admin listener, when `admin.enabled`.
    admin: Option<TcpListener>,
    /// TLS termination of the client and the admin listener, when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin_tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Gateway {
    /// Binds the configured listener (port 0 picks a free port; see [`Gateway::local_addr`]).
    /// `self_exe` is the mcp-edge executable, used for `{self}` commands and the guard.
    pub async fn bind(config: Config, self_exe: PathBuf) -> std::io::Result<Gateway> {
        Gateway::bind_with(config, self_exe, prometheus::Registry::new()).await
    }

    /// As [`Gateway::bind`], registering the metrics in `registry`.
    pub async fn bind_with(
        config: Config,
        self_exe: PathBuf,
        registry: prometheus::Registry,
    ) -> std::io::Result<Gateway> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let acceptor = |key: &str, tls: &Option<config::TlsServerConfig>| match tls {
            Some(t) => tls::Certificates::acceptor(t).map(Some).map_err(|e| invalid(format!("`{key}`: {e}"))),
            None => Ok(None),
        };
        let client_tls = acceptor("server.tls", &config.server.tls)?;
        let admin_tls = acceptor("admin.tls", &config.admin.tls)?;
        let metrics = Arc::new(metrics::Metrics::new(registry));
        let app = App::new(config, self_exe, metrics).map_err(|e| invalid(e.to_string()))?;
        app.set_certificates(client_tls.as_ref().map(|t| t.1.clone()), admin_tls.as_ref().map(|t| t.1.clone()));
        let listener = TcpListener::bind(app.served().config.server.listen).await?;
        let admin = match app.served().config.admin.enabled {
            true => Some(TcpListener::bind(app.served().config.admin.listen).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("admin listener {}: {e}", app.served().config.admin.listen))
            })?),
            false => None,
        };
        Ok(Gateway { app, listener, admin, tls: client_tls.map(|t| t.0), admin_tls: admin_tls.map(|t| t.0) })
    }

    /// The example server served in-process at `addr/mcp` (no child, no pipe).
    pub async fn bind_in_process(addr: SocketAddr) -> std::io::Result<Gateway> {
        let overrides = config::Overrides {
            server: Some(config::ServerOverrides { listen: Some(addr) }),
            admin: Some(config::AdminOverrides { enabled: Some(false), listen: None }),
            ..Default::default()
        };
        let config = config::load(&config::Source::BuiltIn, &overrides)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let route = frontend::Route { backend: backend::Backend::Example, websocket: true, auth: None };
        let routes = [("/mcp".to_string(), route)].into();
        let listener = TcpListener::bind(addr).await?;
        let metrics = Arc::new(metrics::Metrics::new(prometheus::Registry::new()));
        let app = App::with_routes(config, PathBuf::new(), routes, metrics);
        Ok(Gateway { app, listener, admin: None, tls: None, admin_tls: None })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// A handle that applies reloaded configurations to this gateway (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.app.clone())
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains in phases: report unready (`/readyz` 503)
    /// and keep serving for `server.drain_delay`; stop accepting; let in-flight requests finish
    /// for up to `server.shutdown_grace`; end every session (streams close, WebSockets get
    /// 1001, children stop); wait briefly for connections to close.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway { app, listener, admin, tls, admin_tls } = self;
        let admin_stop = CancellationToken::new();
        if let Some(admin) = admin {
            let addr = admin.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(admin = %addr, "Serving /metrics, /healthz and /readyz.");
            tokio::spawn(admin::serve(admin, app.clone(), admin_stop.clone(), admin_tls));
        }
        app.metrics.ready.set(1);
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), workers, "Listening.");
        let stop = CancellationToken::new();
        let accept = tokio::spawn(server::accept_loop(listener, app.clone(), stop.clone(), tls));
        shutdown.await;

        let delay = app.served().config.server.drain_delay;
        app.start_draining();
        tracing::info!(delay = ?delay, "Shutdown 0/4: /readyz reports 503; still serving while load balancers stop sending.");
        tokio::time::sleep(delay).await;

        tracing::info!("Shutdown 1/4: stopped accepting connections and sessions.");
        stop.cancel();
        app.registry.start_draining();
        let graceful = accept.await.expect("the accept loop does not panic");
        let connections = tokio::spawn(graceful.shutdown());

        let grace = app.served().config.server.shutdown_grace;
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
        for backend in app.served().backends() {
            backend.shutdown().await;
        }

        tracing::info!("Shutdown 4/4: closing connections.");
        app.upgraded.close();
        let closed = async {
            let _ = connections.await;
            app.upgraded.wait().await;
        };
        if tokio::time::timeout(CONNECTION_CLOSE_WAIT, closed).await.is_err() {
            tracing::warn!("Some connections did not close in time.");
        }
        admin_stop.cancel();
        tracing::info!("Shutdown complete.");
    }
}

/// Applies a reloaded configuration to a running gateway.
#[derive(Clone)]
pub struct Reloader(Arc<App>);

impl Reloader {
    /// Routes, backends, Origin/Host rules, limits and timeouts apply to new requests and new
    /// sessions; live sessions keep their backend. Returns the changed keys that need a
    /// restart (they keep their old values); fails, changing nothing, when a backend cannot
    /// be set up.
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, backend::ConnectError> {
        let old = self.0.served();
        let old = &old.config;
        let mut restart = Vec::new();
        let checks: [(&'static str, bool); 7] = [
            ("server.listen", old.server.listen != config.server.listen),
            ("server.worker_threads", old.server.worker_threads != config.server.worker_threads),
            // Turning TLS on or off changes the listener; new files for it are read now.
            ("server.tls", old.server.tls.is_some() != config.server.tls.is_some()),
            ("admin.enabled", old.admin.enabled != config.admin.enabled),
            ("admin.listen", old.admin.listen != config.admin.listen),
            ("instance_id", old.instance_id != config.instance_id),
            ("log.format", old.log.format != config.log.format),
        ];
        restart.extend(checks.iter().filter(|(_, changed)| *changed).map(|(k, _)| *k));
        let mut config = config;
        // Keys that need a restart keep the values the process runs with.
        config.server.listen = old.server.listen;
        config.server.worker_threads = old.server.worker_threads;
        if old.server.tls.is_some() != config.server.tls.is_some() {
            config.server.tls = old.server.tls.clone();
        }
        config.admin = old.admin.clone();
        config.instance_id = old.instance_id.clone();
        config.log.format = old.log.format;
        self.0.reload(config)?;
        Ok(restart)
    }
}
