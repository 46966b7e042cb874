//! Raw sockets for hostile input: hand-written HTTP/1.1 bytes in, responses parsed by hand out,
//! and WebSocket frames built byte by byte (masked or not, FIN or not, any opcode).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one read waits.
pub const T: Duration = Duration::from_secs(5);

/// One HTTP/1.1 response as it came off the wire.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A TCP connection to the gateway.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One WebSocket frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame as a client writes it: `mask` is `None` for an (illegal) unmasked client frame.
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked text frame with FIN set: what a well-behaved client sends.
pub fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, TEXT, Some([0x37, 0xfa, 0x21, 0x3d]), payload)
}

/// A masked frame with the given FIN and opcode.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, Some([0x5a, 0x01, 0xc3, 0x9e]), payload)
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("the gateway accepts");
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("the gateway reads");
        self.stream.flush().await.unwrap();
    }

    /// Writes, ignoring a connection the gateway already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads more into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await.expect("the gateway answers in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Makes sure `n` bytes are buffered; panics if the stream ends first.
    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(self.fill(T).await, "the connection ended in the middle of an answer: {:?}", self.lossy());
        }
    }

    fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// The next HTTP response (`Content-Length`, chunked, or up to the end of the stream).
    pub async fn answer(&mut self) -> HttpAnswer {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            assert!(self.fill(T).await, "the connection ended without an answer: {:?}", self.lossy());
        };
        let head = String::from_utf8(self.take(head_end + 4)).expect("an ASCII response head");
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = HttpAnswer { status, headers, body: Vec::new() };
        let no_body = status == 101 || status == 204 || status == 304;
        if no_body {
            return answer;
        }
        if answer.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    assert!(self.fill(T).await, "the chunked body ended early");
                };
                let size_line = String::from_utf8(self.take(line_end + 2)).unwrap();
                let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap();
                self.need(size + 2).await;
                let chunk = self.take(size + 2);
                if size == 0 {
                    break;
                }
                answer.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = answer.header("content-length") {
            let len: usize = len.parse().unwrap();
            self.need(len).await;
            answer.body = self.take(len);
        } else {
            while self.fill(T).await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    /// Everything that arrives until the gateway closes the connection; panics if it stays
    /// open past `within`.
    pub async fn until_closed(&mut self, within: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the gateway kept the connection open; it sent: {:?}", self.lossy());
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("the gateway kept the connection open; it sent: {:?}", self.lossy()),
                Ok(Ok(0)) | Ok(Err(_)) => return std::mem::take(&mut self.buf),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether nothing arrives (and the connection stays open) for `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(quiet, self.stream.read(&mut chunk)).await {
            Err(_) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// The next WebSocket frame from the server, or `None` when the connection ends.
    pub async fn frame(&mut self) -> Option<Frame> {
        while self.buf.len() < 2 {
            if !self.fill(T).await {
                return None;
            }
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "a server never masks");
        let (len, header) = match b1 & 0x7f {
            126 => {
                self.need(4).await;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.need(10).await;
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.need(header + len).await;
        let payload = self.take(header + len).split_off(header);
        Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload })
    }

    /// The next text frame as JSON, skipping pings; panics on anything else.
    pub async fn ws_json(&mut self) -> Value {
        loop {
            let f = self.frame().await.expect("a frame, not the end of the connection");
            match f.opcode {
                TEXT => {
                    assert!(f.fin, "the gateway sends whole messages");
                    return serde_json::from_slice(&f.payload).expect("JSON");
                }
                PING => continue,
                _ => panic!("expected a text frame, got {f:?}"),
            }
        }
    }

    /// Reads to the close frame (skipping others) and returns its code (`None` when it has
    /// no payload or the connection ended without one), then checks the connection ends.
    pub async fn ws_close_code(&mut self) -> Option<u16> {
        loop {
            match self.frame().await {
                Some(f) if f.opcode == CLOSE => {
                    let code = (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    // Answer the close, as a client does; the gateway then ends the connection.
                    let _ = self.try_send(&masked(true, CLOSE, &f.payload[..f.payload.len().min(2)])).await;
                    self.until_closed(T).await;
                    return code;
                }
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

/// An upgrade request for `path` with the headers a browser sends, plus `extra` lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mcp\r\n{extra}\r\n"
    )
}

/// A WebSocket opened by hand: the 101 is checked, frames go raw from here on.
pub async fn ws(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(upgrade_request(addr, "/mcp", "").as_bytes()).await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 101, "the upgrade succeeds: {answer:?}");
    // The accept key of the RFC 6455 example nonce.
    assert_eq!(answer.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    raw
}
