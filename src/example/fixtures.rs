//! What the example server offers: the conformance suite's fixture tools, resources and
//! prompts (`@modelcontextprotocol/conformance` server scenarios), plus `echo` and `sleep`.
//! Every optional field is omitted rather than `null`: strict clients drop messages with nulls.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Peer, RpcError};
use crate::jsonrpc::code;

/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A silent WAV.
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
/// The revision the example server prefers; it accepts any session-era revision a client asks for.
const LATEST: &str = "2025-11-25";

pub(super) async fn handle(peer: &Arc<Peer>, method: &str, params: Value) -> Result<Value, RpcError> {
    match method {
        "initialize" => initialize(peer, &params),
        "ping" | "logging/setLevel" | "resources/unsubscribe" => {
            if method == "logging/setLevel" {
                *peer.log_level.lock().expect("not poisoned") = params["level"].as_str().unwrap_or("info").into();
            }
            if method == "resources/unsubscribe" {
                peer.subscriptions.lock().expect("not poisoned").remove(params["uri"].as_str().unwrap_or(""));
            }
            Ok(json!({}))
        }
        "tools/list" => Ok(json!({ "tools": tools() })),
        "tools/call" => call_tool(peer, &params).await,
        "resources/list" => Ok(json!({ "resources": resources() })),
        "resources/templates/list" => Ok(json!({ "resourceTemplates": [{
            "uriTemplate": "test://template/{id}/data", "name": "template",
            "description": "A resource whose content names its id", "mimeType": "application/json"}]})),
        "resources/read" => read_resource(params["uri"].as_str().unwrap_or("")),
        "resources/subscribe" => {
            let uri = params["uri"].as_str().unwrap_or("").to_owned();
            peer.subscriptions.lock().expect("not poisoned").insert(uri.clone());
            if uri == "test://watched-resource" {
                peer.announce_update(uri, Duration::from_millis(100));
            }
            Ok(json!({}))
        }
        "prompts/list" => Ok(json!({ "prompts": prompts() })),
        "prompts/get" => get_prompt(&params),
        "completion/complete" => {
            let prefix = params["argument"]["value"].as_str().unwrap_or("");
            let values: Vec<&str> = ["paris", "park", "party"].into_iter().filter(|v| v.starts_with(prefix)).collect();
            Ok(json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }))
        }
        _ => Err(RpcError::new(code::METHOD_NOT_FOUND, format!("Method not found: {method}"))),
    }
}

fn initialize(peer: &Peer, params: &Value) -> Result<Value, RpcError> {
    let asked = params["protocolVersion"]
        .as_str()
        .ok_or_else(|| RpcError::invalid_params("initialize needs params.protocolVersion"))?;
    *peer.client_capabilities.lock().expect("not poisoned") = params["capabilities"].clone();
    let version = if crate::protocol::is_supported(asked) { asked } else { LATEST };
    Ok(json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "prompts": {"listChanged": true},
            "logging": {},
            "completions": {}
        },
        "serverInfo": {"name": "mcp-edge-example", "version": env!("CARGO_PKG_VERSION")}
    }))
}

fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({"name": name, "description": description,
           "inputSchema": {"type": "object", "properties": properties, "required": required}})
}

fn tools() -> Vec<Value> {
    let none = || json!({});
    vec![
        tool("echo", "Returns its `message` argument as text", json!({"message": {"type": "string"}}), &["message"]),
        tool(
            "blob",
            "Returns `bytes` bytes of text (at most 64 MiB): a large result for benchmarks",
            json!({"bytes": {"type": "integer", "minimum": 0}}),
            &["bytes"],
        ),
        tool(
            "sleep",
            "Waits `ms` milliseconds, then answers; with a progress token, reports progress every `progress_every_ms`",
            json!({"ms": {"type": "integer", "minimum": 0}, "progress_every_ms": {"type": "integer", "minimum": 1}}),
            &["ms"],
        ),
        tool("test_simple_text", "Returns simple text content", none(), &[]),
        tool("test_image_content", "Returns image content", none(), &[]),
        tool("test_audio_content", "Returns audio content", none(), &[]),
        tool("test_embedded_resource", "Returns an embedded resource", none(), &[]),
        tool("test_multiple_content_types", "Returns text, image and resource content", none(), &[]),
        tool("test_tool_with_logging", "Sends three log messages while it runs", none(), &[]),
        tool("test_error_handling", "Always returns a tool error", none(), &[]),
        tool("test_tool_with_progress", "Reports progress three times", none(), &[]),
        tool("test_sampling", "Asks the client to sample an LLM", json!({"prompt": {"type": "string"}}), &["prompt"]),
        tool("test_elicitation", "Asks the user for input", json!({"message": {"type": "string"}}), &["message"]),
        tool("test_elicitation_sep1034_defaults", "Elicits a form whose fields have defaults", none(), &[]),
        tool("test_elicitation_sep1330_enums", "Elicits every kind of enum field", none(), &[]),
        tool(
            "test_reconnection",
            "Answers after a pause long enough for a gateway to close the stream and the client to resume it (SEP-1699)",
            none(),
            &[],
        ),
        json!({"name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features",
               "inputSchema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                   "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                   "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                   "additionalProperties": false}}),
    ]
}

fn text(t: impl Into<String>) -> Value {
    json!({"type": "text", "text": t.into()})
}

fn content(items: Vec<Value>) -> Value {
    json!({ "content": items })
}

async fn call_tool(peer: &Peer, params: &Value) -> Result<Value, RpcError> {
    let name = params["name"].as_str().unwrap_or("");
    let args = &params["arguments"];
    let token = params["_meta"].get("progressToken").cloned();
    match name {
        "echo" => {
            let msg = args["message"].as_str().ok_or_else(|| RpcError::invalid_params("`message` must be a string"))?;
            Ok(content(vec![text(msg)]))
        }
        "blob" => {
            let n = args["bytes"].as_u64().ok_or_else(|| RpcError::invalid_params("`bytes` must be a whole number"))?;
            let n = usize::try_from(n).ok().filter(|n| *n <= 64 * 1024 * 1024).ok_or_else(|| RpcError::invalid_params("`bytes` is at most 64 MiB"))?;
            Ok(content(vec![text("x".repeat(n))]))
        }
        "sleep" => {
            let ms = args["ms"].as_u64().ok_or_else(|| RpcError::invalid_params("`ms` must be a whole number"))?;
            let every = args["progress_every_ms"].as_u64().filter(|e| *e > 0 && token.is_some());
            let start = tokio::time::Instant::now();
            let end = start + Duration::from_millis(ms);
            if let (Some(every), Some(t)) = (every, &token) {
                let mut tick = start + Duration::from_millis(every);
                while tick < end {
                    tokio::time::sleep_until(tick).await;
                    let done = tick.duration_since(start).as_millis() as u64;
                    peer.notify("notifications/progress", json!({"progressToken": t, "progress": done, "total": ms})).await;
                    tick += Duration::from_millis(every);
                }
            }
            tokio::time::sleep_until(end).await;
            Ok(content(vec![text(format!("slept {ms} ms"))]))
        }
        "test_simple_text" => Ok(content(vec![text("This is a simple text response for testing.")])),
        "test_image_content" => Ok(content(vec![json!({"type": "image", "data": PNG, "mimeType": "image/png"})])),
        "test_audio_content" => Ok(content(vec![json!({"type": "audio", "data": WAV, "mimeType": "audio/wav"})])),
        "test_embedded_resource" => Ok(content(vec![json!({"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}})])),
        "test_multiple_content_types" => Ok(content(vec![
            text("Multiple content types test:"),
            json!({"type": "image", "data": PNG, "mimeType": "image/png"}),
            json!({"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}),
        ])),
        "test_tool_with_logging" => {
            for (i, m) in ["Tool execution started", "Tool processing data", "Tool execution completed"].iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peer.notify("notifications/message", json!({"level": "info", "logger": "example", "data": m})).await;
            }
            Ok(content(vec![text("Tool with logging executed successfully")]))
        }
        "test_error_handling" => Ok(json!({"isError": true,
            "content": [text("This tool intentionally returns an error for testing")]})),
        "test_tool_with_progress" => {
            for (i, p) in [0, 50, 100].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some(t) = &token {
                    peer.notify("notifications/progress", json!({"progressToken": t, "progress": p, "total": 100,
                        "message": format!("Completed step {p} of 100")})).await;
                }
            }
            let t = token.map(|t| t.to_string()).unwrap_or_default();
            Ok(content(vec![text(t.trim_matches('"').to_owned())]))
        }
        "test_sampling" => {
            let prompt = args["prompt"].as_str().unwrap_or("");
            let answer = peer
                .request("sampling/createMessage", json!({"messages": [{"role": "user",
                    "content": {"type": "text", "text": prompt}}], "maxTokens": 100}))
                .await?;
            let said = answer["content"]["text"].as_str().unwrap_or("").to_owned();
            Ok(content(vec![text(format!("LLM response: {said}"))]))
        }
        "test_elicitation" => {
            let message = args["message"].as_str().unwrap_or("Please provide your information");
            let answer = peer
                .request("elicitation/create", json!({"message": message, "requestedSchema": {"type": "object",
                    "properties": {"username": {"type": "string", "description": "User's response"},
                                   "email": {"type": "string", "description": "User's email address"}},
                    "required": ["username", "email"]}}))
                .await?;
            Ok(content(vec![text(format!("User response: action={}, content={}", answer["action"].as_str().unwrap_or(""), answer["content"]))]))
        }
        "test_elicitation_sep1034_defaults" => elicit(peer, json!({"mode": "form",
            "message": "Please review and update the form fields with defaults",
            "requestedSchema": {"type": "object", "required": [], "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "description": "Verification status", "default": true}}}})).await,
        "test_elicitation_sep1330_enums" => elicit(peer, json!({"mode": "form",
            "message": "Please pick from each kind of list",
            "requestedSchema": {"type": "object", "required": [], "properties": {
                "untitledSingle": {"type": "string", "description": "Untitled single select", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {"type": "string", "description": "Titled single select", "oneOf": [
                    {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}]},
                "legacyEnum": {"type": "string", "description": "Legacy titled enum", "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"]},
                "untitledMulti": {"type": "array", "description": "Untitled multi select", "minItems": 1, "maxItems": 3,
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                "titledMulti": {"type": "array", "description": "Titled multi select", "minItems": 1, "maxItems": 3,
                    "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"}, {"const": "value3", "title": "Third Choice"}]}}}}})).await,
        "test_reconnection" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(content(vec![text("Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.")]))
        }
        "json_schema_2020_12_tool" => Ok(content(vec![text(format!("Received: {args}"))])),
        _ => Err(RpcError::invalid_params(format!("Unknown tool: {name}"))),
    }
}

async fn elicit(peer: &Peer, request: Value) -> Result<Value, RpcError> {
    let answer = peer.request("elicitation/create", request).await?;
    Ok(content(vec![text(format!(
        "Elicitation completed: action={}, content={}",
        answer["action"].as_str().unwrap_or(""),
        answer.get("content").cloned().unwrap_or(json!({}))
    ))]))
}

fn resources() -> Vec<Value> {
    vec![
        json!({"uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain"}),
        json!({"uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource", "mimeType": "image/png"}),
        json!({"uri": "test://watched-resource", "name": "watched-resource", "description": "A resource one can subscribe to", "mimeType": "text/plain"}),
    ]
}

fn read_resource(uri: &str) -> Result<Value, RpcError> {
    let one = |c: Value| Ok(json!({ "contents": [c] }));
    match uri {
        "test://static-text" => one(
            json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."}),
        ),
        "test://static-binary" => one(json!({"uri": uri, "mimeType": "image/png", "blob": PNG})),
        "test://watched-resource" => {
            one(json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"}))
        }
        _ => {
            let id = uri.strip_prefix("test://template/").and_then(|r| r.strip_suffix("/data"));
            match id {
                Some(id) if !id.is_empty() && !id.contains('/') => {
                    let body = json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
                    one(json!({"uri": uri, "mimeType": "application/json", "text": body.to_string()}))
                }
                _ => Err(RpcError::new(-32002, format!("Resource not found: {uri}"))),
            }
        }
    }
}

fn prompts() -> Vec<Value> {
    vec![
        json!({"name": "test_simple_prompt", "description": "A prompt without arguments"}),
        json!({"name": "test_prompt_with_arguments", "description": "A prompt with two arguments",
               "arguments": [{"name": "arg1", "description": "First argument", "required": true},
                             {"name": "arg2", "description": "Second argument", "required": true}]}),
        json!({"name": "test_prompt_with_embedded_resource", "description": "A prompt that embeds a resource",
               "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]}),
        json!({"name": "test_prompt_with_image", "description": "A prompt with an image"}),
    ]
}

fn get_prompt(params: &Value) -> Result<Value, RpcError> {
    let args = &params["arguments"];
    let user = |c: Value| json!({"role": "user", "content": c});
    let messages = match params["name"].as_str().unwrap_or("") {
        "test_simple_prompt" => vec![user(text("This is a simple prompt for testing."))],
        "test_prompt_with_arguments" => {
            let (a1, a2) = (args["arg1"].as_str().unwrap_or(""), args["arg2"].as_str().unwrap_or(""));
            vec![user(text(format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'")))]
        }
        "test_prompt_with_embedded_resource" => {
            let uri = args["resourceUri"].as_str().unwrap_or("test://example-resource");
            vec![
                user(json!({"type": "resource", "resource": {"uri": uri, "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}})),
                user(text("Please process the embedded resource above.")),
            ]
        }
        "test_prompt_with_image" => vec![
            user(json!({"type": "image", "data": PNG, "mimeType": "image/png"})),
            user(text("Please analyze the image above.")),
        ],
        other => return Err(RpcError::invalid_params(format!("Unknown prompt: {other}"))),
    };
    Ok(json!({ "messages": messages }))
}
