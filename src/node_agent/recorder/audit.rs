//! Reads the kernel's seccomp audit records (`type=SECCOMP` in the audit log, `type=1326` in
//! syslog, the journal or `/dev/kmsg`):
//!
//! ```text
//! type=SECCOMP msg=audit(1795422987.997:2): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=611
//!   comm="logtest" exe="/tmp/logtest" sig=0 arch=c000003e syscall=63 compat=0 ip=0x7f… code=0x7ffc0000
//! ```
//!
//! Only `pid`, `arch` and `syscall` are kept. The kernel hex-encodes untrusted strings that hold a
//! space or a quote (`comm`, `exe`), so a record splits on spaces safely. The parser takes any
//! bytes: a line that is no seccomp record is `None`, one that claims to be and is malformed an error.

use memchr::memmem;

/// One seccomp audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompRecord {
    pub pid: u32,
    /// Audit architecture (`AUDIT_ARCH_*`), e.g. 0xc000003e for x86-64.
    pub arch: u32,
    pub syscall: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("seccomp audit record without {0}")]
    Missing(&'static str),
    #[error("seccomp audit record with a malformed {0}")]
    Malformed(&'static str),
}

const MARKERS: [&[u8]; 2] = [b"type=1326 ", b"type=SECCOMP "];

pub fn parse(line: &[u8]) -> Result<Option<SeccompRecord>, AuditError> {
    let Some(start) = MARKERS
        .iter()
        .find_map(|m| memmem::find(line, m).map(|i| i + m.len()))
    else {
        return Ok(None);
    };
    let (mut pid, mut arch, mut syscall) = (None, None, None);
    for token in line[start..].split(|&b| b == b' ' || b == b'\n' || b == b'\r') {
        let Some(eq) = memchr::memchr(b'=', token) else {
            continue;
        };
        let (key, value) = (&token[..eq], &token[eq + 1..]);
        match key {
            b"pid" => pid = Some(number(value, 10).ok_or(AuditError::Malformed("pid"))?),
            b"arch" => arch = Some(number(value, 16).ok_or(AuditError::Malformed("arch"))?),
            b"syscall" => syscall = Some(number(value, 10).ok_or(AuditError::Malformed("syscall"))?),
            _ => {}
        }
    }
    let pid = pid.ok_or(AuditError::Missing("pid"))?;
    let arch = arch.ok_or(AuditError::Missing("arch"))?;
    let syscall = syscall.ok_or(AuditError::Missing("syscall"))?;
    Ok(Some(SeccompRecord {
        pid: u32::try_from(pid).map_err(|_| AuditError::Malformed("pid"))?,
        arch: u32::try_from(arch).map_err(|_| AuditError::Malformed("arch"))?,
        syscall: i32::try_from(syscall).map_err(|_| AuditError::Malformed("syscall"))?,
    }))
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
    const AUDITD: &str = "type=SECCOMP msg=audit(1795422987.997:3): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=611 comm=\"logtest\" exe=\"/tmp/logtest\" sig=0 arch=c000003e syscall=110 compat=0 ip=0x7f7ddcdf44f7 code=0x7ffc0000AUID=\"unset\" UID=\"root\"";
    /// As rsyslog writes it to /var/log/syslog (the kernel's printk with a timestamp).
    const SYSLOG: &str = "2026-11-23T10:00:00.123456+00:00 node-1 kernel: [41294.998182] audit: type=1326 audit(1795422987.997:4): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=612 comm=2F746D7020782F79 exe=\"/tmp/a b\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x7f7ddcdf44e7 code=0x7ffc0000\n";

    #[test]
    fn reads_kmsg_auditd_and_syslog_records() {
        assert_eq!(
            parse(KMSG.as_bytes()),
            Ok(Some(SeccompRecord {
                pid: 611,
                arch: 0xc000_003e,
                syscall: 63
            }))
        );
        assert_eq!(parse(AUDITD.as_bytes()).unwrap().unwrap().syscall, 110);
        assert_eq!(
            parse(SYSLOG.as_bytes()),
            Ok(Some(SeccompRecord {
                pid: 612,
                arch: 0xc000_003e,
                syscall: 39
            }))
        );
    }

    #[test]
    fn other_lines_are_skipped_and_broken_records_refused() {
        for other in [
            "",
            "Nov 23 kernel: EXT4-fs (vda): mounted filesystem",
            "type=SYSCALL msg=audit(1.1:1): arch=c000003e syscall=59 pid=1",
            "\u{0}\u{ff}garbage",
        ] {
            assert_eq!(parse(other.as_bytes()), Ok(None), "{other:?}");
        }
        assert_eq!(
            parse(b"audit: type=1326 audit(1:2): pid=1 arch=c000003e"),
            Err(AuditError::Missing("syscall"))
        );
        assert_eq!(
            parse(b"audit: type=1326 audit(1:2): pid=-1 arch=c000003e syscall=1"),
            Err(AuditError::Malformed("pid"))
        );
        assert_eq!(
            parse(b"audit: type=1326 audit(1:2): pid=1 arch=zz syscall=1"),
            Err(AuditError::Malformed("arch"))
        );
        assert_eq!(
            parse(b"audit: type=1326 audit(1:2): pid=99999999999999999999 arch=c000003e syscall=1"),
            Err(AuditError::Malformed("pid"))
        );
    }
}
