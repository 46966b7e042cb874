//! One POST to the upstream and everything it answers: JSON or SSE, the response awaited,
//! other messages passed to the client, and a broken SSE answer resumed with `Last-Event-ID`.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::{forgot_session, set_session, Link, ACCEPT_BOTH, ACCEPT_SSE, DEFAULT_RETRY, MAX_RETRY};
use crate::backend::event_stream::Decoder;
use crate::backend::upstream::{media_type, read_body, snippet, Body, LAST_EVENT_ID, SESSION_HEADER};
use crate::backend::Event;
use crate::jsonrpc::{Id, Kind, Message};

/// Resume attempts in a row, for one broken stream, before giving up on it.
const RESUME_ATTEMPTS: u32 = 5;

/// How one POST ended.
pub(super) enum Outcome {
    /// The exchange is over (for a request: its response went to the client; or it was
    /// cancelled).
    Done,
    /// Only for internal requests: the response, kept from the client.
    Answer(Bytes),
    /// The upstream refused the POST because it no longer knows the session of this
    /// generation.
    SessionLost(u64),
    /// The upstream refused `initialize` at the transport level (400/404/405).
    Refused(StatusCode),
    /// The request failed; the client's request gets this error.
    Failed(String),
}

/// Who a POST is for.
#[derive(Clone, Copy)]
pub(super) enum Purpose<'a> {
    /// The client's own message: everything the upstream answers goes to the client. Waits
    /// while a re-initialization runs.
    Client(Option<&'a Id>),
    /// The gateway's own message (re-initialization): the response to it is kept back, the
    /// rest goes to the client.
    Internal(Option<&'a Id>),
}

impl Purpose<'_> {
    fn id(&self) -> Option<&Id> {
        match self {
            Purpose::Client(id) | Purpose::Internal(id) => *id,
        }
    }
}

impl Link {
    /// One POST and everything the upstream answers to it, until `cancel` (then `Done`).
    pub(super) async fn exchange(
        &self,
        body: &Bytes,
        purpose: Purpose<'_>,
        init: bool,
        cancel: &CancellationToken,
    ) -> Outcome {
        // One watch on `cancel` for the whole exchange rather than one per step: each watch
        // registers with the token when polled and deregisters when dropped.
        Link::until(cancel, self.post(body, purpose, init, cancel)).await.unwrap_or(Outcome::Done)
    }

    async fn post(&self, body: &Bytes, purpose: Purpose<'_>, init: bool, cancel: &CancellationToken) -> Outcome {
        let gate = match purpose {
            Purpose::Client(_) => Some(self.gate.read().await),
            Purpose::Internal(_) => None,
        };
        let mut snap = self.snapshot();
        if init {
            snap.session = None;
            snap.version = None;
        }
        let mut req = self.up.request(Method::POST, &self.up.url, ACCEPT_BOTH, Some(body.clone()));
        set_session(&mut req, &snap);
        let resp = match self.up.send(&req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        drop(gate);
        let status = resp.status();
        if !status.is_success() {
            return Box::pin(self.refusal(resp, purpose, &snap, init, cancel)).await;
        }
        if init {
            self.lock().session = resp.headers().get(SESSION_HEADER).cloned();
        }
        if purpose.id().is_none() {
            // Notifications and responses are acknowledged with 202 and no body.
            return Outcome::Done;
        }
        if status == StatusCode::ACCEPTED {
            return Outcome::Failed("the upstream accepted the request (202) but will not answer it".into());
        }
        match &*media_type(resp.headers()) {
            "text/event-stream" => Box::pin(self.read_stream(resp.into_body(), purpose, init, cancel)).await,
            "application/json" => match read_body(resp.into_body(), self.up.config.max_message_bytes).await {
                Ok(body) => self.json_body(&body, purpose, init).await,
                Err(why) => Outcome::Failed(why),
            },
            other => Outcome::Failed(format!("the upstream answered with Content-Type `{other}`")),
        }
    }

    /// A non-2xx answer: the upstream's own JSON-RPC error for the request, a forgotten
    /// session, a refused `initialize`, or a failure.
    async fn refusal(
        &self,
        resp: http::Response<Body>,
        purpose: Purpose<'_>,
        snap: &super::Snapshot,
        init: bool,
        cancel: &CancellationToken,
    ) -> Outcome {
        let status = resp.status();
        let Some(body) = Link::until(cancel, read_body(resp.into_body(), 64 * 1024)).await else {
            return Outcome::Done;
        };
        let body = body.unwrap_or_default();
        self.up.metrics.upstream_errors.inc();
        // A JSON-RPC error for the request itself is the upstream's answer: pass it on.
        if let (Some(id), Ok(m)) = (purpose.id(), Message::parse(&body)) {
            if m.kind == Kind::Error && m.id.as_ref() == Some(id) {
                return self.message(Bytes::copy_from_slice(&body), purpose, false).await;
            }
        }
        if snap.session.is_some() && forgot_session(status, &body) {
            return Outcome::SessionLost(snap.generation);
        }
        if init && matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
            return Outcome::Refused(status);
        }
        Outcome::Failed(format!("the upstream answered HTTP {status}: {}", snippet(&body)))
    }

    async fn json_body(&self, body: &Bytes, purpose: Purpose<'_>, init: bool) -> Outcome {
        // Copies, never slices: a slice of the body may keep a connection's whole read buffer
        // (an HTTP/2 one, or a large HTTP/1.1 answer's) alive for as long as the session's
        // replay buffer keeps the message.
        let is_batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let batch = is_batch.then(|| serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body).ok()).flatten();
        let messages: Vec<Bytes> = match batch {
            Some(batch) => batch.iter().map(|m| Bytes::copy_from_slice(m.get().as_bytes())).collect(),
            None => vec![Bytes::copy_from_slice(body)],
        };
        let mut outcome = Outcome::Failed("the upstream's JSON answer holds no response to the request".into());
        for m in messages {
            match self.message(m, purpose, init).await {
                Outcome::Failed(_) => {}
                other => outcome = other,
            }
        }
        outcome
    }

    /// One message from the upstream: the response `purpose` waits for ends the exchange
    /// (kept back when internal), anything else goes to the client.
    async fn message(&self, data: Bytes, purpose: Purpose<'_>, init: bool) -> Outcome {
        let Ok(msg) = Message::parse(&data) else {
            tracing::warn!(parent: &self.span, "The upstream sent something that is not a JSON-RPC message; dropped it.");
            return Outcome::Failed("not a JSON-RPC message".into());
        };
        let answers = match purpose.id() {
            Some(id) => matches!(msg.kind, Kind::Result | Kind::Error) && msg.id.as_ref() == Some(id),
            None => false,
        };
        if answers && init {
            if let Some((version, _)) = crate::protocol::initialize_result(&data) {
                self.lock().version = HeaderValue::from_str(&version).ok();
            }
        }
        if let (true, Purpose::Internal(_)) = (answers, purpose) {
            return Outcome::Answer(data);
        }
        let _ = self.events.send(Event::Parsed(Box::new(msg))).await;
        if answers {
            Outcome::Done
        } else {
            Outcome::Failed("not the response".into())
        }
    }

    /// Reads an SSE answer until the awaited response; a stream that breaks before it is
    /// resumed with `Last-Event-ID` when the upstream gave event ids — only what the upstream
    /// sends after the last complete event comes again, so nothing is lost or doubled.
    async fn read_stream(&self, body: Body, purpose: Purpose<'_>, init: bool, cancel: &CancellationToken) -> Outcome {
        let mut decoder = Decoder::new(self.up.config.max_message_bytes);
        let mut body = Some(body);
        let mut failures = 0;
        loop {
            if let Some(b) = body.take() {
                decoder.reset();
                match self.pump(b, &mut decoder, purpose, init, cancel).await {
                    Ok(Some(outcome)) => return outcome,
                    Ok(None) => {}
                    Err(why) => return Outcome::Failed(why),
                }
            }
            let Some(last) = decoder.last_id.clone() else {
                return Outcome::Failed(
                    "the upstream closed its SSE stream before it answered (no event id to resume from)".into(),
                );
            };
            let Ok(last) = HeaderValue::from_str(&last) else {
                return Outcome::Failed(
                    "the upstream closed its SSE stream before it answered (its event id cannot be sent back)".into(),
                );
            };
            let wait = decoder.retry.unwrap_or(DEFAULT_RETRY).min(MAX_RETRY);
            if Link::until(cancel, tokio::time::sleep(wait)).await.is_none() {
                return Outcome::Done;
            }
            tracing::debug!(parent: &self.span, last_event_id = ?last, "Resuming a broken upstream SSE stream.");
            self.up.metrics.upstream_resumes.inc();
            match self.resume(&last, cancel).await {
                Ok(Some(b)) => {
                    failures = 0;
                    body = Some(b);
                }
                Ok(None) => return Outcome::Done,
                Err(why) => {
                    failures += 1;
                    if failures >= RESUME_ATTEMPTS {
                        return Outcome::Failed(format!(
                            "the upstream's SSE stream broke and {failures} resumes in a row failed: {why}"
                        ));
                    }
                }
            }
        }
    }

    /// GET with `Last-Event-ID`: the rest of a broken stream (`None` when cancelled).
    async fn resume(&self, last: &HeaderValue, cancel: &CancellationToken) -> Result<Option<Body>, String> {
        let snap = self.snapshot();
        let mut req = self.up.request(Method::GET, &self.up.url, ACCEPT_SSE, None);
        set_session(&mut req, &snap);
        req.header(LAST_EVENT_ID, last.clone());
        let resp = match Link::until(cancel, self.up.send(&req)).await {
            None => return Ok(None),
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(e.to_string()),
        };
        if resp.status().is_success() && media_type(resp.headers()) == "text/event-stream" {
            return Ok(Some(resp.into_body()));
        }
        // A session lost while the request was being answered is not retried: the request
        // may have run. The next request finds the session gone and re-initializes it.
        Err(format!("resuming answered HTTP {}", resp.status()))
    }

    /// Reads one SSE body: `Some` once the exchange is over, `None` when the body ended first.
    pub(super) async fn pump(
        &self,
        mut body: Body,
        decoder: &mut Decoder,
        purpose: Purpose<'_>,
        init: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<Outcome>, String> {
        loop {
            let Some(frame) = Link::until(cancel, body.frame()).await else { return Ok(Some(Outcome::Done)) };
            let chunk = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(_)) | None => return Ok(None),
            };
            for event in decoder.feed(&chunk).map_err(|e| e.to_string())? {
                if !event.is_message() || event.data.trim().is_empty() {
                    continue;
                }
                match self.message(Bytes::from(event.data), purpose, init).await {
                    Outcome::Failed(_) => {}
                    done => return Ok(Some(done)),
                }
            }
        }
    }
}
