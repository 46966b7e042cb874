//! Connections to one upstream origin, kept open between requests: hyper's own HTTP/1.1 and
//! HTTP/2 client connections over the rustls connector, and a list of the idle ones. Owns
//! nothing of MCP and nothing of the request beyond the two things HTTP/1.1 needs on the
//! wire (`Host`, the origin-form target).
//!
//! An HTTP/1.1 connection carries one request at a time. It goes back on the idle list as
//! soon as its response body has been read to the end (or there was none), from the task that
//! read it: no task of its own per request. A request takes the newest idle connection and
//! opens a new one when there is none. Idle connections are closed after `POOL_IDLE` unused,
//! and whenever the upstream closes them. An HTTP/2 connection (when ALPN chose it) is shared
//! by every request while it stays open. A request that a reused connection turned away
//! before sending it (the upstream had just closed it) goes out again on another connection;
//! one that may have been sent is never repeated.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use tower_service::Service;

use crate::metrics::Live;

type Http1 = http1::SendRequest<Full<Bytes>>;
type Http2 = http2::SendRequest<Full<Bytes>>;

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
    /// Open connections (`upstream_connections`), each held up by its connection's task.
    open: IntGauge,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// HTTP/1.1 connections waiting for a request, oldest first, with when each came back.
    idle: Vec<(Http1, Instant)>,
    /// The HTTP/2 connection every request shares.
    shared: Option<Http2>,
    /// Whether the task that closes long-idle connections runs.
    reaping: bool,
}

/// A connection taken for one request.
enum Taken {
    One { tx: Http1, reused: bool },
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
    pub async fn send(self: &Arc<Self>, mut req: Request<Full<Bytes>>) -> Result<Response<Body>, Failure> {
        loop {
            let taken = match self.take() {
                Some(t) => t,
                // Boxed: connecting (TLS, HTTP/2 handshake) is a large future, and rare.
                None => Box::pin(self.connect()).await?,
            };
            match taken {
                Taken::Shared { mut tx, reused } => {
                    self.absolute_form(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(resp.map(|inner| Body { inner, back: None })),
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => {
                                // The connection is going away: the next request opens another.
                                self.lock().shared = None;
                                req = r;
                            }
                            _ => return Err(Failure::Send(chain(e.error()))),
                        },
                    }
                }
                Taken::One { mut tx, reused } => {
                    self.origin_form(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(self.answered(resp, tx)),
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => req = r,
                            _ => return Err(Failure::Send(chain(e.error()))),
                        },
                    }
                }
            }
        }
    }

    /// The response, holding its connection until the body ends; one with no body gives the
    /// connection back now.
    fn answered(self: &Arc<Self>, resp: Response<Incoming>, tx: Http1) -> Response<Body> {
        if resp.body().is_end_stream() {
            self.give_back(tx);
            return resp.map(|inner| Body { inner, back: None });
        }
        let back = Some((Arc::clone(self), tx));
        resp.map(|inner| Body { inner, back })
    }

    /// An HTTP/1.1 connection whose exchange is over: idle again once hyper has finished
    /// with the response (almost always already the case).
    fn give_back(self: &Arc<Self>, mut tx: Http1) {
        if tx.is_ready() {
            self.lock().idle.push((tx, Instant::now()));
        } else if !tx.is_closed() {
            let this = Arc::downgrade(self);
            tokio::spawn(async move {
                if poll_fn(|cx| tx.poll_ready(cx)).await.is_ok() {
                    if let Some(this) = this.upgrade() {
                        this.lock().idle.push((tx, Instant::now()));
                    }
                }
            });
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
        while let Some((tx, since)) = state.idle.pop() {
            if tx.is_ready() && since.elapsed() < POOL_IDLE {
                return Some(Taken::One { tx, reused: true });
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
        let (tx, conn) = http1::handshake(io).await.map_err(|e| Failure::Connect(chain(&e)))?;
        self.drive(conn, "HTTP/1.1");
        Ok(Taken::One { tx, reused: false })
    }

    /// Runs a connection's I/O in a task of its own, counted in `open` while it lives.
    fn drive(&self, conn: impl Future<Output = hyper::Result<()>> + Send + 'static, version: &'static str) {
        let live = Live::new(self.open.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("An upstream {version} connection ended: {}.", chain(&e));
            }
            drop(live);
        });
    }

    /// Starts, once, the task that closes connections idle for longer than `POOL_IDLE`; it
    /// ends with the last reference to these connections.
    fn start_reaping(self: &Arc<Self>) {
        if std::mem::replace(&mut self.lock().reaping, true) {
            return;
        }
        let this: Weak<Connections> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POOL_IDLE / 3).await;
                let Some(this) = this.upgrade() else { return };
                this.lock().idle.retain(|(tx, since)| !tx.is_closed() && since.elapsed() < POOL_IDLE);
            }
        });
    }

    /// HTTP/1.1 on the wire: `Host` and the path alone.
    fn origin_form(&self, req: &mut Request<Full<Bytes>>) {
        req.headers_mut().entry(HOST).or_insert_with(|| self.host.clone());
        if req.uri().scheme().is_some() {
            let path = req.uri().path_and_query().cloned().unwrap_or_else(|| "/".parse().expect("a path"));
            *req.uri_mut() = Uri::from(path);
        }
    }

    /// HTTP/2 on the wire: scheme and authority in the URI.
    fn absolute_form(&self, req: &mut Request<Full<Bytes>>) {
        if req.uri().scheme().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body that gives its HTTP/1.1 connection back when read to the end.
pub struct Body {
    inner: Incoming,
    back: Option<(Arc<Connections>, Http1)>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some((connections, tx)) = self.back.take() {
                connections.give_back(tx);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
