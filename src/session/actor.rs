//! The session task: routes every message between one client and one backend connection.
//!
//! Owns the in-flight table (request id → stream, deadline, progress token), the logical
//! streams (one per POST that carried requests, plus the standalone GET stream) and the replay
//! buffer. Every server→client message goes to exactly one stream: a response to the stream of
//! its request, progress to the stream of the request that holds the token, anything else to
//! the oldest stream still owed a response or, with none, the standalone stream. Does no I/O of
//! its own: sinks and the backend queue are bounded channels, used with `try_send` so that a
//! slow reader can never stall the session (it is detached and may resume from the buffer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::buffer::{EventId, ReplayBuffer};
use super::{Command, EndReason, Frame, InFlight, Opened, Sink};
use crate::backend::Event;
use crate::config::SessionConfig;
use crate::error::GatewayError;
use crate::jsonrpc::{cancelled_notification, error_response, Id, Kind, Message};

struct Pending {
    stream: u64,
    deadline: Instant,
    token: Option<Id>,
}

#[derive(Default)]
struct Stream {
    /// Where live events go; `None` while no client reads this stream.
    sink: Option<Sink>,
    /// Responses still owed on this stream (0 for the standalone stream).
    owed: usize,
    next_seq: u64,
    /// Last sequence handed to a sink, for re-attaching without `Last-Event-ID`.
    delivered: u64,
    /// Events of this stream still in the replay buffer.
    buffered: usize,
    complete: bool,
}

impl Stream {
    fn live(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| !s.is_closed())
    }
}

pub(super) struct Actor {
    config: SessionConfig,
    backend: mpsc::Sender<Bytes>,
    in_flight: Arc<InFlight>,
    pending: HashMap<Id, Pending>,
    /// Progress token → request id.
    tokens: HashMap<Id, Id>,
    /// Ordered by creation, so the first owed stream is the oldest.
    streams: BTreeMap<u64, Stream>,
    standalone: Option<u64>,
    next_stream: u64,
    buffer: ReplayBuffer,
    last_activity: Instant,
}

impl Actor {
    pub(super) fn new(config: SessionConfig, backend: mpsc::Sender<Bytes>, in_flight: Arc<InFlight>) -> Self {
        let buffer = ReplayBuffer::new(config.replay_buffer_messages, config.replay_buffer_bytes);
        Actor {
            config,
            backend,
            in_flight,
            pending: HashMap::new(),
            tokens: HashMap::new(),
            streams: BTreeMap::new(),
            standalone: None,
            next_stream: 1,
            buffer,
            last_activity: Instant::now(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) -> EndReason {
        let reason = loop {
            let wake = self.next_wake();
            // Cancel-safe: every branch is a channel receive, a sleep or a token; none loses
            // a message when another branch wins.
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::End(reason)) => break reason,
                    Some(Command::Client { msgs, sink, reply }) => {
                        let _ = reply.send(self.on_client(msgs, sink));
                    }
                    Some(Command::Open { last_event_id, sink, reply }) => {
                        let _ = reply.send(self.on_open(last_event_id, sink));
                    }
                    None => break EndReason::InitializeFailed,
                },
                e = events.recv() => match e {
                    Some(Event::Message(line)) => self.on_backend(line),
                    Some(Event::Closed(why)) => break EndReason::BackendClosed(why),
                    None => break EndReason::BackendClosed("backend connection lost".into()),
                },
                _ = sleep_until(wake) => {
                    if let Some(reason) = self.on_tick() {
                        break reason;
                    }
                }
                _ = shutdown.cancelled() => break EndReason::Shutdown,
            }
        };
        self.finish(&reason);
        reason
    }

    fn next_wake(&self) -> Instant {
        let idle = self.last_activity + self.config.idle_timeout;
        self.pending.values().map(|p| p.deadline).fold(idle, Instant::min)
    }

    fn on_client(&mut self, msgs: Vec<Message>, sink: Option<Sink>) -> Result<Opened, GatewayError> {
        let now = Instant::now();
        self.last_activity = now;
        let mut seen = HashSet::new();
        for m in msgs.iter().filter(|m| m.is_request()) {
            let id = m.id.as_ref().expect("requests have ids");
            if self.pending.contains_key(id) || !seen.insert(id) {
                return Err(GatewayError::DuplicateId(id.to_string()));
            }
        }
        for m in &msgs {
            if m.method() == Some("notifications/cancelled") {
                if let Some(id) = &m.cancelled_id {
                    self.cancel(id);
                }
            }
        }
        let requests: Vec<&Message> = msgs.iter().filter(|m| m.is_request()).collect();
        let stream = self.new_stream();
        if requests.is_empty() {
            self.streams.remove(&stream);
            return Ok(Opened { stream, replay: Vec::new(), complete: true, resume_from: 0 });
        }
        let s = self.streams.get_mut(&stream).expect("just made");
        s.sink = sink;
        s.owed = requests.len();
        for m in requests {
            let id = m.id.clone().expect("requests have ids");
            if let Some(token) = &m.progress_token {
                self.tokens.insert(token.clone(), id.clone());
            }
            let deadline = now + self.config.request_timeout;
            self.pending.insert(id, Pending { stream, deadline, token: m.progress_token.clone() });
        }
        self.in_flight.add(self.streams[&stream].owed);
        Ok(Opened { stream, replay: Vec::new(), complete: false, resume_from: 0 })
    }

    fn on_open(&mut self, last_event_id: Option<String>, sink: Sink) -> Result<Opened, GatewayError> {
        self.last_activity = Instant::now();
        let (stream, after) = match last_event_id {
            Some(text) => {
                let id = EventId::parse(&text)
                    .filter(|id| self.streams.contains_key(&id.stream))
                    .ok_or(GatewayError::UnknownEventId(text))?;
                (id.stream, id.seq)
            }
            None => {
                let stream = match self.standalone {
                    Some(s) if self.streams[&s].live() => return Err(GatewayError::StreamConflict),
                    Some(s) => s,
                    None => {
                        let s = self.new_stream();
                        self.standalone = Some(s);
                        s
                    }
                };
                (stream, self.streams[&stream].delivered)
            }
        };
        let replay = self.buffer.after(stream, after);
        let s = self.streams.get_mut(&stream).expect("checked above");
        if !s.complete {
            s.sink = Some(sink);
            s.delivered = s.next_seq;
        }
        Ok(Opened { stream, replay, complete: s.complete, resume_from: s.next_seq })
    }

    fn on_backend(&mut self, line: Bytes) {
        let msg = match Message::parse(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "The backend sent a line that is not a JSON-RPC message; dropped it.");
                return;
            }
        };
        match (msg.kind, &msg.id) {
            (Kind::Result | Kind::Error, Some(id)) => match self.take_pending(id) {
                Some(p) => self.answer(p.stream, line),
                None => {
                    tracing::debug!(id = %id, "Dropped a response to a request no longer in flight.")
                }
            },
            (Kind::Notification, _) if msg.method() == Some("notifications/progress") => {
                let target = msg.progress_token.as_ref().and_then(|t| self.tokens.get(t)).cloned();
                match target.and_then(|id| self.pending.get_mut(&id)) {
                    Some(p) => {
                        p.deadline = Instant::now() + self.config.request_timeout;
                        let stream = p.stream;
                        self.emit(stream, line, false);
                    }
                    None => self.emit_unrelated(line),
                }
            }
            _ => self.emit_unrelated(line),
        }
    }

    fn on_tick(&mut self) -> Option<EndReason> {
        let now = Instant::now();
        let expired: Vec<Id> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            let Some(p) = self.take_pending(&id) else {
                continue;
            };
            let _ = self.backend.try_send(cancelled_notification(&id, "request timed out at the gateway"));
            let err = GatewayError::RequestTimeout(self.config.request_timeout);
            self.answer(p.stream, error_response(Some(&id), err.rpc_code(), &err.to_string()));
        }
        if self.streams.values().any(Stream::live) {
            self.last_activity = now;
        }
        let idle = self.pending.is_empty() && now >= self.last_activity + self.config.idle_timeout;
        idle.then_some(EndReason::Idle)
    }

    /// Gives every in-flight request its error, then drops every sink (ending the streams).
    fn finish(&mut self, reason: &EndReason) {
        let err = reason.error();
        let ids: Vec<Id> = self.pending.keys().cloned().collect();
        for id in ids {
            if let Some(p) = self.take_pending(&id) {
                self.answer(p.stream, error_response(Some(&id), err.rpc_code(), &err.to_string()));
            }
        }
        self.streams.clear();
    }

    fn new_stream(&mut self) -> u64 {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(id, Stream::default());
        id
    }

    fn take_pending(&mut self, id: &Id) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        if let Some(t) = &p.token {
            self.tokens.remove(t);
        }
        self.in_flight.sub(1);
        Some(p)
    }

    /// A client cancelled a request: forget it; its stream ends when nothing else is owed.
    fn cancel(&mut self, id: &Id) {
        let Some(p) = self.take_pending(id) else {
            return;
        };
        let Some(s) = self.streams.get_mut(&p.stream) else {
            return;
        };
        s.owed -= 1;
        if s.owed == 0 {
            if let Some(sink) = s.sink.take() {
                let _ = sink.try_send(Frame::End);
            }
            s.complete = true;
            if s.buffered == 0 {
                self.streams.remove(&p.stream);
            }
        }
    }

    fn answer(&mut self, stream: u64, data: Bytes) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.owed = s.owed.saturating_sub(1);
        let last = s.owed == 0;
        self.emit(stream, data, last);
    }

    fn emit_unrelated(&mut self, data: Bytes) {
        let owed = self.streams.iter().find(|(_, s)| s.owed > 0 && !s.complete).map(|(id, _)| *id);
        let target = match owed.or(self.standalone) {
            Some(id) => id,
            None => {
                let id = self.new_stream();
                self.standalone = Some(id);
                id
            }
        };
        self.emit(target, data, false);
    }

    fn emit(&mut self, stream: u64, data: Bytes, last: bool) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.next_seq += 1;
        let id = EventId { stream, seq: s.next_seq };
        s.buffered += 1;
        if let Some(sink) = &s.sink {
            match sink.try_send(Frame::Event { id, data: data.clone(), last }) {
                Ok(()) => s.delivered = id.seq,
                Err(_) => {
                    tracing::debug!(stream, "A stream's reader is gone or too slow; detached it (it may resume).");
                    s.sink = None;
                }
            }
        }
        if last {
            s.complete = true;
            s.sink = None;
        }
        for old in self.buffer.push(id, data) {
            if let Some(s) = self.streams.get_mut(&old.stream) {
                s.buffered -= 1;
                if s.complete && s.buffered == 0 {
                    self.streams.remove(&old.stream);
                }
            }
        }
    }
}
