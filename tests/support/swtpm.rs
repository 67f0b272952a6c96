//! A real software TPM (swtpm) per test, reached over TCP on loopback: the TPM library's swtpm
//! TCTI in Debian 12 (tpm2-tss 3.2) and tss-esapi's TCTI parser take host and port only.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait::wait_for;
use super::{free_port, keeper};

/// One swtpm process with its own state directory (its own endorsement and owner seeds).
pub struct Swtpm {
    child: Child,
    port: u16,
}

impl Swtpm {
    pub async fn start(state: PathBuf) -> Swtpm {
        std::fs::create_dir_all(&state).expect("swtpm state dir");
        // The swtpm TCTI finds the control channel at the server port + 1.
        let port = (0..50)
            .map(|_| free_port())
            .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
            .expect("two adjacent free ports");
        let ctrl = port + 1;
        let mut cmd = Command::new("swtpm");
        cmd.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg(format!("--tpmstate=dir={}", state.display()))
            .arg(format!("--server=type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg(format!("--ctrl=type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = keeper::spawn(cmd).expect("start swtpm (apt-get install swtpm)");
        wait_for("swtpm to listen", Duration::from_secs(10), || async {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
        Swtpm { child, port }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
