//! Legacy HTTP+SSE upstream (MCP 2024-11-05): GET the SSE URL, wait for the `endpoint` event
//! (same origin only), POST every client message there; everything the server sends arrives
//! as `message` events on the one stream. The stream is the upstream session: when it ends,
//! the link ends. Must not know about the gateway's sessions or frontends.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event_stream::{Decoder, SseEvent};
use super::upstream::{media_type, read_body, snippet, Body, Upstream};
use super::{Connection, Context, Event, Stopper};
use crate::error::GatewayError;
use crate::jsonrpc::Message;

const EVENT_QUEUE: usize = 64;

/// A configured legacy SSE upstream.
#[derive(Debug)]
pub struct SseBackend {
    up: Arc<Upstream>,
}

impl SseBackend {
    pub fn new(up: Upstream) -> SseBackend {
        SseBackend { up: Arc::new(up) }
    }

    pub fn name(&self) -> &str {
        &self.up.name
    }

    pub fn health(&self) -> &super::Health {
        &self.up.health
    }

    /// Opens the upstream's SSE stream for one gateway session.
    pub fn connect(&self, _ctx: &Context) -> Connection {
        let (tx, rx) = mpsc::channel(self.up.config.send_queue);
        let (events_tx, events) = super::events(EVENT_QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(self.up.clone(), None, rx, events_tx, stop.clone()));
        Connection { tx: tx.into(), events, stopper: Stopper::Tasks(vec![task.abort_handle()]) }
    }
}

/// Runs one legacy link until the stream ends, the client side closes, or `stop`. `first` is
/// a message already taken from `rx` (by the Streamable HTTP fallback).
pub async fn run(
    up: Arc<Upstream>,
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    events: super::Events,
    stop: CancellationToken,
) {
    // Cancel-safe: stopping drops the stream and the POST in flight, which ends the link.
    let closed = tokio::select! {
        r = link(&up, first, rx, &events) => r,
        _ = stop.cancelled() => return,
    };
    if let Err(why) = closed {
        tracing::info!(backend.name = %up.name, "The legacy SSE upstream link ended: {why}.");
        let _ = events.send(Event::Closed(why)).await;
    }
}

async fn link(
    up: &Upstream,
    first: Option<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    events: &super::Events,
) -> Result<(), String> {
    let resp =
        up.send(&up.request(Method::GET, &up.url, "text/event-stream", None)).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() || media_type(resp.headers()) != "text/event-stream" {
        let body = read_body(resp.into_body(), 64 * 1024).await.unwrap_or_default();
        return Err(format!("the upstream answered its SSE GET with HTTP {status}: {}", snippet(&body)));
    }
    let mut body = resp.into_body();
    let mut decoder = Decoder::new(up.config.max_message_bytes);
    let (endpoint, early) =
        tokio::time::timeout(up.config.connect_timeout, endpoint(&mut body, &mut decoder))
            .await
            .map_err(|_| "the upstream sent no `endpoint` event within connect_timeout".to_string())??;
    let endpoint = resolve(&up.url, &endpoint)?;
    for event in early.into_iter().filter(|e| e.is_message() && !e.data.trim().is_empty()) {
        events.send(Event::Message(Bytes::from(event.data))).await.map_err(|_| "the session is gone")?;
    }
    tracing::debug!(backend.name = %up.name, %endpoint, "The legacy SSE upstream announced its endpoint.");
    let reader = read(body, decoder, events);
    let writer = async {
        if let Some(m) = first {
            post(up, &endpoint, m, events).await?;
        }
        while let Some(m) = rx.recv().await {
            post(up, &endpoint, m, events).await?;
        }
        Ok::<(), String>(())
    };
    // Cancel-safe: whichever side ends first ends the link; the other is dropped with it.
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Reads events until the `endpoint` one: its data, and the events that came with it.
async fn endpoint(body: &mut Body, decoder: &mut Decoder) -> Result<(String, Vec<SseEvent>), String> {
    loop {
        let chunk = match body.frame().await {
            Some(Ok(f)) => f.into_data().unwrap_or_default(),
            _ => return Err("the upstream closed its SSE stream before announcing an endpoint".into()),
        };
        let mut found = decoder.feed(&chunk).map_err(|e| e.to_string())?;
        if let Some(i) = found.iter().position(|e| e.event.as_deref() == Some("endpoint")) {
            let rest = found.split_off(i + 1);
            let endpoint = found.pop().expect("found at i").data.trim().to_owned();
            return Ok((endpoint, rest));
        }
    }
}

/// Forwards `message` events to the session until the stream ends.
async fn read(mut body: Body, mut decoder: Decoder, events: &super::Events) -> Result<(), String> {
    loop {
        let chunk = match body.frame().await {
            Some(Ok(f)) => f.into_data().unwrap_or_default(),
            Some(Err(e)) => return Err(format!("the upstream SSE stream broke: {e}")),
            None => return Err("the upstream closed its SSE stream".into()),
        };
        for event in decoder.feed(&chunk).map_err(|e| e.to_string())? {
            if event.is_message() && !event.data.trim().is_empty() {
                events.send(Event::Message(Bytes::from(event.data))).await.map_err(|_| "the session is gone")?;
            }
        }
    }
}

/// POSTs one message; a refused request is answered with an error at once.
async fn post(up: &Upstream, endpoint: &Uri, msg: Bytes, events: &super::Events) -> Result<(), String> {
    let id = Message::parse(&msg).ok().filter(Message::is_request).and_then(|m| m.id);
    let why = match up.send(&up.request(Method::POST, endpoint, "application/json, text/event-stream", Some(msg))).await
    {
        Ok(r) if r.status().is_success() => return Ok(()),
        Ok(r) if r.status() == StatusCode::NOT_FOUND => {
            return Err("the upstream no longer knows the SSE session (404)".into());
        }
        Ok(r) => {
            let status = r.status();
            let body = read_body(r.into_body(), 64 * 1024).await.unwrap_or_default();
            format!("the upstream answered HTTP {status}: {}", snippet(&body))
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!(backend.name = %up.name, "A POST to the legacy SSE upstream failed: {why}.");
    if let Some(id) = id {
        let err = GatewayError::BackendUnavailable(why);
        let _ = events.send(Event::Message(err.to_rpc(Some(&id)))).await;
    }
    Ok(())
}

/// The endpoint as an absolute URI on the SSE URL's origin; another origin is refused.
fn resolve(base: &Uri, endpoint: &str) -> Result<Uri, String> {
    let refused = || format!("the upstream announced an endpoint on another origin: `{endpoint}`");
    if endpoint.contains("://") {
        let uri: Uri = endpoint.parse().map_err(|_| refused())?;
        if uri.scheme() != base.scheme() || uri.authority() != base.authority() {
            return Err(refused());
        }
        return Ok(uri);
    }
    if endpoint.starts_with("//") {
        return Err(refused());
    }
    let path = if endpoint.starts_with('/') {
        endpoint.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{endpoint}")
    };
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| format!("the upstream announced a bad endpoint: `{endpoint}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_on_the_same_origin_only() {
        let base: Uri = "http://127.0.0.1:9000/sse".parse().unwrap();
        assert_eq!(
            resolve(&base, "/messages?sessionId=a").unwrap().to_string(),
            "http://127.0.0.1:9000/messages?sessionId=a"
        );
        assert_eq!(resolve(&base, "messages?s=1").unwrap().to_string(), "http://127.0.0.1:9000/messages?s=1");
        assert!(resolve(&base, "http://127.0.0.1:9000/m").is_ok());
        assert!(resolve(&base, "http://evil.example/m").is_err());
        assert!(resolve(&base, "https://127.0.0.1:9000/m").is_err());
        assert!(resolve(&base, "//evil.example/m").is_err());
    }
}
