//! Reads the kernel's seccomp audit records, and only the kernel's. The kernel writes one
//! `type=1326` (SECCOMP) record per logged syscall, to `/dev/kmsg` when no audit daemon runs and
//! through auditd to its log otherwise:
//!
//! ```text
//! 5,338,5180688492,-;audit: type=1326 audit(1795937494.994:2): auid=4294967295 … pid=611 comm="logtest" … arch=c000003e syscall=63 …
//! type=SECCOMP msg=audit(1795422987.997:2): auid=4294967295 … pid=611 comm="logtest" … arch=c000003e syscall=63 …
//! ```
//!
//! A process can write the same words to the logs: to `/dev/kmsg` (the kernel gives such a record
//! the user facility, or the one the writer names, never its own facility 0) and to syslog
//! (`logger -t kernel`: nothing in the file tells it apart). So a record is read only at the start
//! of a line and only in the form the kernel alone produces: a `/dev/kmsg` record whose priority
//! says facility 0, or an auditd log line, which auditd starts with the type of the record it got
//! (userspace may send it only user message types). Syslog and journal text is not read; a marker
//! anywhere else makes the line [`AuditError::NotFromKernel`].
//!
//! Only `pid`, `arch` and `syscall` are kept. The kernel hex-encodes untrusted strings that hold a
//! space or a quote (`comm`, `exe`), so a record splits on spaces safely, and one of these keys
//! seen twice makes the record malformed. The parser takes any bytes.

use memchr::memmem;

/// One seccomp audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompRecord {
    pub pid: u32,
    /// Audit architecture (`AUDIT_ARCH_*`), e.g. 0xc000003e for x86-64.
    pub arch: u32,
    pub syscall: i32,
}

/// Where a line was read: each source has its own form of the kernel's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One record read from `/dev/kmsg`.
    Kmsg,
    /// One line of auditd's log.
    AuditLog,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("seccomp audit record without {0}")]
    Missing(&'static str),
    #[error("seccomp audit record with a malformed {0}")]
    Malformed(&'static str),
    #[error("seccomp audit record with {0} twice")]
    Repeated(&'static str),
    #[error(
        "a seccomp audit marker in a line the kernel did not write (a process's write to /dev/kmsg or syslog); ignored"
    )]
    NotFromKernel,
}

const MARKERS: [&[u8]; 2] = [b"type=1326", b"type=SECCOMP"];
/// How the kernel's record starts in a `/dev/kmsg` message.
const KMSG_RECORD: &[u8] = b"audit: type=1326 audit(";
/// How auditd starts the line of a kernel SECCOMP record.
const LOG_RECORD: &[u8] = b"type=SECCOMP msg=audit(";

pub fn parse(line: &[u8], origin: Origin) -> Result<Option<SeccompRecord>, AuditError> {
    // One record is one line: /dev/kmsg adds continuation lines (` KEY=value`) of its own.
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let record = match origin {
        Origin::Kmsg => kernel_message(line).and_then(|m| m.strip_prefix(KMSG_RECORD)),
        Origin::AuditLog => without_node(line).strip_prefix(LOG_RECORD),
    };
    let Some(record) = record else {
        return if MARKERS.iter().any(|m| memmem::find(line, m).is_some()) {
            Err(AuditError::NotFromKernel)
        } else {
            Ok(None)
        };
    };
    let fields = after_stamp(record).ok_or(AuditError::Malformed("audit(…) stamp"))?;
    read_fields(fields).map(Some)
}

/// The message of a `/dev/kmsg` record (`<priority>,<sequence>,<microseconds>,<flags>[,…];<message>`)
/// the kernel itself wrote: facility 0 in `priority` (`facility << 3 | level`).
fn kernel_message(line: &[u8]) -> Option<&[u8]> {
    let semi = memchr::memchr(b';', line)?;
    let mut prefix = line[..semi].split(|&b| b == b',');
    let priority = number(prefix.next()?, 10)?;
    let sequence = number(prefix.next()?, 10);
    let microseconds = number(prefix.next()?, 10);
    let flags = prefix.next()?;
    if sequence.is_none() || microseconds.is_none() || flags.is_empty() || priority >> 3 != 0 {
        return None;
    }
    Some(&line[semi + 1..])
}

/// An auditd line without the `node=<name> ` auditd puts first when told to name the host.
fn without_node(line: &[u8]) -> &[u8] {
    match line.strip_prefix(b"node=") {
        Some(rest) => match memchr::memchr(b' ', rest) {
            Some(space) => &rest[space + 1..],
            None => line,
        },
        None => line,
    }
}

/// The fields after `<seconds>.<milliseconds>:<serial>): `, the rest of `audit(`.
fn after_stamp(record: &[u8]) -> Option<&[u8]> {
    let close = memchr::memchr(b')', record)?;
    let stamp = &record[..close];
    let colon = memchr::memchr(b':', stamp)?;
    let dot = memchr::memchr(b'.', &stamp[..colon])?;
    let parts = [&stamp[..dot], &stamp[dot + 1..colon], &stamp[colon + 1..]];
    if parts.iter().any(|p| number(p, 10).is_none()) {
        return None;
    }
    record[close + 1..].strip_prefix(b": ")
}

fn read_fields(fields: &[u8]) -> Result<SeccompRecord, AuditError> {
    let (mut pid, mut arch, mut syscall) = (None, None, None);
    for token in fields.split(|&b| b == b' ') {
        let Some(eq) = memchr::memchr(b'=', token) else {
            continue;
        };
        let (key, value) = (&token[..eq], &token[eq + 1..]);
        let (slot, name, radix) = match key {
            b"pid" => (&mut pid, "pid", 10),
            b"arch" => (&mut arch, "arch", 16),
            b"syscall" => (&mut syscall, "syscall", 10),
            _ => continue,
        };
        if slot.is_some() {
            return Err(AuditError::Repeated(name));
        }
        *slot = Some(number(value, radix).ok_or(AuditError::Malformed(name))?);
    }
    let pid = pid.ok_or(AuditError::Missing("pid"))?;
    let arch = arch.ok_or(AuditError::Missing("arch"))?;
    let syscall = syscall.ok_or(AuditError::Missing("syscall"))?;
    Ok(SeccompRecord {
        pid: u32::try_from(pid).map_err(|_| AuditError::Malformed("pid"))?,
        arch: u32::try_from(arch).map_err(|_| AuditError::Malformed("arch"))?,
        syscall: i32::try_from(syscall).map_err(|_| AuditError::Malformed("syscall"))?,
    })
}

fn number(digits: &[u8], radix: u32) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(radix)?;
        n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from this kernel (6.x, x86-64) through /dev/kmsg with an SCMP_ACT_LOG filter.
    const KMSG: &str = "6,2291,41294998173,-;audit: type=1326 audit(1795422987.997:2): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=611 comm=\"logtest\" exe=\"/tmp/logtest\" sig=0 arch=c000003e syscall=63 compat=0 ip=0x7f7ddcdf2b07 code=0x7ffc0000";
    /// The same record as auditd writes it.
    const AUDITD: &str = "type=SECCOMP msg=audit(1795422987.997:3): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=611 comm=\"logtest\" exe=\"/tmp/logtest\" sig=0 arch=c000003e syscall=110 compat=0 ip=0x7f7ddcdf44f7 code=0x7ffc0000\u{1d}AUID=\"unset\" UID=\"root\"\n";
    /// As rsyslog writes the kernel's record to /var/log/syslog: `logger -t kernel` writes the same.
    const SYSLOG: &str = "2026-11-23T10:00:00.123456+00:00 node-1 kernel: [41294.998182] audit: type=1326 audit(1795422987.997:4): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=612 comm=2F746D7020782F79 exe=\"/tmp/a b\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x7f7ddcdf44e7 code=0x7ffc0000\n";

    #[test]
    fn reads_the_kernels_kmsg_and_auditd_records() {
        assert_eq!(
            parse(KMSG.as_bytes(), Origin::Kmsg),
            Ok(Some(SeccompRecord {
                pid: 611,
                arch: 0xc000_003e,
                syscall: 63
            }))
        );
        // With the continuation lines /dev/kmsg may add: they are no part of the record.
        let continued = format!("{KMSG}\n SUBSYSTEM=x\n pid=1\n");
        assert_eq!(
            parse(continued.as_bytes(), Origin::Kmsg).unwrap().unwrap().pid,
            611
        );
        assert_eq!(
            parse(AUDITD.as_bytes(), Origin::AuditLog)
                .unwrap()
                .unwrap()
                .syscall,
            110
        );
        let named = format!("node=worker-1 {AUDITD}");
        assert_eq!(
            parse(named.as_bytes(), Origin::AuditLog).unwrap().unwrap().pid,
            611
        );
    }

    #[test]
    fn a_record_a_process_wrote_is_ignored() {
        // Written to /dev/kmsg by a process (`echo … > /dev/kmsg` gets facility 1, user; `<6>…`
        // too; `<30>…` names daemon): the same text, but not the kernel's facility.
        let record = KMSG.split_once(';').unwrap().1;
        for priority in ["12", "14", "30"] {
            let forged = format!("{priority},2292,41294998174,-;{record}");
            assert_eq!(
                parse(forged.as_bytes(), Origin::Kmsg),
                Err(AuditError::NotFromKernel),
                "{forged}"
            );
        }
        // The marker inside the kernel's own lines that are no record, or after a prefix.
        for line in [
            "6,2293,41294998175,-;eth0: renamed from x type=1326 audit(1:2): pid=1 arch=c000003e syscall=1",
            "6,2294,41294998176,-;audit: audit: type=1326 audit(1.1:2): pid=1 arch=c000003e syscall=1",
            "6,2295,41294998177,-; audit: type=1326 audit(1.1:2): pid=1 arch=c000003e syscall=1",
        ] {
            assert_eq!(
                parse(line.as_bytes(), Origin::Kmsg),
                Err(AuditError::NotFromKernel),
                "{line}"
            );
        }
        // Syslog text, a user message carrying the words, a kmsg record copied into a log file,
        // and an auditd record read as if from /dev/kmsg.
        for (line, origin) in [
            (SYSLOG, Origin::AuditLog),
            (
                "type=USER msg=audit(1.1:5): pid=7 uid=0 msg='type=SECCOMP msg=audit(1.1:6): pid=1 arch=c000003e syscall=1'",
                Origin::AuditLog,
            ),
            (KMSG, Origin::AuditLog),
            (AUDITD, Origin::Kmsg),
        ] {
            assert_eq!(
                parse(line.as_bytes(), origin),
                Err(AuditError::NotFromKernel),
                "{line}"
            );
        }
    }

    #[test]
    fn other_lines_are_skipped_and_broken_records_refused() {
        for (other, origin) in [
            ("", Origin::Kmsg),
            ("6,1,2,-;EXT4-fs (vda): mounted filesystem", Origin::Kmsg),
            (
                "type=SYSCALL msg=audit(1.1:1): arch=c000003e syscall=59 pid=1",
                Origin::AuditLog,
            ),
            ("\u{0}\u{ff}garbage", Origin::AuditLog),
            ("\u{0}\u{ff}garbage;", Origin::Kmsg),
        ] {
            assert_eq!(parse(other.as_bytes(), origin), Ok(None), "{other:?}");
        }
        let kmsg = |record: &str| {
            parse(
                format!("5,9,9,-;audit: type=1326 {record}").as_bytes(),
                Origin::Kmsg,
            )
        };
        assert_eq!(
            kmsg("audit(1.2:3): pid=1 arch=c000003e"),
            Err(AuditError::Missing("syscall"))
        );
        assert_eq!(
            kmsg("audit(1.2:3): pid=-1 arch=c000003e syscall=1"),
            Err(AuditError::Malformed("pid"))
        );
        assert_eq!(
            kmsg("audit(1.2:3): pid=1 arch=zz syscall=1"),
            Err(AuditError::Malformed("arch"))
        );
        assert_eq!(
            kmsg("audit(1.2:3): pid=99999999999999999999 arch=c000003e syscall=1"),
            Err(AuditError::Malformed("pid"))
        );
        assert_eq!(
            kmsg("audit(1.2:3): pid=1 arch=c000003e syscall=1 pid=2"),
            Err(AuditError::Repeated("pid"))
        );
        for stamp in [
            "audit(1:2): pid=1",
            "audit(1.2:x): pid=1",
            "audit(1.2:3) pid=1",
            "audit(1.2:3",
        ] {
            assert_eq!(
                kmsg(stamp),
                Err(AuditError::Malformed("audit(…) stamp")),
                "{stamp}"
            );
        }
    }
}
