//! Placeholder until the conformance fixtures are filled in.
use super::{Peer, RpcError};
use serde_json::{json, Value};

pub(super) async fn handle(_peer: &Peer, method: &str, _params: Value) -> Result<Value, RpcError> {
    match method {
        "ping" => Ok(json!({})),
        _ => Err(RpcError::new(
            crate::jsonrpc::code::METHOD_NOT_FOUND,
            format!("unknown method {method}"),
        )),
    }
}
