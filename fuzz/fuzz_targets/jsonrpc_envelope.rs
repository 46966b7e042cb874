//! The JSON-RPC envelope parser and the helpers that re-encode what it parsed.
//!
//! Any bytes: `Message::parse` (one pass) answers exactly what the slower two-step parse does,
//! error included; `Body::parse` answers a body or a clean error. Every message it yields keeps raw
//! bytes that parse again, alone, to the same message; so do its single-line form, the message
//! with a `_meta` key added (as trace context, and spliced in as an event id), with a new id (spliced
//! where the parse found the old one, the same bytes as a fresh parse's rewrite) and with a
//! progress token set.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_edge::jsonrpc::{cancelled_notification, error_response, rewrite, single_line, Body, Id, Kind, Message};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    match (Message::parse(&bytes), Message::parse_in_two_steps(&bytes)) {
        (Ok(fast), Ok(slow)) => {
            assert!(fields(&fast) == fields(&slow) && fast.raw == slow.raw, "{fast:?} vs {slow:?}");
        }
        (fast, slow) => assert_eq!(fast.err(), slow.err(), "the one-pass parse answers otherwise"),
    }
    let Ok(body) = Body::parse(&bytes) else { return };
    let batch = matches!(body, Body::Batch(_));
    let msgs = body.into_messages();
    assert!(!msgs.is_empty(), "a body holds at least one message");
    for m in msgs {
        check(&m, batch);
    }
});

/// The routing fields of a message, for comparing a message with a re-encoded copy.
fn fields(m: &Message) -> (Kind, Option<Id>, Option<&str>, Option<Id>, Option<Id>) {
    (m.kind, m.id.clone(), m.method(), m.progress_token.clone(), m.cancelled_id.clone())
}

fn reparse(raw: &Bytes, what: &str) -> Message {
    Message::parse(raw).unwrap_or_else(|e| panic!("{what} does not parse again: {e}: {raw:?}"))
}

fn check(m: &Message, batch: bool) {
    // The raw bytes of a message, batch item or not, are that message on their own.
    let again = reparse(&m.raw, "a message's raw bytes");
    assert!(fields(&again) == fields(m), "raw bytes re-parse differently: {m:?} vs {again:?}");
    assert!(!batch || m.raw.first() == Some(&b'{'), "a batch item is an object");

    // One line, same length, same message.
    let line = m.single_line();
    assert_eq!(line, single_line(&m.raw));
    assert_eq!(line.len(), m.raw.len());
    assert!(!line.iter().any(|b| *b == b'\n' || *b == b'\r'), "single_line left a line break");
    let again = reparse(&line, "single_line");
    assert!(fields(&again) == fields(m), "single_line changed the message: {m:?} vs {again:?}");

    // Reading a string param never fails loudly.
    for key in ["uri", "name", "_meta", ""] {
        let _ = m.param_str(key);
    }

    // Trace context: a request or notification keeps its kind, id and method; where the key
    // lands, it is the value given (or the client's own).
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = m.clone().with_meta("traceparent", tp);
    let again = reparse(&traced.raw, "with_meta");
    assert!(fields(&again) == fields(&traced), "with_meta's message is not its raw bytes");
    assert_eq!(
        (traced.kind, &traced.id, traced.method()),
        (m.kind, &m.id, m.method()),
        "with_meta changed the envelope"
    );
    if !matches!(m.kind, Kind::Request | Kind::Notification) {
        assert_eq!(traced.raw, m.raw, "with_meta touched a response");
    }

    // A new id: the splice at the id the parse found gives exactly the bytes a fresh parse of
    // the text gives; every other member keeps its text, the kind stays (a notification with
    // an id is a request).
    let spliced = m.with_id("\"edge.7\"");
    assert_eq!(spliced, rewrite::with_id(&m.raw, "\"edge.7\""), "the splice and the rewrite differ");
    if let Some(out) = spliced {
        let again = reparse(&out, "with_id");
        assert_eq!(again.id.as_ref().map(Id::as_json), Some("\"edge.7\""));
        let kind = if m.kind == Kind::Notification { Kind::Request } else { m.kind };
        assert_eq!(again.kind, kind, "with_id changed the kind");
        assert_eq!(again.method(), m.method());
        if let Some(id) = &m.id {
            let back = again.with_id(id.as_json()).expect("an id rewritten twice");
            assert_eq!(Some(&back), rewrite::with_id(&out, id.as_json()).as_ref());
            assert_eq!(reparse(&back, "with_id twice").id.as_ref(), Some(id), "the id does not come back");
        }
    }

    // A response under the client's own id again (a pool): the message it claims to be is
    // what its bytes parse to.
    let client_id =
        Message::parse(&Bytes::from_static(br#"{"jsonrpc":"2.0","id":"c-1","result":{}}"#)).ok().and_then(|r| r.id);
    for id in [Some(Id::number(7)), client_id].into_iter().flatten() {
        if let Some(answer) = m.answering(&id) {
            let again = reparse(&answer.raw, "answering");
            assert!(fields(&again) == fields(&answer), "answering: {answer:?} vs {again:?}");
            assert_eq!(answer.id.as_ref(), Some(&id));
            // The answer's own id is found again (a pool may rewrite it once more).
            assert_eq!(answer.with_id("1"), rewrite::with_id(&answer.raw, "1"), "the answer's splice");
        }
    }

    // An event id spliced into `_meta` (what a resuming WebSocket client gets): the envelope
    // stays, and the key lands in `params` of a request or notification, `result` of a result.
    if let Some(out) = std::str::from_utf8(&m.raw)
        .ok()
        .and_then(|text| rewrite::with_message_meta(text, "mcp-edge/eventId", "\"1-2\""))
    {
        let again = reparse(&Bytes::from(out.clone()), "with_message_meta");
        assert_eq!(
            (again.kind, &again.id, again.method()),
            (m.kind, &m.id, m.method()),
            "with_message_meta changed the envelope"
        );
        // (A number beyond f64 elsewhere in the message is text the envelope never reads, but a
        // `Value` cannot hold it.)
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
            let holder = if m.method().is_some() { &v["params"] } else { &v["result"] };
            assert_eq!(holder["_meta"]["mcp-edge/eventId"], "1-2", "the key is not where it belongs: {out}");
        }
    }

    // A progress token set in params._meta (what a shared backend's pool does to requests).
    if let Some(out) = rewrite::with_param(&m.raw, &["_meta", "progressToken"], "\"pool.3\"") {
        let again = reparse(&out, "with_param");
        assert_eq!(
            (again.kind, &again.id, again.method()),
            (m.kind, &m.id, m.method()),
            "with_param changed the envelope"
        );
        if m.kind == Kind::Request {
            assert_eq!(again.progress_token.as_ref().map(Id::as_json), Some("\"pool.3\""));
        }
    }
    // And a cancelled request's id (what the pool does to notifications/cancelled). Only a
    // notification cancels: a request that carries the method name (it has an id) does not.
    if let Some(out) = rewrite::with_param(&m.raw, &["requestId"], "42") {
        let again = reparse(&out, "with_param requestId");
        if again.kind == Kind::Notification && again.method() == Some("notifications/cancelled") {
            assert_eq!(again.cancelled_id.as_ref().map(Id::as_json), Some("42"));
        }
    }

    // The gateway's own answers about this message parse as what they are.
    if let Some(id) = &m.id {
        let err = reparse(&error_response(Some(id), -32000, "backend \"x\"\n gone"), "error_response");
        assert_eq!((err.kind, err.id.as_ref()), (Kind::Error, Some(id)));
        let cancel = reparse(&cancelled_notification(id, "timeout\u{0}"), "cancelled_notification");
        assert_eq!(cancel.kind, Kind::Notification);
        assert_eq!(cancel.cancelled_id.as_ref(), Some(id));
    }
}
