//! The upstream `text/event-stream` decoder, fed whole and in chunks.
//!
//! Input: two bytes of bound, one byte of chunking seed, then the stream. Feeding the stream
//! in one piece and cut into reads gives the same events, the same last event id and retry
//! delay, and refuses (too long) in both cases or in neither. No event's data is over the
//! bound.
#![no_main]

#[path = "shared/split.rs"]
mod split;

use libfuzzer_sys::fuzz_target;
use mcp_edge::backend::event_stream::{Decoder, SseEvent, TooLong};
use split::chunks;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]) % 512);
    let seed = data[2];
    let stream = &data[3..];

    let mut whole = Decoder::new(max);
    let whole_events = whole.feed(stream);

    let mut split = Decoder::new(max);
    let mut split_events = Vec::new();
    let mut split_result = Ok(());
    // Seed 0 would keep the stream whole: always cut it here.
    for chunk in chunks(stream, seed.max(1)) {
        match split.feed(chunk) {
            Ok(events) => split_events.extend(events),
            Err(e) => {
                split_result = Err(e);
                break;
            }
        }
    }

    match (&whole_events, &split_result) {
        (Ok(events), Ok(())) => {
            assert_eq!(events, &split_events, "split feeding changed the events");
            assert_eq!(whole.last_id, split.last_id);
            assert_eq!(whole.retry, split.retry);
            check(events, max);
        }
        (Err(TooLong(a)), Err(TooLong(b))) => assert_eq!((*a, *b), (max, max)),
        _ => panic!("whole: {whole_events:?}, split: {split_result:?} (bound {max})"),
    }

    // After a reset (a new body after a broken one) the decoder reads a stream afresh, keeping
    // only the last event id and the retry delay.
    let (last_id, retry) = (split.last_id.clone(), split.retry);
    split.reset();
    assert_eq!((&split.last_id, split.retry), (&last_id, retry));
    let mut fresh = Decoder::new(max);
    fresh.last_id = last_id;
    fresh.retry = retry;
    assert_eq!(split.feed(stream), fresh.feed(stream), "reset left state behind");
});

fn check(events: &[SseEvent], max: usize) {
    for e in events {
        assert!(e.data.len() <= max, "an event of {} bytes passed the bound {max}", e.data.len());
        assert!(e.event.as_deref() != Some(""), "an empty event type is the default type");
        assert!(!e.id.as_deref().is_some_and(|id| id.is_empty() || id.contains('\0')), "bad event id {:?}", e.id);
    }
}
