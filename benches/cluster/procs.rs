//! Node processes started by the driver, and their CPU time and memory from `/proc`.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::node::{BoxError, ENV_BACKEND, ENV_BUFFER, ENV_CLUSTER, ENV_PEER};

/// How long one command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// One node process.
pub struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its HTTP port.
    pub port: u16,
    /// What its READY line gives after the port: a gossip node's gossip address, the
    /// floor server's certificate.
    pub extra: Option<String>,
    /// Its process id.
    pub pid: u32,
}

impl Node {
    /// Start `exe` (this very binary, or another build of it) as a node with `backend`,
    /// `peer` (seed or Redis URL).
    pub async fn start(
        exe: &Path,
        backend: &str,
        peer: &str,
        cluster: &str,
        buffer: usize,
    ) -> Result<Self, BoxError> {
        let mut child = Command::new(exe)
            .env(ENV_BACKEND, backend)
            .env(ENV_PEER, peer)
            .env(ENV_CLUSTER, cluster)
            .env(ENV_BUFFER, buffer.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("node exited")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await??
            .ok_or("node exited before READY")?;
        let mut words = ready.split_whitespace().skip(1);
        let port = words.next().ok_or("no port")?.parse()?;
        let extra = words.next().filter(|g| *g != "-").map(String::from);
        Ok(Self {
            child,
            stdin,
            stdout,
            port,
            extra,
            pid,
        })
    }

    /// Send a command, return its answer without the leading `ok`.
    pub async fn cmd(&mut self, line: &str) -> Result<String, BoxError> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(COMMAND_LIMIT, self.stdout.next_line())
            .await??
            .ok_or("node exited")?;
        match reply.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(format!("node answered {reply:?} to {line:?}").into()),
        }
    }

    /// Stop the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        // Linux reports in clock ticks of 1/100 s (USER_HZ) on every supported architecture.
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// `VmRSS` and `VmHWM` (peak resident set) of a process, in MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (f64::NAN, f64::NAN);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
