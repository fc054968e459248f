//! Running the UML process: fd wiring, the kernel log, the control line,
//! stdin relay, signals, the shutdown deadline.

use crate::LaunchError;
use crate::config::fds;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use usmol_channel::Control;

/// How long a signalled guest gets to shut down before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    unsafe {
        Ok((
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        ))
    }
}

/// A close-on-exec duplicate of `fd` numbered above the fds the child
/// gets, so the dup2 calls after fork cannot clobber each other.
fn dup_high(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on an fd we were given.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The private temp dir: COW file, hostfs root, kernel log, maybe the
/// docker disk. Removed on drop unless `keep`.
pub struct PrivateDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl PrivateDir {
    pub fn create(base: &Path) -> Result<Self, LaunchError> {
        let fail = |e: std::io::Error| LaunchError::Config {
            what: format!("creating a private directory in {}: {e}", base.display()),
            fix: "make TMPDIR (or USMOL_TMPDIR) a writable directory".into(),
        };
        for _ in 0..16 {
            let path = base.join(format!("usmol-{}", &crate::host::random_hex(6)));
            match std::fs::DirBuilder::new().mode_0700().create(&path) {
                Ok(()) => return Ok(PrivateDir { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(e)),
            }
        }
        Err(fail(std::io::Error::other("no free name")))
    }
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}
impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Opens (creating it sparse if missing) and exclusively locks the docker
/// disk; the lock lives as long as the returned file.
pub fn lock_disk(path: &Path, size: u64) -> Result<File, LaunchError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LaunchError::Config {
            what: format!("opening docker disk {}: {e}", path.display()),
            fix: "make its directory writable by this user, or set USMOL_DISK".into(),
        })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LaunchError::Config {
            what: format!(
                "docker disk {} is in use by another usmol instance",
                path.display()
            ),
            fix: "stop the other instance, or give this one its own state volume / USMOL_DISK"
                .into(),
        });
    }
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        f.set_len(size).map_err(|e| LaunchError::Config {
            what: format!("sizing docker disk {} to {size} bytes: {e}", path.display()),
            fix: "free space or set USMOL_DISK_SIZE lower".into(),
        })?;
    }
    Ok(f)
}

/// Host fds handed to the UML process (see [`fds`]).
pub struct Wiring {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub control_in: OwnedFd,
    pub control_out: OwnedFd,
    pub log: OwnedFd,
}

/// Starts the kernel with its fds in place and an emptied signal mask,
/// pinned to host CPU `pin` if given (its threads and guest processes
/// inherit the mask; see [`crate::sizing::pin_cpu`]).
pub fn spawn_kernel(
    kernel: &Path,
    args: &[String],
    env: &[(String, String)],
    pin: Option<usize>,
    w: Wiring,
) -> std::io::Result<Child> {
    let map: Vec<(OwnedFd, RawFd)> = vec![
        (dup_high(w.log.as_raw_fd())?, fds::LOG),
        (dup_high(w.log.as_raw_fd())?, 2),
        (dup_high(w.stdin.as_raw_fd())?, fds::STDIN),
        (dup_high(w.stdout.as_raw_fd())?, fds::STDOUT),
        (dup_high(w.stderr.as_raw_fd())?, fds::STDERR),
        (dup_high(w.control_in.as_raw_fd())?, fds::CONTROL_IN),
        (dup_high(w.control_out.as_raw_fd())?, fds::CONTROL_OUT),
    ];
    let raw: Vec<(RawFd, RawFd)> = map.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
    let mut cmd = Command::new(kernel);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: dup2, sigprocmask, prctl, getppid and sched_setaffinity are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            crate::hardening::die_with_launcher(launcher)?;
            for (from, to) in &raw {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if let Some(cpu) = pin {
                // A hint only: if the CPU was taken away meanwhile, run unpinned.
                let mut cpus: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut cpus);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus);
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(map);
    child
}

/// The kernel log: kept in a file, the last lines in memory for error
/// reports, echoed to stderr with `USMOL_DEBUG`, watched for panics.
pub struct KernelLog {
    pub tail: Mutex<VecDeque<String>>,
    pub panicked: AtomicBool,
}

impl KernelLog {
    pub fn tail_text(&self) -> String {
        self.tail
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
    pub fn contains(&self, needle: &str) -> bool {
        self.tail.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// Whether a kernel log line reports a panic.
pub fn is_panic_line(line: &str) -> bool {
    line.contains("Kernel panic - not syncing")
}

pub fn spawn_log_reader(
    from: File,
    file: Option<File>,
    echo: bool,
    uml_pid: Arc<AtomicI32>,
) -> (Arc<KernelLog>, std::thread::JoinHandle<()>) {
    let log = Arc::new(KernelLog {
        tail: Mutex::new(VecDeque::new()),
        panicked: AtomicBool::new(false),
    });
    let l = log.clone();
    let h = std::thread::spawn(move || {
        let mut file = file;
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&buf);
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if echo {
                eprintln!("{line}");
            }
            if is_panic_line(&line) && !l.panicked.swap(true, Ordering::SeqCst) {
                // A panicked UML halts rather than exits: stop it once the
                // panic message has had a moment to arrive.
                let pid = uml_pid.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    let p = pid.load(Ordering::SeqCst);
                    if p > 0 {
                        // SAFETY: kill(2) on our child.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                });
            }
            let mut t = l.tail.lock().unwrap();
            t.push_back(line);
            if t.len() > 40 {
                t.pop_front();
            }
        }
    });
    (log, h)
}

/// Copies host stdin into the relay pipe, then announces its length.
fn relay_stdin(relay: File, control: Arc<Mutex<File>>) {
    std::thread::spawn(move || {
        let mut relay = relay;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        let mut total: u64 = 0;
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if relay.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = control
            .lock()
            .unwrap()
            .write_all(Control::StdinEof(total).encode().as_bytes());
        // The relay pipe stays open: closing it would hang up the tty and
        // drop bytes the guest has not read yet.
        std::mem::forget(relay);
    });
}

/// Reads init's control lines; `stdin-ready` starts the stdin relay.
pub fn spawn_control_reader(from: File, relay: Option<File>, control: Arc<Mutex<File>>) {
    std::thread::spawn(move || {
        let mut relay = relay;
        let reader = BufReader::new(from);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Ok(Control::StdinReady) = Control::parse(&line)
                && let Some(r) = relay.take()
            {
                relay_stdin(r, control.clone());
            }
        }
    });
}

/// Blocks the shutdown signals in the calling thread (call before spawning
/// threads, so all inherit the mask) and returns them.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Forwards shutdown signals to init and arms the SIGKILL deadline.
pub fn spawn_signal_forwarder(
    set: libc::sigset_t,
    control: Arc<Mutex<File>>,
    uml_pid: Arc<AtomicI32>,
    got_signal: Arc<AtomicI32>,
) {
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: sigwait on a set blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            let first = got_signal.swap(sig, Ordering::SeqCst) == 0;
            let _ = control
                .lock()
                .unwrap()
                .write_all(Control::Signal(sig).encode().as_bytes());
            if first {
                let pid = uml_pid.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(SHUTDOWN_GRACE);
                    let p = pid.load(Ordering::SeqCst);
                    if p > 0 {
                        eprintln!(
                            "usmol: the guest did not stop within {} s; killing it",
                            SHUTDOWN_GRACE.as_secs()
                        );
                        // SAFETY: kill(2) on our child.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                });
            }
        }
    });
}

/// Terminal state of the host stdio, restored after UML (which sets its
/// fds non-blocking and its terminal raw) is gone.
pub struct HostStdio {
    flags: [i32; 3],
    termios: Option<libc::termios>,
}

impl HostStdio {
    pub fn save() -> Self {
        let mut flags = [0; 3];
        for (fd, f) in flags.iter_mut().enumerate() {
            // SAFETY: fcntl F_GETFL on stdio fds.
            *f = unsafe { libc::fcntl(fd as i32, libc::F_GETFL) };
        }
        // SAFETY: termios is plain data.
        let termios = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(0, &mut t) == 0).then_some(t)
        };
        HostStdio { flags, termios }
    }

    pub fn restore(&self) {
        for (fd, f) in self.flags.iter().enumerate() {
            if *f >= 0 {
                // SAFETY: fcntl F_SETFL with the flags we read.
                unsafe { libc::fcntl(fd as i32, libc::F_SETFL, *f) };
            }
        }
        if let Some(t) = &self.termios {
            // SAFETY: restoring the saved termios.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_detection() {
        assert!(is_panic_line(
            "[    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        ));
        assert!(!is_panic_line("panic=1"));
    }

    #[test]
    fn disk_lock_is_exclusive_and_sparse() {
        let dir = PrivateDir::create(&std::env::temp_dir()).unwrap();
        let disk = dir.path.join("d.ext4");
        let a = lock_disk(&disk, 1 << 30).unwrap();
        assert_eq!(a.metadata().unwrap().len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(
            a.metadata().unwrap().blocks() < 64,
            "the disk file must be sparse"
        );
        let e = lock_disk(&disk, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("in use by another usmol instance"), "{e}");
        drop(a);
        lock_disk(&disk, 1 << 30).unwrap();
    }

    #[test]
    fn private_dir_is_0700_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create(&std::env::temp_dir()).unwrap();
        let p = dir.path.clone();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(dir);
        assert!(!p.exists());
    }
}
