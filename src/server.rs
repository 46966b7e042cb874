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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let cut = ConnectionCut::default();
        let cut_requested = cut.0.clone();
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            let app = app.clone();
            req.extensions_mut().insert(cut.clone());
            async move { Ok::<_, std::convert::Infallible>(frontend::handle(app, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("connection", client.addr = %addr);
        tokio::spawn(
            async move {
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
