//! The guard: a tiny process between the gateway and each stdio server, so that no
//! descendant outlives the gateway however it dies.
//!
//! The gateway starts `mcp-edge __guard <fd> -- <program> <args…>` as the leader of a new
//! process group, holding the write end of a pipe whose read end is `<fd>`. The guard starts
//! the server in its own group, sharing stdin/stdout/stderr, and blocks reading the pipe.
//! When the gateway dies, even by SIGKILL, the kernel closes the write end, the read sees
//! end-of-file, and the guard SIGKILLs the whole group: the server and every grandchild
//! (`npx` → `node`). A parent-death signal would not do: it reaches only the direct child and
//! fires when the spawning *thread* exits. Runs before any async runtime; plain threads only.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::getpgrp;

/// Runs the guard; returns the process exit code (the server's, or 128 + its signal).
pub fn run(liveness_fd: i32, program: OsString, args: Vec<OsString>) -> i32 {
    // The server must not inherit the liveness pipe.
    let _ = fcntl(liveness_fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    // A SIGTERM to the group is for the server: the guard stays to report the server's exit
    // and clean up after it. (The server starts with an empty signal mask: std resets it.)
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&nix::sys::signal::SigSet::from(Signal::SIGTERM)),
        None,
    );
    let group = getpgrp();
    // Opening /proc/self/fd/N of a pipe yields a new reader of the same pipe; end-of-file
    // arrives once every write end (only the gateway holds one) is closed.
    let watch = std::fs::File::open(format!("/proc/self/fd/{liveness_fd}"));
    let mut child = match std::process::Command::new(&program).args(&args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-edge guard: cannot start {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    match watch {
        Ok(mut pipe) => {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
                let _ = killpg(group, Signal::SIGKILL);
            });
        }
        Err(e) => {
            eprintln!("mcp-edge guard: cannot watch the gateway: {e}");
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    let code = match child.wait() {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 1,
    };
    // The server is gone, so whatever is left in the group is an orphaned grandchild. Kill
    // it here rather than rely on the watcher thread: when the gateway dies, the server sees
    // stdin close and exits at once, and this process could end before the watcher runs.
    kill_group_except_self(group);
    code
}

/// SIGKILLs every process of `group` but this one, until none is left (bounded rounds, since
/// members may fork while being killed).
fn kill_group_except_self(group: nix::unistd::Pid) {
    let me = std::process::id() as i32;
    for _ in 0..20 {
        let members = group_members(group.as_raw(), me);
        if members.is_empty() {
            return;
        }
        for pid in members {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Live members of a process group, read from /proc (`stat` fields after the command: state,
/// ppid, pgrp).
fn group_members(group: i32, except: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != except)
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return false };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
            state != Some("Z") && pgrp == Some(group)
        })
        .collect()
}
