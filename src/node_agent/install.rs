//! The node's profile directory, `<kubelet-root>/seccomp/phylax/`: files appear whole (written to
//! a temporary file, synced, renamed over the old one, directory synced) so the kubelet never
//! reads half a profile, and are rewritten only when their bytes change.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::api::profiles::{RECORDING_PROFILE, SECCOMP_DIR};

#[derive(Debug, Clone)]
pub struct ProfileDir {
    seccomp_root: PathBuf,
    dir: PathBuf,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
    Unchanged,
}

impl ProfileDir {
    pub fn new(kubelet_root: &Path) -> ProfileDir {
        let seccomp_root = kubelet_root.join("seccomp");
        ProfileDir {
            dir: seccomp_root.join(SECCOMP_DIR),
            seccomp_root,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory; the error says which path and why (an unreadable or missing kubelet
    /// root shows here, before any profile is handled).
    pub fn prepare(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create {} ({e}); check --kubelet-root and that the node agent may write there",
                    self.dir.display()
                ),
            )
        })?;
        // Write access shows only when writing: probe it now rather than at the first profile.
        let probe = self.dir.join(".phylax-write-probe");
        write_atomically(&probe, b"")
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write in {} ({e})", self.dir.display())))
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<Written> {
        write_if_changed(&self.path_of(name), bytes)
    }

    /// The log-everything profile for pods under a `ProfileRecording`, beside the directory.
    pub fn write_recording_profile(&self, bytes: &[u8]) -> io::Result<Written> {
        write_if_changed(&self.seccomp_root.join(RECORDING_PROFILE), bytes)
    }

    /// Removes the log-everything profile: no recording needs it, and while it is on the node any
    /// pod the webhook does not see could name it to run without a filter. `false` when absent.
    pub fn remove_recording_profile(&self) -> io::Result<bool> {
        match fs::remove_file(self.seccomp_root.join(RECORDING_PROFILE)) {
            Ok(()) => {
                sync_dir(&self.seccomp_root)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `name`'s file; `false` when there was none.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        match fs::remove_file(self.path_of(name)) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names of the installed profiles (`<name>.json`); leftovers of interrupted writes are removed.
    pub fn installed(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if file.starts_with('.') && file.contains(".tmp-") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(name) = file.strip_suffix(".json") {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<Written> {
    match fs::read(path) {
        Ok(old) if old == bytes => Ok(Written::Unchanged),
        Ok(_) => write_atomically(path, bytes).map(|_| Written::Replaced),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomically(path, bytes).map(|_| Written::Created)
        }
        Err(e) => Err(e),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("profile");
    let tmp = dir.join(format!(".{file_name}.tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_once_and_lists_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = ProfileDir::new(root.path());
        dir.prepare().unwrap();
        assert_eq!(dir.write("a", b"{}\n").unwrap(), Written::Created);
        assert_eq!(dir.write("a", b"{}\n").unwrap(), Written::Unchanged);
        assert_eq!(dir.write("a", b"{\"x\":1}\n").unwrap(), Written::Replaced);
        assert_eq!(
            fs::read(root.path().join("seccomp/phylax/a.json")).unwrap(),
            b"{\"x\":1}\n"
        );
        fs::write(dir.dir().join(".b.json.tmp-0123"), b"{").unwrap();
        assert_eq!(dir.installed().unwrap(), ["a"]);
        assert!(!dir.dir().join(".b.json.tmp-0123").exists());
        assert!(dir.remove("a").unwrap());
        assert!(!dir.remove("a").unwrap());
        dir.write_recording_profile(b"{}").unwrap();
        assert!(dir.remove_recording_profile().unwrap());
        assert!(!dir.remove_recording_profile().unwrap(), "already gone");
        dir.write_recording_profile(b"{}").unwrap();
        assert!(root.path().join("seccomp/phylax-recording.json").exists());
    }

    #[test]
    fn an_unwritable_root_is_reported_with_its_path() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let err = ProfileDir::new(&file).prepare().unwrap_err().to_string();
        assert!(
            err.contains("not-a-dir/seccomp/phylax") && err.contains("--kubelet-root"),
            "{err}"
        );
    }
}
