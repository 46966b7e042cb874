//! The stdio line codec, fed in chunks.
//!
//! Input: two bytes of line bound, one byte of chunking seed, then the stream. However the
//! stream is cut into reads, the codec returns no line over the bound and no line break, and
//! exactly the lines the whole stream holds, until the first line over the bound, where it
//! refuses.
#![no_main]

#[path = "shared/split.rs"]
mod split;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mcp_edge::jsonrpc::codec::{LineCodec, LineError};
use split::chunks;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]) % 300);
    let seed = data[2];
    let stream = &data[3..];

    let expected = reference(stream, max);
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut refused = false;
    'read: for chunk in chunks(stream, seed) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => {
                    assert!(line.len() <= max, "a line of {} bytes passed the bound {max}", line.len());
                    assert!(!line.contains(&b'\n'), "a line holds a line break");
                    got.push(line);
                }
                Ok(None) => break,
                Err(LineError::TooLong(n)) => {
                    assert_eq!(n, max);
                    refused = true;
                    break 'read;
                }
                Err(LineError::Io(e)) => panic!("decode made up an I/O error: {e}"),
            }
        }
    }
    // What the whole stream says, whatever the reads were.
    assert_eq!(got, expected.lines[..got.len()], "lines differ from the stream's lines");
    assert_eq!(refused, expected.refused, "refused {refused} where the stream's lines say {}", expected.refused);
    if !refused {
        assert_eq!(got.len(), expected.lines.len());
        // At the end of the stream a partial line is an error, never a line.
        match codec.decode_eof(&mut buf) {
            Ok(None) => assert!(buf.is_empty()),
            Ok(Some(line)) => panic!("decode_eof made up a line: {line:?}"),
            Err(_) => assert!(!buf.is_empty()),
        }
    }
});

struct Expected {
    lines: Vec<Bytes>,
    /// Some line (or the unterminated tail) is over the bound.
    refused: bool,
}

/// The lines of the whole stream: split on `\n`, one trailing `\r` dropped, up to the first
/// line longer than `max`.
fn reference(stream: &[u8], max: usize) -> Expected {
    let mut lines = Vec::new();
    let mut rest = stream;
    while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
        let mut line = &rest[..pos];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.len() > max {
            return Expected { lines, refused: true };
        }
        lines.push(Bytes::copy_from_slice(line));
        rest = &rest[pos + 1..];
    }
    // An unterminated tail may still end in the `\r` of a `\r\n` yet to come.
    let tail = rest.len() - usize::from(rest.last() == Some(&b'\r'));
    Expected { lines, refused: tail > max }
}
