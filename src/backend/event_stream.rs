//! An incremental, bounded `text/event-stream` decoder for upstream SSE bodies.
//!
//! Follows the WHATWG event-stream rules the MCP transports rely on: `data` lines join with
//! `\n`, `id` sets the last event id (kept across events), `retry` sets the reconnection
//! delay, `event` names the type, lines starting with `:` are comments, and a blank line
//! dispatches. Line ends may be `\n`, `\r\n` or `\r`. Knows nothing about JSON-RPC.

use std::time::Duration;

use bytes::{Buf, BytesMut};

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `None` means the default type `message`.
    pub event: Option<String>,
    pub data: String,
    /// The id in force when this event was dispatched (its own or an earlier one).
    pub id: Option<String>,
}

impl SseEvent {
    /// Whether the event has the default type, `message`.
    pub fn is_message(&self) -> bool {
        matches!(self.event.as_deref(), None | Some("message"))
    }
}

/// An event grew past the decoder's bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an upstream SSE event is longer than {0} bytes")]
pub struct TooLong(pub usize);

/// Decodes chunks of an event stream into events.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
    /// Skip a `\n` that follows a `\r` split across chunks.
    after_cr: bool,
    /// How much of `buf` is known to hold no line end.
    scanned: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// An `id:` read in the event being parsed; it counts once the event is dispatched.
    pending_id: Option<String>,
    /// The last event id of a dispatched event: where a resumed stream picks up.
    pub last_id: Option<String>,
    /// The reconnection delay the stream asked for.
    pub retry: Option<Duration>,
}

impl Decoder {
    /// A decoder that refuses events (and lines) longer than `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            max,
            after_cr: false,
            scanned: 0,
            event: None,
            data: String::new(),
            has_data: false,
            pending_id: None,
            last_id: None,
            retry: None,
        }
    }

    /// Forgets a partly read event (a new body follows a broken one); keeps the last event id
    /// and the reconnection delay.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.after_cr = false;
        self.scanned = 0;
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.pending_id = None;
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, TooLong> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            // A `\r\n` split across chunks is one line end: skip the `\n` once it is seen.
            if self.after_cr {
                match self.buf.first() {
                    None => break,
                    Some(b'\n') => self.buf.advance(1),
                    Some(_) => {}
                }
                self.after_cr = false;
            }
            // Bytes before `scanned` hold no line end: a long line arriving in many chunks is
            // scanned once, not once per chunk.
            let found = self.buf[self.scanned..].iter().position(|b| *b == b'\n' || *b == b'\r');
            let Some(end) = found.map(|i| i + self.scanned) else {
                self.scanned = self.buf.len();
                break;
            };
            self.scanned = 0;
            // A line is held whole however it arrives: refuse a long one here as well as
            // unfinished (below), so whether a stream passes does not depend on its chunks.
            if end > self.max {
                return Err(TooLong(self.max));
            }
            self.after_cr = self.buf[end] == b'\r';
            let line = self.buf.split_to(end + 1);
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            if let Some(event) = self.line(&line) {
                out.push(event);
            }
            if self.data.len() > self.max {
                return Err(TooLong(self.max));
            }
        }
        if self.buf.len() > self.max {
            return Err(TooLong(self.max));
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.pending_id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if let Some(id) = self.pending_id.take() {
            // An empty id resets the last event id: nothing to resume from.
            self.last_id = (!id.is_empty()).then_some(id);
        }
        let event = self.event.take().filter(|e| !e.is_empty());
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        let data = std::mem::take(&mut self.data);
        Some(SseEvent { event, data, id: self.last_id.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_chunks_and_line_ends() {
        let mut d = Decoder::new(1024);
        let mut got = d.feed(b"id: 1-1\r").unwrap();
        got.extend(d.feed(b"\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: endpoint\ndata: /m?s=1\n").unwrap());
        got.extend(d.feed(b"\nretry: 1500\nid: 1-2\ndata: x\ndata: y\n\n").unwrap());
        assert_eq!(
            got,
            vec![
                SseEvent { event: None, data: "{\"a\":1}".into(), id: Some("1-1".into()) },
                SseEvent { event: Some("endpoint".into()), data: "/m?s=1".into(), id: Some("1-1".into()) },
                SseEvent { event: None, data: "x\ny".into(), id: Some("1-2".into()) },
            ]
        );
        assert_eq!(d.retry, Some(Duration::from_millis(1500)));
        assert!(got[0].is_message() && !got[1].is_message());
    }

    #[test]
    fn a_priming_event_sets_the_id_without_dispatching() {
        let mut d = Decoder::new(1024);
        assert!(d.feed(b"id: 3-0\ndata:\n\n").unwrap().len() == 1);
        let mut d = Decoder::new(1024);
        assert!(d.feed(b"id: 3-0\n\n").unwrap().is_empty());
        assert_eq!(d.last_id.as_deref(), Some("3-0"));
    }

    #[test]
    fn an_id_counts_only_once_its_event_is_complete() {
        let mut d = Decoder::new(1024);
        assert!(d.feed(b"id: 1\ndata: a\n\nid: 2\ndata: {\"par").unwrap().len() == 1);
        assert_eq!(d.last_id.as_deref(), Some("1"), "event 2 broke off: resume after 1");
        d.reset();
        let got = d.feed(b"id: 2\ndata: b\n\n").unwrap();
        assert_eq!(got, vec![SseEvent { event: None, data: "b".into(), id: Some("2".into()) }], "no fragment glued on");
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_end() {
        let mut d = Decoder::new(1024);
        let mut got = d.feed(b"event: endpoint\r").unwrap();
        got.extend(d.feed(b"\ndata: /m\r").unwrap());
        got.extend(d.feed(b"\n\r\n").unwrap());
        assert_eq!(got, vec![SseEvent { event: Some("endpoint".into()), data: "/m".into(), id: None }]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut d = Decoder::new(16);
        assert_eq!(d.feed(&[b'a'; 17]), Err(TooLong(16)));
        let mut d = Decoder::new(16);
        assert_eq!(d.feed(b"data: 0123456789\ndata: 0123456789\n"), Err(TooLong(16)));
    }

    #[test]
    fn a_long_line_is_refused_in_one_chunk_as_in_many() {
        let stream = b": a comment of more than sixteen bytes\n\ndata: x\n\n";
        assert_eq!(Decoder::new(16).feed(stream), Err(TooLong(16)));
        let mut d = Decoder::new(16);
        let split: Result<Vec<_>, _> = stream.chunks(4).map(|c| d.feed(c)).collect();
        assert_eq!(split, Err(TooLong(16)));
    }
}
