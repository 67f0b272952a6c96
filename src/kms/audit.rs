//! The audit trail: one JSON line per KMS operation (method, request uid, key id, result,
//! duration). Never plaintext, ciphertext or key material.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub method: &'a str,
    pub uid: &'a str,
    pub key_id: &'a str,
    pub provider: &'a str,
    pub result: &'a str,
    pub duration_us: u64,
}

/// Where records go: a file of their own (0600, appended), or the process log.
pub enum Audit {
    File(Mutex<std::fs::File>),
    Log,
}

impl Audit {
    pub fn open(path: Option<&Path>) -> anyhow::Result<Audit> {
        let Some(path) = path else { return Ok(Audit::Log) };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open audit log {}: {e}", path.display()))?;
        Ok(Audit::File(Mutex::new(file)))
    }

    pub fn record(&self, r: &Record<'_>) {
        match self {
            Audit::Log => tracing::info!(
                target: "phylax::kms::audit",
                method = r.method,
                uid = r.uid,
                key_id = r.key_id,
                provider = r.provider,
                result = r.result,
                duration_us = r.duration_us,
                "kms operation"
            ),
            Audit::File(file) => {
                let Ok(mut line) = serde_json::to_vec(r) else {
                    return;
                };
                line.push(b'\n');
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                // One write per record keeps lines whole; a failed write must not fail the request.
                if let Err(e) = f.write_all(&line) {
                    tracing::warn!(error = %e, "cannot write the audit log");
                }
            }
        }
    }
}
