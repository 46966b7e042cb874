//! The ways a client names its session: the WebSocket upgrade query (`?session=…&lastEventId=…`),
//! `mcpSessionId` or `_meta["mcp-edge/sessionId"]` in a WebSocket `initialize`, and the legacy
//! SSE `sessionId` / `session_id` query parameter.
//!
//! Input: any bytes, read as a query string and as a JSON-RPC message. Decoding never fails
//! loudly; what the gateway encodes (the legacy `endpoint` event's session id) decodes back to
//! itself; stripping the gateway's fields from a message keeps its kind, id and method and
//! leaves none of those fields behind.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_edge::frontend::websocket::{LAST_EVENT_KEY, SESSION_KEY};
use mcp_edge::fuzzing::{legacy_encode, legacy_session_param, percent_decode, Named, Query};
use mcp_edge::jsonrpc::{Body, Message};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    query(&text);
    if let Ok(body) = Body::parse(&Bytes::copy_from_slice(data)) {
        let mut named = Named::default();
        for m in body.into_messages() {
            strip(&mut named, &m);
        }
    }
});

fn query(q: &str) {
    let parsed = Query::parse(q);
    // The last `session=` pair wins, decoded.
    let last = |key: &str| q.split('&').map(|p| p.split_once('=').unwrap_or((p, ""))).rev().find(|(k, _)| *k == key);
    assert_eq!(parsed.session, last("session").map(|(_, v)| percent_decode(v)));
    assert_eq!(parsed.last_event_id, last("lastEventId").map(|(_, v)| percent_decode(v)));

    // Decoding only ever shortens, and leaves text without `%` or `+` as it is.
    let decoded = percent_decode(q);
    if !q.contains(['%', '+']) {
        assert_eq!(decoded, q);
    }
    assert!(decoded.len() <= q.len() || decoded.contains('\u{fffd}'));

    // Legacy SSE: the first `sessionId` / `session_id` pair with a value, decoded.
    let param = legacy_session_param(q);
    assert!(param.as_deref() != Some(""), "an empty session id");
    // The id the gateway puts in the `endpoint` event comes back from the client's POST as it
    // was, and from a WebSocket URL too.
    let id = q.split('&').next().unwrap_or("");
    let encoded = legacy_encode(id);
    assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{encoded}");
    assert_eq!(percent_decode(&encoded), id);
    if !id.is_empty() {
        assert_eq!(legacy_session_param(&format!("x=1&sessionId={encoded}&session_id=other")).as_deref(), Some(id));
        assert_eq!(Query::parse(&format!("session={encoded}&x")).session.as_deref(), Some(id));
    }
}

fn strip(named: &mut Named, m: &Message) {
    let before = (named.session.clone(), named.opted_in, named.top_level);
    let Some(stripped) = named.take_from(m) else { return };
    assert_eq!(stripped.kind, m.kind);
    assert_eq!(stripped.method(), m.method());
    // The id is the same JSON value (its text may be re-encoded, `"\u0041"` as `"A"`).
    let value = |id: Option<&mcp_edge::jsonrpc::Id>| id.map(|i| serde_json::from_str::<Value>(i.as_json()).unwrap());
    assert_eq!(value(stripped.id.as_ref()), value(m.id.as_ref()));
    let v: Value = serde_json::from_slice(&stripped.raw).expect("the stripped message is JSON");
    assert!(v.get("mcpSessionId").is_none(), "mcpSessionId left in {v}");
    if let Some(meta) = v.get("params").and_then(|p| p.get("_meta")) {
        assert!(meta.get(SESSION_KEY).is_none() && meta.get(LAST_EVENT_KEY).is_none(), "_meta keys left in {v}");
        assert!(meta.as_object().is_none_or(|o| !o.is_empty()), "an emptied _meta left in {v}");
    }
    // A session named once stays named; opting in is never undone.
    if before.0.is_some() {
        assert_eq!(named.session, before.0);
    }
    assert!(named.opted_in >= before.1 && named.top_level >= before.2);
}
