//! moto's AWS API server (real HTTP API: KMS, Secrets Manager) on a free loopback port.

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[cfg(all(feature = "aws", not(feature = "operator")))]
use aws_sdk_kms::config::SharedHttpClient;
#[cfg(feature = "operator")]
use aws_sdk_secretsmanager::config::SharedHttpClient;

use super::wait::wait_for;
use super::{free_port, keeper};

pub struct Moto {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Moto {
        Self::start_on(free_port()).await
    }

    /// On a given port, e.g. to bring an endpoint back where clients already point.
    pub async fn start_on(port: u16) -> Moto {
        let exe = std::env::var("PHYLAX_MOTO_SERVER")
            .unwrap_or_else(|_| "/var/tmp/phylax/venv/bin/moto_server".into());
        let mut cmd = Command::new(&exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            keeper::spawn(cmd).unwrap_or_else(|e| panic!("start {exe} (scripts/setup.sh installs it): {e}"));
        wait_for("moto_server to listen", Duration::from_secs(30), || async {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// An AWS SDK HTTP client over rustls with ring, as Phylax builds its own.
    #[cfg(any(feature = "aws", feature = "operator"))]
    pub fn http_client() -> SharedHttpClient {
        aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https()
    }

    /// A Secrets Manager client for a test's own set-up calls.
    #[cfg(feature = "operator")]
    pub fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_secretsmanager::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(Self::http_client())
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// Credentials moto accepts, and no other source of them for the child.
    pub fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret-7f3a9c"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ])
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
