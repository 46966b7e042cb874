//! The admin listener: `/metrics` (Prometheus text exposition), `/healthz` (the process is
//! alive) and `/readyz` (200 while the instance takes new work; 503 with a short JSON body
//! saying why while it drains or a backend is unusable). Separate from the client listener,
//! so neither Origin/Host rules nor client limits apply, and nothing here touches sessions.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::frontend::{App, Body};

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: CancellationToken, tls: Option<TlsAcceptor>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        // Cancel-safe: `accept` holds no partial state when the stop branch wins.
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting an admin connection failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let app = app.clone();
        let (builder, tls, stop) = (builder.clone(), tls.clone(), stop.clone());
        let within = app.served().config.server.header_read_timeout;
        tokio::spawn(async move {
            let Ok(io) = crate::server::handshake(stream, tls.as_ref(), within).await else { return };
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&app, &req)) }
            });
            let conn = builder.serve_connection(TokioIo::new(crate::server::Stream::new(io)), service);
            // Cancel-safe enough: an admin connection is dropped at shutdown.
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn handle(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::from_static(b"GET only\n"));
    }
    match req.uri().path() {
        "/metrics" => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", Bytes::from(app.metrics.render()))
        }
        "/healthz" => reply(StatusCode::OK, "application/json", Bytes::from_static(b"{\"status\":\"alive\"}\n")),
        "/readyz" => {
            let reasons = app.unready_reasons();
            app.metrics.ready.set(reasons.is_empty() as i64);
            let (status, body) = if reasons.is_empty() {
                (StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "unready", "reasons": reasons}))
            };
            reply(status, "application/json", Bytes::from(format!("{body}\n")))
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"/metrics, /healthz, /readyz\n")),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}
