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
//! Usage: `relay LISTEN_ADDR UPSTREAM_ADDR`; prints `relay listening on ADDR` once bound.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
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
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}
