//! Frontends: the HTTP face of each route. They turn requests into JSON-RPC messages for a
//! session and session frames into responses; they decide nothing about where a message goes.
//! [`handle`] picks the frontend of a request by its path.

pub mod guard;
pub mod legacy_sse;
pub mod sse;
pub mod streamable_http;
pub mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use crate::auth::{Caller, RouteAuth};
use crate::backend::Backend;
use crate::config::Config;
use crate::error::GatewayError;
use crate::jsonrpc::{Id, Message};
use crate::metrics::Metrics;
use crate::session::Registry;
use crate::FastMap;

/// Every response body the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One endpoint path.
#[derive(Clone, Debug)]
pub struct Route {
    pub backend: Backend,
    /// WebSocket upgrades are accepted on this path.
    pub websocket: bool,
    /// Who may use the route; `None`: anyone who passes the Origin and Host checks.
    pub auth: Option<Arc<RouteAuth>>,
}

/// What one configuration serves: replaced whole when the configuration is reloaded, while
/// requests in progress finish with the one they started with.
pub struct Served {
    pub config: Config,
    pub guard: guard::OriginGuard,
    /// Route path → what serves it.
    pub routes: FastMap<String, Route>,
    /// Legacy HTTP+SSE paths (`sse_path`, `messages_path`) → what they serve.
    pub legacy_paths: FastMap<String, legacy_sse::Endpoint>,
}

impl Served {
    /// Builds every route's backend; fails on a backend that cannot be set up. A backend
    /// whose configuration did not change since `previous` is kept as it is (its connection
    /// pool, its stdio pool).
    fn build(
        config: Config,
        metrics: &Metrics,
        previous: Option<&Served>,
    ) -> Result<Served, crate::backend::ConnectError> {
        let mut routes: HashMap<String, Route> = HashMap::new();
        let mut backends: HashMap<&str, Backend> = HashMap::new();
        for r in &config.routes {
            // Routes that name the same backend share it (and its pool of connections).
            let backend = match backends.get(r.backend.as_str()) {
                Some(b) => b.clone(),
                None => match previous.and_then(|p| p.unchanged_backend(&r.backend, &config)) {
                    Some(b) => b,
                    None => Backend::from_config(&r.backend, &config.backends[&r.backend], metrics)?,
                },
            };
            backends.insert(&r.backend, backend.clone());
            // Kept across a reload when unchanged, with the keys it fetched.
            let kept = previous.and_then(|p| p.routes.get(&r.path)?.auth.clone()).filter(|a| a.same_as(r));
            let auth = match kept {
                Some(a) => Some(a),
                None => RouteAuth::new(r)
                    .map_err(|why| crate::backend::ConnectError(format!("routes `{}` auth: {why}", r.path)))?,
            };
            routes.insert(r.path.clone(), Route { backend, websocket: r.websocket, auth });
        }
        Ok(Served::with_routes(config, routes))
    }

    fn with_routes(config: Config, routes: HashMap<String, Route>) -> Served {
        Served {
            guard: guard::OriginGuard::new(&config.server),
            legacy_paths: legacy_sse::endpoints(&config.routes, &routes).into_iter().collect(),
            routes: routes.into_iter().collect(),
            config,
        }
    }

    /// The backend named `name` when `config` configures it exactly as this one did.
    fn unchanged_backend(&self, name: &str, config: &Config) -> Option<Backend> {
        (self.config.backends.get(name)? == config.backends.get(name)?)
            .then(|| self.routes.values().find(|r| r.backend.name() == name).map(|r| r.backend.clone()))
            .flatten()
    }

    /// Every backend of the routes, once each.
    pub fn backends(&self) -> Vec<Backend> {
        let mut seen = std::collections::HashSet::new();
        self.routes.values().filter(|r| seen.insert(r.backend.name().to_owned())).map(|r| r.backend.clone()).collect()
    }

    fn route_caps(&self) -> Vec<(String, usize)> {
        self.config.routes.iter().filter_map(|r| r.max_sessions.map(|m| (r.path.clone(), m))).collect()
    }
}

/// What every request handler shares.
pub struct App {
    /// The configuration in force and what it serves; see [`App::served`].
    served: std::sync::RwLock<Arc<Served>>,
    pub registry: Arc<Registry>,
    /// The open legacy event streams.
    pub legacy: legacy_sse::Streams,
    /// Upgraded connections (hyper's graceful shutdown no longer sees them), awaited at the
    /// end of a drain so their close frames go out.
    pub upgraded: tokio_util::task::TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Client connections open now and their cap.
    pub connections: crate::server::Connections,
    /// Requests per second per principal.
    pub rate: crate::limits::RateLimiter,
    /// The certificates of the client and the admin listener (TLS), re-read on reload.
    certificates: std::sync::OnceLock<[Option<Arc<crate::tls::Certificates>>; 2]>,
    /// Set on SIGTERM/SIGINT: `/readyz` reports 503 from then on.
    draining: std::sync::atomic::AtomicBool,
}

impl App {
    /// Builds every route's backend; fails on a backend that cannot be set up.
    pub fn new(
        config: Config,
        self_exe: std::path::PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<App>, crate::backend::ConnectError> {
        let served = Served::build(config, &metrics, None)?;
        Ok(App::with_served(served, self_exe, metrics))
    }

    /// An app whose routes are given rather than built from the configuration.
    pub fn with_routes(
        config: Config,
        self_exe: std::path::PathBuf,
        routes: HashMap<String, Route>,
        metrics: Arc<Metrics>,
    ) -> Arc<App> {
        App::with_served(Served::with_routes(config, routes), self_exe, metrics)
    }

    fn with_served(served: Served, self_exe: std::path::PathBuf, metrics: Arc<Metrics>) -> Arc<App> {
        let config = &served.config;
        let registry = Registry::new(
            config.instance_id.clone(),
            config.sessions.clone(),
            self_exe,
            served.route_caps(),
            metrics.clone(),
        );
        publish_limits(&metrics, config);
        registry.set_principal_cap(config.principals.max_sessions);
        let rate = crate::limits::RateLimiter::new(&config.principals);
        let app = Arc::new(App {
            served: std::sync::RwLock::new(Arc::new(served)),
            registry,
            legacy: legacy_sse::Streams::default(),
            upgraded: tokio_util::task::TaskTracker::new(),
            metrics,
            connections: crate::server::Connections::default(),
            rate,
            certificates: std::sync::OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        app.apply_connection_cap();
        app
    }

    /// Sets the connection cap from the configuration (and the open-file limit) and says so.
    fn apply_connection_cap(&self) {
        let served = self.served();
        let per_session = served.backends().iter().map(|b| b.fds_per_session()).max().unwrap_or(0);
        let (cap, why) = crate::server::connection_cap(served.config.server.max_connections, per_session);
        self.connections.cap.store(cap, std::sync::atomic::Ordering::SeqCst);
        self.metrics.limits.with_label_values(&["max_connections", ""]).set(cap as i64);
        tracing::info!(max_connections = cap, "Client connections are capped at {cap} ({why}).");
    }

    /// The configuration in force and what it serves (a cheap snapshot; a reload replaces it
    /// for later callers).
    pub fn served(&self) -> Arc<Served> {
        self.served.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The certificates the listeners present, re-read by [`App::reload`].
    pub fn set_certificates(
        &self,
        client: Option<Arc<crate::tls::Certificates>>,
        admin: Option<Arc<crate::tls::Certificates>>,
    ) {
        let _ = self.certificates.set([client, admin]);
    }

    /// Applies a reloaded configuration: routes, backends, Origin/Host rules, limits and
    /// timeouts take effect for new requests and new sessions; live sessions keep their
    /// backend. Fails, changing nothing, when a backend cannot be set up.
    pub fn reload(&self, config: Config) -> Result<(), crate::backend::ConnectError> {
        let old = self.served();
        let [client, admin] = self.certificates.get().cloned().unwrap_or_default();
        for (key, certs, tls) in [("server.tls", client, &config.server.tls), ("admin.tls", admin, &config.admin.tls)] {
            if let (Some(certs), Some(tls)) = (certs, tls) {
                certs.reload(tls).map_err(|e| crate::backend::ConnectError(format!("`{key}`: {e}")))?;
            }
        }
        let served = Served::build(config, &self.metrics, Some(&old))?;
        self.registry.reconfigure(served.config.sessions.clone(), served.route_caps());
        self.registry.set_principal_cap(served.config.principals.max_sessions);
        self.rate.configure(&served.config.principals);
        publish_limits(&self.metrics, &served.config);
        // Old backends the new configuration did not keep as they were.
        let kept: std::collections::HashSet<String> = served
            .backends()
            .iter()
            .filter(|b| old.unchanged_backend(b.name(), &served.config).is_some())
            .map(|b| b.name().to_owned())
            .collect();
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
        self.apply_connection_cap();
        for b in old.backends().iter().filter(|b| !kept.contains(b.name())) {
            b.retire();
        }
        Ok(())
    }

    /// Turns `/readyz` to 503 (the first step of a drain).
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.metrics.ready.set(0);
    }

    /// Why the instance should not get new work now; empty when it is ready.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            reasons.push("draining: the instance is shutting down".to_string());
        }
        let served = self.served();
        let mut seen = std::collections::HashSet::new();
        for route in served.routes.values() {
            if !seen.insert(route.backend.name().to_owned()) {
                continue;
            }
            if let Some(why) = route.backend.unusable() {
                reasons.push(format!("backend `{}` is unusable: {why}", route.backend.name()));
            }
        }
        reasons
    }
}

/// The configured limits as gauges.
fn publish_limits(metrics: &Metrics, config: &Config) {
    metrics.limits.reset();
    for r in &config.routes {
        if let Some(max) = r.max_sessions {
            metrics.limits.with_label_values(&["max_sessions", &r.path]).set(max as i64);
        }
    }
    metrics.limits.with_label_values(&["max_sessions", ""]).set(config.sessions.max_sessions as i64);
}

/// The connection a request arrived on, as its handlers may need it.
#[derive(Clone)]
pub struct Connection {
    /// Closes the connection mid-response (a reader that stopped reading).
    pub cut: crate::server::ConnectionCut,
    /// The connection's place among `server.max_connections`, kept by an upgraded WebSocket.
    pub place: Arc<crate::server::ConnectionGuard>,
    /// The connection's own timer, for an HTTP/1.1 request (its handler runs in the
    /// connection's task); `None` for HTTP/2.
    pub timer: Option<crate::rt::ConnTimer>,
}

/// What a frontend handler gets besides the request: who made it, and over which connection.
pub struct Context {
    pub caller: Caller,
    pub conn: Connection,
}

/// Serves one HTTP request: finds what serves its path, checks Origin and Host, and hands the
/// request to that frontend.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, conn: Connection) -> Response<Body> {
    let resp = dispatch(&app, req, conn).await;
    if let Some(Rejected(reason)) = resp.extensions().get::<Rejected>() {
        app.metrics.rejections.with_label_values(&[reason]).inc();
    }
    // Whole bodies (JSON answers); streams count what they send themselves.
    if let Some(n) = hyper::body::Body::size_hint(resp.body()).exact().filter(|n| *n > 0) {
        app.metrics.http_bytes.sent.inc_by(n);
    }
    resp
}

/// Marks a response that refused a request, with the reason it is counted under.
#[derive(Clone, Copy, Debug)]
struct Rejected(&'static str);

async fn dispatch(app: &Arc<App>, req: Request<Incoming>, conn: Connection) -> Response<Body> {
    let app = app.clone();
    let path = req.uri().path();
    let served = app.served();
    if path.starts_with(crate::auth::METADATA_PATH) {
        return protected_resource_metadata(&served, path);
    }
    let legacy = served.legacy_paths.get(path).cloned();
    let route_path = legacy.as_ref().map_or(path, |e| e.route.as_str());
    let Some(route) = served.routes.get(route_path) else {
        return error_reply(&GatewayError::NoRoute, None);
    };
    if let Err(e) = served.guard.check(req.headers(), req.uri().host()) {
        return error_reply(&e, None);
    }
    let caller = match &route.auth {
        Some(auth) => match auth.authenticate(req.headers()).await {
            Ok(caller) => caller,
            Err(e) => return error_reply(&e, None),
        },
        None => Caller::default(),
    };
    let cx = Context { caller, conn };
    match legacy {
        Some(endpoint) => legacy_sse::handle(app, endpoint, req, cx).await,
        None => streamable_http::handle(app, req, cx).await,
    }
}

/// RFC 9728 metadata of the route whose metadata path this is (`/.well-known/
/// oauth-protected-resource/<path>`), or of the only route with `auth` at the bare path.
fn protected_resource_metadata(served: &Served, path: &str) -> Response<Body> {
    let authed: Vec<&Arc<RouteAuth>> = served.routes.values().filter_map(|r| r.auth.as_ref()).collect();
    let found = authed.iter().find(|a| a.metadata_path() == path).or_else(|| {
        (path.trim_end_matches('/') == crate::auth::METADATA_PATH && authed.len() == 1).then(|| &authed[0])
    });
    match found {
        Some(auth) => {
            let mut r = json_response(StatusCode::OK, auth.metadata());
            r.headers_mut().insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            r
        }
        None => error_reply(&GatewayError::NoRoute, None),
    }
}

/// The caller's request rate and allow-list, applied to client messages before they reach a
/// session: the error that answers their requests, if any.
pub fn admit(app: &App, caller: &Caller, msgs: &[Message]) -> Result<(), GatewayError> {
    let requests = msgs.iter().filter(|m| m.is_request()).count();
    if let Some(name) = caller.name().filter(|_| requests > 0) {
        app.rate.take(name, requests).map_err(GatewayError::RateLimited)?;
    }
    if let Some(grants) = caller.grants() {
        if let Some(why) = msgs.iter().filter(|m| m.is_request()).find_map(|m| grants.refuse(m)) {
            return Err(GatewayError::Denied(why));
        }
    }
    Ok(())
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().boxed_unsync()
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The one rendering of a [`GatewayError`] as an HTTP response.
pub fn error_reply(err: &GatewayError, id: Option<&Id>) -> Response<Body> {
    log_error(err);
    let mut r = json_response(err.status(), err.to_rpc(id));
    if let Some(secs) = err.retry_after() {
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    // The rest of the request was not read: the connection cannot carry another one.
    if matches!(err, GatewayError::SlowBody | GatewayError::BodyTooLarge(_)) {
        r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(challenge) = err.challenge().and_then(|c| HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, challenge);
    }
    if let Some(methods) = err.allow() {
        r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(methods));
    }
    if let Some(reason) = err.rejection() {
        r.extensions_mut().insert(Rejected(reason));
    }
    r
}

fn log_error(err: &GatewayError) {
    let name = err.name();
    match err.log_level() {
        tracing::Level::WARN => tracing::warn!(error = name, "{err}"),
        tracing::Level::INFO => tracing::info!(error = name, "{err}"),
        _ => tracing::debug!(error = name, "{err}"),
    }
}
