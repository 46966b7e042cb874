//! TLS termination on the client listener: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), WSS, only
//! trusted handshakes, and a certificate reload that keeps open connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Http;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::tls::Pki;
use crate::common::{default_config, TestGateway};

fn tls_config(pki: &Pki) -> mcp_edge::config::Config {
    let mut c = default_config();
    c.server.tls = Some(mcp_edge::config::TlsServerConfig {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key_file.clone(),
    });
    c
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "tls-test", "version": "0"}}})
}

/// POSTs `initialize` over HTTPS, offering `h2` by ALPN or not; returns the HTTP version used
/// and the answer.
async fn https_initialize(pki: &Pki, port: u16, h2: bool) -> (Version, Value) {
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(pki.client_config(&[])).https_only();
    let https = match h2 {
        true => builder.enable_all_versions().build(),
        false => builder.enable_http1().build(),
    };
    let client: Http<_, Full<Bytes>> = Http::builder(TokioExecutor::new()).build(https);
    let req = Request::post(format!("https://localhost:{port}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(initialize().to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("an HTTPS answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, serde_json::from_slice(&body).unwrap())
}

/// A TLS connection to the gateway; returns it with the certificate the server presented.
async fn handshake(
    pki: &Pki,
    port: u16,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let cert = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned();
    Ok((tls, cert))
}

#[tokio::test]
async fn https_serves_http1_and_http2_by_alpn() {
    let pki = Pki::new();
    let gw = TestGateway::start(tls_config(&pki)).await;
    let port = gw.addr.port();
    let (v, answer) = https_initialize(&pki, port, true).await;
    assert_eq!(v, Version::HTTP_2);
    assert!(answer["result"]["protocolVersion"].is_string(), "{answer}");
    let (v, _) = https_initialize(&pki, port, false).await;
    assert_eq!(v, Version::HTTP_11);
}

#[tokio::test]
async fn wss_carries_a_session() {
    let pki = Pki::new();
    let gw = TestGateway::start(tls_config(&pki)).await;
    let (tls, _) = handshake(&pki, gw.addr.port()).await.expect("the handshake succeeds");
    let mut req = format!("wss://localhost:{}/mcp", gw.addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mcp".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.expect("the upgrade succeeds");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mcp");
    ws.send(Message::Text(initialize().to_string().into())).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
    assert!(answer["result"]["protocolVersion"].is_string(), "{answer}");
}

#[tokio::test]
async fn untrusted_and_plaintext_clients_are_refused() {
    let pki = Pki::new();
    let gw = TestGateway::start(tls_config(&pki)).await;
    let stranger = Pki::new(); // trusts another CA
    assert!(handshake(&stranger, gw.addr.port()).await.is_err(), "a client that does not trust the CA fails");
    // Plain HTTP on the TLS port gets no HTTP answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain.write_all(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await.expect("closed");
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1"), "no plaintext answer");
    // A trusted client is still served.
    https_initialize(&pki, gw.addr.port(), false).await;
}

#[tokio::test]
async fn a_reload_presents_the_new_certificate_and_keeps_open_connections() {
    let pki = Pki::new();
    let config = tls_config(&pki);
    let gw = TestGateway::start(config.clone()).await;
    let port = gw.addr.port();
    let before = pki.server_der();
    let (tls, presented) = handshake(&pki, port).await.unwrap();
    assert_eq!(presented, before);
    let mut req = format!("wss://localhost:{port}/mcp").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mcp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Text(initialize().to_string().into())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    let after = pki.reissue_server();
    assert_ne!(after, before);
    gw.reloader.reload(config).expect("the reload succeeds");
    let (_, presented) = handshake(&pki, port).await.unwrap();
    assert_eq!(presented, after, "new handshakes get the new certificate");

    // The connection made before the reload still works.
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    ws.send(Message::Text(ping.to_string().into())).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
    assert_eq!(answer["id"], 2);

    // A broken file is refused and the current certificate stays.
    std::fs::write(&pki.server_cert, "not a certificate").unwrap();
    assert!(gw.reloader.reload(tls_config(&pki)).is_err());
    let (_, presented) = handshake(&pki, port).await.unwrap();
    assert_eq!(presented, after);
}

#[tokio::test]
async fn the_admin_listener_terminates_tls_too() {
    let pki = Pki::new();
    let mut c = default_config();
    c.admin.tls = Some(mcp_edge::config::TlsServerConfig {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key_file.clone(),
    });
    let gw = TestGateway::start(c).await;
    let admin = gw.admin.expect("the admin listener is on");
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only()
        .enable_http1()
        .build();
    let client: Http<_, Full<Bytes>> = Http::builder(TokioExecutor::new()).build(https);
    let req =
        Request::get(format!("https://localhost:{}/metrics", admin.port())).body(Full::new(Bytes::new())).unwrap();
    let resp = client.request(req).await.expect("an HTTPS answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("mcp_edge_connections"));
}
