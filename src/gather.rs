//! A body's bytes gathered as its frames come: the usual one-frame body is kept as it is
//! (no copy, no list of frames), a longer one is copied together once.

use bytes::Bytes;

#[derive(Default)]
pub struct Gather {
    first: Option<Bytes>,
    more: Vec<u8>,
    len: usize,
}

impl Gather {
    pub fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(data);
            return;
        }
        if let Some(first) = self.first.take() {
            self.more.reserve(first.len() + data.len());
            self.more.extend_from_slice(&first);
        }
        self.more.extend_from_slice(&data);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| Bytes::from(self.more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_kept_and_more_are_joined_in_order() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let mut g = Gather::default();
        g.push(one.clone());
        let kept = g.finish();
        assert_eq!(kept.as_ptr(), one.as_ptr(), "a single frame is not copied");
        let mut g = Gather::default();
        for part in ["{\"a\"", ":", "1}"] {
            g.push(Bytes::from_static(part.as_bytes()));
        }
        assert_eq!(g.len(), 7);
        assert_eq!(&g.finish()[..], b"{\"a\":1}");
        assert!(Gather::default().finish().is_empty() && Gather::default().is_empty());
    }
}
