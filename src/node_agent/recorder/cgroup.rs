//! Which container a process belongs to, from `/proc/<pid>/cgroup`. Runtimes name a container's
//! cgroup after its 64-hex-digit ID: `cri-containerd-<id>.scope` (systemd driver), `crio-<id>.scope`,
//! `docker-<id>.scope`, or a bare `<id>` under `kubepods/…/pod<uid>/` (cgroupfs driver).

/// The container ID a `/proc/<pid>/cgroup` file names, if any.
pub fn container_id(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(id_of_segment)
    })
}

fn id_of_segment(segment: &str) -> Option<&str> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    if s.starts_with("crio-conmon-") {
        return None;
    }
    let s = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// A process's start time, in clock ticks after boot: field 22 of `/proc/<pid>/stat`. With the
/// pid it names one process; a pid alone is reused once its process ends.
pub fn start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // the fields after it begin after the last ')'.
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The ID in a container status's `containerID` (`containerd://<id>`, `cri-o://<id>`, …).
pub fn status_container_id(container_id: &str) -> &str {
    container_id.rsplit_once("://").map_or(container_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a9c1e0b7d4e3f8a6c5b2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    #[test]
    fn finds_the_container_of_each_runtime_layout() {
        let layouts = [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!(
                "12:pids:/kubepods/besteffort/pod0c9e1b0a-1111-2222-3333-444455556666/{ID}\n11:memory:/kubepods/besteffort/pod0c9e/{ID}\n"
            ),
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("0::/kubepods/burstable/pod1/{ID}/init.scope"),
        ];
        for layout in &layouts {
            assert_eq!(container_id(layout), Some(ID), "{layout}");
        }
        assert_eq!(
            container_id("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(
            container_id(&format!("0::/kubepods.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(container_id("garbage"), None);
        assert_eq!(status_container_id(&format!("containerd://{ID}")), ID);
    }

    #[test]
    fn reads_a_processs_start_time_whatever_its_name() {
        let stat = "700 (a) b) c) S 1 700 700 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 1 0 4242 2560000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        assert_eq!(start_time(stat), Some(4242));
        assert_eq!(start_time("700 (x) S 1"), None);
        assert_eq!(start_time("no parenthesis"), None);
        assert_eq!(start_time(""), None);
    }
}
