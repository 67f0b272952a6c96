//! Test harness: a real control plane (or the cluster in `PHYLAX_TEST_KUBECONFIG`), throw-away
//! namespaces, the phylax binary run as a child process, and waiting for conditions.
#![allow(dead_code, unused_imports)] // each test crate uses a different part of the harness

pub mod cluster;
pub mod control_plane;
pub mod keeper;
pub mod moto;
pub mod process;
pub mod real_node;
pub mod swtpm;
pub mod tls;
pub mod wait;

/// A free TCP port on loopback (bound and released; a port race with another process is possible
/// but rare on a test machine).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn random_suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}
