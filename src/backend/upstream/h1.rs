//! HTTP/1.1 exchanges on a connection owned by the task that makes them.
//!
//! The task that sends a request writes it, reads the response head, then reads the body from
//! the socket itself, and the connection goes back to the idle list when the body has ended.
//! hyper's client instead runs each connection in a task of its own, so every exchange crossed
//! from the caller's task to the connection's and back three times (the request, the response
//! head, the body), each a wake-up, often of the other worker thread. One request at a time per
//! connection; the response is framed as RFC 9112 section 6 says. `HEAD` is never sent: its
//! answer's `Content-Length` would mislead the framing.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Outgoing;

/// The longest response head (status line and headers), and the most trailer bytes.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have.
const MAX_HEADERS: usize = 64;
/// The least room a read is given.
const READ_SIZE: usize = 8 * 1024;
/// The most room a read of a long body is given at once.
const MAX_READ: usize = 256 * 1024;
/// Body data up to this size is copied out of the read buffer, so what a session keeps of an
/// answer never holds the connection's buffer; longer data is handed out as it lies.
const COPY_BELOW: usize = 64 * 1024;
/// The longest chunk-size line.
const MAX_LINE: usize = 4096;

/// One HTTP/1.1 connection and what was read from it and not yet consumed.
pub struct Conn<I> {
    io: I,
    buf: BytesMut,
}

/// How a response body ends, and whether the connection can carry another request after it.
#[derive(Debug)]
pub struct Reader {
    state: State,
    reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// This many bytes are left.
    Length(u64),
    /// Until the upstream closes the connection.
    Close,
    ChunkSize,
    /// This many bytes of the current chunk are left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers(usize),
    Done,
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn closed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, why.to_owned())
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    pub fn new(io: I) -> Conn<I> {
        Conn { io, buf: BytesMut::with_capacity(READ_SIZE) }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked.
    pub fn is_open(&mut self) -> bool {
        self.poll_open(&mut Context::from_waker(futures_util::task::noop_waker_ref()))
    }

    /// [`Conn::is_open`], and `cx` is woken when that may change (the upstream closing it).
    pub fn poll_open(&mut self, cx: &mut Context<'_>) -> bool {
        self.buf.is_empty() && self.poll_fill(cx, READ_SIZE).is_pending()
    }

    /// Writes a request's head and body, in one write when the socket takes them.
    pub async fn write(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let n = match head.is_empty() {
                true => self.io.write(body).await?,
                false => self.io.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]).await?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        self.io.flush().await
    }

    /// Reads a response head, skipping interim (1xx) responses.
    pub async fn read_head(&mut self) -> io::Result<(Response<()>, Reader)> {
        loop {
            match self.parse_head()? {
                Some((head, _)) if head.status().is_informational() => {}
                Some(done) => return Ok(done),
                None if self.buf.len() >= MAX_HEAD => return Err(invalid("a response head over 64 KiB")),
                None => {
                    if poll_fn(|cx| self.poll_fill(cx, READ_SIZE)).await? == 0 {
                        return Err(closed("the upstream closed the connection before answering"));
                    }
                }
            }
        }
    }

    /// A whole head at the start of the buffer, consumed, or `None` when more is needed.
    fn parse_head(&mut self) -> io::Result<Option<(Response<()>, Reader)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        // Where each header's name and value lie in the head: the head is parsed in place, then
        // copied out once, so the values it holds never keep the read buffer.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => return Err(invalid("a response head over 64 KiB")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("a malformed response head: {e}"))),
        };
        let code = parsed.code.unwrap_or_default();
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let base = self.buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = (at(h.name.as_bytes()), h.name.len() as u32, at(h.value), h.value.len() as u32);
        }
        let head = Bytes::copy_from_slice(&self.buf[..len]);
        self.buf.advance(len);

        let status = StatusCode::from_u16(code).map_err(|_| invalid(format!("a response status of {code}")))?;
        let mut map = HeaderMap::with_capacity(count);
        let (mut length, mut chunked, mut coded, mut close) = (None::<u64>, false, false, version == Version::HTTP_10);
        for &(ns, nl, vs, vl) in &spans[..count] {
            let (ns, vs) = (ns as usize, vs as usize);
            let name = HeaderName::from_bytes(&head[ns..ns + nl as usize]).map_err(|_| invalid("a bad header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl as usize))
                .map_err(|_| invalid("a bad header value"))?;
            if name == CONTENT_LENGTH {
                let n = std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.trim().parse::<u64>().ok());
                match (n, length) {
                    (None, _) => return Err(invalid("a bad Content-Length")),
                    (Some(n), Some(seen)) if n != seen => return Err(invalid("two different Content-Lengths")),
                    (n, _) => length = n,
                }
            } else if name == TRANSFER_ENCODING {
                coded = true;
                chunked = value
                    .as_bytes()
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == CONNECTION {
                close |= value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            map.append(name, value);
        }
        let state = match () {
            _ if status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED =>
            {
                State::Done
            }
            // Transfer-Encoding over Content-Length; with both, the connection is not reused.
            _ if coded && chunked => State::ChunkSize,
            _ if coded => State::Close,
            _ => match length {
                Some(0) => State::Done,
                Some(n) => State::Length(n),
                None => State::Close,
            },
        };
        let reusable = !close && state != State::Close && !(coded && length.is_some());
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = map;
        Ok(Some((resp, Reader { state, reusable })))
    }

    /// Reads more into the buffer, with room for at least `want` bytes (up to `MAX_READ`).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(want.clamp(READ_SIZE, MAX_READ));
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// `n` bytes from the front of the buffer.
    fn take(&mut self, n: usize) -> Bytes {
        if n < COPY_BELOW {
            let data = Bytes::copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            return data;
        }
        self.buf.split_to(n).freeze()
    }

    /// What `read` makes of a whole line at the front of the buffer (without its line end),
    /// the line consumed; `None` while the buffer holds no whole line.
    fn line<T>(&mut self, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let end = memchr::memchr(b'\n', &self.buf)?;
        let text = &self.buf[..end];
        let seen = read(text.strip_suffix(b"\r").unwrap_or(text));
        self.buf.advance(end + 1);
        Some(seen)
    }
}

impl Reader {
    /// Whether the connection can carry another request once the body has ended.
    pub fn reusable(&self) -> bool {
        self.reusable && self.is_end()
    }

    /// Whether the whole body has been read (its last bytes may be the ones just returned).
    pub fn is_end(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// The exact bytes left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body, `None` at its end.
    pub fn poll_data<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<I>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let buffered = conn.buf.len() as u64;
            let want = match self.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Length(n) | State::ChunkData(n) if buffered > 0 => {
                    let take = n.min(buffered);
                    self.state = match self.state {
                        State::Length(_) => State::Length(n - take),
                        _ if take == n => State::ChunkEnd,
                        _ => State::ChunkData(n - take),
                    };
                    return Poll::Ready(Some(Ok(conn.take(take as usize))));
                }
                State::Length(n) | State::ChunkData(n) => n,
                State::Close if buffered > 0 => return Poll::Ready(Some(Ok(conn.take(buffered as usize)))),
                State::Close => READ_SIZE as u64,
                State::ChunkSize => match conn.line(chunk_size) {
                    Some(size) => {
                        self.state = match size {
                            Ok(0) => State::Trailers(0),
                            Ok(n) => State::ChunkData(n),
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        };
                        continue;
                    }
                    None if conn.buf.len() > MAX_LINE => {
                        return Poll::Ready(Some(Err(invalid("a chunk-size line over 4 KiB"))))
                    }
                    None => READ_SIZE as u64,
                },
                State::ChunkEnd => match conn.line(|line| line.is_empty()) {
                    Some(true) => {
                        self.state = State::ChunkSize;
                        continue;
                    }
                    Some(false) => return Poll::Ready(Some(Err(invalid("chunk data longer than its size")))),
                    None if conn.buf.len() > 2 => {
                        return Poll::Ready(Some(Err(invalid("chunk data longer than its size"))))
                    }
                    None => READ_SIZE as u64,
                },
                State::Trailers(seen) => match conn.line(<[u8]>::len) {
                    Some(0) => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Some(len) if seen + len <= MAX_HEAD => {
                        self.state = State::Trailers(seen + len + 2);
                        continue;
                    }
                    Some(_) => return Poll::Ready(Some(Err(invalid("trailers over 64 KiB")))),
                    None if seen + conn.buf.len() > MAX_HEAD => {
                        return Poll::Ready(Some(Err(invalid("trailers over 64 KiB"))))
                    }
                    None => READ_SIZE as u64,
                },
            };
            let want = usize::try_from(want).unwrap_or(MAX_READ);
            match std::task::ready!(conn.poll_fill(cx, want)) {
                Ok(0) if self.state == State::Close => {
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(closed("the upstream closed the connection before the body's end"))))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

/// A chunk-size line's size (extensions ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return Err(invalid("a bad chunk size"));
    }
    let text = std::str::from_utf8(hex).map_err(|_| invalid("a bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("a bad chunk size"))
}

/// A request's head on the wire: request line (origin-form target), `Host`, the request's
/// headers, and `Content-Length` when there is a body or the method expects one. Written from
/// the request as the gateway made it, with no header map between.
pub fn encode_head(req: &Outgoing, host: &HeaderValue) -> Vec<u8> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    line(b"host", host.as_bytes());
    line(b"accept", req.accept().as_bytes());
    if req.body.is_some() {
        line(b"content-type", super::JSON.as_bytes());
    }
    for (name, value) in req.own().iter().map(|(n, v)| (n, v)).chain(req.configured()) {
        if name != CONTENT_LENGTH {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let body_len = req.body.as_ref().map_or(0, Bytes::len);
    let bodiless = matches!(req.method, http::Method::GET | http::Method::HEAD | http::Method::DELETE);
    if body_len > 0 || !bodiless {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = body_len;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        line(b"content-length", &digits[at..]);
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    /// A connection whose upstream has sent `wire` in pieces of `piece` bytes, then closes.
    async fn answered(wire: &[u8], piece: usize) -> Conn<DuplexStream> {
        let (ours, mut theirs) = duplex(1 << 20);
        let wire = wire.to_vec();
        tokio::spawn(async move {
            for part in wire.chunks(piece) {
                theirs.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        Conn::new(ours)
    }

    async fn body(conn: &mut Conn<DuplexStream>, reader: &mut Reader) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(data) = poll_fn(|cx| reader.poll_data(conn, cx)).await {
            all.extend_from_slice(&data?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_chunks_or_close_in_any_pieces() {
        let cases: [(&[u8], &[u8], bool); 4] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nMcp-Session-Id: s1\r\n\r\nhello", b"hello", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
                b"hello world",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"until the end", false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", true),
        ];
        for (wire, want, reusable) in cases {
            for piece in [1, 3, 7, wire.len()] {
                let mut conn = answered(wire, piece).await;
                let (head, mut reader) = conn.read_head().await.unwrap();
                assert!(head.status().is_success(), "{head:?}");
                assert_eq!(body(&mut conn, &mut reader).await.unwrap(), want, "pieces of {piece}");
                assert_eq!(reader.reusable(), reusable, "{}", String::from_utf8_lossy(wire));
            }
        }
        let mut conn = answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nmcp-session-id: abc\r\n\r\n{}", 64).await;
        let (head, _) = conn.read_head().await.unwrap();
        assert_eq!(head.headers()["mcp-session-id"], "abc");
        assert_eq!(head.headers()[CONTENT_LENGTH], "2");
    }

    #[tokio::test]
    async fn broken_answers_are_errors_that_say_why() {
        let bad: [(&[u8], &str); 5] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", "before the body's end"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "longer than its size"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "two different"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "malformed"),
        ];
        for (wire, why) in bad {
            let mut conn = answered(wire, 4).await;
            let error = match conn.read_head().await {
                Ok((_, mut reader)) => body(&mut conn, &mut reader).await.unwrap_err(),
                Err(e) => e,
            };
            assert!(error.to_string().contains(why), "{error} for {}", String::from_utf8_lossy(wire));
        }
        let mut conn = answered(b"", 1).await;
        let e = conn.read_head().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_request_is_written_whole_and_an_idle_connection_knows_when_it_was_closed() {
        let (ours, mut theirs) = duplex(64);
        let mut conn = Conn::new(ours);
        let body = Bytes::from(vec![b'b'; 300]);
        let uri = http::Uri::from_static("http://up:8080/mcp?x=1");
        let mut req = Outgoing::new(http::Method::POST, uri, "application/json", Some(body.clone()));
        req.header(HeaderName::from_static("mcp-session-id"), HeaderValue::from_static("s1"));
        let head = encode_head(&req, &HeaderValue::from_static("up:8080"));
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.map(|_| all)
        });
        conn.write(&head, &body).await.unwrap();
        assert!(conn.is_open());
        drop(conn);
        let wire = String::from_utf8(reading.await.unwrap().unwrap()).unwrap();
        assert!(wire.starts_with(
            "POST /mcp?x=1 HTTP/1.1\r\nhost: up:8080\r\naccept: application/json\r\ncontent-type: application/json\r\n\
             mcp-session-id: s1\r\ncontent-length: 300\r\n\r\nbbb"
        ));
        assert_eq!(wire.len(), head.len() + 300);
        let get = Outgoing::new(http::Method::GET, http::Uri::from_static("http://up/"), "text/event-stream", None);
        assert_eq!(
            encode_head(&get, &HeaderValue::from_static("up")),
            b"GET / HTTP/1.1\r\nhost: up\r\naccept: text/event-stream\r\n\r\n",
            "no body, no length"
        );

        let (ours, theirs) = duplex(64);
        let mut conn = Conn::new(ours);
        drop(theirs);
        assert!(!conn.is_open(), "the upstream closed it");
    }
}
