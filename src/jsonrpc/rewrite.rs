//! Rewriting the few envelope fields a shared backend needs changed: the `id`, and a value in
//! `params` (a progress token, a cancelled request's id). Every other member keeps its exact
//! text, so a result or a large argument is copied, never re-encoded.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;

/// The message with its top-level `id` replaced by `id_json` (the JSON text of the new id).
pub fn with_id(raw: &[u8], id_json: &str) -> Option<Bytes> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(raw).ok()?;
    let mut out = String::with_capacity(raw.len() + id_json.len());
    out.push('{');
    out.push_str(&format!("\"id\":{id_json}"));
    for (k, v) in &members {
        if k == "id" {
            continue;
        }
        out.push(',');
        out.push_str(&serde_json::to_string(k).ok()?);
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
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
