//! The built phylax binary run as a child process against the test cluster, with its logs captured
//! and its admin endpoints at hand.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phylax"))
}

pub struct Phylax {
    pub role: String,
    pub admin_port: u16,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Phylax {
    /// Starts `phylax <role> --admin-addr 127.0.0.1:<free> <args>` with JSON logs captured.
    pub fn start(role: &str, args: &[&str], kubeconfig: Option<&Path>) -> Phylax {
        Self::start_with(binary(), role, args, kubeconfig, &HashMap::new())
    }

    pub fn start_with(
        exe: PathBuf,
        role: &str,
        args: &[&str],
        kubeconfig: Option<&Path>,
        env: &HashMap<&str, &str>,
    ) -> Phylax {
        let admin_port = super::free_port();
        let mut cmd = Command::new(exe);
        if !role.is_empty() {
            cmd.arg(role);
        }
        cmd.arg(format!("--admin-addr=127.0.0.1:{admin_port}"));
        if !args.iter().any(|a| a.starts_with("--log-format")) {
            cmd.arg("--log-format=json");
        }
        if let Some(kc) = kubeconfig {
            cmd.arg(format!("--kubeconfig={}", kc.display()));
        }
        cmd.args(args)
            .env("RUST_LOG", "info,phylax=debug")
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = super::keeper::spawn(cmd).expect("start phylax");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().expect("logs").push(line);
                }
            }));
        }
        Phylax {
            role: role.to_owned(),
            admin_port,
            child,
            logs,
            readers,
        }
    }

    /// Whether the process is still running.
    #[allow(dead_code)]
    pub fn try_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Log lines as JSON objects (lines that are not JSON are skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn has_log(&self, message: &str) -> bool {
        self.json_logs()
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
    }

    /// GET on the admin port: (status, body), or None when nothing answers.
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path).await
    }

    /// Waits until /readyz says 200; panics with the logs if the process exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.admin_get("/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain_output();
                panic!(
                    "phylax {} exited ({status}) before it was ready; logs:\n{}",
                    self.role,
                    self.logs().join("\n")
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "phylax {} not ready after {timeout:?}; logs:\n{}",
                self.role,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of an unlabelled metric (or the first series of it).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The sum of a metric's series whose labels include every `key="value"` of `labels`
    /// (0 when none exists yet).
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await?;
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// After exit: wait for the reader threads to reach EOF so every line is in `logs()`.
    fn drain_output(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit (after a signal, or by itself).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain_output();
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "phylax {} still running after {timeout:?}; logs:\n{}",
                self.role,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Phylax {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET on loopback, enough for the admin endpoints.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Runs the binary to completion (for CLI tests): (exit code, stdout, stderr).
pub fn run(exe: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("run phylax");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// User + system CPU time the process has used so far.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
