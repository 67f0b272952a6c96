//! The `kms-plugin` role: the KMS v2 and v1beta1 gRPC services the API server calls to encrypt
//! every Secret before it reaches etcd, on one unix socket, backed by a key provider.

pub mod audit;
pub mod h2_authority;
pub mod proto;
pub mod service;
pub mod socket;

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tonic::transport::Server;
use tonic::transport::server::Connected;

use crate::keys::{self, KeyArgs};
use crate::role::Role;
use crate::runtime::backoff::Backoff;
use crate::runtime::{Runtime, RuntimeArgs, duration};
use audit::Audit;
use proto::{v1beta1, v2};
use service::{Core, V1, V2};
use socket::Socket;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Unix socket the API server dials (the `endpoint` of its EncryptionConfiguration)
    #[arg(long, value_name = "unix:///PATH", default_value = "unix:///run/phylax/kms.sock", value_parser = socket::parse_listen)]
    pub listen: PathBuf,

    /// Permissions of the socket file (octal)
    #[arg(long, value_name = "MODE", default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Group to give the socket to (name or id), e.g. the API server's group
    #[arg(long, value_name = "GROUP", value_parser = socket::parse_group)]
    pub socket_group: Option<u32>,

    #[command(flatten)]
    pub keys: KeyArgs,

    /// Deadline for one provider call; past it the request fails with UNAVAILABLE (the API
    /// server itself gives up after 3 s)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse)]
    pub provider_timeout: Duration,

    /// How long a health round trip (encrypt + decrypt through the provider) answers Status calls
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse)]
    pub health_cache: Duration,

    /// Append audit records (JSON lines) to this file instead of the process log
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not a file mode; use octal like 0660")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let rt = Runtime::start(Role::KmsPlugin, &args.runtime).await?;
    let provider = keys::build(&args.keys).await?;
    let audit = Audit::open(args.audit_log.as_deref())?;
    let healthy = rt.readiness.register("provider-healthy");
    let listening = rt.readiness.register("socket-listening");
    let core = Core::new(
        provider,
        audit,
        args.provider_timeout,
        args.health_cache,
        healthy,
        &rt.metrics,
    );

    let socket = Socket::bind(&args.listen, args.socket_mode, args.socket_group)?;
    let _remove_on_exit = RemoveOnDrop {
        path: socket.path.clone(),
        identity: socket.identity(),
    };
    listening.set(true);
    tracing::info!(socket = %args.listen.display(), provider = core.provider_name(), "serving KMS v2 and v1beta1");

    // Readiness waits for one good round trip; Status calls from the API server keep it current.
    let probe = core.clone();
    let stop_probe = rt.shutdown.clone();
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if let Ok(key_id) = probe.health().await {
                tracing::info!(key_id = %key_id, "key provider healthy");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop_probe.cancelled() => return,
            }
        }
    });

    rt.run(|shutdown| async move {
        Server::builder()
            .add_service(v2::key_management_service_server::KeyManagementServiceServer::new(V2(core.clone())))
            .add_service(v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1(core)))
            .serve_with_incoming_shutdown(incoming(socket.listener), shutdown.cancelled_owned())
            .await
            .map_err(|e| anyhow::anyhow!("the KMS gRPC server failed: {e}"))
    })
    .await
}

struct RemoveOnDrop {
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        Socket::remove(&self.path, self.identity);
    }
}

/// Accepted connections, each behind the `:authority` shim (see `h2_authority`).
fn incoming(listener: UnixListener) -> impl futures::Stream<Item = std::io::Result<ShimmedConn>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return Some((Ok(shim(stream)), listener)),
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning; the listener survives.
                    tracing::warn!(error = %e, "cannot accept a connection on the KMS socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// An accepted connection as the gRPC server sees it (see `h2_authority`).
pub type ShimmedConn = h2_authority::FixedConn<UnixStream>;

fn shim(stream: UnixStream) -> ShimmedConn {
    h2_authority::FixedConn::new(stream)
}

impl Connected for h2_authority::FixedConn<UnixStream> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}
