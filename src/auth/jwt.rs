//! JWT validation against a JWKS: the signature (RS256, ES256, EdDSA only, as configured),
//! `iss`, `aud` equal to the route's public URL (never derived from the request), `exp` and
//! `nbf` with a small leeway. Keys come from a file or a URL; both are re-read every
//! `jwks_refresh`, and a token naming an unknown key id makes a URL be fetched again at once
//! (at most every [`REFETCH_AFTER`]), so a key rotation needs no restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::time::Instant;

use super::Principal;
use crate::backend::upstream::{Connections, Outgoing};
use crate::config::JwtConfig;

/// Shortest time between two fetches of a JWKS URL caused by unknown key ids.
pub const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Longest wait for a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a verified token is taken without checking it again (it also expires with `exp`).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Verified tokens remembered at most; beyond, the expired ones go, then all.
const VERIFIED_MAX: usize = 10_000;
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

enum Source {
    File(PathBuf),
    Url { url: Uri, connections: Arc<Connections> },
}

struct Shared {
    source: Source,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the keys were last fetched (successfully or not); serializes fetches.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

pub struct JwtVerifier {
    shared: Arc<Shared>,
    /// Tokens that verified, by their SHA-256, with when to check them again: a client sends
    /// its token with every request, and a signature check costs far more than a hash.
    verified: dashmap::DashMap<[u8; 32], (Principal, std::time::Instant)>,
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    algorithms: Vec<Algorithm>,
    principal_claim: String,
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The usable keys of a JWKS document; keys of other types, curves or uses are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or("the JWKS has no `keys` array")?;
    let mut keys = Vec::new();
    for item in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else { continue };
        if item.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            continue;
        }
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            _ => continue,
        };
        let declared = item.get("alg").and_then(Value::as_str);
        if declared.is_some_and(|a| algorithm(a) != Some(by_type)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        keys.push(Key { kid: jwk.common.key_id.clone(), alg: by_type, key });
    }
    Ok(keys)
}

impl Shared {
    async fn load(&self) -> Result<Vec<Key>, String> {
        let bytes = match &self.source {
            Source::File(path) => {
                tokio::fs::read(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?.into()
            }
            Source::Url { url, connections } => {
                let req = Outgoing::new(http::Method::GET, url.clone(), "application/json", None);
                let fetch = async {
                    let resp = connections.send(&req).await.map_err(|e| format!("cannot fetch the JWKS: {e}"))?;
                    if !resp.status().is_success() {
                        return Err(format!("the JWKS URL answered {}", resp.status()));
                    }
                    crate::backend::upstream::read_body(resp.into_body(), MAX_JWKS_BYTES).await
                };
                tokio::time::timeout(FETCH_TIMEOUT, fetch).await.map_err(|_| "the JWKS URL timed out".to_string())??
            }
        };
        parse_jwks(&bytes)
    }

    /// Loads the keys again, unless another caller did so within `min_age` (then waits for
    /// that one). Keeps the old keys when loading fails.
    async fn refresh(&self, min_age: Duration) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|t| t.elapsed() < min_age) {
            return;
        }
        *fetched = Some(Instant::now());
        match self.load().await {
            Ok(keys) => *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys),
            Err(why) => tracing::warn!("Refreshing the JWT keys failed; keeping the previous ones: {why}."),
        }
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Re-reads the keys every `every` while the verifier lives.
async fn refresher(shared: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else { return };
        shared.refresh(Duration::ZERO).await;
    }
}

impl JwtVerifier {
    /// A file must parse now; a URL is fetched in the background (tokens fail until it is).
    pub fn new(config: &JwtConfig, public_url: &str) -> Result<JwtVerifier, String> {
        let (source, keys) = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                (Source::File(path.clone()), parse_jwks(&bytes)?)
            }
            (None, Some(url)) => {
                let url: Uri = url.parse().map_err(|e| format!("`jwks_url`: {e}"))?;
                // Not exported: a JWKS fetch holds a connection for moments, not for sessions.
                let open = prometheus::IntGauge::new("jwks_connections", "Open connections to the JWKS URL.")
                    .expect("a valid gauge");
                let connections =
                    crate::backend::upstream::connections(&Default::default(), &url, FETCH_TIMEOUT, false, open)?;
                (Source::Url { url, connections }, Vec::new())
            }
            (None, None) => return Err("set `jwks_file` or `jwks_url`".into()),
        };
        let from_url = matches!(source, Source::Url { .. });
        let shared = Arc::new(Shared {
            source,
            keys: RwLock::new(Arc::new(keys)),
            fetched: tokio::sync::Mutex::new((!from_url).then(Instant::now)),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            if from_url {
                let first = shared.clone();
                rt.spawn(async move { first.refresh(Duration::ZERO).await });
            }
            rt.spawn(refresher(Arc::downgrade(&shared), config.jwks_refresh));
        }
        let url = public_url.to_owned();
        let audiences = match url.strip_suffix('/') {
            Some(bare) => vec![url.clone(), bare.to_owned()],
            None => vec![format!("{url}/"), url],
        };
        Ok(JwtVerifier {
            shared,
            verified: dashmap::DashMap::new(),
            issuer: config.issuer.clone(),
            audiences,
            leeway: config.leeway,
            algorithms: config.algorithms.iter().filter_map(|a| algorithm(a)).collect(),
            principal_claim: config.principal_claim.clone(),
        })
    }

    /// The principal of a valid token, or why it is not valid (safe to show the client: it
    /// never quotes the token).
    pub async fn verify(&self, token: &str) -> Result<Principal, String> {
        let digest = super::keys::sha256(token.as_bytes());
        let now = std::time::Instant::now();
        if let Some(hit) = self.verified.get(&digest).filter(|e| e.1 > now) {
            return Ok(hit.0.clone());
        }
        let (principal, exp) = self.check(token).await?;
        let left = exp.saturating_sub(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs());
        if self.verified.len() >= VERIFIED_MAX {
            self.verified.retain(|_, e| e.1 > now);
            if self.verified.len() >= VERIFIED_MAX {
                self.verified.clear();
            }
        }
        self.verified.insert(digest, (principal.clone(), now + VERIFIED_FOR.min(Duration::from_secs(left))));
        Ok(principal)
    }

    /// Checks a token in full; its principal and `exp`.
    async fn check(&self, token: &str) -> Result<(Principal, u64), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is not a JWT".to_string())?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("the token's algorithm {:?} is not accepted", header.alg));
        }
        let mut keys = self.shared.keys();
        if !has_key(&keys, header.kid.as_deref(), header.alg) {
            self.shared.refresh(REFETCH_AFTER).await;
            keys = self.shared.keys();
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let candidates = keys.iter().filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid));
        let mut why = "no key of the JWKS matches the token".to_string();
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    return self.principal(&data.claims).map(|p| (p, exp));
                }
                Err(e) => {
                    why = reason(e.kind());
                    if !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(why)
    }

    fn principal(&self, claims: &Value) -> Result<Principal, String> {
        let name = claims
            .get(&self.principal_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the token has no `{}` claim", self.principal_claim))?;
        let mut scopes: Vec<String> = Vec::new();
        if let Some(s) = claims.get("scope").and_then(Value::as_str) {
            scopes.extend(s.split_whitespace().map(String::from));
        }
        match claims.get("scp") {
            Some(Value::Array(a)) => scopes.extend(a.iter().filter_map(Value::as_str).map(String::from)),
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(String::from)),
            _ => {}
        }
        Ok(Principal { name: Arc::from(name), scopes })
    }
}

fn has_key(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> bool {
    keys.iter().any(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    match kind {
        ExpiredSignature => "the token has expired".into(),
        ImmatureSignature => "the token is not valid yet (nbf)".into(),
        InvalidAudience => "the token's audience is not this resource".into(),
        InvalidIssuer => "the token's issuer is not accepted".into(),
        InvalidSignature => "the token's signature does not verify".into(),
        MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
        InvalidAlgorithm => "the token's algorithm does not fit its key".into(),
        _ => "the token is malformed".into(),
    }
}
