//! The client listener: accepts TCP connections and serves HTTP/1.1 and HTTP/2 on them.
//!
//! Owns sockets and connection lifetimes, nothing about MCP. Accept errors (such as running
//! out of file descriptors) are logged and survived. Every connection is watched by a
//! [`GracefulShutdown`] so shutdown can let in-flight responses finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frontend::{self, App};

/// Lets a handler close the connection its request arrived on: the one way to cut off a client
/// that stopped reading a streaming response, whose body hyper no longer polls. Every request
/// carries one in its extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnectionCut(CancellationToken);

impl ConnectionCut {
    /// Closes the connection at once, mid-response.
    pub fn cut(&self) {
        self.0.cancel();
    }
}

/// Descriptors kept for everything that is not a client connection (listeners, logs, the
/// runtime, upstream sockets in flight).
const RESERVED_FDS: u64 = 256;

/// The connection cap in force: `server.max_connections`, or derived from the open-file limit
/// when it is 0. Also says how it was reached, for the start-up log.
pub fn connection_cap(configured: usize, per_session_fds: u64) -> (usize, String) {
    if configured > 0 {
        return (configured, "server.max_connections".into());
    }
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let per = 1 + per_session_fds;
    let cap = (limit.saturating_sub(RESERVED_FDS) / per).max(1);
    (cap as usize, format!("open-file limit {limit}, {RESERVED_FDS} reserved, {per} per connection"))
}

/// Client connections open now, bounded by the cap; a guard per connection.
#[derive(Default)]
pub struct Connections {
    live: std::sync::atomic::AtomicUsize,
    pub cap: std::sync::atomic::AtomicUsize,
}

/// Holds one place among the connections while it lives.
pub struct ConnectionGuard(Arc<App>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.metrics.connections.dec();
    }
}

impl Connections {
    /// A place for one more connection, unless the cap is reached.
    pub fn admit(app: &Arc<App>) -> Option<ConnectionGuard> {
        use std::sync::atomic::Ordering::SeqCst;
        let c = &app.connections;
        if c.live.fetch_add(1, SeqCst) >= c.cap.load(SeqCst) {
            c.live.fetch_sub(1, SeqCst);
            return None;
        }
        app.metrics.connections.inc();
        Some(ConnectionGuard(app.clone()))
    }
}

/// Answers a connection over the cap with 503 and closes it, without reading its request.
async fn refuse(mut stream: tokio::net::TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32007,"message":"Service Unavailable: server.max_connections ({cap}) reached"}}}}"#
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Accepts until `stop` is cancelled; returns the watcher of the connections still open.
pub async fn accept_loop(listener: TcpListener, app: Arc<App>, stop: CancellationToken) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        // Cancel-safe: `accept` holds no partial state when the stop branch wins.
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a connection failed; retrying shortly.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(place) = Connections::admit(&app) else {
            let cap = app.connections.cap.load(std::sync::atomic::Ordering::SeqCst);
            app.metrics.rejections.with_label_values(&["limit"]).inc();
            tracing::debug!(client.addr = %addr, cap, "Refused a connection over server.max_connections.");
            tokio::spawn(refuse(stream, cap));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let cut = ConnectionCut::default();
        let cut_requested = cut.0.clone();
        // Shared with an upgraded WebSocket, which keeps the place after hyper lets go.
        let place = Arc::new(place);
        let held = place.clone();
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            let app = app.clone();
            req.extensions_mut().insert(cut.clone());
            req.extensions_mut().insert(held.clone());
            async move { Ok::<_, std::convert::Infallible>(frontend::handle(app, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("connection", client.addr = %addr);
        tokio::spawn(
            async move {
                let _place = place;
                // Not cancel-safe, on purpose: a cut drops the connection, closing its socket.
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "A connection ended with an error.");
                    },
                    _ = cut_requested.cancelled() => tracing::debug!("Cut a connection whose client stopped reading."),
                }
            }
            .instrument(span),
        );
    }
    graceful
}
