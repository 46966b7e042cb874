//! Streamable HTTP upstreams: the gateway as the MCP client of the example server over HTTP,
//! directly and through a proxy that breaks streams, forgets sessions, stalls and records.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use mcp_edge::config::{BackendConfig, Config};
use serde_json::{json, Value};

use crate::common::upstream::{refused_url, Chaos, ExampleHttp};
use crate::common::{default_config, eventually, eventually_async, ws, Client, TestGateway};

const T: Duration = Duration::from_secs(10);

/// The shipped configuration with its backend replaced by an HTTP upstream.
fn upstream_config(backend_toml: &str) -> Config {
    let mut c = default_config();
    let backend: BackendConfig = toml::from_str(backend_toml).expect("a backend");
    c.backends.insert("example".into(), backend);
    c.validate().expect("valid");
    c
}

async fn gateway_for(url: &str) -> TestGateway {
    TestGateway::start(upstream_config(&format!("kind = \"http\"\nurl = \"{url}\""))).await
}

/// The example server behind the fault-injecting proxy, a gateway in front of that, and a
/// client initialized at `version` (the server and the gateway live as long as the tuple).
async fn through_chaos(version: &str) -> (ExampleHttp, Chaos, TestGateway, Client) {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    let gw = gateway_for(&chaos.url).await;
    let mut c = gw.client();
    c.initialize(version).await;
    (example, chaos, gw, c)
}

/// All SSE events of a POST answer, to the end of the stream.
async fn all_events(c: &Client, body: Value) -> Vec<Value> {
    let resp = c.post(&body).await;
    assert_eq!(resp.status, StatusCode::OK);
    if !resp.is_sse() {
        return vec![resp.json().await];
    }
    let mut sse = resp.sse();
    let mut out = Vec::new();
    while let Some(ev) = sse.next_within(T).await {
        if !ev.data.is_empty() {
            out.push(ev.json());
        }
    }
    out
}

fn text(response: &Value) -> &str {
    response["result"]["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_whole_session_runs_through_an_http_upstream() {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    let gw = gateway_for(&chaos.url).await;
    let mut c = gw.client();
    let init = c.initialize("2025-06-18").await;
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-edge-example");
    let upstream_session = chaos.seen().iter().find_map(|s| s.session().map(str::to_owned));
    assert!(c.session.as_deref().unwrap().starts_with("test."), "the client gets the gateway's id");
    assert_ne!(c.session, upstream_session, "the upstream's id stays behind the gateway");

    let tools = c.request("tools/list", json!({})).await;
    assert!(tools["result"]["tools"].as_array().unwrap().len() > 5);
    assert_eq!(text(&c.call_tool("echo", json!({"message": "through"})).await), "through");

    // Progress rides the upstream's SSE answer to the client's own stream, then the result.
    let events = all_events(
        &c,
        json!({"jsonrpc": "2.0", "id": "p", "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 300, "progress_every_ms": 100}, "_meta": {"progressToken": 7}}}),
    )
    .await;
    let progress: Vec<&Value> = events.iter().filter(|e| e["method"] == "notifications/progress").collect();
    assert_eq!(progress.len(), 2, "ticks at 100 and 200 ms: {events:?}");
    assert_eq!(events.last().unwrap()["id"], "p");

    // A server→client request reaches the client; its answer goes back upstream.
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}}}))
        .await;
    let mut sse = resp.sse();
    let ask = loop {
        let ev = sse.next_within(T).await.expect("the sampling request");
        if ev.json()["method"] == "sampling/createMessage" {
            break ev.json();
        }
    };
    let ack = c
        .post(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "hello back"}, "model": "m", "stopReason": "endTurn"}}))
        .await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    let answer = loop {
        let ev = sse.next_within(T).await.expect("the tool's answer");
        if ev.json()["id"] == 9 {
            break ev.json();
        }
    };
    assert_eq!(text(&answer), "LLM response: hello back");

    // The upstream GET stream was opened for server-initiated messages.
    assert!(chaos.seen().iter().any(|s| s.method == Method::GET && s.session() == upstream_session.as_deref()));

    // DELETE ends the upstream session too.
    assert_eq!(c.delete().await.status, StatusCode::OK);
    let deleted = eventually(T, || {
        chaos.seen().iter().any(|s| s.method == Method::DELETE && s.session() == upstream_session.as_deref())
    })
    .await;
    assert!(deleted, "the gateway DELETEs the upstream session");
    assert_eq!(c.request_status("tools/list").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_clients_credentials_never_reach_the_upstream() {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    std::env::set_var("EDGE_TEST_UPSTREAM_KEY", "gateway-own-key");
    let config = upstream_config(&format!(
        "kind = \"http\"\nurl = \"{}\"\nheaders = {{ \"x-api-key\" = {{ env = \"EDGE_TEST_UPSTREAM_KEY\" }}, \"x-static\" = \"s\" }}",
        chaos.url
    ));
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    let creds = [("authorization", "Bearer client-secret"), ("cookie", "sid=client-cookie")];
    let id = c.next_id();
    let resp = c
        .post_with(
            &json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
            &creds,
        )
        .await;
    c.session = Some(resp.headers["mcp-session-id"].to_str().unwrap().to_owned());
    let ok = c
        .post_with(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x"}}}),
            &creds,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let seen = chaos.seen();
    assert!(seen.len() >= 2);
    for s in &seen {
        assert!(s.headers.get("authorization").is_none(), "no Authorization upstream: {:?}", s.headers);
        assert!(s.headers.get("cookie").is_none(), "no Cookie upstream");
        assert_eq!(s.headers["x-api-key"], "gateway-own-key", "the gateway's own credential goes instead");
        assert_eq!(s.headers["x-static"], "s");
    }
}

#[tokio::test]
async fn a_broken_upstream_stream_is_resumed_with_nothing_lost_or_twice() {
    let (_example, chaos, _gw, c) = through_chaos("2025-11-25").await;
    // The upstream's answer breaks after the priming event and two progress notifications.
    chaos.cut_next_stream_after(3);
    let events = all_events(
        &c,
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 700, "progress_every_ms": 100}, "_meta": {"progressToken": "tok"}}}),
    )
    .await;
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e["method"] == "notifications/progress")
        .map(|e| e["params"]["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, vec![100, 200, 300, 400, 500, 600], "every tick once, in order: {events:?}");
    assert_eq!(text(events.last().unwrap()), "slept 700 ms");
    let resumed = chaos.seen().iter().any(|s| s.method == Method::GET && s.headers.contains_key("last-event-id"));
    assert!(resumed, "the gateway resumed with Last-Event-ID");
}

#[tokio::test]
async fn a_forgotten_upstream_session_is_reinitialized_with_its_state() {
    for status in [404, 400] {
        let (_example, chaos, _gw, c) = through_chaos("2025-06-18").await;
        c.request("logging/setLevel", json!({"level": "warning"})).await;
        c.request("resources/subscribe", json!({"uri": "test://watched-resource"})).await;
        let before = chaos.methods().len();
        chaos.forget_sessions(status);

        let answer = c.call_tool("echo", json!({"message": "still here"})).await;
        assert_eq!(text(&answer), "still here", "the client sees no error ({status})");

        let after: Vec<String> = chaos.methods()[before..].to_vec();
        let expected = [
            "tools/call",
            "initialize",
            "notifications/initialized",
            "logging/setLevel",
            "resources/subscribe",
            "tools/call",
        ];
        assert_eq!(after, expected, "re-initialize, restore, retry once ({status})");
        let reinit =
            chaos.seen().into_iter().filter(|s| s.rpc_method().as_deref() == Some("initialize")).nth(1).unwrap();
        let params: Value = serde_json::from_slice(&reinit.body).unwrap();
        assert_eq!(params["params"]["clientInfo"]["name"], "mcp-edge-tests", "the client's own initialize");
        assert_eq!(params["params"]["protocolVersion"], "2025-06-18");
        assert_eq!(c.request("ping", json!({})).await["result"], json!({}), "the session goes on");
    }
}

#[tokio::test]
async fn when_the_upstream_cannot_be_reinitialized_the_client_gets_a_clean_404() {
    let (_example, chaos, _gw, mut c) = through_chaos("2025-06-18").await;
    chaos.forget_sessions(404);
    chaos.refuse_initialize(true);
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x"}}}))
        .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "a clean 404, so the client initializes again");
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["id"], 3);
    assert_eq!(c.request_status("ping").await, StatusCode::NOT_FOUND);
    // A new initialize works once the upstream does.
    chaos.refuse_initialize(false);
    c.session = None;
    c.initialize("2025-06-18").await;
    assert_eq!(text(&c.call_tool("echo", json!({"message": "again"})).await), "again");
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_within_the_connect_timeout() {
    let url = format!("{}?api_key=hunter2", refused_url().await);
    let gw =
        TestGateway::start(upstream_config(&format!("kind = \"http\"\nurl = \"{url}\"\nconnect_timeout = \"1s\"")))
            .await;
    let c = gw.client();
    let started = Instant::now();
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK, "answered in-band");
    assert!(resp.headers.get("mcp-session-id").is_none(), "no session for a failed initialize");
    let body = resp.message().await;
    assert_eq!(body["error"]["code"], -32000);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Backend unavailable") && message.contains("cannot reach"), "{message}");
    assert!(!message.contains("hunter2"), "a credential in the URL stays out of errors: {message}");
    assert!(elapsed < Duration::from_secs(3), "within the connect timeout (took {elapsed:?})");
}

#[tokio::test]
async fn a_slow_upstream_times_out_and_the_session_goes_on() {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    let mut config = upstream_config(&format!("kind = \"http\"\nurl = \"{}\"", chaos.url));
    config.sessions.request_timeout = Duration::from_millis(800);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    chaos.delay(Duration::from_secs(3));
    let started = Instant::now();
    // Only the call is slow: the upstream is fast again once it holds it, so the
    // `notifications/cancelled` that follows the timeout is acknowledged at once.
    let fast_again = async {
        let holds_it = || chaos.methods().iter().any(|m| m == "tools/call");
        assert!(eventually(T, holds_it).await);
        chaos.delay(Duration::ZERO);
    };
    let (answer, ()) = tokio::join!(c.call_tool("echo", json!({"message": "slow"})), fast_again);
    assert_eq!(answer["error"]["code"], -32004, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(text(&c.call_tool("echo", json!({"message": "fast"})).await), "fast");
}

#[tokio::test]
async fn a_request_never_overtakes_a_notification_sent_before_it() {
    let (_example, chaos, _gw, c) = through_chaos("2025-06-18").await;
    let slow = Duration::from_millis(300);
    chaos.delay(slow);
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"});
    assert_eq!(c.post(&notification).await.status, StatusCode::ACCEPTED, "acknowledged at once");
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));

    let seen = chaos.seen();
    let at = |method: &str| seen.iter().find(|s| s.rpc_method().as_deref() == Some(method)).unwrap().at;
    let gap = at("ping") - at("notifications/roots/list_changed");
    assert!(
        gap >= slow - Duration::from_millis(20),
        "the ping left only after the notification was delivered ({gap:?})"
    );
    // Nothing queued any more: the next request goes at once.
    chaos.delay(Duration::ZERO);
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));
}

#[tokio::test]
async fn a_websocket_client_uses_an_http_upstream() {
    let example = ExampleHttp::start().await;
    let gw = gateway_for(&example.url).await;
    let mut conn = ws::connect(&ws::ws_url(&gw.url, "")).await;
    let init = conn.initialize(None).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-edge-example");
    let (answer, _) = conn.request("tools/call", json!({"name": "echo", "arguments": {"message": "over ws"}})).await;
    assert_eq!(text(&answer), "over ws");
}

#[tokio::test]
async fn a_failing_backend_affects_only_its_own_routes() {
    let mut config = default_config();
    let down: BackendConfig =
        toml::from_str(&format!("kind = \"http\"\nurl = \"{}\"\nconnect_timeout = \"500ms\"", refused_url().await))
            .unwrap();
    config.backends.insert("down".into(), down);
    config.routes.push(toml::from_str("path = \"/down\"\nbackend = \"down\"").unwrap());
    config.validate().unwrap();
    let gw = TestGateway::start(config).await;
    let failing = Client::new(&format!("http://{}/down", gw.addr));
    let resp = failing
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    assert_eq!(resp.message().await["error"]["code"], -32000);
    let mut working = gw.client();
    working.initialize("2025-06-18").await;
    assert_eq!(text(&working.call_tool("echo", json!({"message": "fine"})).await), "fine");
}

#[tokio::test]
async fn a_request_already_streaming_gets_the_lost_session_error_in_band() {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    let mut config = upstream_config(&format!("kind = \"http\"\nurl = \"{}\"", chaos.url));
    config.sessions.json_wait = Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    chaos.forget_sessions(404);
    chaos.refuse_initialize(true);
    chaos.delay(Duration::from_millis(500));
    let events = all_events(
        &c,
        json!({"jsonrpc": "2.0", "id": "late", "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x"}}}),
    )
    .await;
    let last = events.last().expect("an answer");
    assert_eq!(last["id"], "late");
    assert_eq!(last["error"]["code"], -32001, "{events:?}");
    chaos.delay(Duration::ZERO);
    assert_eq!(c.request_status("ping").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_upstream_that_refuses_get_with_404_is_not_reinitialized_over_and_over() {
    let example = ExampleHttp::start().await;
    let chaos = Chaos::start(&example.url).await;
    chaos.refuse_get(true);
    let gw = gateway_for(&chaos.url).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(text(&c.call_tool("echo", json!({"message": "ok"})).await), "ok");
    let inits = chaos.methods().iter().filter(|m| *m == "initialize").count();
    assert_eq!(inits, 1, "a GET 404 means no GET stream, not a forgotten session");
}

#[tokio::test]
async fn a_w3c_traceparent_reaches_the_backend_in_params_meta() {
    let (_example, chaos, _gw, c) = through_chaos("2025-06-18").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = c
        .post_with(
            &json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "traced"}}}),
            &[("traceparent", tp), ("tracestate", "edge=1")],
        )
        .await;
    assert_eq!(text(&resp.message().await), "traced");
    let call = chaos.seen().into_iter().rev().find(|s| s.rpc_method().as_deref() == Some("tools/call")).unwrap();
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body["params"]["_meta"]["traceparent"], tp);
    assert_eq!(body["params"]["_meta"]["tracestate"], "edge=1");
    assert_eq!(body["id"], 8);
    assert!(call.headers.get("traceparent").is_none(), "the client's headers stay behind; the trace rides in _meta");
}

/// The connection cap derived from the open-file limit counts the upstream connection each
/// session's GET stream holds over HTTP/1.1, and none when HTTP/2 carries every session.
#[tokio::test]
async fn the_derived_connection_cap_counts_a_session_s_upstream_connection() {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let cap = |gw: &TestGateway| {
        let admin = gw.admin.expect("the admin listener is on");
        async move {
            crate::metrics::Metrics::scrape(admin).await.get("mcp_edge_limit", &[("limit", "max_connections")]) as u64
        }
    };
    let h1 = gateway_for(&refused_url().await).await;
    assert_eq!(cap(&h1).await, (soft - 256) / 2, "the client's socket and the session's upstream connection");
    let h2 =
        TestGateway::start(upstream_config("kind = \"http\"\nurl = \"https://127.0.0.1:9/mcp\"\nhttp2 = true")).await;
    assert_eq!(cap(&h2).await, soft - 256, "one shared HTTP/2 connection costs no descriptor per session");
}

#[tokio::test]
async fn calls_reuse_upstream_connections_and_outlive_the_upstream_closing_them() {
    let (_example, chaos, gw, c) = through_chaos("2025-06-18").await;
    let admin = gw.admin.expect("the admin listener is on");
    let open = || async move {
        crate::metrics::Metrics::scrape(admin).await.get("mcp_edge_upstream_connections", &[("backend", "example")])
            as usize
    };
    for i in 0..20 {
        let said = format!("call {i}");
        assert_eq!(text(&c.call_tool("echo", json!({ "message": said })).await), said);
    }
    let accepted = chaos.accepted();
    assert!(accepted <= 3, "one call after another reuses a connection; {accepted} were opened for 20 calls");
    assert_eq!(open().await, accepted, "the gauge counts every connection the upstream accepted");
    let host = chaos.url.trim_start_matches("http://").trim_end_matches("/mcp");
    assert!(chaos.seen().iter().all(|s| s.headers.get("host").is_some_and(|h| h == host)), "HTTP/1.1 names the host");

    // The upstream closes its connections, as a keep-alive timeout does between requests.
    chaos.close_connections();
    assert!(eventually_async(T, || async { open().await == 0 }).await, "the gateway notices");
    for i in 0..5 {
        let said = format!("again {i}");
        assert_eq!(text(&c.call_tool("echo", json!({ "message": said })).await), said);
    }
    assert!(chaos.accepted() > accepted, "new connections replace the closed ones");
}
