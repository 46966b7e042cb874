//! Rewriting the few fields the gateway changes: the `id` (a shared backend), a value in
//! `params` (a progress token, a cancelled request's id), and a key in an object's `_meta` (a
//! WebSocket client's session and event ids). Every other member keeps its exact text, so a
//! result or a large argument is copied, never re-encoded.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A member of an object as the parser found it, `null` included (an `Option` field alone
/// would read `null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The byte range of `part` in `whole`: `part` was borrowed from `whole` by the parser.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

fn splice(whole: &str, range: Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(whole.len() - range.len() + with.len());
    out.push_str(&whole[..range.start]);
    out.push_str(with);
    out.push_str(&whole[range.end..]);
    out
}

/// `object` (the text of a JSON object) with `"name":value` put first among its members.
fn prepend(object: &str, name_json: &str, value_json: &str) -> Option<String> {
    let open = object.find('{')?;
    let sep = if object[open + 1..].trim_start().starts_with('}') { "" } else { "," };
    // Pieces pushed into one buffer: `format!` costs several times more on a long object.
    let pieces = [&object[..=open], name_json, ":", value_json, sep, &object[open + 1..]];
    let mut out = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
    pieces.iter().for_each(|p| out.push_str(p));
    Some(out)
}

/// The JSON object `object` with `_meta[key]` set to `value_json`, every other byte kept;
/// `None` when `object` is not an object or its `_meta` is not one.
pub fn with_meta(object: &str, key: &str, value_json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow, rename = "_meta", default, deserialize_with = "present")]
        meta: Option<&'a RawValue>,
    }
    if !object.trim_start().starts_with('{') {
        return None;
    }
    let key_json = serde_json::to_string(key).ok()?;
    // Where `_meta` and its `key` are: in one pass when the reader is sure of both objects,
    // by serde_json otherwise (the last of a repeated key counts).
    let scanned = match super::member(object, "_meta") {
        Some(None) => Some((None, None)),
        Some(Some(meta)) if meta.starts_with('{') => super::member(meta, key).map(|old| (Some(meta), old)),
        _ => None,
    };
    let (meta, old) = match scanned {
        Some(found) => found,
        None => {
            let parsed: Object = serde_json::from_str(object).ok()?;
            match parsed.meta.map(RawValue::get) {
                None => (None, None),
                Some(meta) => {
                    let members: BTreeMap<String, &RawValue> = serde_json::from_str(meta).ok()?;
                    (Some(meta), members.get(key).map(|old| old.get()))
                }
            }
        }
    };
    let Some(meta) = meta else {
        return prepend(object, r#""_meta""#, &format!("{{{key_json}:{value_json}}}"));
    };
    let new_meta = match old {
        Some(old) => splice(meta, span(meta, old), value_json),
        None => prepend(meta, &key_json, value_json)?,
    };
    Some(splice(object, span(object, meta), &new_meta))
}

/// The message with `_meta[key]` set to `value_json` where a message may carry `_meta`: in
/// `params` of a request or notification (created when absent), in `result` of a result.
/// `None` for an error response, or when that member is not an object.
pub fn with_message_meta(raw: &str, key: &str, value_json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        method: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        params: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        result: Option<&'a RawValue>,
    }
    if !raw.trim_start().starts_with('{') {
        return None;
    }
    let parsed: Message = serde_json::from_str(raw).ok()?;
    let (object, member) = match (parsed.method, parsed.result) {
        (Some(_), _) => (parsed.params, r#""params""#),
        (None, Some(result)) => (Some(result), r#""result""#),
        (None, None) => return None,
    };
    match object {
        Some(object) => Some(splice(raw, span(raw, object.get()), &with_meta(object.get(), key, value_json)?)),
        None => prepend(raw, member, &with_meta("{}", key, value_json)?),
    }
}

/// The message with its top-level `id` replaced by `id_json` (the JSON text of the new id).
pub fn with_id(raw: &[u8], id_json: &str) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        id: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(raw).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let Envelope { id } = serde_json::from_str(text).ok()?;
    let out = match id {
        Some(id) => splice(text, span(text, id.get()), id_json),
        None => prepend(text, r#""id""#, id_json)?,
    };
    Some(Bytes::from(out))
}

/// The message with `params.<path>` set to `value_json`; the other top-level members keep their
/// text, `params` is re-encoded (it is small for the messages this is used on: progress
/// notifications, cancellations, and the `_meta` of requests that carry a progress token).
pub fn with_param(raw: &[u8], path: &[&str], value_json: &str) -> Option<Bytes> {
    let mut members: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(raw).ok()?;
    let mut params: serde_json::Value = match members.get("params") {
        Some(p) => serde_json::from_str(p.get()).ok()?,
        None => serde_json::json!({}),
    };
    let value: serde_json::Value = serde_json::from_str(value_json).ok()?;
    let (last, parents) = path.split_last()?;
    let mut at = &mut params;
    for key in parents {
        at = at.as_object_mut()?.entry(key.to_string()).or_insert_with(|| serde_json::json!({}));
    }
    at.as_object_mut()?.insert(last.to_string(), value);
    members.insert("params".into(), RawValue::from_string(params.to_string()).ok()?);
    serde_json::to_vec(&members).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_change_and_payloads_keep_their_text() {
        let raw = br#"{"jsonrpc":"2.0","id":"a b","result":{"x": 1.50, "y":"\u00e9"}}"#;
        let out = with_id(raw, "17").unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""id":17"#) && text.contains(r#"{"x": 1.50, "y":"\u00e9"}"#), "{text}");
        let back = with_id(&out, r#""a b""#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(v["id"], "a b");
        assert_eq!(v["result"]["x"], 1.5);
    }

    #[test]
    fn an_id_is_replaced_in_place() {
        let raw = br#"{"jsonrpc":"2.0", "id" : null ,"result":{"id":5}}"#;
        let out = with_id(raw, r#""pool.1""#).unwrap();
        assert_eq!(&out[..], br#"{"jsonrpc":"2.0", "id" : "pool.1" ,"result":{"id":5}}"#);
        // Without an id, one is added.
        let v: serde_json::Value = serde_json::from_slice(&with_id(br#"{"method":"m"}"#, "3").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"method": "m", "id": 3}));
        assert!(with_id(b"[1]", "3").is_none());
    }

    #[test]
    fn meta_keys_are_set_and_the_rest_keeps_its_text() {
        let value = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        // No `_meta`, an empty object, an existing `_meta` with and without the key.
        let out = with_meta(r#"{"a": 1.50}"#, "k", r#""v""#).unwrap();
        assert_eq!(out, r#"{"_meta":{"k":"v"},"a": 1.50}"#);
        assert_eq!(with_meta(" { } ", "k", "1").unwrap(), r#" {"_meta":{"k":1} } "#);
        let out = with_meta(r#"{"_meta":{"x":[1]},"b":"é"}"#, "k", "2").unwrap();
        assert_eq!(out, r#"{"_meta":{"k":2,"x":[1]},"b":"é"}"#);
        let out = with_meta(r#"{"_meta":{"k":"old","x":1}}"#, "k", r#""new""#).unwrap();
        assert_eq!(value(&out), serde_json::json!({"_meta": {"k": "new", "x": 1}}));
        assert!(with_meta(r#"{"_meta":7}"#, "k", "1").is_none());
        assert!(with_meta("[1]", "k", "1").is_none());
        // What the one-pass reader is not sure of is read by serde_json, with the same answer:
        // an escaped member name, a `\u` escape, the key twice (the last one counts), `_meta`
        // twice (refused).
        let out = with_meta(r#"{"\u005fmeta":{"x":1}}"#, "k", "2").unwrap();
        assert_eq!(out, r#"{"\u005fmeta":{"k":2,"x":1}}"#);
        let out = with_meta(r#"{"_meta":{"k":"\u00e9"},"a":"\u00e9"}"#, "k", "3").unwrap();
        assert_eq!(out, r#"{"_meta":{"k":3},"a":"\u00e9"}"#);
        let out = with_meta(r#"{"_meta":{"k":1,"k":2}}"#, "k", "4").unwrap();
        assert_eq!(out, r#"{"_meta":{"k":1,"k":4}}"#);
        assert!(with_meta(r#"{"_meta":{},"_meta":{}}"#, "k", "1").is_none());
        assert!(with_meta(r#"{"_meta":{"k":1}"#, "k", "1").is_none(), "not JSON");
        // In a message: a result's `result`, a request's or notification's `params` (made
        // when absent); nothing for an error, nor for `params` that are not an object.
        let out = with_message_meta(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, "e", r#""1-2""#).unwrap();
        assert_eq!(value(&out), serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"_meta": {"e": "1-2"}}}));
        let out = with_message_meta(r#"{"jsonrpc":"2.0","method":"m"}"#, "e", r#""1-3""#).unwrap();
        assert_eq!(
            value(&out),
            serde_json::json!({"jsonrpc": "2.0", "method": "m", "params": {"_meta": {"e": "1-3"}}})
        );
        let out = with_message_meta(r#"{"id":2,"method":"m","params":{"a":1}}"#, "e", "4").unwrap();
        assert_eq!(out, r#"{"id":2,"method":"m","params":{"_meta":{"e":4},"a":1}}"#);
        assert!(with_message_meta(r#"{"method":"m","params":[1]}"#, "e", "1").is_none());
        assert!(with_message_meta(r#"{"id":1,"error":{"code":1,"message":"m"}}"#, "e", "1").is_none());
    }

    #[test]
    fn params_values_are_set_along_a_path() {
        let raw =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"t"}}}"#;
        let out = with_param(raw, &["_meta", "progressToken"], r#""pool.3""#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], "pool.3");
        assert_eq!(v["params"]["name"], "echo");
        assert_eq!(v["id"], 1);
        let bare = with_param(br#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#, &["requestId"], "9").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bare).unwrap();
        assert_eq!(v["params"]["requestId"], 9);
    }
}
