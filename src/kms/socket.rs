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

/// A directory only this process may enter, next to the socket's final path (same filesystem, so
/// the rename is atomic); removed when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path, path: &Path) -> anyhow::Result<Staging> {
        use std::os::unix::fs::DirBuilderExt;
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let dir = parent.join(format!(".{name}.{}.staging", std::process::id()));
        // Left over by a plugin that crashed with this pid: ours to clear.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {} to set up the socket: {e}", dir.display()))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
        // Bound in a private directory, given its mode and group there, then renamed into place:
        // the socket never exists at `path` with the default mode, so no one can connect in the
        // moment between bind and chmod (a umask would be process-wide and racy with threads).
        let staging = Staging::create(parent, path)?;
        let staged = staging.dir.join("kms.sock");
        let listener = UnixListener::bind(&staged)
            .map_err(|e| anyhow::anyhow!("cannot listen on unix socket {}: {e}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow::anyhow!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot give {} to group {gid}: {e}; run as root or as a member of that group",
                    path.display()
                )
            })?;
        }
        std::fs::rename(&staged, path)
            .map_err(|e| anyhow::anyhow!("cannot move the socket into place at {}: {e}", path.display()))?;
        drop(staging);
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

    /// Attack: a local process connects in the moment between bind and chmod, while the socket
    /// still has the default mode. A watcher stats the path as fast as it can while the socket is
    /// set up again and again; every time it sees the socket, the mode must already be final.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_never_appears_with_another_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                let mut seen = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        seen += 1;
                        if meta.permissions().mode() & 0o777 != 0o600 {
                            wrong.push(meta.permissions().mode() & 0o777);
                        }
                    }
                }
                (seen, wrong)
            })
        };
        for _ in 0..300 {
            let socket = Socket::bind(&path, 0o600, None).unwrap();
            let identity = socket.identity;
            drop(socket.listener);
            Socket::remove(&path, identity);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (seen, wrong) = watcher.join().unwrap();
        assert!(seen > 0, "the watcher never saw the socket");
        assert!(
            wrong.is_empty(),
            "the socket was seen with modes {wrong:?} (decimal)"
        );
        // Nothing is left behind but the (removed) socket.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_final_socket_has_the_mode_and_group_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        let socket = Socket::bind(&path, 0o660, Some(gid)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, gid));
        assert_eq!(socket.identity, (meta.dev(), meta.ino()));
        // The staging directory is gone; clients reach the listener at the final path.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::os::unix::net::UnixStream::connect(&path).expect("connect");
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
