//! The real `mcp-edge` binary as a child process, for what only a separate process can show:
//! signals, SIGKILL of the gateway itself, the command line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::EXE;

pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub url: String,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// Every stderr line so far (JSON log records).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `mcp-edge run <args> --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// --log-format json` and waits until it listens.
    pub fn spawn(args: &[&str]) -> GatewayProcess {
        let mut child = Command::new(EXE)
            .arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mcp-edge starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            // Each line is kept before the address is reported, so the start-up lines are all
            // there once `spawn` returns.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let listen = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|v| v["message"] == "Listening.")
                    .map(|v| v["listen"].as_str().unwrap_or_default().to_owned());
                sink.lock().unwrap().push(line);
                if let Some(listen) = listen {
                    let _ = tx.send(listen);
                }
            }
        });
        let addr: SocketAddr =
            rx.recv_timeout(Duration::from_secs(20)).expect("the gateway reports its address").parse().unwrap();
        let admin = logs.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["admin"].as_str()?.parse().ok()
        });
        let admin = admin.expect("the admin listener is on");
        GatewayProcess { child, addr, url: format!("http://{addr}/mcp"), admin, logs }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the gateway did not exit within {within:?}");
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file into a fresh temporary directory; returns (dir, path).
pub fn config_file(body: &str) -> (TempDir, String) {
    let dir = TempDir::new();
    let path = dir.0.join("gateway.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n: u64 = rand::random();
        let p = std::env::temp_dir().join(format!("mcp-edge-test-{n:x}"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config whose one backend runs `command` with `args` (TOML array literal).
pub fn stdio_config(command: &str, args: &str, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"/mcp\"\nbackend = \"b\"\n\n[backends.b]\nkind = \"stdio\"\ncommand = \"{command}\"\nargs = {args}\n{extra}\n"
    )
}
