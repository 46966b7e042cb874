//! Who is calling: the gateway as an OAuth 2.1 resource server for its routes.
//!
//! A route with `auth` takes a bearer token from `Authorization: Bearer …` or, on a WebSocket
//! upgrade, from an offered subprotocol `mcp.auth.<token>` (browsers cannot set headers), and
//! turns it into a [`Principal`]: by a static API key ([`keys`]) or a JWT ([`jwt`]). Refusals
//! are 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728) or 403
//! `insufficient_scope`. The token itself goes nowhere: not upstream, not into logs, not into
//! metrics. What a principal may use once in is [`policy`].

pub mod jwt;
pub mod keys;
pub mod policy;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use crate::config::{AuthConfig, RouteConfig};
use crate::error::GatewayError;

/// The path prefix of RFC 9728 protected-resource metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// An offered WebSocket subprotocol `mcp.auth.<token>` carries a bearer token.
pub const WS_TOKEN_PREFIX: &str = "mcp.auth.";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The API key's `principal`, or the JWT's principal claim: sessions are bound to it.
    pub name: Arc<str>,
    pub scopes: Vec<String>,
}

/// Who made a request: a principal on routes with `auth`, nobody in particular otherwise,
/// and what the route lets it use. Every request on a route is handed one (`frontend::Context`).
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Arc<Principal>>, pub Option<Arc<policy::Grants>>);

impl Caller {
    /// What the caller may use; `None` when the route restricts nothing.
    pub fn grants(&self) -> Option<&policy::Grants> {
        self.1.as_deref()
    }

    /// The principal's name: what sessions are bound to and per-principal limits count by.
    pub fn name(&self) -> Option<&Arc<str>> {
        self.0.as_ref().map(|p| &p.name)
    }

    pub fn scopes(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |p| &p.scopes)
    }
}

/// Checks a presented token.
enum Verifier {
    Keys(keys::ApiKeys),
    Jwt(jwt::JwtVerifier),
}

/// A route's authentication: how tokens are checked, what the refusals say, what the
/// metadata document holds, and what each principal may use.
pub struct RouteAuth {
    config: AuthConfig,
    verifier: Verifier,
    /// `resource` of the metadata and the audience of tokens.
    public_url: String,
    /// Where the metadata is served, as named in `WWW-Authenticate`.
    metadata_url: String,
    metadata: Bytes,
    pub policy: policy::Policy,
}

impl std::fmt::Debug for RouteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteAuth").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

impl RouteAuth {
    /// The authentication of `route`, or `None` when it has none. Fails when a key's
    /// environment variable is unset or a JWKS file does not parse.
    pub fn new(route: &RouteConfig) -> Result<Option<Arc<RouteAuth>>, String> {
        let Some(config) = &route.auth else { return Ok(None) };
        let public_url = route.public_url.clone().ok_or("`public_url` is required with `auth`")?;
        let verifier = match config {
            AuthConfig::ApiKey(k) => Verifier::Keys(keys::ApiKeys::new(k)?),
            AuthConfig::Jwt(j) => Verifier::Jwt(jwt::JwtVerifier::new(j, &public_url)?),
        };
        let metadata_url = metadata_url(&public_url);
        let metadata = serde_json::json!({
            "resource": public_url,
            "authorization_servers": config.authorization_servers(),
            "scopes_supported": config.required_scopes(),
            "bearer_methods_supported": ["header"],
        });
        Ok(Some(Arc::new(RouteAuth {
            config: config.clone(),
            verifier,
            public_url,
            metadata_url,
            metadata: Bytes::from(metadata.to_string()),
            policy: policy::Policy::new(&route.allow),
        })))
    }

    /// Whether this was built from exactly `route`'s settings (kept across a reload, with its
    /// cached keys).
    pub fn same_as(&self, route: &RouteConfig) -> bool {
        route.auth.as_ref() == Some(&self.config)
            && route.public_url.as_deref() == Some(self.public_url.as_str())
            && self.policy.rules() == route.allow.as_slice()
    }

    /// The RFC 9728 metadata document.
    pub fn metadata(&self) -> Bytes {
        self.metadata.clone()
    }

    /// The path part of [`metadata_url`], where this route's metadata is served.
    pub fn metadata_path(&self) -> &str {
        let rest = self.metadata_url.split_once("://").map_or("", |(_, r)| r);
        rest.find('/').map_or("/", |i| &rest[i..])
    }

    /// The caller a request's token names, or the 401/403 that refuses it.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let Some(token) = bearer_token(headers) else {
            return Err(self.unauthorized(None, "no bearer token"));
        };
        let principal = match &self.verifier {
            Verifier::Keys(k) => k.verify(token),
            Verifier::Jwt(j) => j.verify(token).await,
        }
        .map_err(|why| self.unauthorized(Some("invalid_token"), &why))?;
        let needed = self.config.required_scopes();
        let missing: Vec<&String> = needed.iter().filter(|s| !principal.scopes.contains(s)).collect();
        if !missing.is_empty() {
            return Err(GatewayError::InsufficientScope {
                challenge: format!(
                    r#"Bearer error="insufficient_scope", scope="{}", resource_metadata="{}""#,
                    needed.join(" "),
                    self.metadata_url
                ),
                needed: needed.join(" "),
            });
        }
        let mut caller = Caller(Some(Arc::new(principal)), None);
        caller.1 = self.policy.grants(&caller);
        Ok(caller)
    }

    fn unauthorized(&self, error: Option<&str>, why: &str) -> GatewayError {
        let challenge = match error {
            Some(e) => format!(
                r#"Bearer error="{e}", error_description="{}", resource_metadata="{}""#,
                why.replace(['"', '\\'], "'"),
                self.metadata_url
            ),
            None => format!(r#"Bearer resource_metadata="{}""#, self.metadata_url),
        };
        GatewayError::Unauthorized { challenge, why: why.to_owned() }
    }
}

/// `https://host/.well-known/oauth-protected-resource/<path>` for a public URL (RFC 9728
/// §3.1: the well-known segment goes between the host and the path).
fn metadata_url(public_url: &str) -> String {
    let (scheme, rest) = public_url.split_once("://").unwrap_or(("https", public_url));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    format!("{scheme}://{authority}{METADATA_PATH}{}", path.trim_end_matches('/'))
}

/// The bearer token of a request: `Authorization: Bearer …`, else an offered WebSocket
/// subprotocol `mcp.auth.<token>`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let from_header = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    });
    from_header.or_else(|| {
        headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(WS_TOKEN_PREFIX))
            .filter(|t| !t.is_empty())
    })
}

/// Compares two byte strings in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_segment() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example.com:8443/"),
            "https://mcp.example.com:8443/.well-known/oauth-protected-resource"
        );
        assert_eq!(metadata_url("http://h"), "http://h/.well-known/oauth-protected-resource");
    }

    #[test]
    fn tokens_come_from_the_header_or_the_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert("sec-websocket-protocol", "mcp, mcp.auth.abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "bearer xyz".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
