//! The client listener: accepts TCP connections and serves HTTP/1.1 and HTTP/2 on them.
//!
//! Owns sockets and connection lifetimes, nothing about MCP: TLS termination, the request-head
//! timeout, closing idle connections, the connection cap. Accept errors (such as running out
//! of file descriptors) are logged and survived. Every connection is watched by a
//! [`GracefulShutdown`] so shutdown can let in-flight responses finish.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frontend::{self, App};
use crate::rt::{ConnTimer, Inline};

/// Lets a handler close the connection its request arrived on: the one way to cut off a client
/// that stopped reading a streaming response, whose body hyper no longer polls. Every request
/// is handed one (`frontend::Connection`).
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

/// When a connection last moved a byte, for closing idle ones.
#[derive(Debug)]
struct Activity {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last read or write that moved data.
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity { start: std::time::Instant::now(), last: std::sync::atomic::AtomicU64::new(0) })
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A client connection's byte stream, plain or TLS, noting when data moves.
pub struct Stream {
    io: Io,
    activity: Arc<Activity>,
}

impl Stream {
    pub fn new(io: Io) -> Stream {
        Stream { io, activity: Activity::new() }
    }
}

/// An accepted connection, plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The HTTP/1.1 and HTTP/2 server settings of a new connection, from the configuration in
/// force: a client gets `header_read_timeout` for each request head (the first, and each next
/// one on a kept-alive connection), timed by one timer per connection ([`ConnTimer`]).
fn http_builder(server: &crate::config::ServerConfig, timer: ConnTimer) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(timer).header_read_timeout(server.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts until `stop` is cancelled; returns the watcher of the connections still open.
/// With `tls`, each connection's handshake must complete within `server.header_read_timeout`.
pub async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    stop: CancellationToken,
    tls: Option<TlsAcceptor>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
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
        let served = app.served();
        let server = &served.config.server;
        let timer = ConnTimer::default();
        let (builder, handshake_within, idle) =
            (http_builder(server, timer.clone()), server.header_read_timeout, server.idle_timeout);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let span = tracing::debug_span!("connection", client.addr = %addr);
        // Inline: hyper hands a request its body, and an upstream exchange answers its POST,
        // from this same task.
        tokio::spawn(Inline::new(
            async move {
                let io = match handshake(stream, tls.as_ref(), handshake_within).await {
                    Ok(io) => io,
                    Err(reason) => {
                        app.metrics.rejections.with_label_values(&[reason]).inc();
                        return;
                    }
                };
                serve(app, place, builder, timer, watcher, io, idle).await
            }
            .instrument(span),
        ));
    }
    graceful
}

/// A client's byte stream, after the TLS handshake when there is one; on failure, the
/// rejection reason it is counted under.
pub async fn handshake(stream: TcpStream, tls: Option<&TlsAcceptor>, within: Duration) -> Result<Io, &'static str> {
    let Some(tls) = tls else { return Ok(Io::Plain(stream)) };
    match tokio::time::timeout(within, tls.accept(stream)).await {
        Ok(Ok(s)) => Ok(Io::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "A TLS handshake failed.");
            Err("tls")
        }
        Err(_) => {
            tracing::debug!("A TLS handshake took longer than server.header_read_timeout.");
            Err("slow_client")
        }
    }
}

/// Serves HTTP on one accepted connection until it ends, is cut, or moves no byte for `idle`.
async fn serve(
    app: Arc<App>,
    place: ConnectionGuard,
    builder: auto::Builder<TokioExecutor>,
    timer: ConnTimer,
    watcher: hyper_util::server::graceful::Watcher,
    io: Io,
    idle: Duration,
) {
    let cut = ConnectionCut::default();
    let cut_requested = cut.0.clone();
    // Shared with an upgraded WebSocket, which keeps the place after hyper lets go.
    let place = Arc::new(place);
    let held = place.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        // Handed over, not put in the request's extensions: those cost a map per request.
        let timer = (req.version() <= hyper::Version::HTTP_11).then(|| timer.clone());
        let conn = frontend::Connection { cut: cut.clone(), place: held.clone(), timer };
        async move { Ok::<_, std::convert::Infallible>(frontend::handle(app, req, conn).await) }
    });
    let stream = Stream::new(io);
    let activity = stream.activity.clone();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    // Every streaming response writes at least its keep-alives, so a connection silent for
    // `idle` has no request in progress worth keeping.
    let check = (idle / 4).max(Duration::from_millis(250));
    loop {
        // Not cancel-safe, on purpose: a cut drops the connection, closing its socket.
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "A connection ended with an error.");
                }
                break;
            }
            _ = cut_requested.cancelled() => {
                tracing::debug!("Cut a connection whose client stopped reading.");
                break;
            }
            _ = tokio::time::sleep(check) => {
                if activity.idle_for() >= idle {
                    tracing::debug!(idle = ?idle, "Closed a connection idle for server.idle_timeout.");
                    break;
                }
            }
        }
    }
    drop(place);
}
