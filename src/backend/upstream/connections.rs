//! Connections to one upstream origin, kept open between requests, over the rustls connector:
//! HTTP/1.1 connections driven by the task that makes each exchange (`h1`), hyper's HTTP/2
//! client when ALPN chooses it, and a list of the idle HTTP/1.1 ones. Owns nothing of MCP and
//! nothing of the request beyond the two things HTTP/1.1 needs on the wire (`Host`, the
//! origin-form target).
//!
//! An HTTP/1.1 connection carries one request at a time, and has no task of its own: the task
//! that sends a request writes it and reads the answer, and the connection goes back on the
//! idle list as soon as its response body has been read to the end (or there was none).
//! Dropping the body, or the request's future, before then closes it. A request takes the
//! newest idle connection that is still open and opens a new one when there is none. Idle
//! connections are closed after `POOL_IDLE` unused, and when found closed by the upstream. An
//! HTTP/2 connection is shared by every request while it stays open. A request that a reused
//! connection turned away before taking it (the upstream had just closed it) goes out again on
//! another connection; one that may have been read is never repeated.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::{Authority, Scheme};
use http::{Response, Uri};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tower_service::Service;

use super::{h1, Outgoing};
use crate::metrics::Live;

type Http2 = http2::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection, counted in `upstream_connections` while it is open. Boxed where
/// it is kept: with TLS state it is large, and the futures and bodies that hold it move.
struct Http1 {
    conn: h1::Conn<TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>>,
    _open: Live,
}

/// How long an unused connection stays open.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Open connections to one origin (scheme, host, port).
pub struct Connections {
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header of every HTTP/1.1 request (the port only when not the default).
    host: HeaderValue,
    connector: HttpsConnector<HttpConnector>,
    /// Open connections (`upstream_connections`).
    open: IntGauge,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// HTTP/1.1 connections waiting for a request, oldest first, with when each came back.
    idle: Vec<(Box<Http1>, Instant)>,
    /// The HTTP/2 connection every request shares.
    shared: Option<Http2>,
    /// Whether the task that closes long-idle connections runs.
    reaping: bool,
    /// Woken when an idle connection becomes readable: closed by the upstream, mostly.
    watcher: Option<Waker>,
}

/// A connection taken for one request.
enum Taken {
    One { conn: Box<Http1>, reused: bool },
    Shared { tx: Http2, reused: bool },
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection could be made: the request never left.
    #[error("{0}")]
    Connect(String),
    /// The request may have reached the upstream.
    #[error("{0}")]
    Send(String),
}

impl Connections {
    pub fn new(url: &Uri, connector: HttpsConnector<HttpConnector>, open: IntGauge) -> Result<Connections, String> {
        let (Some(scheme), Some(authority)) = (url.scheme(), url.authority()) else {
            return Err(format!("`{url}` is not an absolute http:// or https:// URL"));
        };
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("`{url}`: {e}"))?;
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Connections {
            origin,
            scheme: scheme.clone(),
            authority: authority.clone(),
            host,
            connector,
            open,
            state: Mutex::new(State::default()),
        })
    }

    /// Sends `req` (an absolute URI on this origin) and waits for the response head. The
    /// connection returns to the idle list when the body has been read to its end; dropping
    /// the body (or this future) earlier closes it.
    pub async fn send(self: &Arc<Self>, req: &Outgoing) -> Result<Response<Body>, Failure> {
        loop {
            let taken = match self.take() {
                Some(t) => t,
                // Boxed: connecting (TLS, HTTP/2 handshake) is a large future, and rare.
                None => Box::pin(self.connect()).await?,
            };
            match taken {
                Taken::Shared { mut tx, reused } => {
                    match tx.try_send_request(req.to_http(self.absolute_form(&req.uri))).await {
                        Ok(resp) => return Ok(resp.map(|inner| Body { inner: Inner::H2(inner) })),
                        Err(mut e) => match e.take_message() {
                            Some(_) if reused => {
                                // The connection is going away: the next request opens another.
                                self.lock().shared = None;
                            }
                            _ => return Err(Failure::Send(chain(e.error()))),
                        },
                    }
                }
                Taken::One { mut conn, reused } => {
                    let head = h1::encode_head(req, &self.host);
                    if let Err(e) = conn.conn.write(&head, req.body.as_deref().unwrap_or_default()).await {
                        if reused {
                            continue;
                        }
                        return Err(Failure::Send(format!("writing the request: {e}")));
                    }
                    return match conn.conn.read_head().await {
                        Ok((head, reader)) => Ok(self.answered(head, reader, conn)),
                        Err(e) => Err(Failure::Send(e.to_string())),
                    };
                }
            }
        }
    }

    /// The response, holding its connection until the body ends; one with no body gives the
    /// connection back now (or closes it, when the upstream said so).
    fn answered(self: &Arc<Self>, head: Response<()>, reader: h1::Reader, conn: Box<Http1>) -> Response<Body> {
        if reader.is_end() {
            if reader.reusable() {
                self.give_back(conn);
            }
            return head.map(|()| Body { inner: Inner::Empty });
        }
        head.map(|()| Body { inner: Inner::H1 { conn: Some(conn), reader, back: Arc::clone(self) } })
    }

    /// An HTTP/1.1 connection whose exchange is over, idle again, and watched: the upstream
    /// closing it wakes the task that drops closed connections.
    fn give_back(&self, mut conn: Box<Http1>) {
        let mut state = self.lock();
        let open = match &state.watcher {
            Some(w) => conn.conn.poll_open(&mut Context::from_waker(w)),
            None => true,
        };
        if open {
            state.idle.push((conn, Instant::now()));
        }
    }

    /// The shared HTTP/2 connection, or the newest idle HTTP/1.1 one that is still open.
    fn take(&self) -> Option<Taken> {
        let mut state = self.lock();
        if state.shared.as_ref().is_some_and(|s| s.is_closed()) {
            state.shared = None;
        }
        if let Some(tx) = &state.shared {
            return Some(Taken::Shared { tx: tx.clone(), reused: true });
        }
        while let Some((mut conn, since)) = state.idle.pop() {
            if since.elapsed() < POOL_IDLE && conn.conn.is_open() {
                return Some(Taken::One { conn, reused: true });
            }
        }
        None
    }

    /// A new connection: HTTP/2 when TLS negotiated it, HTTP/1.1 otherwise.
    async fn connect(self: &Arc<Self>) -> Result<Taken, Failure> {
        let mut connector = self.connector.clone();
        let connected = match poll_fn(|cx| connector.poll_ready(cx)).await {
            Ok(()) => connector.call(self.origin.clone()).await,
            Err(e) => Err(e),
        };
        let io = connected.map_err(|e| Failure::Connect(chain(&*e)))?;
        self.start_reaping();
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| Failure::Connect(chain(&e)))?;
            self.drive(conn, "HTTP/2");
            self.lock().shared = Some(tx.clone());
            return Ok(Taken::Shared { tx, reused: false });
        }
        let conn = Box::new(Http1 { conn: h1::Conn::new(TokioIo::new(io)), _open: Live::new(self.open.clone()) });
        Ok(Taken::One { conn, reused: false })
    }

    /// Runs an HTTP/2 connection's I/O in a task of its own, counted in `open` while it lives.
    fn drive(&self, conn: impl Future<Output = hyper::Result<()>> + Send + 'static, version: &'static str) {
        let live = Live::new(self.open.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("An upstream {version} connection ended: {}.", chain(&e));
            }
            drop(live);
        });
    }

    /// Starts, once, the task that closes idle connections the upstream closed (woken by
    /// them) and those idle for longer than `POOL_IDLE` (looked at every third of it); it ends
    /// with the last reference to these connections.
    fn start_reaping(self: &Arc<Self>) {
        if std::mem::replace(&mut self.lock().reaping, true) {
            return;
        }
        let this: Weak<Connections> = Arc::downgrade(self);
        let mut tick = tokio::time::interval(POOL_IDLE / 3);
        tokio::spawn(poll_fn(move |cx| {
            let Some(this) = this.upgrade() else { return Poll::Ready(()) };
            while tick.poll_tick(cx).is_ready() {}
            let mut state = this.lock();
            if !state.watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.watcher = Some(cx.waker().clone());
            }
            state.idle.retain_mut(|(conn, since)| since.elapsed() < POOL_IDLE && conn.conn.poll_open(cx));
            Poll::Pending
        }));
    }

    /// HTTP/2 on the wire: scheme and authority in the URI.
    fn absolute_form(&self, uri: &Uri) -> Uri {
        if uri.scheme().is_some() {
            return uri.clone();
        }
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        Uri::from_parts(parts).expect("scheme, authority and path")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body. An HTTP/1.1 one is read from its connection by whoever polls it, and
/// gives the connection back when read to the end.
pub struct Body {
    inner: Inner,
}

enum Inner {
    Empty,
    H1 { conn: Option<Box<Http1>>, reader: h1::Reader, back: Arc<Connections> },
    H2(Incoming),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::H2(inner) => Pin::new(inner).poll_frame(cx).map_err(std::io::Error::other),
            Inner::H1 { conn, reader, back } => {
                let Some(c) = conn else { return Poll::Ready(None) };
                let polled = std::task::ready!(reader.poll_data(&mut c.conn, cx));
                // Given back at the body's end, closed after an error.
                if reader.is_end() || matches!(polled, Some(Err(_))) {
                    if let Some(c) = conn.take().filter(|_| reader.reusable()) {
                        back.give_back(c);
                    }
                }
                Poll::Ready(polled.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::H1 { conn, reader, .. } => conn.is_none() || reader.is_end(),
            Inner::H2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::H1 { reader, .. } => reader.remaining().map(SizeHint::with_exact).unwrap_or_default(),
            Inner::H2(inner) => inner.size_hint(),
        }
    }
}

/// An error and its causes, for a message.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
