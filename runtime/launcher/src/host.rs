//! Facts about the outer container, read from the real system: assets,
//! cgroup limits, seccomp availability, a place for guest RAM.

use crate::LaunchError;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The shipped files next to the launcher (see the artifact layout).
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    /// passt, needed only with the network on (checked where it is used).
    pub passt: PathBuf,
}

/// `lib/linux` and `lib/rootfs.ext4` beside the launcher binary
/// (`/proc/self/exe`), or below `USMOL_LIB_DIR`.
pub fn assets(lib_override: Option<&str>) -> Result<Assets, LaunchError> {
    let lib = match lib_override {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::fs::read_link("/proc/self/exe").map_err(|e| LaunchError::Config {
                what: format!("reading /proc/self/exe: {e}"),
                fix: "mount /proc or set USMOL_LIB_DIR to the artifact's lib directory".into(),
            })?;
            exe.parent().unwrap_or(Path::new("/")).join("lib")
        }
    };
    let a = Assets {
        kernel: lib.join("linux"),
        rootfs: lib.join("rootfs.ext4"),
        passt: lib.join("passt"),
    };
    for p in [&a.kernel, &a.rootfs] {
        if !p.is_file() {
            return Err(LaunchError::Config {
                what: format!("{} is missing", p.display()),
                fix: "run the launcher from an unpacked usmol artifact (run + lib/), or set USMOL_LIB_DIR".into(),
            });
        }
    }
    Ok(a)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// This process's cgroup v2 directory.
fn cgroup_dir() -> PathBuf {
    let rel = read("/proc/self/cgroup")
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| "/".into());
    let dir = PathBuf::from("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    if dir.join("memory.max").exists() || dir.join("cpu.max").exists() {
        dir
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// The memory limit of the container (cgroup v2, else v1), if any.
pub fn memory_limit() -> Option<u64> {
    let dir = cgroup_dir();
    read(&dir.join("memory.max").to_string_lossy())
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|t| crate::sizing::parse_memory_limit(&t))
}

pub fn mem_total() -> Option<u64> {
    read("/proc/meminfo").and_then(|t| crate::sizing::parse_meminfo_total(&t))
}

pub fn cpu_max() -> Option<u32> {
    read(&cgroup_dir().join("cpu.max").to_string_lossy())
        .and_then(|t| crate::sizing::parse_cpu_max(&t))
}

/// The CPUs in this process's affinity mask (none if it cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The CPU this thread is running on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns -1 on error.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// Whether a process here may install a seccomp filter (UML's seccomp mode
/// needs it; without it UML falls back to ptrace, which has no SMP).
/// Probed in a throwaway child so the launcher itself stays unfiltered.
pub fn seccomp_usable() -> bool {
    // SAFETY: the child only makes raw syscalls and _exit()s.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // Allow-everything filter: one BPF_RET|BPF_K SECCOMP_RET_ALLOW.
            let mut insn = [libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }];
            let prog = libc::sock_fprog {
                len: 1,
                filter: insn.as_mut_ptr(),
            };
            let ok = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(libc::SYS_seccomp, 1 /* SET_MODE_FILTER */, 0, &prog) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0) == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0
    }
}

/// Free bytes and mount flags of the filesystem holding `dir`.
fn statvfs(dir: &Path) -> Option<(u64, bool, bool)> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: plain statvfs/statfs into zeroed structs.
    unsafe {
        let mut v: libc::statvfs = std::mem::zeroed();
        let mut f: libc::statfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut v) != 0 || libc::statfs(c.as_ptr(), &mut f) != 0 {
            return None;
        }
        let free = v.f_bavail as u64 * v.f_frsize as u64;
        let noexec = v.f_flag & libc::ST_NOEXEC != 0;
        let tmpfs = f.f_type == libc::TMPFS_MAGIC;
        Some((free, noexec, tmpfs))
    }
}

/// A directory for guest RAM: tmpfs, not noexec, with room for all of it.
/// `None` lets the kernel fall back to a memfd (the memfd patch), which is
/// what a plain `docker run` (noexec 64 MiB /dev/shm) gets.
pub fn ram_dir(candidates: &[PathBuf], memory_bytes: u64) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|d| {
            statvfs(d).is_some_and(|(free, noexec, tmpfs)| tmpfs && !noexec && free >= memory_bytes)
                && writable(d)
        })
        .cloned()
}

pub fn writable(dir: &Path) -> bool {
    CString::new(dir.as_os_str().as_encoded_bytes())
        // SAFETY: access(2) on a valid C string.
        .map(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0)
        .unwrap_or(false)
}

/// Random bytes from the host kernel, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // SAFETY: buf is valid for n bytes.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, n, 0) };
    buf.truncate(got.max(0) as usize);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hostname() -> String {
    read("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "usmol".into())
}

pub fn isatty(fd: i32) -> bool {
    // SAFETY: isatty on any fd number is safe.
    unsafe { libc::isatty(fd) == 1 }
}
