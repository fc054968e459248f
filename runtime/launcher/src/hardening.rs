//! What the launcher drops and cleans up before it starts anything: no new
//! privileges, no inherited fds, no private directories left behind by a
//! launcher that was killed.
//!
//! - `PR_SET_NO_NEW_PRIVS`: nothing the launcher starts (UML, its guest
//!   stubs, passt) can gain privileges through a setuid or file-capability
//!   binary; none of them needs to.
//! - Every fd above stderr that the launcher inherited is marked
//!   close-on-exec: without that, whatever the caller left open (a secret
//!   file, a socket, the write end of a pipe it waits on) would live on in
//!   the UML process for the whole run.
//! - The kernel gets SIGKILL when the launcher dies (`PR_SET_PDEATHSIG`):
//!   an orphaned kernel cannot report to anyone, died of SIGPIPE at its next
//!   console line at best and was seen spinning on a CPU for minutes at
//!   worst. Its disks are ext4 with a journal, so this is a power cut they
//!   are made for (tests/tests/faults.rs kills the launcher 20 times).
//! - Each private directory holds a `lock` file whose `flock` the UML
//!   process inherits, so it stays locked while that kernel runs, even if
//!   the launcher itself was killed with SIGKILL. The next launcher removes
//!   sibling directories whose lock is free: what a killed launcher could
//!   not clean up (the root COW file, a private docker disk) does not pile
//!   up in the temp directory.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

/// The lock file inside a private directory (see the module doc).
pub const LOCK_FILE: &str = "lock";

/// Lowest fd number for the lock the kernel inherits.
const INHERITED_LOCK_FD: i32 = 100;

/// Sets no_new_privs and marks every inherited fd above 2 close-on-exec.
/// Call first, before the launcher opens anything of its own.
pub fn harden() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing, it only
    // sets a flag on fds this process owns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Kernels before 5.11: walk the fd table instead.
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .filter(|&fd| fd > 2)
                    .collect()
            })
            .unwrap_or_default();
        for fd in fds {
            // SAFETY: F_SETFD on an fd number; a stale number just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Run in the kernel's process between fork and exec: SIGKILL it when the
/// launcher (`launcher`, its parent) dies; fails if the launcher is already
/// gone. Only async-signal-safe calls, no allocation.
pub fn die_with_launcher(launcher: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid with integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != launcher {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Removes stale sibling private directories of `private` in `base`, then
/// locks `private` for the life of this launcher and of the kernel it
/// starts. With `keep` (USMOL_KEEP) the directory gets no lock, so no later
/// launcher removes it. Best effort: cleanup must never stop a run.
pub fn claim_private_dir(base: &Path, private: &Path, keep: bool) -> Option<File> {
    sweep_stale(base, private);
    if keep {
        return None;
    }
    // Locked under a temporary name first: a sweeper only looks at `lock`,
    // so it can never take a lock this launcher is about to hold.
    let tmp = private.join("lock.new");
    let f = File::create(&tmp).ok()?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return None;
    }
    std::fs::rename(&tmp, private.join(LOCK_FILE)).ok()?;
    // Inherited by the kernel, so the lock outlives a killed launcher: a
    // duplicate without close-on-exec, numbered high so the kernel's fd
    // wiring (0-7) cannot overwrite it. It shares the flock.
    // SAFETY: F_DUPFD on an fd we own; the result is a fresh fd we own.
    let high = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, INHERITED_LOCK_FD) };
    if high < 0 {
        return None;
    }
    // SAFETY: `high` is a fresh fd nothing else owns.
    Some(File::from(unsafe {
        std::os::fd::OwnedFd::from_raw_fd(high)
    }))
}

/// Refuses a docker disk that a UML kernel still holds (its ubd driver
/// takes a POSIX write lock on the file): the launcher that started that
/// kernel may be gone, and with it the launcher's own `flock`. A kernel
/// that is only dying (killed with its launcher a moment ago) lets go
/// within milliseconds, so the refusal waits a short grace period first.
pub fn check_disk_not_held(path: &Path, disk: &File) -> Result<(), crate::LaunchError> {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(3);
    let start = std::time::Instant::now();
    loop {
        let holder = disk_lock_holder(disk);
        let Some(pid) = holder else { return Ok(()) };
        if start.elapsed() >= GRACE {
            return Err(crate::LaunchError::Config {
                what: format!(
                    "docker disk {} is in use by another usmol instance (a UML kernel, pid {pid}, still holds it)",
                    path.display(),
                ),
                fix: "wait for that kernel to shut down, or give this instance its own state volume / USMOL_DISK".into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The pid holding a POSIX write lock on `disk`, if any.
fn disk_lock_holder(disk: &File) -> Option<i32> {
    // SAFETY: flock is plain data; F_GETLK fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: fcntl F_GETLK on an fd we own with a valid flock.
    let r = unsafe { libc::fcntl(disk.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (r == 0 && fl.l_type != libc::F_UNLCK as i16).then_some(fl.l_pid)
}

/// Removes `usmol-*` directories in `base` (other than `own`) whose lock
/// file exists and is not locked by anyone.
pub fn sweep_stale(base: &Path, own: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let path = e.path();
        let is_ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("usmol-"))
            && e.file_type().is_ok_and(|t| t.is_dir())
            && path != own;
        if !is_ours {
            continue;
        }
        let Ok(lock) = File::open(path.join(LOCK_FILE)) else {
            continue;
        };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && std::fs::remove_dir_all(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_flags(fd: i32) -> i32 {
        // SAFETY: F_GETFD on an fd number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) }
    }

    #[test]
    fn harden_marks_inherited_fds_cloexec_and_sets_no_new_privs() {
        let f = File::open("/dev/null").unwrap();
        // SAFETY: clearing FD_CLOEXEC on our own fd, as an inherited fd has it.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) };
        assert_eq!(fd_flags(f.as_raw_fd()) & libc::FD_CLOEXEC, 0);
        harden();
        assert_ne!(fd_flags(f.as_raw_fd()) & libc::FD_CLOEXEC, 0);
        // no_new_privs is per thread (inherited by threads and children made
        // after it): read this thread's.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }

    #[test]
    fn stale_dirs_go_live_and_kept_ones_stay() {
        let base = crate::run::PrivateDir::create(&std::env::temp_dir()).unwrap();
        let mk = |name: &str| {
            let p = base.path.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("root.cow"), b"x").unwrap();
            p
        };
        let live = mk("usmol-live");
        let live_lock = claim_private_dir(&base.path, &live, false).unwrap();
        assert_eq!(fd_flags(live_lock.as_raw_fd()) & libc::FD_CLOEXEC, 0);
        assert!(live_lock.as_raw_fd() >= INHERITED_LOCK_FD);
        let stale = mk("usmol-stale");
        drop(claim_private_dir(&base.path, &stale, false).unwrap());
        let kept = mk("usmol-kept");
        assert!(claim_private_dir(&base.path, &kept, true).is_none());
        let other = mk("not-usmol");
        std::fs::write(other.join(LOCK_FILE), b"").unwrap();

        let own = mk("usmol-own");
        let _own_lock = claim_private_dir(&base.path, &own, false).unwrap();
        assert!(live.exists(), "a locked directory was removed");
        assert!(!stale.exists(), "a stale directory was left");
        assert!(kept.exists() && other.exists() && own.exists());
        drop(live_lock);
        assert_eq!(sweep_stale(&base.path, &own), 1);
        assert!(!live.exists());
    }
}
