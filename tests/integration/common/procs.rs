//! Process-tree inspection through /proc: who descends from whom.

use std::collections::HashMap;

/// (pid, parent pid, command line) of every process.
fn table() -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command sits in parentheses and may hold spaces; fields follow the last `)`.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        if state == "Z" {
            continue;
        }
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, cmd));
    }
    out
}

/// Every live (non-zombie) descendant of `root`, with its command line.
pub fn descendants(root: i32) -> Vec<(i32, String)> {
    let t = table();
    let mut children: HashMap<i32, Vec<(i32, String)>> = HashMap::new();
    for (pid, ppid, cmd) in t {
        children.entry(ppid).or_default().push((pid, cmd));
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for (c, cmd) in children.get(&p).cloned().unwrap_or_default() {
            stack.push(c);
            out.push((c, cmd));
        }
    }
    out
}

pub fn my_descendants() -> Vec<(i32, String)> {
    descendants(std::process::id() as i32)
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}
