//! Configuration of who may use a route: authentication (`routes[].auth`), per-principal
//! limits (`[principals]`), allow-lists (`routes[].allow`) and TLS termination (`tls`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, Invalid};

/// How a route authenticates its clients; absent means no authentication (the loopback
/// default). Both kinds read a bearer token from `Authorization: Bearer …` or, on a WebSocket
/// upgrade, from an offered subprotocol `mcp.auth.<token>`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthConfig {
    /// Static API keys (bearer tokens), each naming its principal.
    ApiKey(ApiKeyConfig),
    /// JSON Web Tokens signed by an authorization server (RS256, ES256, EdDSA).
    Jwt(JwtConfig),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub keys: Vec<ApiKeyEntry>,
    /// Scopes every request must hold (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Named in the route's protected-resource metadata (RFC 9728).
    #[serde(default)]
    pub authorization_servers: Vec<String>,
}

/// One API key: its SHA-256 (hex) or the environment variable holding the key itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Who the key stands for: sessions are bound to it, limits are counted per it.
    pub principal: String,
    /// Lowercase hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Environment variable of the gateway holding the key, read at start and on reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The required `iss` claim.
    pub issuer: String,
    /// A JWKS document on disk, re-read every `jwks_refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start, every `jwks_refresh`, and (at most every 30 s) when a
    /// token names an unknown key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Signature algorithms accepted; anything else (and `none`) is refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Scopes every request must hold (403 `insufficient_scope` otherwise); read from the
    /// `scope` claim (space-separated) or `scp` (a list).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The claim naming the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Named in the route's protected-resource metadata; default: `[issuer]`.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}
fn default_principal_claim() -> String {
    "sub".into()
}

/// The algorithms `algorithms` may name.
pub const JWT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

impl AuthConfig {
    pub fn required_scopes(&self) -> &[String] {
        match self {
            AuthConfig::ApiKey(k) => &k.required_scopes,
            AuthConfig::Jwt(j) => &j.required_scopes,
        }
    }

    pub fn authorization_servers(&self) -> Vec<String> {
        match self {
            AuthConfig::ApiKey(k) => k.authorization_servers.clone(),
            AuthConfig::Jwt(j) if j.authorization_servers.is_empty() => vec![j.issuer.clone()],
            AuthConfig::Jwt(j) => j.authorization_servers.clone(),
        }
    }

    pub(super) fn validate(&self, at: &str) -> Result<(), Invalid> {
        let key = |k: &str| format!("{at}.{k}");
        match self {
            AuthConfig::ApiKey(k) => {
                if k.keys.is_empty() {
                    return Err(invalid(key("keys"), "at least one key is needed"));
                }
                for (i, e) in k.keys.iter().enumerate() {
                    let at = key(&format!("keys[{i}]"));
                    if e.principal.is_empty() {
                        return Err(invalid(format!("{at}.principal"), "must not be empty"));
                    }
                    match (&e.sha256, &e.env) {
                        (Some(h), None) => {
                            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return Err(invalid(format!("{at}.sha256"), "must be 64 hex digits"));
                            }
                        }
                        (None, Some(v)) if !v.is_empty() => {}
                        _ => return Err(invalid(at, "set exactly one of `sha256` and `env`")),
                    }
                }
            }
            AuthConfig::Jwt(j) => {
                if j.issuer.is_empty() {
                    return Err(invalid(key("issuer"), "must not be empty"));
                }
                match (&j.jwks_file, &j.jwks_url) {
                    (Some(p), None) if !p.is_file() => {
                        return Err(invalid(key("jwks_file"), format!("no readable file at {}", p.display())))
                    }
                    (Some(_), None) => {}
                    (None, Some(u)) => {
                        let uri: http::Uri =
                            u.parse().map_err(|e| invalid(key("jwks_url"), format!("not a URL: {e}")))?;
                        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                            return Err(invalid(key("jwks_url"), "must be an http:// or https:// URL"));
                        }
                    }
                    _ => return Err(invalid(at, "set exactly one of `jwks_file` and `jwks_url`")),
                }
                if j.algorithms.is_empty() {
                    return Err(invalid(key("algorithms"), "at least one algorithm is needed"));
                }
                if let Some(a) = j.algorithms.iter().find(|a| !JWT_ALGORITHMS.contains(&a.as_str())) {
                    return Err(invalid(key("algorithms"), format!("`{a}` is not one of RS256, ES256, EdDSA")));
                }
                if j.jwks_refresh < Duration::from_secs(1) {
                    return Err(invalid(key("jwks_refresh"), "must be at least 1s"));
                }
                if j.principal_claim.is_empty() {
                    return Err(invalid(key("principal_claim"), "must not be empty"));
                }
            }
        }
        Ok(())
    }
}

/// What callers may use on a route. When a route has rules, a caller may use only what the
/// rules that match it (by principal or by one of its scopes) allow; a list left out of a
/// rule allows everything of its kind. Names may end in `*` (a prefix match).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "everything")]
    pub tools: Vec<String>,
    /// Resource URIs (and URI templates' `uriTemplate`).
    #[serde(default = "everything")]
    pub resources: Vec<String>,
    #[serde(default = "everything")]
    pub prompts: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

impl AllowRule {
    pub(super) fn validate(&self, at: &str) -> Result<(), Invalid> {
        if self.principals.is_empty() && self.scopes.is_empty() {
            return Err(invalid(at, "a rule names at least one principal or scope"));
        }
        Ok(())
    }
}

/// Limits counted per authenticated principal, across its sessions and transports. Callers
/// of routes without `auth` are not counted here (the route and instance caps apply).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrincipalLimits {
    /// Live sessions one principal may hold; `initialize` beyond it gets 429.
    pub max_sessions: usize,
    /// Sustained JSON-RPC requests per second per principal (a token bucket); 0 = unlimited.
    pub requests_per_second: f64,
    /// Requests a principal may send at once above the sustained rate.
    pub burst: u32,
}

impl Default for PrincipalLimits {
    fn default() -> Self {
        PrincipalLimits { max_sessions: 100, requests_per_second: 100.0, burst: 200 }
    }
}

impl PrincipalLimits {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.max_sessions == 0 {
            return Err(invalid("principals.max_sessions", "must be greater than 0"));
        }
        if !self.requests_per_second.is_finite() || self.requests_per_second < 0.0 {
            return Err(invalid("principals.requests_per_second", "must be 0 (unlimited) or a positive number"));
        }
        if self.requests_per_second > 0.0 && self.burst == 0 {
            return Err(invalid("principals.burst", "must be at least 1 when requests_per_second is set"));
        }
        Ok(())
    }
}

/// TLS termination on a listener: a PEM certificate chain and its PEM private key, re-read on
/// SIGHUP (connections already open keep their handshake).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsServerConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (k, p) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if !p.is_file() {
                return Err(invalid(format!("{at}.{k}"), format!("no readable file at {}", p.display())));
            }
        }
        Ok(())
    }
}
