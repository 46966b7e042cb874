//! Static API keys. Only their SHA-256 digests are held: a key from the environment is hashed
//! when read, a configured `sha256` is one already. A presented token is hashed and compared
//! with every digest in constant time, so neither timing nor a config dump gives a key away.

use std::sync::Arc;

use ring::digest::{digest, SHA256};

use super::{constant_time_eq, Principal};
use crate::config::ApiKeyConfig;

pub struct ApiKeys {
    entries: Vec<([u8; 32], Principal)>,
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Reads each key's digest; fails naming the first key whose variable is unset.
    pub fn new(config: &ApiKeyConfig) -> Result<ApiKeys, String> {
        let mut entries = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            let digest = match (&k.sha256, &k.env) {
                (Some(hex), _) => from_hex(hex).ok_or(format!("`keys[{i}].sha256` is not 64 hex digits"))?,
                (None, Some(var)) => match std::env::var(var) {
                    Ok(key) if !key.is_empty() => sha256(key.as_bytes()),
                    _ => return Err(format!("`keys[{i}].env`: the environment variable {var} is not set")),
                },
                (None, None) => return Err(format!("`keys[{i}]` has neither `sha256` nor `env`")),
            };
            entries.push((digest, Principal { name: Arc::from(k.principal.as_str()), scopes: k.scopes.clone() }));
        }
        Ok(ApiKeys { entries })
    }

    /// The principal of a presented key.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let presented = sha256(token.as_bytes());
        // Every digest is compared, so the time taken does not say which one matched.
        let mut found = None;
        for (digest, principal) in &self.entries {
            if constant_time_eq(digest, &presented) && found.is_none() {
                found = Some(principal);
            }
        }
        found.cloned().ok_or_else(|| "the API key is not valid".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyEntry;

    #[test]
    fn keys_match_by_digest() {
        let hex: String = sha256(b"s3cret").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0");
        let config = ApiKeyConfig {
            keys: vec![ApiKeyEntry { principal: "ci".into(), sha256: Some(hex), env: None, scopes: vec!["a".into()] }],
            required_scopes: vec![],
            authorization_servers: vec![],
        };
        let keys = ApiKeys::new(&config).unwrap();
        assert_eq!(&*keys.verify("s3cret").unwrap().name, "ci");
        assert!(keys.verify("s3cret ").is_err());
        assert!(keys.verify("").is_err());
    }

    #[test]
    fn an_unset_variable_is_named() {
        let config = ApiKeyConfig {
            keys: vec![ApiKeyEntry {
                principal: "x".into(),
                sha256: None,
                env: Some("MCP_EDGE_TEST_UNSET_KEY_VAR".into()),
                scopes: vec![],
            }],
            required_scopes: vec![],
            authorization_servers: vec![],
        };
        assert!(ApiKeys::new(&config).err().unwrap().contains("MCP_EDGE_TEST_UNSET_KEY_VAR"));
    }
}
