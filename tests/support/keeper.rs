//! Child processes that cannot outlive the test binary.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so children are forked
//! from one thread that lives as long as the process: when the test binary exits (or crashes),
//! the kernel kills every control-plane and phylax process it started.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn keeper() -> &'static Mutex<mpsc::Sender<Job>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("child-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                // The sender lives in a static, so this thread never gets here; park to be sure.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the child-keeper thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the keeper thread, with SIGKILL sent to it when the test binary dies.
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper()
        .lock()
        .expect("keeper lock")
        .send(Box::new(move || {
            let _ = tx.send(cmd.spawn());
        }))
        .expect("keeper thread alive");
    rx.recv().expect("keeper answered")
}
