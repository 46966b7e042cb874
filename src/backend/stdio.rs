//! stdio backend: one child process per connection, newline-delimited JSON-RPC on its pipes.
//!
//! Owns the child's pipes and process group. The child is started only from configuration,
//! through the [`guard`](super::guard), with an environment that starts empty. Four tasks per
//! child: stdin writer, stdout reader (bounded lines), stderr logger, and the waiter that
//! reports the exit. Stopping: close stdin, wait, SIGTERM the group, wait, SIGKILL the group.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{ConnectError, Connection, Context, Event, Stopper};
use crate::config::{StdioConfig, SELF_EXE};
use crate::jsonrpc::codec::{LineCodec, LineError};
use crate::metrics::{BackendMetrics, Live};

/// Longest stderr line logged whole; longer ones are logged in pieces.
const STDERR_LINE: usize = 8 * 1024;
/// Events queued from a child's stdout before its reader waits for the session.
const EVENT_QUEUE: usize = 64;
/// Initial pipe buffers. Idle sessions are the common case, so they start small; the stdout
/// buffer grows for large messages (up to `max_line_bytes`), and writes larger than the stdin
/// buffer go straight to the pipe.
const STDOUT_BUFFER: usize = 1024;
/// Lines from this long on are kept in the read buffer they arrived in instead of copied.
const PIN_FROM: usize = 64 * 1024;
const STDIN_BUFFER: usize = 1024;
const STDERR_CHUNK: usize = 512;

/// Serializes spawns: while one spawn runs, the liveness pipe's read end is inheritable, and
/// no other child may inherit it.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug)]
pub struct StdioBackend {
    name: Arc<str>,
    config: StdioConfig,
    metrics: BackendMetrics,
    /// Unusable while spawns fail (`/readyz`).
    pub health: super::Health,
}

impl StdioBackend {
    pub fn new(name: &str, config: StdioConfig, metrics: BackendMetrics) -> Self {
        StdioBackend { name: Arc::from(name), config, metrics, health: super::Health::default() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages queued towards a child's stdin.
    pub fn stdin_queue(&self) -> usize {
        self.config.stdin_queue
    }

    /// The child's environment: allowed variables of the gateway's own, then configured ones.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            self.config.env_allow.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
        env.retain(|(k, _)| !self.config.env.contains_key(k));
        env.extend(self.config.env.iter().map(|(k, v)| (k.clone(), v.0.clone())));
        env
    }

    /// Finds the program the way `execvp` would, so a missing command fails here with a
    /// clear message instead of as an early exit.
    fn resolve(&self, ctx: &Context, env: &[(String, String)]) -> Result<PathBuf, ConnectError> {
        let command = &self.config.command;
        if command == SELF_EXE {
            return Ok(ctx.self_exe.clone());
        }
        let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if command.contains('/') {
            let path = match &self.config.cwd {
                Some(cwd) if Path::new(command).is_relative() => cwd.join(command),
                _ => PathBuf::from(command),
            };
            return if executable(&path) {
                Ok(path)
            } else {
                Err(ConnectError(format!("cannot start `{command}`: no executable file at {}", path.display())))
            };
        }
        let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
        std::env::split_paths(path_var)
            .map(|dir| dir.join(command))
            .find(|p| executable(p))
            .ok_or_else(|| ConnectError(format!("cannot start `{command}`: not found in the child's PATH")))
    }

    /// Starts a child through the guard and wires its pipes to tasks.
    pub fn spawn(&self, ctx: &Context) -> Result<Connection, ConnectError> {
        let spawned = self.start(ctx);
        match &spawned {
            Ok(_) => self.health.ok(),
            Err(e) => {
                self.metrics.crashes.inc();
                self.health.failed(&e.0);
            }
        }
        spawned
    }

    fn start(&self, ctx: &Context) -> Result<Connection, ConnectError> {
        let env = self.environment();
        let program = self.resolve(ctx, &env)?;
        let mut cmd = Command::new(&ctx.self_exe);
        cmd.env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &self.config.cwd {
            cmd.current_dir(cwd);
        }
        let (mut child, liveness) = {
            let _one_at_a_time = SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let (read, write) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ConnectError(format!("cannot create a pipe: {e}")))?;
            fcntl(read.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))
                .map_err(|e| ConnectError(format!("cannot prepare a pipe: {e}")))?;
            cmd.arg("__guard").arg(read.as_raw_fd().to_string()).arg("--").arg(&program).args(&self.config.args);
            let child = cmd.spawn().map_err(|e| ConnectError(format!("cannot start `{}`: {e}", program.display())))?;
            drop(read);
            (child, write)
        };
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let span = tracing::info_span!("backend", backend.name = %self.name, session.id = %ctx.session_id);
        tracing::debug!(parent: &span, pid = pid.map(|p| p.as_raw()).unwrap_or(0), program = %program.display(), "Started a stdio child.");

        let (tx, rx) = mpsc::channel(self.config.stdin_queue);
        let (events_tx, events) = super::events(EVENT_QUEUE);
        let close_stdin = CancellationToken::new();
        let (exit_tx, exit_rx) = watch::channel(None);

        tokio::spawn(write_stdin(stdin, rx, close_stdin.clone()));
        let reader = tokio::spawn(read_stdout(stdout, self.config.max_line_bytes, events_tx.clone()));
        tokio::spawn(log_stderr(stderr, span.clone()));
        let wait = self.config.stop_wait;
        let metrics = self.metrics.clone();
        metrics.spawns.inc();
        let live = Live::new(metrics.processes.clone());
        let stopping = close_stdin.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            drop(live);
            metrics.exits.inc();
            if !stopping.is_cancelled() {
                metrics.crashes.inc();
            }
            let reason = match &status {
                Ok(s) => format!("backend exited ({})", describe(s)),
                Err(e) => format!("backend lost: {e}"),
            };
            let _ = exit_tx.send(Some(reason.clone()));
            // Let the reader pass on what the child wrote before it exited (the guard has
            // killed the rest of its group, so stdout closes); bounded all the same.
            let _ = tokio::time::timeout(wait, reader).await;
            tracing::debug!(parent: &span, "The stdio child ended: {reason}.");
            let _ = events_tx.send(Event::Closed(reason)).await;
        });

        Ok(Connection {
            tx: tx.into(),
            events,
            stopper: Stopper::Stdio(StdioStopper {
                group: pid,
                liveness,
                close_stdin,
                exited: exit_rx,
                wait: self.config.stop_wait,
            }),
        })
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) if c > 128 && c < 160 => format!("killed by signal {}", c - 128),
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

async fn write_stdin(stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>, close: CancellationToken) {
    let mut out = BufWriter::with_capacity(STDIN_BUFFER, stdin);
    loop {
        // Cancel-safe: `recv` loses nothing when the close branch wins.
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = close.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(msg) = next {
            if out.write_all(&msg).await.is_err() || out.write_all(b"\n").await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    // Dropping the writer closes the child's stdin: the polite "please exit".
}

async fn read_stdout(stdout: impl AsyncRead + Unpin, max: usize, events: super::Events) {
    let mut lines = FramedRead::with_capacity(stdout, LineCodec::new(max), STDOUT_BUFFER);
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) if line.iter().all(u8::is_ascii_whitespace) => {}
            Ok(line) => {
                // A small message is copied, so it does not pin the read buffer a huge one
                // grew; a large one is most of that buffer, and a copy would double it.
                let line = if line.len() < PIN_FROM { Bytes::copy_from_slice(&line) } else { line };
                if events.send(Event::Message(line)).await.is_err() {
                    // The session is gone and the child is being stopped: keep reading (and
                    // dropping) until it closes stdout, so a late write does not kill it with
                    // EPIPE before it can exit on its own.
                    while let Some(Ok(_)) = lines.next().await {}
                    return;
                }
            }
            Err(LineError::TooLong(n)) => {
                let reason = format!("backend sent a message longer than max_line_bytes ({n} bytes)");
                let _ = events.send(Event::Closed(reason)).await;
                return;
            }
            Err(LineError::Io(_)) => return,
        }
    }
}

async fn log_stderr(mut stderr: impl AsyncRead + Unpin, span: tracing::Span) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; STDERR_CHUNK];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            log_line(&span, &line[..pos]);
        }
        if pending.len() > STDERR_LINE {
            log_line(&span, &pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        log_line(&span, &pending);
    }
}

fn log_line(span: &tracing::Span, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if !text.is_empty() {
        tracing::info!(parent: span, stderr = %text, "The backend wrote to stderr.");
    }
}

/// Stops one stdio child and its whole process group.
///
/// The guard blocks SIGTERM, so a SIGTERM to the group reaches the server (and its children)
/// alone; the guard outlives it, reports its status, and kills what is left of the group.
pub struct StdioStopper {
    /// The guard's pid, which is also the process group id.
    group: Option<Pid>,
    /// Write end of the guard's liveness pipe; dropping it makes the guard SIGKILL the group.
    liveness: OwnedFd,
    close_stdin: CancellationToken,
    exited: watch::Receiver<Option<String>>,
    wait: Duration,
}

impl StdioStopper {
    /// Close stdin, wait, SIGTERM the group, wait, SIGKILL the group. Whenever the guard
    /// exits first, it has already killed the rest of the group.
    pub async fn stop(mut self) {
        self.close_stdin.cancel();
        let exited = |rx: &mut watch::Receiver<Option<String>>| {
            let mut rx = rx.clone();
            async move { rx.wait_for(Option::is_some).await.is_ok() }
        };
        let Some(group) = self.group else { return };
        if tokio::time::timeout(self.wait, exited(&mut self.exited)).await.is_ok() {
            // The guard exited after killing what was left of its group; its group id may
            // already belong to someone else, so it is not signalled again.
            return;
        }
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(self.wait, exited(&mut self.exited)).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        drop(self.liveness);
    }
}
