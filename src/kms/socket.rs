//! The unix socket the API server dials: `--listen unix:///run/phylax/kms.sock`.
//!
//! A stale socket left by a crashed plugin is replaced; a live one (another plugin serving) or a
//! path that is not a socket is never touched. The socket is created with a restrictive mode and
//! optionally handed to the API server's group, and removed on shutdown.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Longest path a `sockaddr_un` holds (108 bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Parses `unix:///absolute/path` (the form EncryptionConfiguration's `endpoint` uses).
pub fn parse_listen(s: &str) -> Result<PathBuf, String> {
    let Some(path) = s.strip_prefix("unix://") else {
        return Err(format!(
            "{s:?} is not a unix socket address; use unix:///run/phylax/kms.sock"
        ));
    };
    if !path.starts_with('/') {
        return Err(format!(
            "{s:?}: the socket path must be absolute, e.g. unix:///run/phylax/kms.sock"
        ));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path is {} bytes; unix sockets allow at most {MAX_SOCKET_PATH}",
            path.len()
        ));
    }
    if path.ends_with('/') || path.contains('\0') {
        return Err(format!("{s:?} does not name a socket file"));
    }
    Ok(PathBuf::from(path))
}

/// A group given by name (looked up in /etc/group) or number.
pub fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(s))
                .then(|| f.nth(1).and_then(|g| g.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| format!("no group named {s:?} in /etc/group; give a group name or numeric id"))
}

/// A bound socket, removed when the plugin stops (if it is still the one we created).
pub struct Socket {
    pub path: PathBuf,
    pub listener: UnixListener,
    identity: (u64, u64),
}

impl Socket {
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<Socket> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            anyhow::bail!(
                "socket directory {} does not exist; create it (e.g. mkdir -m 0750 {}) or pick another --listen path",
                parent.display(),
                parent.display()
            );
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => anyhow::bail!(
                    "another process is serving on {}; stop it or pick another --listen path",
                    path.display()
                ),
                Err(_) => {
                    std::fs::remove_file(path)
                        .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
                    tracing::info!(path = %path.display(), "removed a stale socket");
                }
            },
            Ok(_) => anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot inspect {}: {e}", path.display()),
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot listen on unix socket {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow::anyhow!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot give {} to group {gid}: {e}; run as root or as a member of that group",
                    path.display()
                )
            })?;
        }
        let meta = std::fs::metadata(path)?;
        Ok(Socket {
            path: path.to_owned(),
            listener,
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Removes the socket file, unless something else has replaced it meanwhile.
    pub fn remove(path: &Path, identity: (u64, u64)) {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_socket()
            && (meta.dev(), meta.ino()) == identity
        {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("unix:///run/phylax/kms.sock"),
            Ok(PathBuf::from("/run/phylax/kms.sock"))
        );
        for bad in [
            "/run/kms.sock",
            "unix://run/kms.sock",
            "tcp://1.2.3.4:5",
            "unix:///run/",
            "unix://",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(parse_listen(&long).unwrap_err().contains("at most 107"));
    }

    #[test]
    fn groups() {
        assert_eq!(parse_group("0"), Ok(0));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(
            parse_group("no-such-group-here")
                .unwrap_err()
                .contains("/etc/group")
        );
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let first = Socket::bind(&path, 0o660, None).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        let err = Socket::bind(&path, 0o660, None).err().unwrap().to_string();
        assert!(err.contains("another process is serving"), "{err}");
        drop(first); // the file stays, nobody listens: stale
        let second = Socket::bind(&path, 0o600, None).unwrap();
        Socket::remove(&second.path, second.identity());
        assert!(!path.exists());

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "data").unwrap();
        let err = Socket::bind(&file, 0o660, None).err().unwrap().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");

        let err = Socket::bind(&dir.path().join("missing/kms.sock"), 0o660, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
