//! Holds N idle, initialized MCP sessions over WebSocket and reports the gateway's own memory
//! per connection (its children excluded): the capacity-planning number.
//!
//! ```text
//! cargo run --release --example ws_idle -- ws://127.0.0.1:8080/mcp GATEWAY_PID 1000
//! ```
//! Prints one JSON line. Connections spread their source addresses over 127.0.0.x so that a
//! large N does not exhaust one address's ports. Run by `scripts/bench-ws-idle`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Connections opened at once.
const PARALLEL: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the gateway runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn open(url: &str, n: usize) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let req = url.into_client_request().unwrap();
    let port = req.uri().port_u16().unwrap_or(80);
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("127.0.0.{}:0", 1 + n % 200).parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.expect("connects");
    let mut req = req;
    req.headers_mut().insert("sec-websocket-protocol", "mcp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("upgrades");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "ws_idle", "version": "1"}}});
    ws.send(Message::Text(init.to_string().into())).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"result\"") => break,
            Some(Ok(Message::Text(t))) => panic!("initialize failed: {t}"),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
    ws.send(Message::Text(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string().into()))
        .await
        .unwrap();
    ws
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, pid, n] = &args[..] else {
        eprintln!("usage: ws_idle WS_URL GATEWAY_PID SESSIONS");
        std::process::exit(2);
    };
    let pid: u32 = pid.parse().expect("a pid");
    let n: usize = n.parse().expect("a session count");
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(PARALLEL) {
        let opened = futures_util::future::join_all(chunk.iter().map(|i| open(url, *i))).await;
        held.extend(opened);
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let allocations settle, then answer the pings that arrive meanwhile by reading briefly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "{}",
        json!({"sessions": n, "open_seconds": (open_secs * 100.0).round() / 100.0, "gateway_rss_before_kib": before,
               "gateway_rss_after_kib": after, "gateway_kib_per_connection": (per * 10.0).round() / 10.0})
    );
    drop(held);
}
