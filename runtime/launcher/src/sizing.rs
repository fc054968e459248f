//! Guest RAM, CPU count and host CPU pinning from the container's limits.
//!
//! Inputs are passed as text so the rules are testable; [`crate::host`]
//! reads the real files.

use crate::LaunchError;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Below this dockerd and containerd do not fit.
pub const MIN_MEMORY: u64 = 256 * MIB;
/// Without a limit: half the host RAM, at most this. UML maps guest RAM
/// lazily, so a generous size costs nothing until the guest uses it.
pub const DEFAULT_MAX_MEMORY: u64 = 4 * GIB;
/// CONFIG_NR_CPUS of the kernel build.
pub const MAX_CPUS: u32 = 8;

/// Parses `2G`, `1536M`, `512m`, `1g`, `1073741824`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 1 << 10),
        (i, 'm' | 'M') => (&t[..i], MIB),
        (i, 'g' | 'G') => (&t[..i], GIB),
        (i, 't' | 'T') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A cgroup memory limit, `None` for "no limit" (`max`, or v1's huge value).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v = t.parse::<u64>().ok()?;
    // cgroup v1 reports "unlimited" as a page-rounded i64::MAX.
    if v >= (1u64 << 62) { None } else { Some(v) }
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Guest RAM in MiB: the override, else 3/4 of the cgroup limit, else half
/// the host RAM capped at [`DEFAULT_MAX_MEMORY`].
pub fn memory_mib(
    override_: Option<&str>,
    cgroup_limit: Option<u64>,
    mem_total: Option<u64>,
) -> Result<u64, LaunchError> {
    let bytes = match override_ {
        Some(text) => parse_size(text).ok_or_else(|| LaunchError::Config {
            what: format!("USMOL_MEMORY={text:?}"),
            fix: "use a size such as 2G or 1536M".into(),
        })?,
        None => match cgroup_limit {
            Some(limit) => limit / 4 * 3,
            None => mem_total.map_or(2 * GIB, |t| (t / 2).min(DEFAULT_MAX_MEMORY)),
        },
    };
    if bytes < MIN_MEMORY {
        return Err(LaunchError::Config {
            what: format!("guest memory {} MiB", bytes / MIB),
            fix: format!(
                "give the container more memory (guest RAM is 3/4 of the container limit) or set USMOL_MEMORY to at least {} MiB",
                MIN_MEMORY / MIB
            ),
        });
    }
    Ok(bytes / MIB)
}

/// CPUs allowed by cgroup `cpu.max` (`quota period` or `max period`).
pub fn parse_cpu_max(text: &str) -> Option<u32> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota.div_ceil(period).max(1) as u32)
}

/// Guest CPU count. Default 1: UML's SMP costs more than it gives for
/// booting dockerd (measured: dockerd ready 4.6 s with 1 CPU, 6.4-6.9 s
/// with 2). `auto` takes min(affinity, cpu.max); a number is used as is.
/// Capped at [`MAX_CPUS`].
pub fn cpus(
    override_: Option<&str>,
    affinity: u32,
    cpu_max: Option<u32>,
) -> Result<u32, LaunchError> {
    let n = match override_.map(str::trim) {
        None | Some("") => 1,
        Some("auto") => affinity.max(1).min(cpu_max.unwrap_or(u32::MAX)),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| LaunchError::Config {
                what: format!("USMOL_CPUS={text:?}"),
                fix: format!("use auto or a whole number from 1 to {MAX_CPUS}"),
            })?,
    };
    Ok(n.min(MAX_CPUS))
}

/// The host CPU the kernel and its guest processes are pinned to, if any.
///
/// A one-CPU guest hands the host CPU back and forth between the kernel
/// process and the guest process it runs (every guest syscall and page
/// fault is a round trip). When the scheduler puts the two on different
/// host CPUs, each handoff wakes an idle CPU, which on a virtual machine
/// costs tens of microseconds; on one CPU it is a plain context switch
/// (measured: 200000 one-byte `dd` syscalls 8.8 s unpinned, 1.6 s pinned).
/// `auto` pins to `current` (the CPU the scheduler just ran the launcher
/// on) when the guest has one CPU and more than one is allowed; `off`
/// never pins; a number pins to that CPU, which must be allowed.
pub fn pin_cpu(
    setting: Option<&str>,
    guest_cpus: u32,
    allowed: &[usize],
    current: Option<usize>,
) -> Result<Option<usize>, LaunchError> {
    match setting.map(str::trim) {
        None | Some("") | Some("auto") => {
            Ok(current.filter(|c| guest_cpus == 1 && allowed.len() > 1 && allowed.contains(c)))
        }
        Some("off") => Ok(None),
        Some(text) => {
            let bad = || LaunchError::Config {
                what: format!("USMOL_PIN={text:?}"),
                fix: format!(
                    "use auto, off, or one of the CPUs this process may run on: {}",
                    allowed
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            let cpu: usize = text.parse().map_err(|_| bad())?;
            if allowed.contains(&cpu) {
                Ok(Some(cpu))
            } else {
                Err(bad())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G"), Some(2 * GIB));
        assert_eq!(parse_size("1536m"), Some(1536 * MIB));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712"), None);
        assert_eq!(parse_memory_limit("4294967296\n"), Some(4 * GIB));
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n"),
            Some(24684092 * 1024)
        );
    }

    #[test]
    fn memory_rules() {
        assert_eq!(
            memory_mib(None, Some(4 * GIB), Some(64 * GIB)).unwrap(),
            3072
        );
        assert_eq!(memory_mib(None, None, Some(24 * GIB)).unwrap(), 4096);
        assert_eq!(memory_mib(None, None, Some(2 * GIB)).unwrap(), 1024);
        assert_eq!(memory_mib(None, None, None).unwrap(), 2048);
        assert_eq!(
            memory_mib(Some("1G"), Some(128 * MIB), None).unwrap(),
            1024,
            "override wins"
        );
        assert!(
            memory_mib(None, Some(256 * MIB), None)
                .unwrap_err()
                .to_string()
                .contains("USMOL_MEMORY")
        );
        assert!(memory_mib(Some("lots"), None, None).is_err());
    }

    #[test]
    fn cpu_rules() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(cpus(None, 16, Some(2)).unwrap(), 1);
        assert_eq!(cpus(Some("auto"), 16, Some(2)).unwrap(), 2);
        assert_eq!(cpus(Some("auto"), 16, None).unwrap(), MAX_CPUS);
        assert_eq!(cpus(Some("auto"), 0, None).unwrap(), 1);
        assert_eq!(cpus(Some("99"), 1, None).unwrap(), MAX_CPUS);
        assert_eq!(cpus(Some("3"), 1, Some(1)).unwrap(), 3);
        assert!(cpus(Some("0"), 1, None).is_err());
    }

    #[test]
    fn pinning() {
        let two = [0, 1];
        assert_eq!(pin_cpu(None, 1, &two, Some(1)).unwrap(), Some(1));
        assert_eq!(pin_cpu(Some("auto"), 1, &two, Some(0)).unwrap(), Some(0));
        // An SMP guest spreads over CPUs; one allowed CPU needs no pin.
        assert_eq!(pin_cpu(None, 2, &two, Some(1)).unwrap(), None);
        assert_eq!(pin_cpu(None, 1, &[3], Some(3)).unwrap(), None);
        assert_eq!(pin_cpu(None, 1, &two, None).unwrap(), None);
        assert_eq!(pin_cpu(Some("off"), 1, &two, Some(1)).unwrap(), None);
        assert_eq!(pin_cpu(Some("1"), 2, &two, Some(0)).unwrap(), Some(1));
        let err = pin_cpu(Some("5"), 1, &two, Some(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("USMOL_PIN=\"5\"") && err.contains("0,1"),
            "{err}"
        );
        assert!(pin_cpu(Some("yes"), 1, &two, Some(0)).is_err());
    }
}
