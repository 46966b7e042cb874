//! Protocol revisions and the one decision "which era is this request".
//!
//! The session era (2024-11-05 … 2025-11-25) has `initialize` and sessions; the stateless
//! revision (2026-07-28) has neither. [`classify`] is the only place that tells them apart,
//! so serving the stateless revision later means changing this function and adding a handler.

use crate::jsonrpc::Message;

/// Session-era revisions this gateway serves, oldest first.
pub const SUPPORTED: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The version assumed when a request carries no `MCP-Protocol-Version` header and nothing
/// else tells (PROTOCOL.md rule 11).
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

/// The first stateless revision.
const STATELESS_FROM: &str = "2026-07-28";

/// Which family of MCP rules a request follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// `initialize`, `Mcp-Session-Id`, GET streams.
    Session,
    /// 2026-07-28 and later: no handshake, per-request `_meta` (not served yet).
    Stateless,
}

/// Decides the era of a POST from its version header and its first message.
pub fn classify(version_header: Option<&str>, first: &Message) -> Era {
    let stateless_header = version_header.is_some_and(|v| v >= STATELESS_FROM);
    let stateless_body =
        first.method() == Some("server/discover") || (first.is_request() && VERSION_IN_META.find(&first.raw).is_some());
    if stateless_header || stateless_body {
        Era::Stateless
    } else {
        Era::Session
    }
}

/// The `_meta` key only a stateless request carries, its searcher built once.
static VERSION_IN_META: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("io.modelcontextprotocol/protocolVersion"));

pub fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// Batches (JSON arrays) exist only in 2025-03-26.
pub fn allows_batch(version: &str) -> bool {
    version == "2025-03-26"
}

/// SEP-1699: priming events and early close with `retry:` only for 2025-11-25 and later.
pub fn wants_priming(version: &str) -> bool {
    version >= "2025-11-25"
}

/// The negotiated version and the raw `result` of a successful `initialize` response.
pub fn initialize_result(response: &[u8]) -> Option<(String, bytes::Bytes)> {
    // One pass when the reader is sure of both members; serde_json otherwise.
    let scanned = std::str::from_utf8(response).ok().and_then(|text| {
        let result = crate::jsonrpc::member(text, "result")??;
        let version = crate::jsonrpc::member(result, "protocolVersion")?;
        Some((version, result))
    });
    if let Some((version, result)) = scanned {
        let version = crate::jsonrpc::string_value(version?)?;
        return Some((version.into_owned(), bytes::Bytes::copy_from_slice(result.as_bytes())));
    }
    #[derive(serde::Deserialize)]
    struct Response<'a> {
        #[serde(borrow)]
        result: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Result {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
    }
    let r: Response<'_> = serde_json::from_slice(response).ok()?;
    let version = serde_json::from_str::<Result>(r.result.get()).ok()?.protocol_version;
    Some((version, bytes::Bytes::copy_from_slice(r.result.get().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &'static str) -> Message {
        Message::parse(&Bytes::from_static(s.as_bytes())).unwrap()
    }

    #[test]
    fn initialize_result_reads_the_version_and_keeps_the_result_text() {
        let read = |s: &str| initialize_result(s.as_bytes()).map(|(v, r)| (v, String::from_utf8(r.to_vec()).unwrap()));
        let result = r#"{"protocolVersion":"2025-06-18","capabilities":{"tools":{}}}"#;
        let answer = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
        assert_eq!(read(&answer), Some(("2025-06-18".into(), result.into())));
        // Escapes, read by the one pass or by serde_json: the same answers.
        assert_eq!(read(r#"{"id":1,"result":{"protocolVersion":"2025\/06"}}"#).unwrap().0, "2025/06");
        assert_eq!(read(r#"{"id":1,"result":{"protocolVersion":"2025-06-1\u0038"}}"#).unwrap().0, "2025-06-18");
        assert_eq!(read(r#"{"id":1,"result":{"protocol\u0056ersion":"2025-06-18"}}"#).unwrap().0, "2025-06-18");
        // No version, not a string, twice, no result, not JSON: none.
        assert_eq!(read(r#"{"id":1,"result":{"capabilities":{}}}"#), None);
        assert_eq!(read(r#"{"id":1,"result":{"protocolVersion":20250618}}"#), None);
        assert_eq!(read(r#"{"id":1,"result":{"protocolVersion":"a","protocolVersion":"b"}}"#), None);
        assert_eq!(read(r#"{"id":1,"error":{"code":1,"message":"no"}}"#), None);
        assert_eq!(read(r#"{"id":1,"result":{"protocolVersion":"2025-06-18"}"#), None);
    }

    #[test]
    fn classifies() {
        let init = msg(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
        assert_eq!(classify(None, &init), Era::Session);
        assert_eq!(classify(Some("2025-11-25"), &init), Era::Session);
        assert_eq!(classify(Some("2026-07-28"), &init), Era::Stateless);
        let probe = msg(r#"{"jsonrpc":"2.0","id":1,"method":"server/discover"}"#);
        assert_eq!(classify(None, &probe), Era::Stateless);
        let meta = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(classify(None, &meta), Era::Stateless);
    }

    #[test]
    fn version_rules() {
        assert!(allows_batch("2025-03-26") && !allows_batch("2025-06-18"));
        assert!(wants_priming("2025-11-25") && !wants_priming("2025-06-18"));
        assert!(is_supported("2024-11-05") && !is_supported("2026-07-28"));
    }
}
