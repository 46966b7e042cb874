//! Newline-delimited framing for stdio pipes, with a hard bound on line length.
//!
//! A line longer than the bound is an error, never unbounded memory: the decoder refuses
//! as soon as the buffered, still unterminated line passes the bound.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream on `\n`, drops a trailing `\r`, and refuses lines over `max` bytes.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// Where the search for `\n` resumes, so a long line is scanned once, not per read.
    scanned: usize,
}

impl LineCodec {
    pub fn new(max: usize) -> Self {
        LineCodec { max, scanned: 0 }
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        if let Some(pos) = buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + pos;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max {
                return Err(LineError::TooLong(self.max));
            }
            return Ok(Some(line.freeze()));
        }
        // A trailing `\r` may be the start of the line's `\r\n`: it does not count yet.
        if buf.len() - usize::from(buf.last() == Some(&b'\r')) > self.max {
            return Err(LineError::TooLong(self.max));
        }
        self.scanned = buf.len();
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_bounds() {
        let mut c = LineCodec::new(8);
        let mut b = BytesMut::from(&b"abc\r\nde"[..]);
        assert_eq!(&c.decode(&mut b).unwrap().unwrap()[..], b"abc");
        assert!(c.decode(&mut b).unwrap().is_none());
        b.extend_from_slice(b"f\n");
        assert_eq!(&c.decode(&mut b).unwrap().unwrap()[..], b"def");
        b.extend_from_slice(b"0123456789");
        assert!(matches!(c.decode(&mut b), Err(LineError::TooLong(8))));
    }

    #[test]
    fn a_crlf_split_across_reads_is_not_counted_against_the_bound() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::from(&b"abcd\r"[..]);
        assert!(c.decode(&mut b).unwrap().is_none(), "a line of 4 bytes and the \\r of its \\r\\n");
        b.extend_from_slice(b"\n");
        assert_eq!(&c.decode(&mut b).unwrap().unwrap()[..], b"abcd");
        b.extend_from_slice(b"abcd\r\r");
        assert!(matches!(c.decode(&mut b), Err(LineError::TooLong(4))), "only one \\r can end a line");
    }
}
