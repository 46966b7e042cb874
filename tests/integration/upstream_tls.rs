//! HTTPS upstreams: rustls with an extra CA and a client certificate, HTTP/2 by ALPN, and a
//! clear error when the upstream's certificate is not trusted.

use std::time::Duration;

use http::Version;
use mcp_edge::config::BackendConfig;
use serde_json::json;

use crate::common::tls::{Pki, TlsUpstream};
use crate::common::upstream::ExampleHttp;
use crate::common::{default_config, TestGateway};

fn https_backend(toml: &str) -> mcp_edge::config::Config {
    let mut c = default_config();
    c.backends.insert("example".into(), toml::from_str::<BackendConfig>(toml).unwrap());
    c.validate().unwrap();
    c
}

#[tokio::test]
async fn an_https_upstream_with_an_extra_ca_and_a_client_certificate_speaks_http2() {
    let pki = Pki::new();
    let example = ExampleHttp::start().await;
    let upstream = TlsUpstream::start(&pki, &example.url).await;
    let config = https_backend(&format!(
        "kind = \"http\"\nurl = \"{}\"\nhttp2 = true\ntls = {{ ca_file = {:?}, client_cert = {:?}, client_key = {:?} }}",
        upstream.url, pki.ca, pki.client_cert, pki.client_key
    ));
    let gw = TestGateway::start(config).await;
    let mut c = gw.client();
    c.initialize("2025-06-18").await;
    let answer = c.call_tool("echo", json!({"message": "over tls"})).await;
    assert_eq!(answer["result"]["content"][0]["text"], "over tls");
    let versions = upstream.versions.lock().unwrap().clone();
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|v| *v == Version::HTTP_2), "ALPN chose h2: {versions:?}");
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_clear_backend_error() {
    let pki = Pki::new();
    let example = ExampleHttp::start().await;
    let upstream = TlsUpstream::start(&pki, &example.url).await;
    // The system's roots alone do not know the test CA.
    let config = https_backend(&format!("kind = \"http\"\nurl = \"{}\"\nconnect_timeout = \"1s\"", upstream.url));
    let gw = TestGateway::start(config).await;
    let c = gw.client();
    let resp = c
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await;
    let body = tokio::time::timeout(Duration::from_secs(5), resp.message()).await.expect("answered in time");
    assert_eq!(body["error"]["code"], -32000, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("certificate"), "the reason names the certificate: {message}");
    assert!(upstream.versions.lock().unwrap().is_empty(), "nothing reached the upstream");
}
