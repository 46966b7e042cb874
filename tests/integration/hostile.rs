//! Hostile input over real sockets: malformed JSON and JSON-RPC, huge and odd ids, deep nesting,
//! invalid UTF-8, oversized request heads, request smuggling, bad WebSocket handshakes and
//! frames, frames split at every byte, a long pipeline. Each case gets its documented answer,
//! and afterwards the sessions made before the attack and a new client are all served.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::client::ACCEPT_BOTH;
use crate::common::raw::{self, Raw, CLOSE, CONTINUATION, PING, PONG, TEXT};
use crate::common::ws::{connect, ws_url, Ws};
use crate::common::{Client, Response, TestGateway};

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn echo_call(id: impl Into<Value>, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}}})
}

fn echoed(v: &Value) -> &str {
    v["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("an echo result: {v}"))
}

/// A POST of exactly these bytes, with the headers (and session) of `c`.
async fn post_bytes(c: &Client, body: impl Into<Bytes>) -> Response {
    let mut h = vec![("accept", ACCEPT_BOTH), ("content-type", "application/json")];
    if let Some(s) = &c.session {
        h.push(("mcp-session-id", s.as_str()));
        h.push(("mcp-protocol-version", c.version.as_str()));
    }
    c.raw(Method::POST, &h, body).await
}

/// A whole-request refusal: the status, the JSON-RPC code, `id: null`; returns the message.
async fn refused(resp: Response, status: StatusCode, code: i64) -> String {
    assert_eq!(resp.status, status);
    let v = resp.json().await;
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["id"], Value::Null, "{v}");
    v["error"]["message"].as_str().expect("a message").to_owned()
}

/// The JSON-RPC error a WebSocket connection answers a bad frame with (`id: null`).
async fn ws_refused(ws: &mut Ws, frame: &str, code: i64) -> String {
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(frame.to_owned().into())).await;
    let v = ws.json().await;
    assert_eq!(v["error"]["code"], code, "{frame:.80} → {v}");
    assert_eq!(v["id"], Value::Null, "{v}");
    v["error"]["message"].as_str().expect("a message").to_owned()
}

/// Sessions made before an attack: afterwards they, and a new client on each transport, must
/// still be served.
struct Witness {
    http: Client,
    ws: Ws,
}

impl Witness {
    async fn new(gw: &TestGateway) -> Witness {
        let mut http = gw.client();
        http.initialize("2025-06-18").await;
        let mut ws = connect(&ws_url(&gw.url, "")).await;
        ws.initialize(None).await;
        Witness { http, ws }
    }

    async fn still_served(mut self, gw: &TestGateway) {
        let check = async {
            assert_eq!(echoed(&self.http.call_tool("echo", json!({"message": "http before"})).await), "http before");
            let (v, _) =
                self.ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "ws before"}})).await;
            assert_eq!(echoed(&v), "ws before");
            let mut fresh = gw.client();
            fresh.initialize("2025-06-18").await;
            assert_eq!(echoed(&fresh.call_tool("echo", json!({"message": "http after"})).await), "http after");
            let mut ws = connect(&ws_url(&gw.url, "")).await;
            ws.initialize(None).await;
            let (v, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "ws after"}})).await;
            assert_eq!(echoed(&v), "ws after");
        };
        tokio::time::timeout(Duration::from_secs(15), check).await.expect("the gateway still serves, in time");
    }
}

/// Opens a raw WebSocket and initializes a session on it.
async fn raw_session(gw: &TestGateway) -> Raw {
    let mut ws = raw::ws(gw.addr).await;
    ws.send(&raw::text(INIT.as_bytes())).await;
    let v = ws.ws_json().await;
    assert!(v["result"]["protocolVersion"].is_string(), "{v}");
    ws.send(&raw::text(INITIALIZED.as_bytes())).await;
    ws
}

// ---- JSON and JSON-RPC --------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_in_a_post_is_a_400_parse_error() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let cases: &[&[u8]] = &[
        br#"{"jsonrpc":"2.0","id":2,"method":"ping""#,
        br#"{"jsonrpc":"2.0","id":2,"method":"ping"} trailing"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"ping"}{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
        br#"{"jsonrpc":"2.0","id":NaN,"method":"ping"}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":-Infinity}}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"\q"}}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"\ud80"}}"#,
        br#"{'jsonrpc':'2.0','id':2,'method':'ping'}"#,
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}",
        b"",
        b" \r\n ",
    ];
    for body in cases {
        let msg = refused(post_bytes(&w.http, *body).await, StatusCode::BAD_REQUEST, -32700).await;
        assert!(msg.starts_with("Parse error: "), "{msg}");
    }
    w.still_served(&gw).await;
}

/// A lone surrogate escape is JSON by the grammar but no Unicode text: the gateway cannot
/// decode it where it must read a string (`id`, `method`), and passes it on untouched inside
/// `params`, which it never decodes.
#[tokio::test]
async fn lone_surrogates() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let id = r#"{"jsonrpc":"2.0","id":"\ud800","method":"ping"}"#;
    let msg = refused(post_bytes(&w.http, id).await, StatusCode::BAD_REQUEST, -32600).await;
    assert!(msg.contains(r#""id" must be a string or an integer"#), "{msg}");
    let method = r#"{"jsonrpc":"2.0","id":2,"method":"\udc00ping"}"#;
    let msg = refused(post_bytes(&w.http, method).await, StatusCode::BAD_REQUEST, -32600).await;
    assert!(msg.contains(r#""method" must be a string"#), "{msg}");
    // In params the backend gets it as sent. The example server cannot decode the message
    // either, reads no method from it, and answers this request's id with an error.
    let params =
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"\ud800"}}}"#;
    let resp = post_bytes(&w.http, params).await;
    assert_eq!(resp.status, StatusCode::OK);
    let v = tokio::time::timeout(Duration::from_secs(5), resp.message()).await.expect("answered");
    assert_eq!(v["id"], 3, "{v}");
    assert_eq!(v["error"]["code"], -32601, "{v}");
    // A valid pair is text like any other.
    let pair = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"message":"\ud83d\ude00"}}}"#;
    let v = post_bytes(&w.http, pair).await.message().await;
    assert_eq!(echoed(&v), "\u{1f600}");
    w.still_served(&gw).await;
}

/// Valid JSON in the wrong JSON-RPC shape: 400 with `-32600` and a message saying what is wrong.
#[tokio::test]
async fn wrong_jsonrpc_shapes_in_a_post_are_a_400_invalid_request() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    // Batches are allowed at 2025-03-26, so their items are checked rather than the batch refused.
    let mut older = gw.client();
    older.initialize("2025-03-26").await;
    let cases: &[(&str, &str)] = &[
        (r#"{"id":2,"method":"ping"}"#, r#""jsonrpc" must be "2.0""#),
        (r#"{"jsonrpc":"1.0","id":2,"method":"ping"}"#, r#""jsonrpc" must be "2.0""#),
        (r#"{"jsonrpc":2.0,"id":2,"method":"ping"}"#, r#""jsonrpc" must be "2.0""#),
        (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, r#""id" must be a string or an integer"#),
        (r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#, r#""id" must be a string or an integer"#),
        (r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#, r#""id" must be a string or an integer"#),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, r#""id" must be a string or an integer"#),
        (r#"{"jsonrpc":"2.0","id":2,"method":7}"#, r#""method" must be a string"#),
        (r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":"x"}"#, r#""params" must be an object or an array"#),
        (r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":42}"#, r#""params" must be an object or an array"#),
        (
            r#"{"jsonrpc":"2.0","id":2,"result":{},"error":{"code":1,"message":"m"}}"#,
            "not a request, notification or response",
        ),
        (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, "not a request, notification or response"),
        (r#"{"jsonrpc":"2.0"}"#, "not a request, notification or response"),
        (r#"{"jsonrpc":"2.0","id":2,"id":3,"method":"ping"}"#, "a member appears twice"),
        (r#"{"jsonrpc":"2.0","id":2,"method":"ping","\u006dethod":"tools/list"}"#, "a member appears twice"),
        (r#""ping""#, "a message must be a JSON object"),
        ("null", "a message must be a JSON object"),
        ("[]", "empty batch"),
        ("[1,2]", "a message must be a JSON object"),
        (r#"[null,"x"]"#, "a message must be a JSON object"),
        (r#"[["2.0",2,"ping"]]"#, "a message must be a JSON object"),
        (r#"[{"jsonrpc":"2.0","id":2,"method":"ping"},[]]"#, "a message must be a JSON object"),
    ];
    for (body, why) in cases {
        let msg = refused(post_bytes(&older, *body).await, StatusCode::BAD_REQUEST, -32600).await;
        assert!(msg.starts_with("Invalid Request: ") && msg.contains(why), "{body} → {msg}");
    }
    // `params: null` is taken as no params (some clients send it).
    let v = post_bytes(&older, r#"{"jsonrpc":"2.0","id":9,"method":"ping","params":null}"#).await.message().await;
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": 9, "result": {}}));
    w.still_served(&gw).await;
}

/// Over WebSocket the same input gets the same JSON-RPC errors, and the connection stays open.
#[tokio::test]
async fn malformed_and_misshapen_frames_get_errors_and_the_connection_stays() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    let parse_errors = [
        r#"{"jsonrpc":"2.0","id":2,"method":"ping""#,
        r#"{"jsonrpc":"2.0","id":2,"method":"ping"} trailing"#,
        r#"{"jsonrpc":"2.0","id":NaN,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"\ud80"}}"#,
        "",
    ];
    for frame in parse_errors {
        assert!(ws_refused(&mut ws, frame, -32700).await.starts_with("Parse error: "));
    }
    let invalid = [
        r#"{"id":2,"method":"ping"}"#,
        r#"{"jsonrpc":"1.0","id":2,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":[],"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":false,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":0.5,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":"\ud800","method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":["ping"]}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":"x"}"#,
        r#"{"jsonrpc":"2.0","id":2,"result":{},"error":{"code":1,"message":"m"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"id":3,"method":"ping"}"#,
        "[]",
        "[1,2]",
        r#"[["2.0",2,"ping"]]"#,
        "42",
    ];
    for frame in invalid {
        assert!(ws_refused(&mut ws, frame, -32600).await.starts_with("Invalid Request: "));
    }
    // The same connection still carries its session.
    let (v, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "still here"}})).await;
    assert_eq!(echoed(&v), "still here");
    w.still_served(&gw).await;
}

// ---- Ids ----------------------------------------------------------------------------------

#[tokio::test]
async fn huge_and_odd_ids_come_back_intact_or_get_a_precise_error() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let c = &w.http;

    // A 1 MB string id travels to the backend and back.
    let big = "i".repeat(1 << 20);
    let v = c.post(&echo_call(big.as_str(), "big id")).await.message().await;
    assert_eq!(v["id"].as_str().map(str::len), Some(big.len()));
    assert_eq!(v["id"], big.as_str());
    assert_eq!(echoed(&v), "big id");

    // Numbers that are not integers within 64 bits: refused, saying why.
    let too_big = ["1e400", &"9".repeat(500), "18446744073709551616", "-9223372036854775809", "1.0", "1E2"];
    for id in too_big {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let msg = refused(post_bytes(c, body).await, StatusCode::BAD_REQUEST, -32600).await;
        assert!(msg.contains(r#""id" must be a string or an integer"#), "{id:.20} → {msg}");
    }

    // The edges of the integer range, and string ids written with escapes, which a backend
    // decodes and writes back its own way: each answer still reaches its request.
    let odd: [(&str, Value); 5] = [
        ("18446744073709551615", json!(u64::MAX)),
        ("-9223372036854775808", json!(i64::MIN)),
        (r#""\u0061b\/c""#, json!("ab/c")),
        (r#""caf\u00e9""#, json!("café")),
        (r#""tab\there""#, json!("tab\there")),
    ];
    for (id, back) in odd {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"odd"}}}}}}"#
        );
        let resp = post_bytes(c, body).await;
        assert_eq!(resp.status, StatusCode::OK);
        let v = tokio::time::timeout(Duration::from_secs(5), resp.message())
            .await
            .unwrap_or_else(|_| panic!("the request with id {id} is answered"));
        assert_eq!(v["id"], back, "{v}");
        assert_eq!(echoed(&v), "odd");
    }

    // The same over WebSocket.
    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    ws.send(&echo_call(big.as_str(), "big id")).await;
    let v = ws.json().await;
    assert_eq!(v["id"], big.as_str());
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"jsonrpc":"2.0","id":"\u0061\/","method":"ping"}"#.into(),
    ))
    .await;
    assert_eq!(ws.json().await, json!({"jsonrpc": "2.0", "id": "a/", "result": {}}));
    ws_refused(&mut ws, r#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#, -32600).await;
    w.still_served(&gw).await;
}

// ---- Nesting ------------------------------------------------------------------------------

/// A `tools/call` whose params carry an extra member nested so that the whole message is
/// `depth` levels deep.
fn nested_call(depth: usize) -> String {
    let n = depth - 2; // the message object, then params
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"deep"}},"x":{}{}}}}}"#,
        "[".repeat(n),
        "]".repeat(n)
    )
}

#[tokio::test]
async fn deep_nesting_is_a_parse_error_not_a_crash() {
    use mcp_edge::jsonrpc::MAX_DEPTH;
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let mut older = gw.client();
    older.initialize("2025-03-26").await;
    let deep = [
        nested_call(100_000),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000)),
        nested_call(MAX_DEPTH + 1),
        // In a batch, each message counts on its own.
        format!("[{}]", nested_call(MAX_DEPTH + 1)),
    ];
    for body in &deep {
        let msg = refused(post_bytes(&older, body.clone()).await, StatusCode::BAD_REQUEST, -32700).await;
        assert!(msg.contains(&format!("nested deeper than {MAX_DEPTH} levels")), "{msg}");
    }
    // As deep as allowed: served (the backend parses it with serde_json too).
    let v = post_bytes(&w.http, nested_call(MAX_DEPTH)).await.message().await;
    assert_eq!(echoed(&v), "deep");

    let mut ws = connect(&ws_url(&gw.url, "")).await;
    ws.initialize(None).await;
    for body in &deep[..4] {
        ws_refused(&mut ws, body, -32700).await;
    }
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(nested_call(MAX_DEPTH).into())).await;
    assert_eq!(echoed(&ws.json().await), "deep");
    w.still_served(&gw).await;
}

// ---- UTF-8 --------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_in_a_post_body_is_a_parse_error() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let cases: &[&[u8]] = &[
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"x\":\"\xff\"}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"x\":\"\xc3\x28\"}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"x\":\"\xc0\xaf\"}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"x\":\"\xed\xa0\x80\"}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":\"\xe2\x82\",\"method\":\"ping\"}",
        b"\xfe\xff{}",
    ];
    for body in cases {
        refused(post_bytes(&w.http, *body).await, StatusCode::BAD_REQUEST, -32700).await;
    }
    w.still_served(&gw).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_websocket_text_frame_closes_with_1007() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let mut ws = raw_session(&gw).await;
    ws.send(&raw::text(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"\xff\"}}")).await;
    assert_eq!(ws.ws_close_code().await, Some(1007));

    // UTF-8 checks apply to the whole message: a character split across fragments is fine.
    let mut ws = raw_session(&gw).await;
    let msg = echo_call(5, "caf\u{e9} \u{1f600}").to_string().into_bytes();
    let cut = msg.iter().position(|b| *b == 0xc3).unwrap() + 1;
    ws.send(&raw::masked(false, TEXT, &msg[..cut])).await;
    ws.send(&raw::masked(true, CONTINUATION, &msg[cut..])).await;
    assert_eq!(echoed(&ws.ws_json().await), "caf\u{e9} \u{1f600}");
    // But a message that ends inside a character does not.
    ws.send(&raw::masked(false, TEXT, b"{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\",\"x\":\"\xf0\x9f")).await;
    ws.send(&raw::masked(true, CONTINUATION, b"\"}")).await;
    assert_eq!(ws.ws_close_code().await, Some(1007));
    w.still_served(&gw).await;
}

// ---- Request heads ------------------------------------------------------------------------

fn post_head(addr: std::net::SocketAddr, extra: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_close() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;

    // More header lines than hyper parses (100): 431, connection closed.
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c = Raw::connect(gw.addr).await;
    c.send(post_head(gw.addr, &many, INIT).as_bytes()).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.body.len()), (431, 0), "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.until_closed(raw::T).await.is_empty());

    // One 100 KB header fits in hyper's read buffer (about 400 KB): served.
    let big = format!("X-Big: {}\r\n", "b".repeat(100 * 1024));
    let mut c = Raw::connect(gw.addr).await;
    c.send(post_head(gw.addr, &big, INIT).as_bytes()).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.json()["result"]["protocolVersion"].is_string());

    // A request target over 65,534 bytes: 414, connection closed.
    let mut c = Raw::connect(gw.addr).await;
    let long = format!("GET /mcp?{} HTTP/1.1\r\nHost: {}\r\n\r\n", "q".repeat(70_000), gw.addr);
    c.send(long.as_bytes()).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.body.len()), (414, 0), "{a:?}");
    c.until_closed(raw::T).await;

    // A head larger than that buffer: 431, connection closed, even before the head is complete.
    let huge = format!("X-Huge: {}\r\n", "h".repeat(512 * 1024));
    let mut c = Raw::connect(gw.addr).await;
    let _ = c.try_send(post_head(gw.addr, &huge, INIT).as_bytes()).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.body.len()), (431, 0), "{a:?}");
    c.until_closed(raw::T).await;
    w.still_served(&gw).await;
}

// ---- Request smuggling --------------------------------------------------------------------

/// A second request hidden in the first one's body by one reading of the framing, pipelined
/// by the other.
fn smuggled(addr: std::net::SocketAddr, session: &str) -> String {
    let body = echo_call(2, "smuggled").to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\n\
         Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `attack` on a fresh connection: exactly one answer comes back, then the connection
/// closes; nothing smuggled is ever answered. Returns that answer.
async fn one_answer_then_close(gw: &TestGateway, attack: &str) -> raw::HttpAnswer {
    let mut c = Raw::connect(gw.addr).await;
    c.send(attack.as_bytes()).await;
    let a = c.answer().await;
    let rest = c.until_closed(raw::T).await;
    assert!(rest.is_empty(), "a second answer: {}", String::from_utf8_lossy(&rest));
    a
}

#[tokio::test]
async fn ambiguous_framing_is_refused_or_read_one_way_and_never_smuggles_a_request() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let session = w.http.session.clone().unwrap();
    let addr = gw.addr;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\n\
         Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
    );
    let chunked = format!("{:x}\r\n{ping}\r\n0\r\n\r\n", ping.len());
    let second = smuggled(addr, &session);

    // Content-Length and Transfer-Encoding: the chunked body counts (RFC 9112 §6.3), the
    // answer is that request's, and the connection closes after it, so the bytes after the
    // chunked body are never read as a request, whichever header comes first.
    let cl = chunked.len() + second.len();
    for order in [
        format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
        format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
    ] {
        let a = one_answer_then_close(&gw, &format!("{head}{order}\r\n{chunked}{second}")).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json(), json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        assert_eq!(a.header("connection"), Some("close"));
    }

    // Refused by hyper before any handler runs: an empty 400, and the connection closes.
    let bad = [
        // Two different lengths.
        format!("{head}Content-Length: {}\r\nContent-Length: 5\r\n\r\n{ping}{second}", ping.len()),
        format!("{head}Content-Length: {}, 5\r\n\r\n{ping}{second}", ping.len()),
        format!("{head}Content-Length: +{}\r\n\r\n{ping}{second}", ping.len()),
        // Chunked not the last coding, or no chunked at all.
        format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n{chunked}{second}"),
        format!("{head}Transfer-Encoding: gzip\r\n\r\n{chunked}{second}"),
        // Transfer-Encoding in HTTP/1.0.
        format!("{}Transfer-Encoding: chunked\r\n\r\n{chunked}{second}", head.replacen("HTTP/1.1", "HTTP/1.0", 1)),
        // Obsolete line folding, of a length and of any header.
        format!("{head}Content-Length:\r\n {}\r\n\r\n{ping}{second}", ping.len()),
        format!("{head}X-Folded: a\r\n b\r\nContent-Length: {}\r\n\r\n{ping}{second}", ping.len()),
        // Whitespace between a header's name and its colon.
        format!("{head}Content-Length : {}\r\n\r\n{ping}{second}", ping.len()),
    ];
    for attack in &bad {
        let a = one_answer_then_close(&gw, attack).await;
        assert_eq!((a.status, a.body.len()), (400, 0), "{attack:.300} → {a:?}");
        assert_eq!(a.header("connection"), Some("close"));
    }
    // A chunked body that breaks off: the gateway cannot read it (400, `-32600`), and the
    // connection closes.
    let broken = format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n{ping}\r\n0\r\n\r\n{second}");
    let a = one_answer_then_close(&gw, &broken).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], -32600);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("the body could not be read"));

    // A bare LF ends lines as CRLF does (RFC 9112 §2.2 allows it): one request, read one way.
    let lf = format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n{ping}", ping.len()).replace("\r\n", "\n");
    let a = one_answer_then_close(&gw, &lf).await;
    assert_eq!(a.json(), json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    // And an honest pipeline of two requests is answered twice, in order: the attacks above
    // prove something only because this works.
    let mut c = Raw::connect(addr).await;
    c.send(format!("{second}{}", smuggled(addr, &session).replace("\"id\":2", "\"id\":3")).as_bytes()).await;
    assert_eq!(c.answer().await.json()["id"], 2);
    assert_eq!(c.answer().await.json()["id"], 3);
    w.still_served(&gw).await;
}

// ---- WebSocket handshake ------------------------------------------------------------------

#[tokio::test]
async fn bad_websocket_handshakes_are_refused_before_the_upgrade() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let addr = gw.addr;
    let good = raw::upgrade_request(addr, "/mcp", "");
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let version = "Sec-WebSocket-Version: 13\r\n";
    let cases: Vec<(String, u16, &str)> = vec![
        (good.replace(key, ""), 400, "Sec-WebSocket-Key"),
        (good.replace(key, "Sec-WebSocket-Key: not base64 at all!!!!!!\r\n"), 400, "Sec-WebSocket-Key"),
        (good.replace(key, "Sec-WebSocket-Key: AAAAAAAAAAA=\r\n"), 400, "Sec-WebSocket-Key"),
        (
            good.replace(key, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"),
            400,
            "Sec-WebSocket-Key",
        ),
        (good.replace(key, &format!("{key}{key}")), 400, "Sec-WebSocket-Key"),
        (good.replace(version, "Sec-WebSocket-Version: 8\r\n"), 400, "Sec-WebSocket-Version"),
        (good.replace(version, ""), 400, "Sec-WebSocket-Version"),
        // Not a handshake at all: served as the Streamable HTTP GET it is, which needs
        // `Accept: text/event-stream`.
        (good.replace("Connection: Upgrade\r\n", ""), 406, "Not Acceptable"),
        (good.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"), 406, "Not Acceptable"),
        (good.replace("Upgrade: websocket\r\n", ""), 406, "Not Acceptable"),
        (good.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"), 406, "Not Acceptable"),
        (good.replacen("GET", "POST", 1), 406, "Not Acceptable"),
    ];
    for (request, status, says) in &cases {
        let mut c = Raw::connect(addr).await;
        c.send(request.as_bytes()).await;
        let a = c.answer().await;
        assert_eq!(a.status, *status, "{request} → {a:?}");
        let v = a.json();
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
        // The connection is still HTTP: a request after the refusal is answered as one.
        c.send(post_head(addr, "", INIT).as_bytes()).await;
        let next = c.answer().await;
        assert_eq!(next.status, 200, "{next:?}");
    }
    // A version the gateway does not speak is answered with the one it does (RFC 6455 §4.4).
    let mut c = Raw::connect(addr).await;
    c.send(good.replace(version, "Sec-WebSocket-Version: 8\r\n").as_bytes()).await;
    assert_eq!(c.answer().await.header("sec-websocket-version"), Some("13"));
    // HTTP/1.0 cannot upgrade.
    let mut c = Raw::connect(addr).await;
    c.send(good.replacen("HTTP/1.1", "HTTP/1.0", 1).as_bytes()).await;
    let a = c.answer().await;
    assert_ne!(a.status, 101, "{a:?}");
    w.still_served(&gw).await;
}

// ---- WebSocket frames ---------------------------------------------------------------------

#[tokio::test]
async fn a_frame_split_at_every_byte_boundary_is_read_whole() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let mut ws = raw::ws(gw.addr).await;
    // The initialize, one byte per write.
    for b in raw::text(INIT.as_bytes()) {
        ws.send(&[b]).await;
        tokio::task::yield_now().await;
    }
    assert!(ws.ws_json().await["result"]["protocolVersion"].is_string());
    ws.send(&raw::text(INITIALIZED.as_bytes())).await;
    // A request over 125 bytes (so the length takes two more bytes), cut at each position.
    let padding = "p".repeat(100);
    let mut positions = 0;
    for id in 1.. {
        let frame = raw::text(echo_call(id, &padding).to_string().as_bytes());
        assert_eq!(frame[1] & 0x7f, 126);
        let cut = id as usize;
        if cut >= frame.len() {
            break;
        }
        ws.send(&frame[..cut]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        ws.send(&frame[cut..]).await;
        let v = ws.ws_json().await;
        assert_eq!(v["id"], id);
        assert_eq!(echoed(&v), padding);
        positions += 1;
    }
    assert!(positions > 130);
    w.still_served(&gw).await;
}

/// Protocol violations fail the connection with 1002 (RFC 6455 §7.4.1).
#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let violations: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked text frame", raw::frame(true, TEXT, None, ping)),
        ("an unmasked ping", raw::frame(true, PING, None, b"p")),
        ("a continuation without a start", raw::masked(true, CONTINUATION, ping)),
        (
            "a new message inside a fragmented one",
            [raw::masked(false, TEXT, b"{"), raw::masked(true, TEXT, ping)].concat(),
        ),
        ("a fragmented ping", raw::masked(false, PING, b"p")),
        ("a ping over 125 bytes", raw::masked(true, PING, &[b'p'; 126])),
        ("a reserved opcode", raw::masked(true, 0x3, ping)),
        ("a reserved control opcode", raw::masked(true, 0xb, b"")),
        ("a close frame with a one-byte payload", raw::masked(true, CLOSE, &[3])),
        ("a close frame with a code no endpoint may send", raw::masked(true, CLOSE, &1005u16.to_be_bytes())),
        ("a close frame with a code outside every range", raw::masked(true, CLOSE, &999u16.to_be_bytes())),
        ("a reserved bit", {
            let mut f = raw::text(ping);
            f[0] |= 0x40;
            f
        }),
    ];
    for (what, bytes) in &violations {
        let mut ws = raw_session(&gw).await;
        ws.send(bytes).await;
        assert_eq!(ws.ws_close_code().await, Some(1002), "{what}");
    }
    // A close reason that is not UTF-8.
    let mut ws = raw_session(&gw).await;
    ws.send(&raw::masked(true, CLOSE, b"\x03\xe8bye \xff")).await;
    assert_eq!(ws.ws_close_code().await, Some(1007));
    w.still_served(&gw).await;
}

#[tokio::test]
async fn a_fragmented_message_with_pings_between_its_fragments_is_answered() {
    let gw = TestGateway::default().await;
    let w = Witness::new(&gw).await;
    let mut ws = raw::ws(gw.addr).await;
    let init = INIT.as_bytes();
    let (a, rest) = init.split_at(10);
    let (b, c) = rest.split_at(40);
    ws.send(&raw::masked(false, TEXT, a)).await;
    ws.send(&raw::masked(true, PING, b"one")).await;
    ws.send(&raw::masked(false, CONTINUATION, b)).await;
    ws.send(&raw::masked(true, PING, b"two")).await;
    ws.send(&raw::masked(false, CONTINUATION, &[])).await;
    ws.send(&raw::masked(true, CONTINUATION, c)).await;
    let mut pongs = Vec::new();
    let answer = loop {
        let f = ws.frame().await.expect("a frame");
        match f.opcode {
            PONG => pongs.push(f.payload),
            TEXT => break serde_json::from_slice::<Value>(&f.payload).unwrap(),
            _ => panic!("unexpected {f:?}"),
        }
    };
    assert_eq!(pongs, vec![b"one".to_vec(), b"two".to_vec()], "each ping answered, in order, before the message ends");
    assert!(answer["result"]["protocolVersion"].is_string(), "{answer}");
    ws.send(&raw::text(INITIALIZED.as_bytes())).await;
    ws.send(&raw::text(echo_call(1, "after fragments").to_string().as_bytes())).await;
    assert_eq!(echoed(&ws.ws_json().await), "after fragments");
    // A clean close is echoed with its code.
    ws.send(&raw::masked(true, CLOSE, &1000u16.to_be_bytes())).await;
    let f = ws.frame().await.expect("the close answer");
    assert_eq!((f.opcode, &f.payload[..2]), (CLOSE, &1000u16.to_be_bytes()[..]));
    w.still_served(&gw).await;
}

#[tokio::test]
async fn a_thousand_pipelined_messages_are_all_answered() {
    // Room for every request at once: this is about nothing being lost, not about the limit
    // (sessions.max_in_flight has its own test).
    let mut config = crate::common::default_config();
    config.sessions.max_in_flight = 1000;
    let gw = TestGateway::start(config).await;
    let w = Witness::new(&gw).await;
    let mut ws = raw::ws(gw.addr).await;
    let mut pipeline = raw::text(INIT.as_bytes());
    pipeline.extend(raw::text(INITIALIZED.as_bytes()));
    let n = 998;
    for id in 1..=n {
        let msg = if id % 2 == 0 {
            json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
        } else {
            echo_call(format!("s{id}"), &format!("m{id}"))
        };
        pipeline.extend(raw::text(msg.to_string().as_bytes()));
    }
    // All of it in one write, before reading anything.
    ws.send(&pipeline).await;
    let init = ws.ws_json().await;
    assert_eq!(init["id"], 0, "the initialize is answered first: {init}");
    let mut seen = std::collections::HashSet::new();
    for _ in 1..=n {
        let v = ws.ws_json().await;
        let id = match &v["id"] {
            Value::Number(n) => {
                assert_eq!(v["result"], json!({}), "{v}");
                n.as_u64().unwrap()
            }
            Value::String(s) => {
                let id: u64 = s[1..].parse().unwrap();
                assert_eq!(echoed(&v), format!("m{id}"));
                id
            }
            other => panic!("an answer without a request id: {other} in {v}"),
        };
        assert!(seen.insert(id), "answered twice: {id}");
    }
    assert_eq!(seen.len(), n as usize);
    assert!(ws.silent_for(Duration::from_millis(200)).await, "nothing more than one answer per request");
    w.still_served(&gw).await;
}
