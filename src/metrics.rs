//! Prometheus metrics: one [`Metrics`] struct built from a registry that is passed in, shared
//! in an `Arc`; no globals. Every label value comes from a small fixed set (route paths and
//! backend names from the configuration, transports, kinds, reasons, an allow-list of methods)
//! — never a session id, request id or client address.
//!
//! Gauges of things that live (connections, streams, sessions, children) are moved by
//! [`Live`] guards, so every path that ends one — however it ends — brings the gauge back.

use prometheus::core::{AtomicI64, GenericGauge};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Methods counted under their own name; every other method counts as `other`.
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

/// Buckets of `request_duration_seconds`: 100 µs to 5 min.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// The method label of a JSON-RPC method.
pub fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

/// Every metric of the gateway.
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub websocket_connections: IntGaugeVec,
    pub websocket_opened: IntCounterVec,
    pub websocket_closed: IntCounterVec,
    pub sse_streams: IntGaugeVec,
    pub sessions: IntGaugeVec,
    pub sessions_created: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub requests_in_flight: IntGaugeVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub backend_processes: IntGaugeVec,
    pub backend_spawns: IntCounterVec,
    pub backend_exits: IntCounterVec,
    pub backend_crashes: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_resumes: IntCounterVec,
    pub upstream_reinitializations: IntCounterVec,
    pub upstream_connections: IntGaugeVec,
    pub pool_queue_depth: IntGaugeVec,
    pub pool_queue_wait: HistogramVec,
    pub bytes_received: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    /// `bytes_received` and `bytes_sent` with the label of each transport bound, for the
    /// per-message paths.
    pub http_bytes: TransportBytes,
    pub websocket_bytes: TransportBytes,
    pub rejections: IntCounterVec,
    pub limits: IntGaugeVec,
    pub ready: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace("mcp_edge"), labels).expect("a valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("mcp_edge"), labels).expect("a valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Metrics {
    /// Registers every metric in `registry`, plus `build_info` and the process collector.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        let build = gauge(r, "build_info", "Always 1; labels name the build.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(process));
        }
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from a client request to its response, by route and method.",
            )
            .namespace("mcp_edge")
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("a valid metric");
        r.register(Box::new(request_duration.clone())).expect("registered once");
        let pool_queue_wait = HistogramVec::new(
            HistogramOpts::new("pool_queue_wait_seconds", "Time requests waited for a pool child with room.")
                .namespace("mcp_edge")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("a valid metric");
        r.register(Box::new(pool_queue_wait.clone())).expect("registered once");
        let bytes_received =
            counter(r, "received_bytes_total", "JSON-RPC bytes received from clients.", &["transport"]);
        let bytes_sent = counter(r, "sent_bytes_total", "JSON-RPC bytes sent to clients.", &["transport"]);
        let ready = IntGauge::with_opts(
            Opts::new(
                "ready",
                "1 while the instance takes new work (what /readyz says), 0 while draining or a backend is unusable.",
            )
            .namespace("mcp_edge"),
        )
        .expect("a valid metric");
        r.register(Box::new(ready.clone())).expect("registered once");
        let connections = IntGauge::with_opts(
            Opts::new(
                "connections",
                "Client connections open now (HTTP and WebSocket), against limit{limit=\"max_connections\"}.",
            )
            .namespace("mcp_edge"),
        )
        .expect("a valid metric");
        r.register(Box::new(connections.clone())).expect("registered once");
        Metrics {
            connections,
            websocket_connections: gauge(r, "websocket_connections", "Live WebSocket connections.", &["route"]),
            websocket_opened: counter(r, "websocket_connections_opened_total", "WebSocket connections accepted.", &["route"]),
            websocket_closed: counter(
                r,
                "websocket_connections_closed_total",
                "WebSocket connections closed, by who closed and the class of the gateway's close code: normal (1000), going_away (1001), client_error (1002, 1003, 1007, 1008, 1009), server_error (1011), client_closed (the client's close frame), dropped (no close frame).",
                &["route", "code"],
            ),
            sse_streams: gauge(r, "sse_streams", "Open SSE response streams, by kind (request, get, legacy).", &["route", "kind"]),
            sessions: gauge(r, "sessions", "Live sessions, by the transport that created them.", &["route", "transport"]),
            sessions_created: counter(r, "sessions_created_total", "Sessions started.", &["route", "transport"]),
            sessions_ended: counter(r, "sessions_ended_total", "Sessions ended, by reason.", &["route", "reason"]),
            requests_in_flight: gauge(r, "requests_in_flight", "Client requests waiting for their response.", &["route"]),
            requests: counter(
                r,
                "requests_total",
                "Client requests answered, by method (an allow-list; others are `other`) and outcome (ok, error, timeout, cancelled, ended).",
                &["route", "method", "outcome"],
            ),
            request_duration,
            backend_processes: gauge(r, "backend_processes", "Live stdio server processes.", &["backend"]),
            backend_spawns: counter(r, "backend_spawns_total", "stdio server processes started.", &["backend"]),
            backend_exits: counter(r, "backend_exits_total", "stdio server processes that ended.", &["backend"]),
            backend_crashes: counter(
                r,
                "backend_crashes_total",
                "stdio server processes that ended on their own (not stopped by the gateway), and spawn failures.",
                &["backend"],
            ),
            upstream_errors: counter(
                r,
                "upstream_errors_total",
                "HTTP upstream failures: unreachable, HTTP error statuses, broken streams.",
                &["backend"],
            ),
            upstream_resumes: counter(r, "upstream_resumes_total", "Broken upstream SSE streams resumed with Last-Event-ID.", &["backend"]),
            upstream_reinitializations: counter(
                r,
                "upstream_reinitializations_total",
                "Upstream sessions re-initialized after the upstream forgot them.",
                &["backend"],
            ),
            upstream_connections: gauge(
                r,
                "upstream_connections",
                "Open TCP connections to HTTP upstreams, idle ones included.",
                &["backend"],
            ),
            pool_queue_depth: gauge(r, "pool_queue_depth", "Requests waiting for a pool child with room.", &["backend"]),
            pool_queue_wait,
            http_bytes: TransportBytes::new(&bytes_received, &bytes_sent, "http"),
            websocket_bytes: TransportBytes::new(&bytes_received, &bytes_sent, "websocket"),
            bytes_received,
            bytes_sent,
            rejections: counter(
                r,
                "rejections_total",
                "Client requests refused before reaching a session, by reason (limit, origin, host, bad_request, not_found).",
                &["reason"],
            ),
            limits: gauge(r, "limit", "Configured limits, so dashboards show utilisation.", &["limit", "route"]),
            ready,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The bytes counters of one transport.
#[derive(Clone, Debug)]
pub struct TransportBytes {
    pub received: IntCounter,
    pub sent: IntCounter,
}

impl TransportBytes {
    fn new(received: &IntCounterVec, sent: &IntCounterVec, transport: &str) -> TransportBytes {
        TransportBytes {
            received: received.with_label_values(&[transport]),
            sent: sent.with_label_values(&[transport]),
        }
    }
}

/// The metrics of one backend, with its label bound.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    pub processes: IntGauge,
    pub spawns: IntCounter,
    pub exits: IntCounter,
    pub crashes: IntCounter,
    pub upstream_errors: IntCounter,
    pub upstream_resumes: IntCounter,
    pub upstream_reinitializations: IntCounter,
    pub upstream_connections: IntGauge,
    pub pool_queue_depth: IntGauge,
    pub pool_queue_wait: prometheus::Histogram,
}

impl Metrics {
    /// Counts a refusal under its reason (`rejections_total{reason}`), when the error is one.
    pub fn count_refusal(&self, err: &crate::error::GatewayError) {
        if let Some(reason) = err.rejection() {
            self.rejections.with_label_values(&[reason]).inc();
        }
    }

    pub fn backend(&self, name: &str) -> BackendMetrics {
        let l = &[name];
        BackendMetrics {
            processes: self.backend_processes.with_label_values(l),
            spawns: self.backend_spawns.with_label_values(l),
            exits: self.backend_exits.with_label_values(l),
            crashes: self.backend_crashes.with_label_values(l),
            upstream_errors: self.upstream_errors.with_label_values(l),
            upstream_resumes: self.upstream_resumes.with_label_values(l),
            upstream_reinitializations: self.upstream_reinitializations.with_label_values(l),
            upstream_connections: self.upstream_connections.with_label_values(l),
            pool_queue_depth: self.pool_queue_depth.with_label_values(l),
            pool_queue_wait: self.pool_queue_wait.with_label_values(l),
        }
    }
}

/// Holds a gauge up by one while it lives.
pub struct Live(GenericGauge<AtomicI64>);

impl Live {
    pub fn new(gauge: IntGauge) -> Live {
        gauge.inc();
        Live(gauge)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The label of a WebSocket close code.
pub fn close_class(code: Option<u16>) -> &'static str {
    match code {
        Some(1000) => "normal",
        Some(1001) => "going_away",
        Some(1011) => "server_error",
        Some(_) => "client_error",
        None => "dropped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_allow_list_are_other() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("x/evil-label-value"), "other");
    }

    /// Every metric the dashboard, the alert rules and the HPA use is one this code exports.
    #[test]
    fn deploy_files_use_only_exported_metrics() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/");
        let files = ["grafana/mcp-edge.json", "prometheus/alerts.yaml", "kubernetes/hpa.yaml"];
        let source = include_str!("metrics.rs");
        let process = String::from_utf8(Metrics::new(Registry::new()).render()).unwrap();
        let mut seen = 0;
        for f in files {
            let text = std::fs::read_to_string(format!("{root}{f}")).unwrap();
            for (i, _) in text.match_indices("mcp_edge_").chain(text.match_indices("process_")) {
                let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let base =
                    ["_bucket", "_count", "_sum"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
                let known = match base.strip_prefix("mcp_edge_") {
                    Some(short) => source.contains(&format!("\"{short}\"")),
                    None => process.contains(base),
                };
                assert!(known, "{f} uses `{name}`, which mcp-edge does not export");
                seen += 1;
            }
        }
        assert!(seen > 20, "the files were read");
    }

    #[test]
    fn guards_bring_gauges_back() {
        let m = Metrics::new(Registry::new());
        let g = m.sessions.with_label_values(&["/mcp", "http"]);
        let live = Live::new(g.clone());
        assert_eq!(g.get(), 1);
        drop(live);
        assert_eq!(g.get(), 0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("mcp_edge_build_info"));
    }
}
