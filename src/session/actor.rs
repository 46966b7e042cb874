//! The session's core: routes every message between one client and one backend connection.
//!
//! The core is shared, under a lock, by the session's task and its handles: a handle applies
//! what a client sends (requests to register, a reader to attach) at once, in the frontend's
//! own task, and the session's task applies what the backend sends, the timers, and a
//! reader's room coming back. Nothing awaits while holding the lock.
//!
//! Owns the in-flight table (request id → stream, deadline, progress token), the logical
//! streams and the replay buffer. Streams are of two kinds: a request stream per HTTP POST that
//! carried requests (complete after its last response), and the persistent standalone stream,
//! read by an HTTP GET or by a WebSocket connection (which also sends its requests on it).
//!
//! Every server→client message goes to exactly one stream: a response to the stream of its
//! request, progress to the stream of the request that holds the token, anything else to the
//! oldest stream still owed a response or, with none, the standalone stream. Does no I/O of its
//! own. An HTTP reader that falls behind is detached (it may resume from the buffer); a
//! WebSocket reader that falls behind makes the session stop reading its backend until the
//! reader catches up — it closes itself when it stays stuck.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::buffer::{EventId, ReplayBuffer};
use super::{Attach, Command, Delivery, EndReason, Frame, InFlight, Opened, Sink, Target};
use crate::auth::policy::Grants;
use crate::backend::{Event, EventQueue, Outbox};
use crate::config::SessionConfig;
use crate::error::GatewayError;
use crate::jsonrpc::{cancelled_notification, Id, Kind, Message};
use crate::FastMap;

/// How long the end of a session waits for a stuck WebSocket reader to take its last frames.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

struct Pending {
    stream: u64,
    deadline: Instant,
    token: Option<Id>,
    /// The method's metrics label and when the request arrived.
    method: &'static str,
    started: Instant,
}

/// The request metrics of the session's route.
pub(super) struct RouteMetrics {
    in_flight: prometheus::IntGauge,
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    route: Arc<str>,
    /// The series this session has counted into, by method and outcome: a session calls a
    /// few methods many times, and a lookup by labels hashes them all each time.
    seen: Vec<(&'static str, &'static str, prometheus::IntCounter, prometheus::Histogram)>,
}

impl RouteMetrics {
    pub(super) fn new(m: &crate::metrics::Metrics, route: &str) -> RouteMetrics {
        RouteMetrics {
            in_flight: m.requests_in_flight.with_label_values(&[route]),
            requests: m.requests.clone(),
            duration: m.request_duration.clone(),
            route: Arc::from(route),
            seen: Vec::new(),
        }
    }

    fn done(&mut self, p: &Pending, outcome: &'static str) {
        self.in_flight.dec();
        // Labels are a bounded set of `&'static str`s (`metrics::method_label`).
        let at = self.seen.iter().position(|(m, o, ..)| *m == p.method && *o == outcome);
        let at = at.unwrap_or_else(|| {
            let requests = self.requests.with_label_values(&[&self.route, p.method, outcome]);
            let duration = self.duration.with_label_values(&[&self.route, p.method]);
            self.seen.push((p.method, outcome, requests, duration));
            self.seen.len() - 1
        });
        let (.., requests, duration) = &self.seen[at];
        requests.inc();
        duration.observe(p.started.elapsed().as_secs_f64());
    }
}

#[derive(Default)]
struct Stream {
    /// Where live events go; `None` while no client reads this stream.
    sink: Option<Sink>,
    /// The standalone stream: never complete, answers do not end it.
    persistent: bool,
    /// Responses still owed on this stream.
    owed: usize,
    next_seq: u64,
    /// Last sequence handed to a sink, for re-attaching without a last event id.
    delivered: u64,
    /// Events of this stream still in the replay buffer.
    buffered: usize,
    /// Highest sequence evicted from the buffer: a resume from before it has a gap.
    evicted_through: u64,
    complete: bool,
    /// Read by an HTTP GET (counted against `sessions.max_streams`).
    by_get: bool,
}

impl Stream {
    fn live(&self) -> bool {
        self.sink.as_ref().is_some_and(Sink::is_live)
    }
}

/// Frames held for a backpressured reader whose queue is full.
struct Stalled {
    stream: u64,
    tx: mpsc::Sender<Box<Frame>>,
    frames: VecDeque<Box<Frame>>,
}

pub(super) struct Actor {
    /// Shared with the registry's: a reload gives new sessions a new one.
    config: Arc<SessionConfig>,
    metrics: RouteMetrics,
    backend: Outbox,
    in_flight: Arc<InFlight>,
    pending: FastMap<Id, Pending>,
    /// Progress token → request id.
    tokens: FastMap<Id, Id>,
    /// Ordered by creation, so the first owed stream is the oldest.
    streams: BTreeMap<u64, Stream>,
    standalone: Option<u64>,
    next_stream: u64,
    buffer: ReplayBuffer,
    last_activity: Instant,
    /// Set while a backpressured reader is full: the backend is not read meanwhile.
    stalled: Option<Stalled>,
    /// Since when the session's WebSocket is gone without a close frame.
    away_since: Option<Instant>,
    /// Messages the away client never saw were evicted: the session cannot be resumed.
    overflowed: bool,
    /// What the session's principal may use (`routes.allow`); list results are filtered by it.
    grants: Option<Arc<Grants>>,
    /// When the session's task wakes up next for its timers: a handle that needs it earlier
    /// wakes it.
    armed: Instant,
    /// The session's task stopped serving: handles get "unknown session".
    ended: bool,
    /// Requests that timed out, for the task to tell the backend once it let go of the core.
    timed_out: Vec<Id>,
}

/// The core as the session's task and its handles share it.
pub(super) type Core = Arc<Mutex<Actor>>;

/// A session's way in for its backend's events: applied in the sending task when nothing is
/// queued before them and no reader is stuck, instead of waking the session's task for each.
pub(super) struct Direct {
    /// Weak: the core holds the backend connection that holds this.
    core: std::sync::Weak<Mutex<Actor>>,
    /// Weak: the session's task ends when every handle is gone.
    wake: mpsc::WeakSender<Command>,
}

impl Direct {
    pub(super) fn new(core: &Core, wake: &mpsc::Sender<Command>) -> Direct {
        Direct { core: Arc::downgrade(core), wake: wake.downgrade() }
    }
}

impl crate::backend::Direct for Direct {
    fn apply(&self, event: Event, queued: &AtomicUsize) -> Result<(), Event> {
        let Some(core) = self.core.upgrade() else { return Err(event) };
        let mut a = lock(&core);
        let now = matches!(event, Event::Message(_) | Event::Parsed(_));
        if !now || a.ended || a.stalled.is_some() || queued.load(Ordering::SeqCst) > 0 {
            queued.fetch_add(1, Ordering::SeqCst);
            return Err(event);
        }
        a.on_event(event);
        // What only the task acts on: a reader that fell behind, a replay buffer that lost
        // what an away client had not seen.
        let wake = a.stalled.is_some() || a.overflowed;
        drop(a);
        if let Some(tx) = wake.then(|| self.wake.upgrade()).flatten() {
            let _ = tx.try_send(Command::Wake);
        }
        Ok(())
    }
}

/// Locks the core; a panic elsewhere while it was held leaves it usable.
pub(super) fn lock(core: &Mutex<Actor>) -> MutexGuard<'_, Actor> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl Actor {
    pub(super) fn new(
        config: Arc<SessionConfig>,
        backend: Outbox,
        in_flight: Arc<InFlight>,
        metrics: RouteMetrics,
        grants: Option<Arc<Grants>>,
    ) -> Self {
        let buffer = ReplayBuffer::new(config.replay_buffer_messages, config.replay_buffer_bytes);
        Actor {
            config,
            metrics,
            backend,
            in_flight,
            pending: FastMap::default(),
            tokens: FastMap::default(),
            streams: BTreeMap::new(),
            standalone: None,
            next_stream: 1,
            buffer,
            last_activity: Instant::now(),
            stalled: None,
            away_since: None,
            overflowed: false,
            grants,
            armed: Instant::now(),
            ended: false,
            timed_out: Vec::new(),
        }
    }

    /// Whether the session's task must wake up to see what a handle changed: its next
    /// deadline moved earlier than it waits for.
    pub(super) fn wants_wake(&self) -> bool {
        self.next_wake() < self.armed
    }

    /// The session's task: applies the backend's messages, the timers, a stuck reader's
    /// room coming back and shutdown to the core until the session ends; then fails what is in
    /// flight and closes the readers.
    pub(super) async fn run(
        core: Core,
        mut commands: mpsc::Receiver<Command>,
        mut events: EventQueue,
        shutdown: CancellationToken,
    ) -> EndReason {
        // One timer and one shutdown watch for the session's life, not one of each per turn:
        // each would register with the runtime when polled and deregister when dropped. The
        // timer is only ever moved earlier here; one that fires early finds nothing due and is
        // set to the next wake-up.
        let timer = sleep_until(lock(&core).next_wake());
        tokio::pin!(timer);
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        let reason = loop {
            let stalled_tx = {
                let mut a = lock(&core);
                if a.overflowed {
                    break EndReason::ReplayOverflow;
                }
                let wake = a.next_wake();
                if wake < timer.deadline() {
                    timer.as_mut().reset(wake);
                }
                a.armed = timer.deadline();
                a.stalled.as_ref().map(|s| s.tx.clone())
            };
            let reading = stalled_tx.is_none();
            // Cancel-safe: every branch is a channel receive, a permit reservation, a sleep or a
            // token; none loses a message when another branch wins.
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::End(reason)) => break *reason,
                    Some(Command::Wake) => {}
                    None => break EndReason::InitializeFailed,
                },
                e = events.recv(), if reading => match e {
                    Some(Event::Closed(why)) => break EndReason::BackendClosed(why),
                    Some(Event::SessionLost(why)) => break EndReason::UpstreamLost(why),
                    Some(e) => {
                        let mut a = lock(&core);
                        a.on_event(e);
                        events.applied();
                    }
                    None => break EndReason::BackendClosed("backend connection lost".into()),
                },
                permit = reserve(stalled_tx), if !reading => lock(&core).on_room(permit),
                _ = &mut timer => {
                    let (ended, timed_out, backend) = {
                        let mut a = lock(&core);
                        let ended = a.on_tick();
                        timer.as_mut().reset(a.next_wake());
                        (ended, std::mem::take(&mut a.timed_out), a.backend.clone())
                    };
                    // Sent without the lock: a backend may answer into the core at once.
                    for id in timed_out {
                        if backend.try_send(cancelled_notification(&id, "request timed out at the gateway")).is_err() {
                            tracing::warn!(id = %id, "Could not tell the backend that a request timed out: its stdin queue is full.");
                        }
                    }
                    if let Some(reason) = ended {
                        break reason;
                    }
                }
                _ = &mut stopping => break EndReason::Shutdown,
            }
        };
        // Boxed: once per session, and every live session's task would otherwise keep room
        // for this future.
        Box::pin(Actor::finish(&core, &reason)).await;
        reason
    }

    fn next_wake(&self) -> Instant {
        let idle = self.last_activity + self.config.idle_timeout;
        let grace = self.away_since.map(|t| t + self.config.resume_grace);
        self.pending.values().map(|p| p.deadline).chain(grace).fold(idle, Instant::min)
    }

    /// Client messages: requests are registered to be answered on `target`, cancellations
    /// are applied.
    pub(super) fn on_client(&mut self, msgs: &[Message], target: Target) -> Result<Opened, GatewayError> {
        if self.ended {
            return Err(GatewayError::UnknownSession);
        }
        let now = Instant::now();
        self.last_activity = now;
        let requests = || msgs.iter().filter(|m| m.is_request());
        let count = requests().count();
        // A set only for a batch: a single request cannot repeat its own id.
        let mut seen = HashSet::new();
        for m in requests() {
            let id = m.id.as_ref().expect("requests have ids");
            if self.pending.contains_key(id) || (count > 1 && !seen.insert(id)) {
                return Err(GatewayError::DuplicateId(id.to_string()));
            }
        }
        for m in msgs {
            if m.method() == Some("notifications/cancelled") {
                if let Some(id) = &m.cancelled_id {
                    self.cancel(id);
                }
            }
        }
        if count > 0 && self.pending.len() + count > self.config.max_in_flight {
            return Err(GatewayError::TooManyInFlight(self.config.max_in_flight));
        }
        let stream = match target {
            _ if count == 0 => return Ok(Opened { stream: 0, replay: Vec::new(), complete: true, resume_from: 0 }),
            Target::NewStream(sink) => {
                let id = self.new_stream(false);
                self.streams.get_mut(&id).expect("just made").sink = Some(sink);
                id
            }
            Target::Stream(id) if self.streams.get(&id).is_some_and(|s| s.persistent) => id,
            Target::Stream(_) | Target::None => {
                return Err(GatewayError::InvalidMessage("requests need a stream to be answered on".into()))
            }
        };
        for m in requests() {
            let id = m.id.clone().expect("requests have ids");
            if let Some(token) = &m.progress_token {
                self.tokens.insert(token.clone(), id.clone());
            }
            let deadline = now + self.config.request_timeout;
            let method = crate::metrics::method_label(m.method().unwrap_or(""));
            self.metrics.in_flight.inc();
            self.pending
                .insert(id, Pending { stream, deadline, token: m.progress_token.clone(), method, started: now });
        }
        self.streams.get_mut(&stream).expect("checked").owed += count;
        self.in_flight.add(count);
        Ok(Opened { stream, replay: Vec::new(), complete: false, resume_from: 0 })
    }

    /// A reader attaches to a stream.
    pub(super) fn on_open(&mut self, attach: Attach, sink: Sink) -> Result<Opened, GatewayError> {
        if self.ended {
            return Err(GatewayError::UnknownSession);
        }
        self.last_activity = Instant::now();
        if !matches!(attach, Attach::Connection { .. }) {
            let open = self.streams.values().filter(|s| s.by_get && s.live()).count();
            if open >= self.config.max_streams {
                return Err(GatewayError::TooManyStreams(self.config.max_streams));
            }
        }
        let (stream, after, through_sink) = match attach {
            Attach::After(text) => {
                let id = EventId::parse(&text)
                    .filter(|id| self.streams.contains_key(&id.stream))
                    .ok_or(GatewayError::UnknownEventId(text))?;
                (id.stream, id.seq, None)
            }
            Attach::Standalone => {
                let stream = self.standalone_stream();
                if self.streams[&stream].live() {
                    return Err(GatewayError::StreamConflict);
                }
                (stream, self.undelivered_from(stream), None)
            }
            Attach::Connection { after, preface } => {
                let stream = self.standalone_stream();
                let after = match after {
                    Some(text) => match EventId::parse(&text) {
                        Some(id) if id.stream == stream => id.seq,
                        _ => return Err(GatewayError::UnknownEventId(text)),
                    },
                    None => self.undelivered_from(stream),
                };
                self.away_since = None;
                (stream, after, Some(preface))
            }
        };
        let s = &self.streams[&stream];
        if after < s.evicted_through {
            return Err(GatewayError::ReplayGap(EventId { stream, seq: after }.to_string()));
        }
        let replay = self.buffer.after(stream, after);
        let s = self.streams.get_mut(&stream).expect("checked above");
        let (complete, resume_from) = (s.complete, after);
        s.by_get = through_sink.is_none();
        if !complete {
            if let Some(old) = s.sink.replace(sink) {
                let _ = old.tx.try_send(Box::new(Frame::Replaced));
            }
            s.delivered = s.next_seq;
        }
        if self.stalled.as_ref().is_some_and(|st| st.stream == stream) {
            self.stalled = None;
        }
        if let Some(preface) = through_sink {
            if let Some(message) = preface {
                self.deliver(stream, Frame::Message(message));
            }
            for (id, data) in replay {
                self.deliver(stream, Frame::Event { id, data, last: false });
            }
            return Ok(Opened { stream, replay: Vec::new(), complete, resume_from });
        }
        Ok(Opened { stream, replay, complete, resume_from })
    }

    /// The WebSocket reading `stream` dropped without a close frame: the session waits
    /// `resume_grace` for it.
    pub(super) fn on_away(&mut self, stream: u64) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        if s.live() {
            return; // A newer connection already took over.
        }
        s.sink = None;
        self.away_since = Some(Instant::now());
    }

    /// A message from the backend (not its end).
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(line) => self.on_backend_line(line),
            Event::Parsed(msg) => self.on_backend(*msg),
            Event::Closed(_) | Event::SessionLost(_) => {}
        }
    }

    fn on_backend_line(&mut self, line: Bytes) {
        match Message::parse(&line) {
            Ok(m) => self.on_backend(m),
            Err(e) => tracing::warn!(error = %e, "The backend sent a line that is not a JSON-RPC message; dropped it."),
        }
    }

    fn on_backend(&mut self, msg: Message) {
        let line = msg.raw.clone();
        match (msg.kind, &msg.id) {
            (Kind::Result | Kind::Error, Some(id)) => match self.take_pending(id, outcome(msg.kind)) {
                Some(p) => {
                    let filtered = self.grants.as_ref().and_then(|g| g.filter_list(p.method, &line));
                    self.answer(p.stream, filtered.unwrap_or(line))
                }
                None => tracing::debug!(id = %id, "Dropped a response to a request no longer in flight."),
            },
            (Kind::Notification, _) if msg.method() == Some("notifications/progress") => {
                let target = msg.progress_token.as_ref().and_then(|t| self.tokens.get(t)).cloned();
                match target.and_then(|id| self.pending.get_mut(&id)) {
                    Some(p) => {
                        p.deadline = Instant::now() + self.config.request_timeout;
                        let stream = p.stream;
                        self.emit(stream, line, false);
                    }
                    // Progress must name a request in flight; after a cancel or a timeout the
                    // client no longer knows the token, and SDKs report it as an error.
                    None => tracing::debug!("Dropped progress for a request no longer in flight."),
                }
            }
            _ => self.emit_unrelated(line),
        }
    }

    /// A stuck reader has room again (or is gone): hand it what was held.
    fn on_room(&mut self, permit: Option<mpsc::OwnedPermit<Box<Frame>>>) {
        let Some(mut stalled) = self.stalled.take() else { return };
        let Some(permit) = permit else {
            if let Some(s) = self.streams.get_mut(&stalled.stream) {
                s.sink = None;
            }
            return;
        };
        if let Some(frame) = stalled.frames.pop_front() {
            permit.send(frame);
        }
        while let Some(frame) = stalled.frames.pop_front() {
            match stalled.tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    stalled.frames.push_front(frame);
                    self.stalled = Some(stalled);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    }

    fn on_tick(&mut self) -> Option<EndReason> {
        let now = Instant::now();
        let expired: Vec<Id> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            let Some(p) = self.take_pending(&id, "timeout") else { continue };
            self.timed_out.push(id.clone());
            let err = GatewayError::RequestTimeout(self.config.request_timeout);
            self.answer(p.stream, err.to_rpc(Some(&id)));
        }
        // Work in flight or a reader attached is activity: the idle deadline moves on, so the
        // next wake-up is never in the past.
        let live = self.streams.values().any(Stream::live);
        if live || !self.pending.is_empty() {
            self.last_activity = now;
        }
        if live {
            self.away_since = None;
        } else if self.away_since.is_some_and(|t| now >= t + self.config.resume_grace) {
            return Some(EndReason::GraceExpired);
        }
        let idle = self.pending.is_empty() && now >= self.last_activity + self.config.idle_timeout;
        idle.then_some(EndReason::Idle)
    }

    /// Gives every in-flight request its error, tells every reader why the session ended,
    /// and drops the readers (ending their streams). From now on handles are refused.
    async fn finish(core: &Mutex<Actor>, reason: &EndReason) {
        let mut stalled = {
            let mut a = lock(core);
            a.ended = true;
            a.fail_all(reason);
            a.stalled.as_ref().map(|s| s.tx.clone())
        };
        let deadline = Instant::now() + FINAL_FLUSH;
        while let Some(tx) = stalled {
            match tokio::time::timeout_at(deadline, reserve(Some(tx))).await {
                Ok(permit) => {
                    let mut a = lock(core);
                    a.on_room(permit);
                    stalled = a.stalled.as_ref().map(|s| s.tx.clone());
                }
                Err(_) => break,
            }
        }
        lock(core).streams.clear();
    }

    fn fail_all(&mut self, reason: &EndReason) {
        let err = reason.error();
        // When the session ends in a way the client must act on (initialize again), a request
        // on its own HTTP stream gets its error as `Frame::Ended`, which the frontend answers
        // with the reason's status (404) while it still can.
        let by_status = err.status() != http::StatusCode::OK;
        let ids: Vec<Id> = self.pending.keys().cloned().collect();
        for id in ids {
            if let Some(p) = self.take_pending(&id, "ended") {
                let data = err.to_rpc(Some(&id));
                match self.streams.get_mut(&p.stream) {
                    Some(s) if by_status && !s.persistent => {
                        s.owed = s.owed.saturating_sub(1);
                        self.deliver(p.stream, Frame::Ended { data, reason: reason.clone() });
                    }
                    _ => self.answer(p.stream, data),
                }
            }
        }
        let live: Vec<u64> = self.streams.iter().filter(|(_, s)| s.live()).map(|(id, _)| *id).collect();
        for stream in live {
            self.deliver(stream, Frame::Closed(reason.clone()));
        }
    }

    /// Where a reader that names no event id starts: after what was delivered, or after what
    /// was evicted unseen (a gap it cannot ask for).
    fn undelivered_from(&self, stream: u64) -> u64 {
        let s = &self.streams[&stream];
        s.delivered.max(s.evicted_through)
    }

    fn new_stream(&mut self, persistent: bool) -> u64 {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(id, Stream { persistent, ..Stream::default() });
        id
    }

    fn standalone_stream(&mut self) -> u64 {
        match self.standalone {
            Some(id) => id,
            None => {
                let id = self.new_stream(true);
                self.standalone = Some(id);
                id
            }
        }
    }

    /// Forgets a request in flight; `outcome` labels it in the metrics.
    fn take_pending(&mut self, id: &Id, outcome: &'static str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        self.metrics.done(&p, outcome);
        if let Some(t) = &p.token {
            if self.tokens.get(t) == Some(id) {
                self.tokens.remove(t);
            }
        }
        self.in_flight.sub(1);
        Some(p)
    }

    /// A client cancelled a request: forget it; a request stream ends when nothing else is owed.
    fn cancel(&mut self, id: &Id) {
        let Some(p) = self.take_pending(id, "cancelled") else { return };
        let Some(s) = self.streams.get_mut(&p.stream) else { return };
        s.owed -= 1;
        if s.owed == 0 && !s.persistent {
            if let Some(sink) = s.sink.take() {
                let _ = sink.tx.try_send(Box::new(Frame::End));
            }
            s.complete = true;
            if s.buffered == 0 {
                self.streams.remove(&p.stream);
            }
        }
    }

    fn answer(&mut self, stream: u64, data: Bytes) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        s.owed = s.owed.saturating_sub(1);
        let last = s.owed == 0 && !s.persistent;
        self.emit(stream, data, last);
    }

    /// A message that answers no request goes to the oldest stream still owed a response
    /// that someone reads, else to the standalone stream (read now, or kept for the next reader).
    fn emit_unrelated(&mut self, data: Bytes) {
        let owed = self.streams.iter().find(|(_, s)| s.owed > 0 && !s.complete && s.live()).map(|(id, _)| *id);
        let target = owed.unwrap_or_else(|| self.standalone_stream());
        self.emit(target, data, false);
    }

    /// Gives an event its id, keeps it for replay, and hands it to the stream's reader.
    fn emit(&mut self, stream: u64, data: Bytes, last: bool) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        s.next_seq += 1;
        let id = EventId { stream, seq: s.next_seq };
        s.buffered += 1;
        if last {
            s.complete = true;
        }
        self.deliver(stream, Frame::Event { id, data: data.clone(), last });
        if last {
            if let Some(s) = self.streams.get_mut(&stream) {
                s.sink = None;
            }
        }
        for old in self.buffer.push(id, data) {
            let Some(s) = self.streams.get_mut(&old.stream) else { continue };
            s.buffered -= 1;
            s.evicted_through = s.evicted_through.max(old.seq);
            if self.away_since.is_some() && s.persistent && old.seq > s.delivered {
                self.overflowed = true;
            }
            if s.complete && s.buffered == 0 {
                self.streams.remove(&old.stream);
            }
        }
    }

    /// Hands a frame to a stream's reader according to the reader's [`Delivery`].
    fn deliver(&mut self, stream: u64, frame: Frame) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let Some(sink) = &s.sink else { return };
        let seq = match &frame {
            Frame::Event { id, .. } => Some(id.seq),
            _ => None,
        };
        let frame = Box::new(frame);
        if let Some(stalled) = self.stalled.as_mut().filter(|st| st.stream == stream) {
            stalled.frames.push_back(frame);
            s.delivered = seq.unwrap_or(s.delivered);
            return;
        }
        match sink.tx.try_send(frame) {
            Ok(()) => s.delivered = seq.unwrap_or(s.delivered),
            Err(mpsc::error::TrySendError::Full(frame)) if sink.delivery == Delivery::Backpressure => {
                tracing::debug!(stream, "A WebSocket reader is behind; pausing the backend until it catches up.");
                self.stalled = Some(Stalled { stream, tx: sink.tx.clone(), frames: VecDeque::from([frame]) });
                s.delivered = seq.unwrap_or(s.delivered);
            }
            Err(_) => {
                tracing::debug!(stream, "A stream's reader is gone or too slow; detached it (it may resume).");
                s.sink = None;
            }
        }
    }
}

fn outcome(kind: Kind) -> &'static str {
    match kind {
        Kind::Result => "ok",
        _ => "error",
    }
}

/// Waits for room in a reader's queue; `None` when the reader is gone.
async fn reserve(tx: Option<mpsc::Sender<Box<Frame>>>) -> Option<mpsc::OwnedPermit<Box<Frame>>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}
