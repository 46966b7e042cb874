//! A load generator that speaks real MCP, for `scripts/bench` and `scripts/bench-ws-idle`.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080/mcp [--transport http|ws] [--sessions 8] [--duration 5]
//!         [--calls N] [--warmup 10] [--watch NAME=PID]... [--bearer TOKEN] [--interval-ms N]
//!         [--limited-ok]
//! loadgen --idle --url ws://127.0.0.1:8080/mcp --sessions 1000 [--hold 2] --watch gateway=PID
//! ```
//!
//! **Load** (the default): opens `--sessions` sessions, each on a connection of its own
//! (`initialize`, `notifications/initialized`, `--warmup` calls), then lets every session call
//! the `echo` tool in a loop, one call at a time, until `--duration` seconds or `--calls` calls
//! per session, whichever comes first. Over `http` each call is a Streamable HTTP POST on the
//! session's keep-alive connection; the server chooses a JSON or an SSE answer, and the output
//! counts which it got. Over `ws` each call is one text frame on the session's WebSocket
//! (subprotocol `mcp`). Every answer is checked: its id, and the echoed text, which names the
//! session and the call, so an answer routed to the wrong session is an error.
//!
//! `--bearer TOKEN` authenticates every session (`Authorization: Bearer` over HTTP, the
//! subprotocol `mcp.auth.TOKEN` over WebSocket); `--interval-ms` pauses between one session's
//! calls (a client under its rate); `--limited-ok` counts rate-limit answers (`-32007`) as
//! `limited` rather than errors (a flood).
//!
//! **Idle** (`--idle`): opens and initializes `--sessions` WebSocket sessions, holds them for
//! `--hold` seconds, and reports the RSS growth of the first watched process per connection,
//! and the CPU time it and the load generator spent per session opened.
//!
//! Either way it prints exactly one JSON line. Each `--watch NAME=PID` adds, for the timed
//! phase only, that process's CPU time per call (its own threads), the same for its whole
//! process tree (live descendants, plus what reaped children left in `cutime`/`cstime`), its
//! peak RSS (`VmHWM`, for the process and summed over the tree) and the tree's PSS at the end.
//!
//! Connections spread their source addresses over 127.0.0.x so that many do not exhaust one
//! address's ports. Only loopback URLs are accepted; every request has a timeout and every loop
//! a bound.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Sessions opened at once.
const PARALLEL: usize = 50;
/// The revision the sessions ask for: the newest that every measured server speaks.
const PROTOCOL: &str = "2025-06-18";
/// Longest wait for any one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bounds on what the flags may ask for.
const MAX_CALLS: u64 = 10_000_000;
const MAX_SECONDS: f64 = 600.0;
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICK_US: u64 = 10_000;

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Http,
    Ws,
}

struct Args {
    url: String,
    transport: Transport,
    sessions: usize,
    duration: Duration,
    calls: u64,
    warmup: u64,
    watch: Vec<(String, u32)>,
    idle: bool,
    hold: Duration,
    /// Sent as `Authorization: Bearer …` (HTTP) or the subprotocol `mcp.auth.…` (WebSocket).
    bearer: Option<String>,
    /// Pause between one session's calls.
    interval: Duration,
    /// Count `-32007` answers (a rate limit) as `limited`, not as errors.
    limited_ok: bool,
}

const USAGE: &str = "usage: loadgen --url URL [--transport http|ws] [--sessions N] [--duration SECS] [--calls N]
                      [--warmup N] [--watch NAME=PID]... [--bearer TOKEN] [--interval-ms N] [--limited-ok]
       loadgen --idle --url WS_URL --sessions N [--hold SECS] --watch NAME=PID";

fn usage(why: &str) -> ! {
    eprintln!("loadgen: {why}\n{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: String::new(),
        transport: Transport::Http,
        sessions: 1,
        duration: Duration::from_secs(5),
        calls: MAX_CALLS,
        warmup: 10,
        watch: Vec::new(),
        idle: false,
        hold: Duration::from_secs(2),
        bearer: None,
        interval: Duration::ZERO,
        limited_ok: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--idle" {
            a.idle = true;
            continue;
        }
        if flag == "--limited-ok" {
            a.limited_ok = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let bad = || -> ! { usage(&format!("bad value for {flag}: {v}")) };
        let secs = |v: &str| match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s <= MAX_SECONDS => Duration::from_secs_f64(s),
            _ => bad(),
        };
        match flag.as_str() {
            "--url" => a.url = v.clone(),
            "--transport" if v == "http" => a.transport = Transport::Http,
            "--transport" if v == "ws" => a.transport = Transport::Ws,
            "--sessions" => a.sessions = v.parse().ok().filter(|n| (1..=100_000).contains(n)).unwrap_or_else(|| bad()),
            "--duration" => a.duration = secs(&v),
            "--hold" => a.hold = secs(&v),
            "--calls" => a.calls = v.parse().ok().filter(|n| (1..=MAX_CALLS).contains(n)).unwrap_or_else(|| bad()),
            "--warmup" => a.warmup = v.parse().ok().filter(|n| *n <= 1000).unwrap_or_else(|| bad()),
            "--bearer" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => a.bearer = Some(v.clone()),
            "--interval-ms" => {
                a.interval = Duration::from_millis(v.parse().ok().filter(|n| *n <= 60_000).unwrap_or_else(|| bad()))
            }
            "--watch" => {
                let (name, pid) = v.split_once('=').unwrap_or_else(|| bad());
                a.watch.push((name.to_owned(), pid.parse().unwrap_or_else(|_| bad())));
            }
            _ => usage(&format!("unknown flag or value: {flag} {v}")),
        }
    }
    if a.url.is_empty() {
        usage("--url is required");
    }
    if a.idle {
        a.transport = Transport::Ws;
    }
    a
}

/// The server's address, refusing anything but loopback.
fn target(uri: &Uri) -> SocketAddr {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let ip = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h.parse().unwrap_or_else(|_| usage(&format!("not an IP address or localhost: {h}"))),
    };
    if !ip.is_loopback() {
        usage("only loopback addresses may be loaded");
    }
    SocketAddr::new(ip, uri.port_u16().unwrap_or(80))
}

/// Connects from 127.0.0.(1 + n % 200) when the server is on IPv4 loopback.
async fn connect(addr: SocketAddr, n: usize) -> Result<TcpStream, String> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    if addr.is_ipv4() {
        let from = SocketAddr::from(([127, 0, 0, 1 + (n % 200) as u8], 0));
        socket.bind(from).map_err(|e| format!("bind {from}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

enum Conn {
    Http { send: SendRequest<Full<Bytes>>, uri: Uri, host: String, session: Option<String>, bearer: Option<String> },
    Ws(WebSocketStream<TcpStream>),
}

/// One MCP session on one connection.
struct Session {
    n: usize,
    conn: Conn,
    next_id: u64,
    /// Answers by content type: `application/json`, `text/event-stream` or `ws`.
    answers: HashMap<&'static str, u64>,
    limited_ok: bool,
}

/// How one call went, short of a failure.
enum Outcome {
    Answered,
    /// Refused by a rate limit (`-32007`), with `--limited-ok`.
    Limited,
}

impl Session {
    async fn open(url: &str, transport: Transport, n: usize, opts: &Options) -> Result<Session, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let stream = connect(target(&uri), n).await?;
        let conn = match transport {
            Transport::Http => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP handshake: {e}"))?;
                tokio::spawn(conn);
                // HTTP/1.1 to an origin server: the path alone as the request target, the
                // authority in Host.
                let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
                let uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse().map_err(|e| format!("{e}"))?;
                Conn::Http { send, uri, host, session: None, bearer: opts.bearer.clone() }
            }
            Transport::Ws => {
                let mut req = url.into_client_request().map_err(|e| e.to_string())?;
                let protocols = match &opts.bearer {
                    Some(token) => format!("mcp, mcp.auth.{token}"),
                    None => "mcp".into(),
                };
                req.headers_mut().insert("sec-websocket-protocol", protocols.parse().map_err(|_| "a bad token")?);
                let (ws, _) =
                    tokio_tungstenite::client_async(req, stream).await.map_err(|e| format!("upgrade: {e}"))?;
                Conn::Ws(ws)
            }
        };
        let mut s = Session { n, conn, next_id: 0, answers: HashMap::new(), limited_ok: opts.limited_ok };
        let params = json!({"protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "mcp-edge-loadgen", "version": "1"}});
        s.request("initialize", params).await?.map_err(|e| format!("initialize: JSON-RPC error {e}"))?;
        s.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), None).await?;
        Ok(s)
    }

    /// Calls `echo` and checks that the text came back to this session.
    async fn echo(&mut self) -> Result<Outcome, String> {
        let message = format!("session {} call {}", self.n, self.next_id);
        let result =
            match self.request("tools/call", json!({"name": "echo", "arguments": {"message": message}})).await? {
                Ok(result) => result,
                Err(e) if self.limited_ok && e["code"] == -32007 => return Ok(Outcome::Limited),
                Err(e) => return Err(format!("tools/call: JSON-RPC error {e}")),
            };
        match result["content"][0]["text"].as_str() {
            Some(t) if t == message => Ok(Outcome::Answered),
            _ => Err(format!("echo answered {result} to {message:?}")),
        }
    }

    /// The result of a request, or its JSON-RPC error object.
    async fn request(&mut self, method: &str, params: Value) -> Result<Result<Value, Value>, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.send(msg, Some(id)))
            .await
            .map_err(|_| format!("no answer to {method} within {REQUEST_TIMEOUT:?}"))??
            .ok_or_else(|| format!("no answer to {method}"))?;
        match answer.get("error") {
            Some(e) => Ok(Err(e.clone())),
            None => Ok(Ok(answer["result"].clone())),
        }
    }

    /// Sends one message; for a request (`id`), returns the response with that id.
    async fn send(&mut self, msg: Value, id: Option<u64>) -> Result<Option<Value>, String> {
        let is_answer = |v: &Value| id.is_some() && v["id"].as_u64() == id && v.get("method").is_none();
        match &mut self.conn {
            Conn::Http { send, uri, host, session, bearer } => {
                let mut req = Request::post(uri.clone())
                    .header("host", host.as_str())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream");
                if let Some(token) = bearer {
                    req = req.header("authorization", format!("Bearer {token}"));
                }
                if let Some(s) = session.as_deref() {
                    req = req.header("mcp-session-id", s).header("mcp-protocol-version", PROTOCOL);
                }
                let req = req.body(Full::new(Bytes::from(msg.to_string()))).map_err(|e| e.to_string())?;
                send.ready().await.map_err(|e| format!("connection: {e}"))?;
                let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
                let status = resp.status();
                if session.is_none() {
                    *session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                }
                let sse =
                    resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    return Err(format!("HTTP {status}: {text}"));
                }
                if id.is_none() {
                    return Ok(None);
                }
                *self.answers.entry(if sse { "text/event-stream" } else { "application/json" }).or_default() += 1;
                let messages =
                    if sse { sse_messages(&body) } else { serde_json::from_slice(&body).into_iter().collect() };
                Ok(messages.into_iter().find(is_answer))
            }
            Conn::Ws(ws) => {
                ws.send(Message::Text(msg.to_string().into())).await.map_err(|e| format!("send: {e}"))?;
                if id.is_none() {
                    return Ok(None);
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).map_err(|e| format!("bad frame {t}: {e}"))?;
                            if is_answer(&v) {
                                *self.answers.entry("ws").or_default() += 1;
                                return Ok(Some(v));
                            }
                        }
                        Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("receive: {e}")),
                        None => return Err("the connection ended".into()),
                    }
                }
            }
        }
    }
}

/// The JSON messages in an SSE body (`data:` lines joined per event).
fn sse_messages(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect()
}

/// CPU ticks and peak memory of one process tree at one moment.
#[derive(Default)]
struct Usage {
    own_ticks: u64,
    tree_ticks: u64,
    procs: usize,
    hwm_kib: u64,
    tree_hwm_kib: u64,
    /// Proportional set size summed over the tree: shared pages (one executable's code in
    /// many processes) counted once in all, unlike a sum of RSS.
    tree_pss_kib: u64,
}

/// Every process's parent and CPU ticks: (ppid, utime + stime, cutime + cstime).
fn proc_table() -> HashMap<u32, (u32, u64, u64)> {
    let mut table = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may hold spaces and parentheses; the fields after it do not.
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let f: Vec<u64> = rest.split(' ').skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        if f.len() > 13 {
            table.insert(pid, (f[0] as u32, f[10] + f[11], f[12] + f[13]));
        }
    }
    table
}

/// A `KEY: N kB` line of `/proc/PID/FILE`.
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn usage_of(root: u32, table: &HashMap<u32, (u32, u64, u64)>, memory: bool) -> Usage {
    let mut u = Usage::default();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let Some(&(_, own, reaped)) = table.get(&pid) else { continue };
        if pid == root {
            u.own_ticks = own;
        }
        u.tree_ticks += own + reaped;
        u.procs += 1;
        if memory {
            let hwm = proc_kib(pid, "status", "VmHWM:");
            u.tree_hwm_kib += hwm;
            u.tree_pss_kib += proc_kib(pid, "smaps_rollup", "Pss:");
            if pid == root {
                u.hwm_kib = hwm;
            }
        }
        todo.extend(table.iter().filter(|(_, (ppid, _, _))| *ppid == pid).map(|(child, _)| *child));
    }
    u
}

fn per_call_us(ticks: u64, calls: u64) -> f64 {
    (ticks * TICK_US) as f64 / calls.max(1) as f64
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// What every session of a run shares.
#[derive(Clone, Default)]
struct Options {
    bearer: Option<String>,
    limited_ok: bool,
}

/// Opens `n` sessions, `PARALLEL` at a time, in session order.
async fn open_all(url: &str, transport: Transport, n: usize, opts: &Options) -> Vec<Result<Session, String>> {
    futures_util::stream::iter(0..n).map(|i| Session::open(url, transport, i, opts)).buffered(PARALLEL).collect().await
}

async fn idle(a: Args) -> Value {
    let Some((name, pid)) = a.watch.first().cloned() else { usage("--idle needs --watch NAME=PID") };
    let before = proc_kib(pid, "status", "VmRSS:");
    let ticks = |pid: u32| usage_of(pid, &proc_table(), false).own_ticks;
    let (cpu_before, self_before) = (ticks(pid), ticks(std::process::id()));
    let started = Instant::now();
    let sessions =
        open_all(&a.url, Transport::Ws, a.sessions, &Options { bearer: a.bearer.clone(), limited_ok: false }).await;
    let open_secs = started.elapsed().as_secs_f64();
    let n = a.sessions as u64;
    let cpu = round(per_call_us(ticks(pid).saturating_sub(cpu_before), n), 1);
    let client_cpu = round(per_call_us(ticks(std::process::id()).saturating_sub(self_before), n), 1);
    let errors: Vec<&String> = sessions.iter().filter_map(|s| s.as_ref().err()).collect();
    // Let allocations settle while the connections sit idle.
    tokio::time::sleep(a.hold).await;
    let after = proc_kib(pid, "status", "VmRSS:");
    let per = after.saturating_sub(before) as f64 / a.sessions as f64;
    json!({"mode": "idle", "sessions": a.sessions, "open_seconds": round(open_secs, 2), "errors": errors.len(),
        "first_error": errors.first(), format!("{name}_rss_before_kib"): before, format!("{name}_rss_after_kib"): after,
        format!("{name}_kib_per_connection"): round(per, 1), "sessions_per_second": round(a.sessions as f64 / open_secs, 0),
        format!("{name}_cpu_us_per_open"): cpu, "client_cpu_us_per_open": client_cpu})
}

/// What one session's timed loop did.
struct Done {
    session: Session,
    latencies: Vec<u64>,
    errors: u64,
    limited: u64,
    first_error: Option<String>,
}

/// Calls `echo` one call at a time, `interval` apart, until the deadline or `limit` calls.
async fn call_loop(mut session: Session, deadline: tokio::time::Instant, limit: u64, interval: Duration) -> Done {
    let (mut latencies, mut errors, mut limited, mut first_error) = (Vec::with_capacity(4096), 0u64, 0u64, None);
    while (latencies.len() as u64) + errors + limited < limit && tokio::time::Instant::now() < deadline {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let t = Instant::now();
        match session.echo().await {
            Ok(Outcome::Answered) => latencies.push(t.elapsed().as_micros() as u64),
            Ok(Outcome::Limited) => limited += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    Done { session, latencies, errors, limited, first_error }
}

fn usage_json(pid: u32, before: &Usage, after: &Usage, calls: u64) -> Value {
    let cpu = |b: u64, a: u64| round(per_call_us(a.saturating_sub(b), calls), 1);
    json!({"pid": pid, "cpu_us_per_call": cpu(before.own_ticks, after.own_ticks),
        "tree_cpu_us_per_call": cpu(before.tree_ticks, after.tree_ticks), "tree_procs": after.procs,
        "vmhwm_kib": after.hwm_kib, "tree_vmhwm_kib": after.tree_hwm_kib, "tree_pss_kib": after.tree_pss_kib})
}

async fn load(a: Args) -> Value {
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut note = |e: String, errors: &mut u64| {
        *errors += 1;
        first_error.get_or_insert(e);
    };
    let mut ready = Vec::new();
    let opts = Options { bearer: a.bearer.clone(), limited_ok: a.limited_ok };
    for s in open_all(&a.url, a.transport, a.sessions, &opts).await {
        match s {
            Ok(s) => ready.push(s),
            Err(e) => note(e, &mut errors),
        }
    }
    for s in &mut ready {
        for _ in 0..a.warmup {
            if let Err(e) = s.echo().await {
                note(e, &mut errors);
            }
            tokio::time::sleep(a.interval).await;
        }
    }
    let sessions_ready = ready.len();
    // Count the content types of the timed calls only.
    ready.iter_mut().for_each(|s| s.answers.clear());

    let cpu_before: Vec<Usage> = {
        let table = proc_table();
        a.watch.iter().map(|(_, pid)| usage_of(*pid, &table, false)).collect()
    };
    let self_before = usage_of(std::process::id(), &proc_table(), false).own_ticks;
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + a.duration);
    let tasks: Vec<_> = ready.into_iter().map(|s| tokio::spawn(call_loop(s, deadline, a.calls, a.interval))).collect();
    let mut latencies = Vec::new();
    let mut limited = 0u64;
    let mut answers: HashMap<&str, u64> = HashMap::new();
    for t in tasks {
        let done = t.await.expect("a session task does not panic");
        latencies.extend(done.latencies);
        errors += done.errors;
        limited += done.limited;
        if let Some(f) = done.first_error {
            first_error.get_or_insert(f);
        }
        for (k, v) in done.session.answers {
            *answers.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let table = proc_table();
    let self_ticks = usage_of(std::process::id(), &table, false).own_ticks - self_before;
    let calls = latencies.len() as u64;
    latencies.sort_unstable();
    let pct = |q: f64| match latencies.len() {
        0 => 0,
        n => latencies[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    };
    let mut watched = serde_json::Map::new();
    for ((name, pid), before) in a.watch.iter().zip(cpu_before) {
        watched.insert(name.clone(), usage_json(*pid, &before, &usage_of(*pid, &table, true), calls));
    }
    json!({"transport": if a.transport == Transport::Ws { "ws" } else { "http" }, "sessions": a.sessions,
        "sessions_ready": sessions_ready, "duration_s": round(elapsed, 3), "calls": calls,
        "req_per_s": round(calls as f64 / elapsed, 1), "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
        "max_us": latencies.last().copied().unwrap_or(0), "errors": errors, "limited": limited, "first_error": first_error,
        "answers": answers, "client_cpu_us_per_call": round(per_call_us(self_ticks, calls), 1), "watch": watched})
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let out = if args.idle { idle(args).await } else { load(args).await };
    println!("{out}");
}
