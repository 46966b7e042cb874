//! The one integration test binary: the real gateway on 127.0.0.1:0 in front of real stdio
//! children (the example server), driven over real sockets. One behaviour per module.

mod common;

mod auth;
mod backend_failure;
mod cli;
mod concurrency;
mod errors;
mod hostile;
mod legacy_sse;
mod lifecycle;
mod limits;
mod metrics;
mod pool;
mod processes;
mod reload;
mod resume;
mod routing;
mod shutdown;
mod sse_upstream;
mod timeouts;
mod tls;
mod upstream;
mod upstream_tls;
mod websocket;
mod ws_resume;
