//! Real upstreams for the HTTP backend tests: the example server serving Streamable HTTP
//! in-process on port 0, and a fault-injecting proxy in front of it that the tests steer —
//! it forgets sessions (404, or the 400 some servers send), cuts SSE answers after a number
//! of events, answers slowly, refuses `initialize`, closes its connections, and records every
//! request and connection it saw.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Http;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The example server on Streamable HTTP at `url`, stopped on drop.
pub struct ExampleHttp {
    pub url: String,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl ExampleHttp {
    pub async fn start() -> ExampleHttp {
        let gw = mcp_edge::Gateway::bind_in_process("127.0.0.1:0".parse().unwrap()).await.expect("binds");
        let addr = gw.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        ExampleHttp { url: format!("http://{addr}/mcp"), addr, _stop: tx }
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the request arrived.
    pub at: std::time::Instant,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The JSON-RPC method of the body, if any.
    pub fn rpc_method(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["method"].as_str().map(str::to_owned)
    }

    pub fn session(&self) -> Option<&str> {
        self.headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
    }
}

/// What the proxy does wrong, steered by the test.
#[derive(Default)]
pub struct Faults {
    /// Session ids the upstream answered with so far.
    pub sessions: Mutex<HashSet<String>>,
    /// Session ids the proxy pretends the upstream forgot, and the status it answers them.
    forgotten: Mutex<(HashSet<String>, u16)>,
    /// Cut the next SSE answer to a POST after this many events (0 = never).
    cut_after: AtomicUsize,
    delay_ms: AtomicU64,
    /// Answer every GET with 404, as servers that only route POST do.
    get_404: AtomicBool,
    refuse_initialize: AtomicBool,
    pub seen: Mutex<Vec<Seen>>,
    /// TCP connections accepted so far.
    accepted: AtomicUsize,
    /// Cancelled to close every open connection at once, without a word.
    close: Mutex<CancellationToken>,
}

/// The fault-injecting proxy in front of an upstream.
pub struct Chaos {
    pub url: String,
    pub faults: Arc<Faults>,
    _stop: oneshot::Sender<()>,
}

impl Chaos {
    pub async fn start(target: &str) -> Chaos {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let client: Http<HttpConnector, Full<Bytes>> = Http::builder(TokioExecutor::new()).build_http();
        let (tx, mut rx) = oneshot::channel::<()>();
        let target = target.to_owned();
        let f = faults.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = &mut rx => return,
                };
                f.accepted.fetch_add(1, Ordering::SeqCst);
                let close = f.close.lock().unwrap().clone();
                let (f, client, target) = (f.clone(), client.clone(), target.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (f, client, target) = (f.clone(), client.clone(), target.clone());
                        async move { Ok::<_, Infallible>(proxy(f, client, &target, req).await) }
                    });
                    let serve =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    // Dropping the connection closes the socket mid-whatever, as a server's
                    // keep-alive timeout does.
                    let _ = close.run_until_cancelled(serve).await;
                });
            }
        });
        Chaos { url: format!("http://{addr}/mcp"), faults, _stop: tx }
    }

    /// From now on, every session the upstream gave out so far is unknown: answered `status`
    /// (404, or 400 with a "no valid session" body).
    pub fn forget_sessions(&self, status: u16) {
        let known = self.faults.sessions.lock().unwrap().clone();
        *self.faults.forgotten.lock().unwrap() = (known, status);
    }

    pub fn cut_next_stream_after(&self, events: usize) {
        self.faults.cut_after.store(events, Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.faults.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn refuse_get(&self, on: bool) {
        self.faults.get_404.store(on, Ordering::SeqCst);
    }

    pub fn refuse_initialize(&self, on: bool) {
        self.faults.refuse_initialize.store(on, Ordering::SeqCst);
    }

    /// Closes every connection open now (new ones are served).
    pub fn close_connections(&self) {
        std::mem::take(&mut *self.faults.close.lock().unwrap()).cancel();
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.faults.accepted.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.faults.seen.lock().unwrap().clone()
    }

    /// The JSON-RPC methods POSTed so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.seen().iter().filter(|s| s.method == Method::POST).filter_map(Seen::rpc_method).collect()
    }
}

/// An address on which nothing listens.
pub async fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/mcp")
}

fn reply(status: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

async fn proxy(
    f: Arc<Faults>,
    client: Http<HttpConnector, Full<Bytes>>,
    target: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = Seen {
        at: std::time::Instant::now(),
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    let is_init = seen.rpc_method().as_deref() == Some("initialize");
    f.seen.lock().unwrap().push(seen);
    let delay = f.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if parts.method == Method::GET && f.get_404.load(Ordering::SeqCst) {
        return reply(404, r#"{"error":"Cannot GET /mcp"}"#);
    }
    if is_init && f.refuse_initialize.load(Ordering::SeqCst) {
        return reply(500, r#"{"error":"the upstream is broken"}"#);
    }
    let session = parts.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(s) = &session {
        let forgotten = f.forgotten.lock().unwrap();
        if forgotten.0.contains(s) {
            return match forgotten.1 {
                404 => {
                    reply(404, r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#)
                }
                _ => reply(
                    400,
                    r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#,
                ),
            };
        }
    }
    let mut out = Request::builder().method(parts.method.clone()).uri(target);
    for (k, v) in &parts.headers {
        if k != "host" {
            out = out.header(k, v);
        }
    }
    let resp = match client.request(out.body(Full::new(body)).unwrap()).await {
        Ok(r) => r,
        Err(_) => return reply(502, r#"{"error":"bad gateway"}"#),
    };
    if let Some(s) = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        f.sessions.lock().unwrap().insert(s.to_owned());
    }
    let sse = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let cut = if sse && parts.method == Method::POST { f.cut_after.swap(0, Ordering::SeqCst) } else { 0 };
    let (parts, body) = resp.into_parts();
    let body = if cut > 0 { cut_after(body, cut) } else { body.map_err(std::io::Error::other).boxed_unsync() };
    Response::from_parts(parts, body)
}

/// Passes a body through until `events` SSE events went by, then the first half of the next
/// chunk — an event cut in the middle — and breaks the connection.
fn cut_after(body: Incoming, events: usize) -> Body {
    let stream = futures_util::stream::unfold((body, 0usize, false), move |(mut body, mut n, done)| async move {
        if done {
            return Some((Err(std::io::Error::other("cut by the test proxy")), (body, n, true)));
        }
        loop {
            let frame = body.frame().await?;
            let Ok(frame) = frame else { return None };
            let Ok(data) = frame.into_data() else { continue };
            if n >= events {
                let half = data.slice(..data.len() / 2);
                return Some((Ok(Frame::data(half)), (body, n, true)));
            }
            n += data.windows(2).filter(|w| w == b"\n\n").count();
            return Some((Ok(Frame::data(data)), (body, n, false)));
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
