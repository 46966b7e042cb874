//! A TCP relay that only copies bytes between each client connection and a connection of its
//! own to one upstream address: the least any process in the path of a call can cost. It reads
//! no HTTP, keeps no session and parses nothing; one task per connection copies both ways, on
//! the same multi-threaded tokio runtime as the gateway, with `TCP_NODELAY` on both sockets.
//!
//! `scripts/bench` runs it as the `relay` target in front of the example server, beside
//! `edge-http` in front of the same server, so the cost of one more process and one more
//! loopback hop on the machine is measured in the same run as the gateway's: what edge-http
//! adds beyond the relay is the gateway's own work.
//!
//! With `--http` it is instead the least an HTTP proxy built on hyper can cost: each client
//! connection is served by hyper's HTTP/1.1 server, and each request goes, head and body as
//! they came, over a hyper HTTP/1.1 client connection of its own to the upstream, whose
//! response comes back the same way. It parses HTTP and nothing inside it: no JSON, no
//! session, no routing, no limits (`scripts/bench` target `relay-http`).
//!
//! Usage: `relay [--http] LISTEN_ADDR UPSTREAM_ADDR`; prints `relay listening on ADDR` once
//! bound.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let http = args.first().is_some_and(|a| a == "--http");
    if http {
        args.remove(0);
    }
    let [listen, upstream] = <[String; 2]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: relay [--http] LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    });
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("relay: both addresses are IP:PORT");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(listen).await?;
    println!("relay listening on {}", listener.local_addr()?);
    loop {
        let (mut client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut up = match TcpStream::connect(upstream).await {
                Ok(up) => up,
                Err(e) => return eprintln!("relay: cannot connect to {upstream}: {e}"),
            };
            let _ = client.set_nodelay(true);
            let _ = up.set_nodelay(true);
            if http {
                return http_relay(client, up).await;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}

/// Serves one client connection's requests over one upstream connection, one at a time (an
/// HTTP/1.1 client sends its next request after the answer).
async fn http_relay(client: TcpStream, up: TcpStream) {
    let (sender, conn) = match client::handshake(TokioIo::new(up)).await {
        Ok(pair) => pair,
        Err(e) => return eprintln!("relay: upstream handshake: {e}"),
    };
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let resp: Response<Incoming> = sender.send_request(req).await?;
            Ok::<_, hyper::Error>(resp)
        }
    });
    let _ = server::Builder::new().serve_connection(TokioIo::new(client), service).await;
}
