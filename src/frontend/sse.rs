//! SSE encoding and the streaming response body.
//!
//! Owns the wire format of `text/event-stream` (events, priming event, `retry:`, keep-alive
//! comments). The body drains a session [`Sink`](crate::session::Sink)'s receiver; when the
//! client goes away the body is dropped, and with it the receiver, which the session notices
//! on its next send.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use super::Body;
use crate::jsonrpc::single_line;
use crate::metrics::{Live, Metrics};
use crate::session::{EventId, Frame};

/// `id: <id>\nevent: message\ndata: <json>\n\n`
pub fn event(id: EventId, data: &Bytes) -> Bytes {
    let data = single_line(data);
    let mut out = BytesMut::with_capacity(data.len() + 48);
    out.put_slice(b"id: ");
    out.put_slice(id.to_string().as_bytes());
    out.put_slice(b"\nevent: message\ndata: ");
    out.put_slice(&data);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// SEP-1699 priming event: an id and empty data, so a client can resume before any message.
pub fn priming(stream: u64, seq: u64) -> Bytes {
    format!("id: {}\ndata: \n\n", EventId { stream, seq }).into()
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// How an SSE stream behaves over time.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    pub keepalive: Duration,
    /// End the stream after this long with `retry:` (SEP-1699 polling); `None` keeps it open.
    pub close_after: Option<(Duration, Duration)>,
}

/// What an SSE body counts while it lives: the `sse_streams` gauge it holds up, and the
/// bytes it sends.
pub struct Meter {
    _live: Live,
    sent: prometheus::IntCounter,
}

impl Meter {
    /// `kind`: request, get or legacy.
    pub fn new(metrics: &Metrics, route: &str, kind: &str) -> Meter {
        let transport = if kind == "legacy" { "legacy_sse" } else { "http" };
        Meter {
            _live: Live::new(metrics.sse_streams.with_label_values(&[route, kind])),
            sent: metrics.bytes_sent.with_label_values(&[transport]),
        }
    }
}

struct State {
    meter: Meter,
    prefix: std::vec::IntoIter<Bytes>,
    rx: Option<mpsc::Receiver<Box<Frame>>>,
    keepalive: tokio::time::Interval,
    close_at: Option<(Instant, Duration)>,
}

/// A body that sends `prefix` (already encoded), then live frames from `rx` (when given),
/// keep-alive comments while idle, and ends on the stream's last message.
pub fn body(prefix: Vec<Bytes>, rx: Option<mpsc::Receiver<Box<Frame>>>, opts: StreamOptions, meter: Meter) -> Body {
    let start = Instant::now() + opts.keepalive;
    let mut keepalive = interval_at(start, opts.keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        meter,
        prefix: prefix.into_iter(),
        rx,
        keepalive,
        close_at: opts.close_after.map(|(after, retry)| (Instant::now() + after, retry)),
    };
    let frames = stream::unfold(state, |mut st| async move {
        if let Some(chunk) = st.prefix.next() {
            st.meter.sent.inc_by(chunk.len() as u64);
            return Some((Ok::<_, Infallible>(BodyFrame::data(chunk)), st));
        }
        let rx = st.rx.as_mut()?;
        let close_at = st.close_at.map(|(at, _)| at);
        // Cancel-safe: `recv` and `tick` lose nothing when another branch wins.
        let chunk = tokio::select! {
            f = rx.recv() => match f.map(|f| *f) {
                Some(Frame::Event { id, data, last }) => {
                    if last {
                        st.rx = None;
                    }
                    event(id, &data)
                }
                Some(Frame::Ended { data, .. }) => {
                    // Too late for a status: the error goes out as an event (a batch may get
                    // several); the `Closed` that follows ends the stream.
                    let mut out = b"data: ".to_vec();
                    out.extend_from_slice(&single_line(&data));
                    out.extend_from_slice(b"\n\n");
                    Bytes::from(out)
                }
                Some(Frame::Message(data)) => {
                    let mut out = b"event: message\ndata: ".to_vec();
                    out.extend_from_slice(&single_line(&data));
                    out.extend_from_slice(b"\n\n");
                    Bytes::from(out)
                }
                Some(Frame::End | Frame::Closed(_) | Frame::Replaced | Frame::Stop(_)) | None => return None,
            },
            _ = st.keepalive.tick() => Bytes::from_static(KEEPALIVE),
            _ = sleep_until(close_at.unwrap_or_else(far_future)), if close_at.is_some() => {
                let retry = st.close_at.map(|(_, r)| r).unwrap_or_default();
                st.rx = None;
                Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
            }
        };
        st.meter.sent.inc_by(chunk.len() as u64);
        Some((Ok(BodyFrame::data(chunk)), st))
    });
    StreamBody::new(frames).boxed_unsync()
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
