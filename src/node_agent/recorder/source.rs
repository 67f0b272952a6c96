//! Reads audit lines as they are written, on a thread of its own (reads block): `/dev/kmsg` one
//! record per read, or auditd's log followed like `tail -F`, re-opened when it is rotated. Only
//! records written after the agent started are read, and only in the form the kernel writes them
//! (see [`audit`]).

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::audit::{self, AuditError, Origin, SeccompRecord};
use crate::node_agent::metrics::{ProfileMetrics, ResultLabels};

/// How often a log file at its end is looked at again.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// The longest line kept; a longer one is no audit record.
const MAX_LINE: usize = 64 * 1024;

pub fn spawn(path: PathBuf, tx: mpsc::Sender<SeccompRecord>, metrics: ProfileMetrics) -> anyhow::Result<()> {
    let file = File::open(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read audit records from {} ({e}); set --audit-source to /dev/kmsg or auditd's log, or to none",
            path.display()
        )
    })?;
    let is_kmsg = file
        .metadata()
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    // Start at the end before returning, so whatever is written after the agent started is read.
    // (/dev/kmsg: skips the kernel's backlog, whose records are not ours to attribute.)
    let mut file = file;
    let start = file.seek(SeekFrom::End(0))?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("audit-reader".into())
        .spawn(move || {
            let origin = if is_kmsg { Origin::Kmsg } else { Origin::AuditLog };
            let mut lines = Lines {
                origin,
                tx,
                metrics,
                warned: false,
            };
            let outcome = if is_kmsg {
                read_kmsg(file, &mut lines)
            } else {
                follow(&path, file, start, &mut lines)
            };
            if let Err(e) = outcome {
                tracing::error!(source = %path.display(), error = %e, "reading audit records stopped");
            }
        })?;
    tracing::info!(source = %shown, kmsg = is_kmsg, "reading seccomp audit records");
    Ok(())
}

/// Where parsed records go, and what the lines came to.
struct Lines {
    origin: Origin,
    tx: mpsc::Sender<SeccompRecord>,
    metrics: ProfileMetrics,
    /// Whether the first forged-looking line was logged already (one warning, not a flood).
    warned: bool,
}

impl Lines {
    /// Parses one line and passes a record on; `false` once the recorder is gone.
    fn handle(&mut self, line: &[u8]) -> bool {
        let result = match audit::parse(line, self.origin) {
            Ok(Some(record)) => return self.tx.blocking_send(record).is_ok(),
            Ok(None) => "not_seccomp",
            Err(AuditError::NotFromKernel) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        origin = ?self.origin,
                        "ignoring lines that look like seccomp audit records but were not written by the kernel (a process's write to /dev/kmsg, or syslog or journal text); if --audit-source is syslog, point it at /dev/kmsg or auditd's log"
                    );
                }
                "not_from_kernel"
            }
            Err(e) => {
                tracing::debug!(error = %e, "skipping a malformed audit line");
                "malformed"
            }
        };
        self.metrics
            .audit_lines
            .get_or_create(&ResultLabels { result })
            .inc();
        true
    }
}

fn read_kmsg(mut file: File, lines: &mut Lines) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if !lines.handle(&buf[..n]) {
                    return Ok(());
                }
            }
            // The ring buffer overwrote records we had not read yet: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc_epipe()) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

const fn libc_epipe() -> i32 {
    32
}

fn follow(path: &Path, file: File, start: u64, lines: &mut Lines) -> std::io::Result<()> {
    let mut inode = file.metadata()?.ino();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut pos = start;
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n > 0 && line.last() == Some(&b'\n') {
            pos += n as u64;
            if !lines.handle(&line) {
                return Ok(());
            }
            continue;
        }
        if n == MAX_LINE {
            // An endless line: drop it up to its end.
            pos += n as u64;
            continue;
        }
        // At the end (perhaps mid-line: read it again whole later).
        if n > 0 {
            reader.seek(SeekFrom::Start(pos))?;
        }
        if lines.tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_INTERVAL);
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() != inode || meta.len() < pos => {
                // Rotated or truncated: read the new file from its start.
                let file = File::open(path)?;
                inode = file.metadata()?.ino();
                reader = BufReader::with_capacity(64 * 1024, file);
                pos = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_a_log_file_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(
            &path,
            "type=SECCOMP msg=audit(1.0:1): pid=1 arch=c000003e syscall=0\n",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let metrics = ProfileMetrics::register(&crate::runtime::metrics::Metrics::new("test"), "n");
        spawn(path.clone(), tx, metrics).unwrap();
        // The line present before the start is skipped; new ones are read, also after a rotation.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        // A user message carrying a record's words is no record; the kernel's next line is.
        f.write_all(b"noise\ntype=USER msg=audit(1.0:9): msg='type=SECCOMP msg=audit(1.0:2): pid=9 arch=c000003e syscall=1'\n")
            .unwrap();
        f.write_all(b"type=SECCOMP msg=audit(1.0:2): pid=2 arch=c000003e sysc")
            .unwrap();
        f.flush().unwrap();
        f.write_all(b"all=1\n").unwrap();
        assert_eq!(rx.blocking_recv().unwrap().pid, 2);
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        std::fs::write(
            &path,
            "type=SECCOMP msg=audit(1.0:3): pid=3 arch=c000003e syscall=2\n",
        )
        .unwrap();
        assert_eq!(rx.blocking_recv().unwrap().pid, 3);
    }
}
