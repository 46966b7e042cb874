//! The bounded per-session buffer of server→client events kept for `Last-Event-ID` replay.

use std::collections::VecDeque;

use bytes::Bytes;

/// Identifies an SSE event: which logical stream of the session, and its place in it.
/// Rendered `"<stream>-<seq>"`; sequence 0 is the priming event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventId {
    pub stream: u64,
    pub seq: u64,
}

impl EventId {
    pub fn parse(text: &str) -> Option<EventId> {
        let (s, n) = text.trim().split_once('-')?;
        Some(EventId { stream: s.parse().ok()?, seq: n.parse().ok()? })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.stream, self.seq)
    }
}

/// Events of every stream of one session, oldest first, bounded by count and bytes.
#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<(EventId, Bytes)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl ReplayBuffer {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        ReplayBuffer { events: VecDeque::new(), bytes: 0, max_events, max_bytes }
    }

    /// Appends an event; returns the ids evicted to make room.
    pub fn push(&mut self, id: EventId, data: Bytes) -> Vec<EventId> {
        self.bytes += data.len();
        self.events.push_back((id, data));
        let mut evicted = Vec::new();
        while self.events.len() > self.max_events || (self.bytes > self.max_bytes && self.events.len() > 1) {
            let Some((old, data)) = self.events.pop_front() else {
                break;
            };
            self.bytes -= data.len();
            evicted.push(old);
        }
        evicted
    }

    /// The events of `stream` after sequence `after`, oldest first.
    pub fn after(&self, stream: u64, after: u64) -> Vec<(EventId, Bytes)> {
        self.events.iter().filter(|(id, _)| id.stream == stream && id.seq > after).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_filtered() {
        let mut b = ReplayBuffer::new(3, 1000);
        for seq in 1..=4 {
            b.push(EventId { stream: seq % 2, seq }, Bytes::from_static(b"x"));
        }
        let got: Vec<_> = b.after(1, 0).into_iter().map(|(id, _)| id.seq).collect();
        assert_eq!(got, vec![3]);
        assert_eq!(b.after(0, 2).len(), 1);
        let mut small = ReplayBuffer::new(10, 4);
        small.push(EventId { stream: 1, seq: 1 }, Bytes::from_static(b"abc"));
        let ev = small.push(EventId { stream: 1, seq: 2 }, Bytes::from_static(b"abc"));
        assert_eq!(ev, vec![EventId { stream: 1, seq: 1 }]);
        assert_eq!(EventId::parse("12-7"), Some(EventId { stream: 12, seq: 7 }));
        assert_eq!(EventId::parse("x"), None);
    }
}
