//! JSON-RPC 2.0 envelopes as the gateway sees them.
//!
//! Owns parsing of the envelope (`jsonrpc`, `id`, `method`, and the two `params` fields the
//! relay routes on) and the building of error responses. `params` and `result` are never
//! re-encoded: a [`Message`] keeps the exact bytes it was parsed from so that forwarding is a
//! copy, not a round trip through `serde_json::Value`. Must not know about transports.

pub mod codec;
pub mod rewrite;
mod scan;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Whether a `traceparent` header value is a well-formed W3C trace context (version 00 form:
/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero), safe to pass on.
pub fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// Standard JSON-RPC error codes, plus the gateway's own in the server range.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The backend could not be started, exited, or broke the protocol.
    pub const BACKEND_UNAVAILABLE: i64 = -32000;
    /// The session id is unknown or ended (sent with HTTP 404, as the MCP SDKs do).
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// The request outlived `sessions.request_timeout` at the gateway.
    pub const REQUEST_TIMEOUT: i64 = -32004;
    /// The session ended (shutdown, delete, idle) while the request was in flight.
    pub const SESSION_ENDED: i64 = -32005;
    /// The request id is already in flight on this session.
    pub const DUPLICATE_ID: i64 = -32006;
    /// A gateway limit was reached; retry later (`data.retryAfterMs` says when).
    pub const OVERLOADED: i64 = -32007;
    /// No valid credential (sent with HTTP 401 and `WWW-Authenticate`).
    pub const UNAUTHORIZED: i64 = -32008;
    /// The principal may not do this: a missing scope (HTTP 403) or `routes.allow`.
    pub const FORBIDDEN: i64 = -32009;
}

/// A JSON-RPC id (string or integer) kept as JSON text, so `1` and `"1"` stay distinct. A
/// string id written with escapes it does not need (`"\u0061"`, `"\/"`) is kept as serde_json
/// writes it (`"a"`, `"/"`): backends decode ids and write them back their own way, and the
/// answer must still find its request. Any other id keeps its exact text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Arc<str>);

impl Id {
    /// Parses JSON text as an id; `None` unless it is a string or an integer.
    pub fn from_json(text: &str) -> Option<Id> {
        let text = text.trim();
        match text.as_bytes().first()? {
            // Without a backslash, valid JSON string text is already in that one form.
            b'"' if !text.contains('\\') => Some(Id(Arc::from(text))),
            b'"' => {
                let s = serde_json::from_str::<String>(text).ok()?;
                Some(Id(Arc::from(serde_json::to_string(&s).ok()?)))
            }
            // The text is a JSON number already: an integer is one that fits either type
            // (not `1.5`, not `1e3`).
            b'-' | b'0'..=b'9' => {
                (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()).then(|| Id(Arc::from(text)))
            }
            _ => None,
        }
    }

    /// An id the gateway makes itself (numbers only).
    pub fn number(n: u64) -> Id {
        Id(Arc::from(n.to_string()))
    }

    /// The JSON text of the id.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The four shapes a JSON-RPC message can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    /// A response carrying `result`.
    Result,
    /// A response carrying `error`.
    Error,
}

/// One parsed JSON-RPC message and the bytes it came from.
#[derive(Clone)]
pub struct Message {
    /// The message exactly as received (no surrounding whitespace guaranteed).
    pub raw: Bytes,
    pub kind: Kind,
    /// Present on requests and responses (absent on an error response with `id: null`).
    pub id: Option<Id>,
    /// Present on requests and notifications (shared: a message is cloned on its way to a
    /// backend).
    pub method: Option<Arc<str>>,
    /// `params._meta.progressToken` of a request, or `params.progressToken` of a
    /// `notifications/progress`.
    pub progress_token: Option<Id>,
    /// `params.requestId` of a `notifications/cancelled`.
    pub cancelled_id: Option<Id>,
    /// Where the parse found the `id` member's value in `raw` (start, end), so that a new id
    /// can be spliced in without parsing the message again ([`Message::with_id`]).
    id_at: Option<(u32, u32)>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message").field("kind", &self.kind).field("id", &self.id).field("method", &self.method).finish()
    }
}

/// Why bytes are not a JSON-RPC message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid JSON-RPC message: {0}")]
    Invalid(&'static str),
}

impl ParseError {
    /// The JSON-RPC code a client gets for this error.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => code::PARSE_ERROR,
            ParseError::Invalid(_) => code::INVALID_REQUEST,
        }
    }
}

/// Each member `Some("null")` when present with `null`, `None` when absent, as the one-pass
/// reader gives them (`"result": null` is a result).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

impl<'a> From<Envelope<'a>> for scan::Fields<'a> {
    fn from(e: Envelope<'a>) -> Self {
        scan::Fields {
            jsonrpc: e.jsonrpc.map(RawValue::get),
            id: e.id.map(RawValue::get),
            method: e.method.map(RawValue::get),
            params: e.params.map(RawValue::get),
            result: e.result.map(RawValue::get),
            error: e.error.map(RawValue::get),
        }
    }
}

/// Keeps a present `null` as raw `null` instead of turning it into `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<Meta<'a>>,
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// The deepest nesting of arrays and objects a client message may have: the most serde_json
/// parses (its recursion limit), so a backend built on it can read whatever the gateway passes.
pub const MAX_DEPTH: usize = 127;

/// The text of the member `name` of the JSON object `object`, read in one pass:
/// `Some(None)` when it has none; `None` when the reader is not sure of its answer (an escaped
/// member name, a `\u` escape, a repeated `name`, deep nesting, bad syntax), for the caller to
/// ask serde_json.
pub(crate) fn member<'a>(object: &'a str, name: &str) -> Option<Option<&'a str>> {
    scan::member(object, name)
}

/// The value of `json`, the text of one valid JSON value (as [`member`] gives it), when it is
/// a string: borrowed when it has no escapes; `None` when it is not a string.
pub(crate) fn string_value(json: &str) -> Option<std::borrow::Cow<'_, str>> {
    match json.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(t) if !t.contains('\\') => Some(t.into()),
        _ => serde_json::from_str::<String>(json).ok().map(Into::into),
    }
}

/// Whether valid JSON text nests arrays and objects deeper than [`MAX_DEPTH`]. Iterative, so
/// any depth is safe to check; a quick count skips the scan for the usual shallow message.
fn too_deep(json: &[u8]) -> bool {
    if json.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= MAX_DEPTH {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A request body: one message or a batch.
#[derive(Debug)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    /// Parses what a client sent (a POST body, a WebSocket text message). Arrays become
    /// batches; an empty array is invalid. A message nested deeper than [`MAX_DEPTH`] is
    /// refused as a parse error: the gateway itself reads only the envelope, but a backend
    /// that parses with serde_json could not read it.
    pub fn parse(bytes: &Bytes) -> Result<Body, ParseError> {
        let one = |raw: &RawValue| {
            if too_deep(raw.get().as_bytes()) {
                return Err(ParseError::Json(format!("nested deeper than {MAX_DEPTH} levels")));
            }
            Message::from_raw(bytes, raw)
        };
        let json = |e: serde_json::Error| ParseError::Json(e.to_string());
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            // What the scanner is sure of nests less than `MAX_DEPTH`.
            if let Some(m) = Message::scanned(bytes) {
                return m.map(Body::Single);
            }
            if !too_deep(bytes) {
                return Message::parse(bytes).map(Body::Single);
            }
        }
        if first == Some(&b'[') {
            let items: Vec<&RawValue> = serde_json::from_slice(bytes).map_err(json)?;
            if items.is_empty() {
                return Err(ParseError::Invalid("empty batch"));
            }
            let msgs = items.into_iter().map(one).collect::<Result<_, _>>()?;
            Ok(Body::Batch(msgs))
        } else {
            one(serde_json::from_slice(bytes).map_err(json)?).map(Body::Single)
        }
    }

    pub fn into_messages(self) -> Vec<Message> {
        match self {
            Body::Single(m) => vec![m],
            Body::Batch(v) => v,
        }
    }
}

impl Message {
    /// Parses one message from bytes that hold exactly one JSON value.
    ///
    /// One pass over the bytes when they are a well-formed object in UTF-8 (the usual case):
    /// the envelope scanner's when it is sure of its answer, else serde_json's; anything else
    /// takes [`Message::parse_in_two_steps`], whose error is the answer.
    pub fn parse(bytes: &Bytes) -> Result<Message, ParseError> {
        if let Some(m) = Message::scanned(bytes) {
            return m;
        }
        let text = bytes.trim_ascii();
        // Read from a `str`, the members serde_json borrows are not checked for UTF-8 again.
        // All of `bytes` is read: not all that `trim_ascii` drops is JSON whitespace.
        if let Some(Ok(json)) = (text.first() == Some(&b'{')).then(|| std::str::from_utf8(bytes)) {
            if let Ok(env) = serde_json::from_str::<Envelope<'_>>(json) {
                return Message::from_envelope(bytes.slice_ref(text), env.into());
            }
        }
        Message::parse_in_two_steps(bytes)
    }

    /// The envelope scanner's answer, when it is sure of it: an object in UTF-8 that nests
    /// less than `scan::DEPTH` deep.
    fn scanned(bytes: &Bytes) -> Option<Result<Message, ParseError>> {
        let text = bytes.trim_ascii();
        if text.first() != Some(&b'{') {
            return None;
        }
        let fields = scan::envelope(std::str::from_utf8(bytes).ok()?)?;
        Some(Message::from_envelope(bytes.slice_ref(text), fields))
    }

    /// The JSON value first, then its envelope: slower, and tells a syntax error from a
    /// repeated member. [`Message::parse`] answers exactly as this does.
    #[doc(hidden)]
    pub fn parse_in_two_steps(bytes: &Bytes) -> Result<Message, ParseError> {
        let raw: &RawValue = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
        Message::from_raw(bytes, raw)
    }

    fn from_raw(source: &Bytes, raw: &RawValue) -> Result<Message, ParseError> {
        // Checked first: serde would also read the envelope from an array (`["2.0",1,"ping"]`).
        if !raw.get().starts_with('{') {
            return Err(ParseError::Invalid("a message must be a JSON object"));
        }
        // Of an object, serde refuses only a repeated member (`"id"` twice, or once escaped):
        // the gateway and the backend could each read a different one.
        let env: Envelope<'_> =
            serde_json::from_str(raw.get()).map_err(|_| ParseError::Invalid("a member appears twice"))?;
        Message::from_envelope(source.slice_ref(raw.get().as_bytes()), env.into())
    }

    /// Checks an envelope and keeps what the gateway routes on; `raw` is the message's text.
    fn from_envelope(raw: Bytes, env: scan::Fields<'_>) -> Result<Message, ParseError> {
        if env.jsonrpc != Some("\"2.0\"") {
            return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\""));
        }
        let id = match env.id {
            None => None,
            Some("null") => None,
            Some(r) => Some(Id::from_json(r).ok_or(ParseError::Invalid("\"id\" must be a string or an integer"))?),
        };
        // The parser borrowed the id's text from the same buffer `raw` shares.
        let id_at = env.id.and_then(|r| {
            let start = (r.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
            let end = start + r.len();
            (end <= raw.len()).then_some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
        });
        let method = match env.method.map(str::trim) {
            None => None,
            // Without a backslash, a JSON string's text between its quotes is the string.
            Some(t) if t.len() >= 2 && t.starts_with('"') && !t.contains('\\') => Some(Arc::from(&t[1..t.len() - 1])),
            Some(t) => Some(Arc::from(
                serde_json::from_str::<String>(t).map_err(|_| ParseError::Invalid("\"method\" must be a string"))?,
            )),
        };
        // `null` is taken as absent: some clients send it for "no params".
        if env.params.is_some_and(|p| !matches!(p.as_bytes().first(), Some(b'{' | b'[' | b'n'))) {
            return Err(ParseError::Invalid("\"params\" must be an object or an array"));
        }
        let kind = match (&method, &id, env.result, env.error) {
            (Some(_), Some(_), None, None) => Kind::Request,
            (Some(_), None, None, None) if env.id.is_none() => Kind::Notification,
            (None, Some(_), Some(_), None) => Kind::Result,
            (None, _, None, Some(_)) => Kind::Error,
            _ => return Err(ParseError::Invalid("not a request, notification or response")),
        };
        let mut msg = Message { raw, kind, id, method, progress_token: None, cancelled_id: None, id_at };
        if let Some(params) = env.params {
            msg.read_params(params);
        }
        Ok(msg)
    }

    /// Picks out the routing fields, scanning params only when they can be there.
    fn read_params(&mut self, text: &str) {
        let wanted = match self.kind {
            Kind::Request => text.contains("progressToken"),
            Kind::Notification => {
                matches!(self.method.as_deref(), Some("notifications/progress" | "notifications/cancelled"))
            }
            _ => false,
        };
        if !wanted {
            return;
        }
        let Ok(p) = serde_json::from_str::<Params<'_>>(text) else {
            return;
        };
        match self.kind {
            Kind::Request => {
                self.progress_token = p.meta.and_then(|m| m.progress_token).map(RawValue::get).and_then(Id::from_json)
            }
            _ => {
                self.progress_token = p.progress_token.map(RawValue::get).and_then(Id::from_json);
                self.cancelled_id = p.request_id.map(RawValue::get).and_then(Id::from_json);
            }
        }
    }

    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    pub fn is_response(&self) -> bool {
        matches!(self.kind, Kind::Result | Kind::Error)
    }

    /// The raw bytes with any line breaks (only possible as insignificant whitespace in
    /// valid JSON, since strings escape them) turned into spaces: fit for one stdio line or
    /// one SSE `data:` field.
    /// A string member of `params` (`uri`, say), for the few methods the gateway must read.
    pub fn param_str(&self, key: &str) -> Option<String> {
        self.params()?.get(key)?.as_str().map(str::to_owned)
    }

    fn params(&self) -> Option<serde_json::Value> {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow)]
            params: Option<&'a RawValue>,
        }
        let raw = serde_json::from_slice::<Params>(&self.raw).ok()?.params?;
        serde_json::from_str(raw.get()).ok()
    }

    /// The message with `params._meta[key] = value` (W3C trace context towards the backend),
    /// unless `_meta` already names the key or `params` is not an object. Only `params` is
    /// re-encoded ([`rewrite::with_param`]), and only for the rare messages that need it.
    pub fn with_meta(self, key: &str, value: &str) -> Message {
        if !matches!(self.kind, Kind::Request | Kind::Notification) {
            return self;
        }
        let fits = match self.params() {
            None => true,
            Some(serde_json::Value::Object(p)) => match p.get("_meta") {
                None => true,
                Some(serde_json::Value::Object(meta)) => !meta.contains_key(key),
                Some(_) => false,
            },
            Some(_) => false,
        };
        let value = serde_json::Value::from(value).to_string();
        match fits.then(|| rewrite::with_param(&self.raw, &["_meta", key], &value)).flatten() {
            Some(raw) => Message::parse(&raw).unwrap_or(self),
            None => self,
        }
    }

    pub fn single_line(&self) -> Bytes {
        single_line(&self.raw)
    }

    /// The message's text with its top-level `id` set to `id_json` (the JSON text of the new
    /// id), every other byte kept. Spliced where the parse found the id; a message without an
    /// id, or whose id the parse normalized (a string with escapes), takes
    /// [`rewrite::with_id`], which parses the text again.
    pub fn with_id(&self, id_json: &str) -> Option<Bytes> {
        self.replace_id(id_json).map(|(raw, _)| raw)
    }

    /// [`Message::with_id`], and where the new id is in the new text when it was spliced.
    fn replace_id(&self, id_json: &str) -> Option<(Bytes, Option<(u32, u32)>)> {
        if let (Some((start, end)), Some(id)) = (self.id_at, &self.id) {
            let (s, e) = (start as usize, end as usize);
            if self.raw.get(s..e) == Some(id.as_json().as_bytes()) {
                let mut out = Vec::with_capacity(self.raw.len() - (e - s) + id_json.len());
                out.extend_from_slice(&self.raw[..s]);
                out.extend_from_slice(id_json.as_bytes());
                out.extend_from_slice(&self.raw[e..]);
                let at = u32::try_from(id_json.len()).ok().and_then(|n| Some((start, start.checked_add(n)?)));
                return Some((Bytes::from(out), at));
            }
        }
        rewrite::with_id(&self.raw, id_json).map(|raw| (raw, None))
    }

    /// This response under another id (a pool gives the client its own id back): only the
    /// `id` member changes ([`Message::with_id`]), so nothing needs parsing again. `None` for
    /// requests and notifications.
    pub fn answering(&self, id: &Id) -> Option<Message> {
        if !self.is_response() {
            return None;
        }
        let (raw, id_at) = self.replace_id(id.as_json())?;
        Some(Message { raw, id: Some(id.clone()), id_at, ..self.clone() })
    }

    /// A result response the gateway makes itself; `result` is JSON text.
    pub fn result(id: &Id, result: &str) -> Message {
        Message {
            raw: Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, id.as_json())),
            kind: Kind::Result,
            id: Some(id.clone()),
            method: None,
            progress_token: None,
            cancelled_id: None,
            id_at: None,
        }
    }

    /// The message with its raw bytes on one line: line breaks in valid JSON are whitespace
    /// between tokens, so what was parsed stays as it is.
    pub fn on_one_line(&self) -> Message {
        Message { raw: self.single_line(), ..self.clone() }
    }
}

/// See [`Message::single_line`].
pub fn single_line(raw: &Bytes) -> Bytes {
    if !raw.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return raw.clone();
    }
    raw.iter().map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }).collect::<Vec<u8>>().into()
}

/// Builds `{"jsonrpc":"2.0","id":…,"error":{"code":…,"message":…}}` (id `null` when absent).
pub fn error_response(id: Option<&Id>, code: i64, message: &str) -> Bytes {
    error_response_with_data(id, code, message, None)
}

/// A JSON-RPC error response whose `data` is the given JSON text.
pub fn error_response_with_data(id: Option<&Id>, code: i64, message: &str, data: Option<&str>) -> Bytes {
    let id = id.map_or("null", Id::as_json);
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    match data {
        Some(data) => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message},"data":{data}}}}}"#)
                .into()
        }
        None => format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#).into(),
    }
}

/// Builds a `notifications/cancelled` for a request the gateway gives up on.
pub fn cancelled_notification(id: &Id, reason: &str) -> Bytes {
    let reason = serde_json::to_string(reason).unwrap_or_else(|_| "\"\"".into());
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":{reason}}}}}"#,
        id.as_json()
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_any_length_keep_their_text_and_compare_by_it() {
        let raw = |t: &str| Id::from_json(t).unwrap();
        let uuid = r#""0b6c9a52-4c1e-4c4b-9d36-0c3f1c5d2e7a""#;
        let long = format!("\"{}\"", "x".repeat(100));
        for text in ["1", "-7", r#""a""#, uuid, &long, "18446744073709551615"] {
            let (a, b) = (raw(text), raw(text));
            assert_eq!(a.as_json(), text);
            assert!(a == b && a.clone() == b);
            let set: std::collections::HashSet<Id> = [a, b].into_iter().collect();
            assert_eq!(set.len(), 1, "{text}");
        }
        assert_ne!(raw("1"), raw(r#""1""#));
        assert_eq!(Id::number(u64::MAX).as_json(), "18446744073709551615");
        assert_eq!(Id::number(0), raw("0"));
    }

    #[test]
    fn a_response_answers_under_another_id_without_parsing_again() {
        let parse = |s: &'static [u8]| Message::parse(&Bytes::from_static(s)).unwrap();
        let answer = parse(br#"{"jsonrpc":"2.0","id":41,"result":{"ok":true}}"#);
        let client_id = parse(br#"{"jsonrpc":"2.0","id":"a\u0062","method":"x"}"#).id.unwrap();
        let restored = answer.answering(&client_id).unwrap();
        assert_eq!(&restored.raw[..], br#"{"jsonrpc":"2.0","id":"ab","result":{"ok":true}}"#);
        let again = Message::parse(&restored.raw).unwrap();
        assert_eq!((again.kind, again.id), (restored.kind, restored.id));
        assert!(parse(br#"{"jsonrpc":"2.0","id":1,"method":"x"}"#).answering(&client_id).is_none());

        let made = Message::result(&Id::number(3), r#"{"tools":[]}"#);
        let again = Message::parse(&made.raw).unwrap();
        assert_eq!((again.kind, &again.id, again.method()), (made.kind, &made.id, made.method()));
    }

    #[test]
    fn the_one_pass_parse_answers_as_the_two_step_parse_does() {
        let inputs: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            b" \r\n\t{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}} \n",
            br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"\u0069d":2,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
            b"\x0c{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"\xff\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"a\x01\"}",
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            br#"["2.0",1,"ping"]"#,
            b"",
            // Members present with `null`: the same reading both ways (`"result": null` is a
            // result; the others are refused alike).
            br#"{"jsonrpc":"2.0","id":1,"result":null}"#,
            br#"{"jsonrpc":"2.0","error":null}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{},"error":null}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            br#"{"jsonrpc":null,"id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
        ];
        for input in inputs {
            let bytes = Bytes::copy_from_slice(input);
            let (fast, slow) = (Message::parse(&bytes), Message::parse_in_two_steps(&bytes));
            match (&fast, &slow) {
                (Ok(f), Ok(s)) => assert!(f.raw == s.raw && f.id == s.id && f.kind == s.kind, "{input:?}"),
                _ => assert_eq!(fast.as_ref().err(), slow.as_ref().err(), "{:?}", String::from_utf8_lossy(input)),
            }
        }
        let bad_utf8 = Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"\xff\"}");
        assert!(matches!(Message::parse(&bad_utf8), Err(ParseError::Json(_))), "invalid UTF-8 anywhere is refused");
    }

    #[test]
    fn trace_context_goes_into_params_meta_once() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(tp));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y"));
        let m = Message::parse(&Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo"}}"#,
        ))
        .unwrap();
        let m = m.with_meta("traceparent", tp);
        let v: serde_json::Value = serde_json::from_slice(&m.raw).unwrap();
        assert_eq!(v["params"]["_meta"]["traceparent"], tp);
        assert_eq!(v["params"]["name"], "echo");
        assert_eq!(m.id.as_ref().unwrap().as_json(), "\"a\"", "the id is kept exactly");
        let own = Message::parse(&Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":"mine"}}}"#,
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&own.with_meta("traceparent", tp).raw).unwrap();
        assert_eq!(v["params"]["_meta"]["traceparent"], "mine", "the client's own _meta wins");
        let response = Message::parse(&Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#)).unwrap();
        assert_eq!(response.clone().with_meta("traceparent", tp).raw, response.raw, "responses are untouched");
    }

    fn parse(s: &str) -> Result<Message, ParseError> {
        Message::parse(&Bytes::from(s.to_owned()))
    }

    #[test]
    fn a_new_id_is_spliced_where_the_parse_found_the_old_one() {
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        // What the splice trusts: the id's place in the message's own text.
        let found = |m: &Message| m.id_at.map(|(s, e)| text(m.raw.slice(s as usize..e as usize)));
        // Whitespace around the message and the id, an id-like text in params: only the
        // top-level id changes, every other byte stays.
        let m = parse(" \n{\"jsonrpc\":\"2.0\", \"id\" :  7 ,\"method\":\"x\",\"params\":{\"id\":7}}\n").unwrap();
        assert_eq!(found(&m).as_deref(), Some("7"));
        assert_eq!(
            text(m.with_id("\"pool.1\"").unwrap()),
            r#"{"jsonrpc":"2.0", "id" :  "pool.1" ,"method":"x","params":{"id":7}}"#
        );
        // A string id; then the answer's id back, twice over: each answer's id is found again.
        let r = parse(r#"{"jsonrpc":"2.0","id":"a b","result":{"x": 1.50}}"#).unwrap();
        let once = r.answering(&Id::number(12)).unwrap();
        assert_eq!(&once.raw[..], br#"{"jsonrpc":"2.0","id":12,"result":{"x": 1.50}}"#);
        let twice = once.answering(&Id(Arc::from("\"z\""))).unwrap();
        assert_eq!(&twice.raw[..], br#"{"jsonrpc":"2.0","id":"z","result":{"x": 1.50}}"#);
        assert_eq!(found(&twice).as_deref(), Some("\"z\""));
        // A string id with escapes is kept normalized, so the splice is not trusted: the
        // slower rewrite gives the same answer.
        let e = parse(r#"{"jsonrpc":"2.0","id":"\u0061","result":{}}"#).unwrap();
        assert_eq!(&e.with_id("5").unwrap()[..], br#"{"jsonrpc":"2.0","id":5,"result":{}}"#);
        // The second message of a batch: its place in the batch's buffer is not its place in
        // its own text.
        let Ok(Body::Batch(batch)) = Body::parse(&Bytes::from_static(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"}, {"jsonrpc":"2.0","id":22,"method":"b"}]"#,
        )) else {
            panic!("a batch")
        };
        assert_eq!(found(&batch[1]).as_deref(), Some("22"));
        assert_eq!(&batch[1].with_id("3").unwrap()[..], br#"{"jsonrpc":"2.0","id":3,"method":"b"}"#);
        // An error with a null id: the null is replaced.
        let n = parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).unwrap();
        assert_eq!(&n.with_id("4").unwrap()[..], br#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"m"}}"#);
    }

    #[test]
    fn kinds_and_ids() {
        let m = parse(r#"{"jsonrpc":"2.0","id":"a","method":"x","params":{"_meta":{"progressToken":7}}}"#).unwrap();
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id.unwrap().as_json(), "\"a\"");
        assert_eq!(m.progress_token.unwrap().as_json(), "7");
        let n = parse(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1"}}"#).unwrap();
        assert_eq!(n.kind, Kind::Notification);
        assert_eq!(n.cancelled_id.unwrap().as_json(), "\"r1\"");
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_eq!(r.kind, Kind::Result);
        let e = parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).unwrap();
        assert_eq!(e.kind, Kind::Error);
        assert!(e.id.is_none());
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert_eq!(parse("{").unwrap_err().code(), code::PARSE_ERROR);
        assert_eq!(parse(r#"{"id":1,"method":"x"}"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(parse(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(parse(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(parse("[1]").unwrap_err().code(), code::INVALID_REQUEST);
    }

    #[test]
    fn rejects_what_serde_would_read_loosely() {
        let invalid = |s: &str| Body::parse(&Bytes::from(s.to_owned())).unwrap_err();
        // An array would deserialize into the envelope's fields in order.
        assert_eq!(invalid(r#"[["2.0",1,"ping"]]"#), ParseError::Invalid("a message must be a JSON object"));
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1,"\u0069d":2,"method":"x"}"#),
            ParseError::Invalid("a member appears twice")
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"p"}"#),
            ParseError::Invalid("\"params\" must be an object or an array")
        );
        assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":null}"#).is_ok());
        assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#).is_ok());
    }

    #[test]
    fn depth_limit_is_serde_jsons() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(serde_json::from_str::<serde_json::Value>(&nest(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nest(MAX_DEPTH + 1)).is_err());
        assert!(!too_deep(nest(MAX_DEPTH).as_bytes()));
        assert!(too_deep(nest(MAX_DEPTH + 1).as_bytes()));
        assert!(too_deep(nest(1_000_000).as_bytes()));
        // Brackets inside strings, escaped quotes included, do not count.
        let quoted = format!(r#"{{"a":"\"{}"}}"#, "[{".repeat(MAX_DEPTH));
        assert!(!too_deep(quoted.as_bytes()));
        let wrapped = |n: usize| format!(r#"{{"jsonrpc":"2.0","method":"x","params":{{"p":{}}}}}"#, nest(n - 2));
        assert!(Body::parse(&Bytes::from(wrapped(MAX_DEPTH))).is_ok());
        let err = Body::parse(&Bytes::from(wrapped(MAX_DEPTH + 1))).unwrap_err();
        assert_eq!(err.code(), code::PARSE_ERROR);
        let batch = format!("[{}]", wrapped(MAX_DEPTH));
        assert!(Body::parse(&Bytes::from(batch)).is_ok(), "the batch's own array does not count");
    }

    #[test]
    fn methods_read_the_same_however_they_are_escaped() {
        let method =
            |s: &str| parse(&format!(r#"{{"jsonrpc":"2.0","method":{s}}}"#)).map(|m| m.method().map(str::to_owned));
        assert_eq!(method(r#""tools/call""#), Ok(Some("tools/call".into())));
        assert_eq!(method(r#""tools\/c\u0061ll""#), Ok(Some("tools/call".into())));
        assert_eq!(method(r#""""#), Ok(Some(String::new())));
        assert!(method("1").is_err() && method("null").is_err() && method(r#"["x"]"#).is_err());
    }

    #[test]
    fn string_ids_match_however_they_are_escaped() {
        let id = |s: &str| parse(&format!(r#"{{"jsonrpc":"2.0","id":{s},"method":"x"}}"#)).unwrap().id.unwrap();
        assert_eq!(id(r#""\u0061\/b""#), id(r#""a/b""#));
        assert_eq!(id(r#""\u0061\/b""#).as_json(), r#""a/b""#);
        assert_eq!(id(r#""caf\u00e9""#).as_json(), r#""café""#);
        assert_eq!(id(r#""q\"\n""#).as_json(), r#""q\"\n""#);
        assert_ne!(id("1"), id(r#""1""#));
        assert_eq!(id("18446744073709551615").as_json(), "18446744073709551615");
        assert_eq!(id("-9223372036854775808").as_json(), "-9223372036854775808");
        assert_eq!(id("-0").as_json(), "-0");
        for bad in ["1.5", "1e3", "1E3", "18446744073709551616", "-9223372036854775809", "true"] {
            let msg = format!(r#"{{"jsonrpc":"2.0","id":{bad},"method":"x"}}"#);
            assert!(parse(&msg).is_err(), "id {bad} is refused");
        }
        assert!(parse(r#"{"jsonrpc":"2.0","id":"\ud800","method":"x"}"#).is_err());
    }

    #[test]
    fn keeps_raw_bytes_of_batch_items() {
        let body = Bytes::from_static(
            b"[ {\"jsonrpc\":\"2.0\",\"method\":\"a\"} ,\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"b\"}]",
        );
        let Body::Batch(v) = Body::parse(&body).unwrap() else { panic!("not a batch") };
        assert_eq!(&v[0].raw[..], b"{\"jsonrpc\":\"2.0\",\"method\":\"a\"}");
        assert_eq!(v[1].id.as_ref().unwrap().as_json(), "2");
    }

    #[test]
    fn error_response_escapes() {
        let b = error_response(Some(&Id::number(3)), -1, "a \"b\"\n");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "a \"b\"\n");
        assert_eq!(v["id"], 3);
    }

    #[test]
    fn single_line_replaces_breaks() {
        assert_eq!(&single_line(&Bytes::from_static(b"{\n\"a\":1\r\n}"))[..], b"{ \"a\":1  }");
    }
}
