//! Authentication on a route: API keys and JWTs on HTTP and WebSocket, the RFC 9728 metadata
//! and challenges, sessions bound to their principal, allow-lists.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_edge::config::{AllowRule, ApiKeyConfig, ApiKeyEntry, AuthConfig, Config, JwtConfig};
use serde_json::{json, Value};

use crate::common::ws::{refusal, try_connect, ws_url};
use crate::common::{default_config, eventually_async, Client, TestGateway};

const PUBLIC_URL: &str = "https://mcp.test/mcp";
const METADATA_URL: &str = "https://mcp.test/.well-known/oauth-protected-resource/mcp";
const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-9876543210";

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn key(principal: &str, key: &str, scopes: &[&str]) -> ApiKeyEntry {
    ApiKeyEntry {
        principal: principal.into(),
        sha256: Some(sha256_hex(key)),
        env: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

/// The default route with API keys for alice and bob (bob holds the scope `admin`).
pub fn keyed_config() -> Config {
    let mut c = default_config();
    c.routes[0].public_url = Some(PUBLIC_URL.into());
    c.routes[0].auth = Some(AuthConfig::ApiKey(ApiKeyConfig {
        keys: vec![key("alice", ALICE, &[]), key("bob", BOB, &["admin"])],
        required_scopes: vec![],
        authorization_servers: vec!["https://auth.test".into()],
    }));
    c
}

pub fn alice(gw: &TestGateway) -> Client {
    gw.client().bearer(ALICE)
}

pub fn bob(gw: &TestGateway) -> Client {
    gw.client().bearer(BOB)
}

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
}

fn challenge(resp: &crate::common::Response) -> String {
    resp.headers.get("www-authenticate").expect("a challenge").to_str().unwrap().to_owned()
}

#[tokio::test]
async fn api_keys_admit_only_their_holders() {
    let gw = TestGateway::start(keyed_config()).await;
    let none = gw.client().post(&init_body()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&none), format!(r#"Bearer resource_metadata="{METADATA_URL}""#));
    assert_eq!(none.json().await["error"]["code"], -32008);

    let wrong = gw.client().bearer("not-a-key").post(&init_body()).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let c = challenge(&wrong);
    assert!(c.contains(r#"error="invalid_token""#) && c.contains(METADATA_URL), "{c}");

    let basic = gw.client().post_with(&init_body(), &[("authorization", &format!("Basic {ALICE}"))]).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "only bearer tokens count");

    let mut a = alice(&gw);
    a.initialize("2025-06-18").await;
    let echoed = a.call_tool("echo", json!({"message": "hi"})).await;
    assert_eq!(echoed["result"]["content"][0]["text"], "hi");
    // Every request needs the token, not only initialize.
    let mut anonymous = gw.client();
    anonymous.session = a.session.clone();
    let r = anonymous.post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metadata_is_served_at_the_well_known_paths() {
    let gw = TestGateway::start(keyed_config()).await;
    let base = gw.url.trim_end_matches("/mcp");
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let r = Client::new(&format!("{base}{path}")).raw(Method::GET, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let doc = r.json().await;
        assert_eq!(doc["resource"], PUBLIC_URL);
        assert_eq!(doc["authorization_servers"], json!(["https://auth.test"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    let other =
        Client::new(&format!("{base}/.well-known/oauth-protected-resource/other")).raw(Method::GET, &[], "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_session_is_bound_to_its_principal_on_every_transport() {
    let gw = TestGateway::start(keyed_config()).await;
    let mut a = alice(&gw);
    a.initialize("2025-06-18").await;
    let mut b = bob(&gw);
    b.session = a.session.clone();
    let r = b.post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another principal's session is unknown");
    assert_eq!(b.get_stream(&[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(b.delete().await.status, StatusCode::NOT_FOUND);
    // The WebSocket upgrade naming the session.
    let sid = a.session.clone().unwrap();
    let url = ws_url(&gw.url, &format!("session={sid}"));
    let err = try_connect(&url, &["mcp", &format!("mcp.auth.{BOB}")], &[]).await.err().expect("refused");
    assert_eq!(refusal(err).0, 404);
    // The owner's session is untouched.
    assert_eq!(
        a.call_tool("echo", json!({"message": "still mine"})).await["result"]["content"][0]["text"],
        "still mine"
    );
}

#[tokio::test]
async fn websocket_takes_the_token_from_the_subprotocol_or_the_header() {
    let gw = TestGateway::start(keyed_config()).await;
    let url = ws_url(&gw.url, "");
    let mut ws = try_connect(&url, &["mcp", &format!("mcp.auth.{ALICE}")], &[]).await.expect("opens");
    assert_eq!(ws.protocol.as_deref(), Some("mcp"), "only `mcp` is echoed, never the token");
    ws.initialize(None).await;
    let (r, _) = ws.request("tools/call", json!({"name": "echo", "arguments": {"message": "ws"}})).await;
    assert_eq!(r["result"]["content"][0]["text"], "ws");

    let bearer = format!("Bearer {BOB}");
    let mut ws = try_connect(&url, &["mcp"], &[("authorization", &bearer)]).await.expect("opens with the header");
    ws.initialize(None).await;

    for protocols in [vec!["mcp".to_string()], vec!["mcp".into(), "mcp.auth.wrong".into()]] {
        let offered: Vec<&str> = protocols.iter().map(String::as_str).collect();
        let err = try_connect(&url, &offered, &[]).await.err().expect("refused before the upgrade");
        let (status, body) = refusal(err);
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains("wrong"), "the token is not echoed: {body}");
    }
}

#[tokio::test]
async fn allow_lists_hide_and_deny() {
    let mut c = keyed_config();
    c.routes[0].allow = vec![
        AllowRule {
            principals: vec!["alice".into()],
            scopes: vec![],
            tools: vec!["echo".into()],
            resources: vec![],
            prompts: vec!["*".into()],
        },
        AllowRule {
            principals: vec![],
            scopes: vec!["admin".into()],
            tools: vec!["*".into()],
            resources: vec!["*".into()],
            prompts: vec!["*".into()],
        },
    ];
    let gw = TestGateway::start(c).await;
    let mut a = alice(&gw);
    a.initialize("2025-06-18").await;
    let tools = a.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo"]);
    let denied = a.call_tool("test_simple_text", json!({})).await;
    assert_eq!(denied["error"]["code"], -32009, "{denied}");
    assert!(denied["error"]["message"].as_str().unwrap().contains("`test_simple_text`"));
    let resources = a.request("resources/list", json!({})).await;
    assert_eq!(resources["result"]["resources"], json!([]), "alice may read no resource");
    assert_eq!(a.call_tool("echo", json!({"message": "ok"})).await["result"]["content"][0]["text"], "ok");

    let mut b = bob(&gw);
    b.initialize("2025-06-18").await;
    let all = b.request("tools/list", json!({})).await;
    assert!(all["result"]["tools"].as_array().unwrap().len() > 1, "the admin scope sees every tool");
    let text = b.call_tool("test_simple_text", json!({})).await;
    assert_eq!(text["result"]["content"][0]["text"], "This is a simple text response for testing.");
}

// ---- JWT ----

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A signing key and the JWK of its public half.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
}

impl Signer {
    pub fn es256(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])}),
        }
    }

    pub fn ed25519(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(pair.public_key_raw())}),
        }
    }

    /// An RSA key made by the `openssl` command (ring cannot generate RSA keys).
    pub fn rs256(kid: &str, dir: &std::path::Path) -> Signer {
        let pem = dir.join(format!("{kid}.pem"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        run(&["genrsa", "-traditional", "-out", pem.to_str().unwrap(), "2048"]);
        let der = run(&["rsa", "-in", pem.to_str().unwrap(), "-outform", "DER", "-traditional"]);
        let modulus = String::from_utf8(run(&["rsa", "-in", pem.to_str().unwrap(), "-noout", "-modulus"])).unwrap();
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(&der),
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": b64url(&n), "e": "AQAB"}),
        }
    }

    pub fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": "https://issuer.test", "aud": PUBLIC_URL, "sub": sub, "exp": now() + 600, "iat": now(), "scope": scope})
}

pub fn jwt_config(jwks_file: Option<&std::path::Path>, jwks_url: Option<String>, required: &[&str]) -> Config {
    let mut c = default_config();
    c.routes[0].public_url = Some(PUBLIC_URL.into());
    c.routes[0].auth = Some(AuthConfig::Jwt(JwtConfig {
        issuer: "https://issuer.test".into(),
        jwks_file: jwks_file.map(Into::into),
        jwks_url,
        jwks_refresh: Duration::from_secs(1),
        leeway: Duration::from_secs(5),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        required_scopes: required.iter().map(|s| s.to_string()).collect(),
        principal_claim: "sub".into(),
        authorization_servers: vec![],
    }));
    c
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-edge-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[tokio::test]
async fn jwts_are_checked_for_signature_issuer_audience_time_and_scope() {
    let dir = temp_dir("jwks");
    let signers = [Signer::es256("ec"), Signer::ed25519("ed"), Signer::rs256("rsa", &dir)];
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let gw = TestGateway::start(jwt_config(Some(&file), None, &["mcp"])).await;

    for s in &signers {
        let mut c = gw.client().bearer(&s.token(&claims("carol", "mcp other")));
        c.initialize("2025-06-18").await;
        assert_eq!(
            c.call_tool("echo", json!({"message": "jwt"})).await["result"]["content"][0]["text"],
            "jwt",
            "{:?}",
            s.alg
        );
    }

    let es = &signers[0];
    let refused = |claims: Value| es.token(&claims);
    let mut expired = claims("carol", "mcp");
    expired["exp"] = json!(now() - 120);
    let mut wrong_aud = claims("carol", "mcp");
    wrong_aud["aud"] = json!("https://elsewhere.test/mcp");
    let mut wrong_iss = claims("carol", "mcp");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut not_yet = claims("carol", "mcp");
    not_yet["nbf"] = json!(now() + 300);
    let mut no_exp = claims("carol", "mcp");
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases = [
        ("expired", refused(expired), "expired"),
        ("wrong audience", refused(wrong_aud), "audience"),
        ("wrong issuer", refused(wrong_iss), "issuer"),
        ("not yet valid", refused(not_yet), "not valid yet"),
        ("no exp", refused(no_exp), "`exp`"),
        ("garbage", "a.b.c".to_string(), "not a JWT"),
    ];
    for (what, token, why) in cases {
        let r = gw.client().bearer(&token).post(&init_body()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(challenge(&r).contains(r#"error="invalid_token""#), "{what}");
        let body = r.json().await;
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{what}: {body}");
    }
    // A token signed with a key the JWKS does not hold, under a listed key id.
    let forged = Signer::es256("ec").token(&claims("carol", "mcp"));
    assert_eq!(gw.client().bearer(&forged).post(&init_body()).await.status, StatusCode::UNAUTHORIZED);
    // HMAC is never accepted, whatever the key.
    let hs =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("carol", "mcp"), &EncodingKey::from_secret(b"k"))
            .unwrap();
    assert_eq!(gw.client().bearer(&hs).post(&init_body()).await.status, StatusCode::UNAUTHORIZED);
    // An unsigned token.
    let none = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(claims("carol", "mcp").to_string().as_bytes()));
    assert_eq!(gw.client().bearer(&none).post(&init_body()).await.status, StatusCode::UNAUTHORIZED);

    let r = gw.client().bearer(&es.token(&claims("carol", "read"))).post(&init_body()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a missing scope is 403");
    let c = challenge(&r);
    assert!(c.contains(r#"error="insufficient_scope""#) && c.contains(r#"scope="mcp""#), "{c}");

    // Over WebSocket, in the subprotocol.
    let url = ws_url(&gw.url, "");
    let token = es.token(&claims("carol", "mcp"));
    let mut ws = try_connect(&url, &["mcp", &format!("mcp.auth.{token}")], &[]).await.expect("opens");
    ws.initialize(None).await;
    let mut expired = claims("carol", "mcp");
    expired["exp"] = json!(now() - 120);
    let err = try_connect(&url, &["mcp", &format!("mcp.auth.{}", es.token(&expired))], &[]).await.err().unwrap();
    assert_eq!(refusal(err).0, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWKS document served over HTTP, replaceable while it runs; counts fetches.
async fn serve_jwks(
    doc: std::sync::Arc<std::sync::Mutex<String>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (doc, counted) = (doc.clone(), counted.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/jwks.json"), fetches)
}

#[tokio::test]
async fn keys_from_a_jwks_url_are_fetched_and_rotated_without_a_restart() {
    let old = Signer::es256("old");
    let new = Signer::es256("new");
    let doc = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [old.jwk]}).to_string()));
    let (url, fetches) = serve_jwks(doc.clone()).await;
    let gw = TestGateway::start(jwt_config(None, Some(url), &[])).await;
    let ok = |s: &Signer| s.token(&claims("dave", ""));
    // The first fetch runs in the background at start.
    let accepted = |s: &Signer| {
        let token = ok(s);
        let client = gw.client().bearer(&token);
        async move { client.post(&init_body()).await.status == StatusCode::OK }
    };
    assert!(
        eventually_async(Duration::from_secs(5), || accepted(&old)).await,
        "a token of the fetched key is accepted"
    );
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(gw.client().bearer(&ok(&new)).post(&init_body()).await.status, StatusCode::UNAUTHORIZED);
    // The issuer rotates: the new key appears, the old one goes.
    *doc.lock().unwrap() = json!({"keys": [new.jwk]}).to_string();
    assert!(
        eventually_async(Duration::from_secs(5), || accepted(&new)).await,
        "the new key is picked up without a restart"
    );
    assert_eq!(gw.client().bearer(&ok(&old)).post(&init_body()).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_legacy_sse_session_is_bound_to_its_principal() {
    let mut c = keyed_config();
    c.routes[0].sse_path = Some("/sse".into());
    c.routes[0].messages_path = Some("/messages".into());
    let gw = TestGateway::start(c).await;
    let base = gw.url.trim_end_matches("/mcp").to_owned();
    assert_eq!(Client::new(&format!("{base}/sse")).get_stream(&[]).await.status, StatusCode::UNAUTHORIZED);
    let mut events = Client::new(&format!("{base}/sse")).bearer(ALICE).get_stream(&[]).await.sse();
    let endpoint = events.next().await.expect("the endpoint event");
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let post_url = format!("{base}{}", endpoint.data);
    let ping = init_body().to_string();
    let headers = |key: &str| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("authorization".to_string(), format!("Bearer {key}")),
        ]
    };
    let send = |key: &'static str| {
        let (url, body, h) = (post_url.clone(), ping.clone(), headers(key));
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Client::new(&url).raw(Method::POST, &h, body).await.status
        }
    };
    assert_eq!(send(BOB).await, StatusCode::NOT_FOUND, "another principal cannot post into the session");
    assert_eq!(send(ALICE).await, StatusCode::ACCEPTED, "the owner's initialize is taken");
    let answer = events.next().await.expect("the answer on the stream").json();
    assert!(answer["result"]["protocolVersion"].is_string(), "{answer}");
}
