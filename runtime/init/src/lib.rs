//! usmol-init: PID 1 inside the UML guest.
//!
//! Boot sequence (each step's failure ends in a status and a power-off,
//! never a hang):
//! 1. pseudo-filesystems, cgroup2 delegation, hostname, loopback, entropy;
//! 2. the share (request file) and the volumes;
//! 3. the docker disk (`mkfs.ext4` on first boot, `fsck -p` later);
//! 4. dockerd, ready when `/_ping` answers on its socket;
//! 5. the command, wired to the console lines (see [`stdio`]);
//! 6. shutdown: stop dockerd, kill what is left, flush the consoles, write
//!    the status file and `/proc/exitcode`, unmount, `reboot(POWER_OFF)`.
//!
//! Started under another name, the binary is the guest's OCI runtime entry
//! or docker's network hook instead ([`oci`]).
//!
//! Architecture Invariant: init depends on nothing in `builder/`; its only
//! contract with the launcher is `usmol-channel`.

pub mod disk;
pub mod docker;
pub mod mounts;
pub mod net;
pub mod oci;
pub mod stdio;
pub mod sys;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio as ProcStdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use usmol_channel::{
    CONTROL_TTY, Control, DOCKER_DISK, FORMAT_VERSION, GUEST_SHARE_MOUNT, Outcome, REQUEST_FILE,
    Request, STATUS_FILE, STDERR_TTY, STDIO_TTY, Status, Timings, exit,
};

/// Everything that can stop the boot before the command runs.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{what}: {source}")]
    Mount {
        what: String,
        source: std::io::Error,
    },
    #[error("cgroup setup: {what}: {source}")]
    Cgroup {
        what: String,
        source: std::io::Error,
    },
    #[error("docker disk: {what}: {detail}")]
    Disk { what: String, detail: String },
    #[error("request file {path}: {detail}")]
    Request { path: String, detail: String },
    #[error("{0}")]
    Dockerd(String),
    #[error(
        "network: {0}; the launcher's passt log says more (USMOL_DEBUG=1), or run with USMOL_NETWORK=none"
    )]
    Network(#[from] net::NetError),
    #[error("docker API relay on port {port}: {source}")]
    ApiRelay { port: u16, source: std::io::Error },
    #[error("console {path}: {source}")]
    Console {
        path: String,
        source: std::io::Error,
    },
}

/// The command's pid once it runs (signals go to its process group).
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);
/// A shutdown signal that arrived before the command started.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Forwards a launcher signal to the command, or remembers it so the boot
/// stops before the command starts.
fn forward_signal(sig: i32) {
    let p = COMMAND_PID.load(Ordering::SeqCst);
    if p > 0 {
        // SAFETY: kill(2) on the command's process group.
        unsafe { libc::kill(-p, sig) };
    } else {
        PENDING_SIGNAL
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .ok();
    }
}

/// The boot was interrupted by a launcher signal: finish as if the command
/// had died of it.
fn interrupted() -> Option<Finish> {
    match PENDING_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(Finish {
            outcome: Outcome::Exited,
            code: exit::from_signal(sig),
            message: None,
        }),
    }
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Progress and diagnostics to the kernel console (the launcher's log, never
/// the user's stdout).
pub fn log(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        let _ = writeln!(std::io::stderr(), "usmol-init: {msg}");
    }
}

/// Seconds since boot.
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command's environment: the launcher's list over guest defaults.
pub fn command_env(req: &Request) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), req.hostname.clone()),
    ];
    if req.stdio.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for (k, v) in &req.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// argv for the command; an empty request means an interactive login shell.
pub fn command_argv(req: &Request, exists: impl Fn(&str) -> bool) -> Vec<String> {
    if !req.argv.is_empty() {
        return req.argv.clone();
    }
    let shell = if exists("/bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    vec![shell.into(), "-l".into()]
}

/// Maps a spawn error to (outcome, exit code), like a shell does.
pub fn spawn_error_code(err: &std::io::Error) -> (Outcome, i32) {
    match err.raw_os_error() {
        Some(libc::ENOENT) => (Outcome::NotFound, exit::NOT_FOUND),
        _ => (Outcome::NotExecutable, exit::CANNOT_RUN_KERNEL),
    }
}

/// Exit code of a finished command: its status, or 128+N for signal N.
pub fn status_code(st: std::process::ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => exit::from_signal(s),
        (None, None) => exit::KERNEL_PANIC,
    }
}

fn set_hostname(name: &str) {
    // SAFETY: name is a valid buffer of the given length.
    unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) };
}

/// Brings up `lo` with SIOCSIFFLAGS (no iproute2 process needed).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket + ioctl with a zeroed, then filled, ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc == 0 { Ok(()) } else { Err(err) }
    }
}

/// If `getrandom` would block, credit the launcher's host randomness so
/// dockerd (Go's crypto/rand) never waits for entropy.
fn ensure_entropy(seed_hex: &str) {
    let mut probe = [0u8; 1];
    // SAFETY: valid buffer.
    let rc = unsafe {
        libc::getrandom(
            probe.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::GRND_NONBLOCK,
        )
    };
    if rc == 1 {
        return;
    }
    let seed: Vec<u8> = (0..seed_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    log(&format!(
        "entropy pool not ready; crediting {} bytes from the host",
        seed.len()
    ));
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 64],
    }
    let mut info = RandPoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; 64],
    };
    let n = seed.len().min(64);
    info.buf[..n].copy_from_slice(&seed[..n]);
    info.entropy_count = (n * 8) as libc::c_int;
    info.buf_size = n as libc::c_int;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") {
        // RNDADDENTROPY = _IOW('R', 0x03, int[2])
        const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
        // SAFETY: info is a valid rand_pool_info with buf_size bytes.
        unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, &info) };
    }
}

/// The result of running the user's command (or failing before it).
struct Finish {
    outcome: Outcome,
    code: i32,
    message: Option<String>,
}

/// The whole life of the guest. Never returns.
pub fn run() -> ! {
    let mut timings = Timings {
        init_start: Some(uptime()),
        ..Default::default()
    };
    let mut sys = sys::Linux;
    let mut dockerd: Option<std::process::Child> = None;
    let mut consoles: Vec<File> = Vec::new();
    let mut copiers = Vec::new();
    let finish = match boot(
        &mut sys,
        &mut timings,
        &mut dockerd,
        &mut consoles,
        &mut copiers,
    ) {
        Ok(f) => f,
        Err((outcome, code, e)) => {
            let mut msg = format!("usmol: guest setup failed: {e}");
            if outcome == Outcome::DockerdFailed {
                msg.push_str(&format!(
                    "\nlast dockerd log lines:\n{}",
                    docker::log_tail(20)
                ));
            }
            user_error(&msg);
            Finish {
                outcome,
                code,
                message: Some(msg),
            }
        }
    };
    timings.command_done.get_or_insert(uptime());
    shutdown(finish, timings, dockerd, consoles, copiers)
}

/// Tells the user on their stderr (the stderr console), and the kernel log.
fn user_error(msg: &str) {
    log(msg);
    if let Ok(mut f) = stdio::open_tty(STDERR_TTY) {
        let _ = writeln!(f, "{msg}");
        stdio::drain(&f);
    }
}

type BootError = (Outcome, i32, InitError);

fn setup(e: InitError) -> BootError {
    (Outcome::SetupFailed, exit::GUEST_SETUP, e)
}

fn boot(
    sys: &mut sys::Linux,
    timings: &mut Timings,
    dockerd: &mut Option<std::process::Child>,
    consoles: &mut Vec<File>,
    copiers: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<Finish, BootError> {
    mounts::apply(sys, &mounts::base_plan()).map_err(setup)?;
    for (target, link) in mounts::DEV_LINKS {
        let _ = sys::Sys::symlink(sys, target, link);
    }
    mounts::setup_cgroups(sys).map_err(setup)?;
    mounts::apply(sys, &[mounts::share_mount()]).map_err(setup)?;
    let req_path = format!("{GUEST_SHARE_MOUNT}/{REQUEST_FILE}");
    let text = std::fs::read_to_string(&req_path).map_err(|e| {
        setup(InitError::Request {
            path: req_path.clone(),
            detail: e.to_string(),
        })
    })?;
    let req = Request::from_json(&text).map_err(|e| {
        setup(InitError::Request {
            path: req_path.clone(),
            detail: e.to_string(),
        })
    })?;
    DEBUG.store(req.debug, Ordering::Relaxed);
    // Control lines are read from here on, so a signal during boot stops it.
    let control = console(CONTROL_TTY)?;
    let _ = stdio::make_raw(&control);
    let control_w = control.try_clone().ok();
    let stdin_state = Arc::new(Mutex::new(stdio::StdinState::default()));
    let _ = stdio::spawn_control_reader(control, stdin_state.clone(), forward_signal);
    set_hostname(&req.hostname);
    if let Err(e) = loopback_up() {
        log(&format!("bringing up lo failed: {e}"));
    }
    ensure_entropy(&req.entropy_seed);
    if let Some(network) = &req.network {
        let lease = net::configure(
            usmol_channel::GUEST_NET_IF,
            &network.search,
            &network.options,
            "/etc/resolv.conf",
        )
        .map_err(|e| setup(e.into()))?;
        timings.network_ready = Some(uptime());
        log(&format!("network ready at {:.3}: {lease:?}", uptime()));
        if let Some(token) = &network.api_token {
            net::spawn_api_relay(token.clone(), docker::SOCKET).map_err(|source| {
                setup(InitError::ApiRelay {
                    port: usmol_channel::API_RELAY_PORT,
                    source,
                })
            })?;
        }
    }
    mounts::apply(sys, &mounts::volume_plan(&req.volumes)).map_err(setup)?;
    disk::prepare(DOCKER_DISK, "/var/lib/docker").map_err(setup)?;
    timings.mounts_done = Some(uptime());
    log(&format!("mounts done at {:.3}", uptime()));

    let env = command_env(&req);
    if let Some(f) = interrupted() {
        return Ok(f);
    }
    if req.docker {
        let mut child = docker::start(&req.dockerd_args, &env)
            .map_err(|e| (Outcome::DockerdFailed, exit::DOCKERD_FAILED, e))?;
        let ready = docker::wait_ready(
            &mut child,
            Duration::from_secs(req.dockerd_timeout_secs),
            &|| PENDING_SIGNAL.load(Ordering::SeqCst) != 0,
        );
        *dockerd = Some(child);
        ready.map_err(|e| (Outcome::DockerdFailed, exit::DOCKERD_FAILED, e))?;
        if let Some(f) = interrupted() {
            return Ok(f);
        }
        timings.dockerd_ready = Some(uptime());
        log(&format!("dockerd ready at {:.3}", uptime()));
    }
    if let Some(f) = interrupted() {
        return Ok(f);
    }
    run_command(
        &req,
        env,
        timings,
        consoles,
        copiers,
        stdin_state,
        control_w,
    )
}

fn console(path: &str) -> Result<File, BootError> {
    stdio::open_tty(path).map_err(|e| {
        setup(InitError::Console {
            path: path.into(),
            source: e,
        })
    })
}

fn run_command(
    req: &Request,
    env: Vec<(String, String)>,
    timings: &mut Timings,
    consoles: &mut Vec<File>,
    copiers: &mut Vec<std::thread::JoinHandle<()>>,
    stdin_state: Arc<Mutex<stdio::StdinState>>,
    control_w: Option<File>,
) -> Result<Finish, BootError> {
    let stdio_tty = console(STDIO_TTY)?;
    let argv = command_argv(req, |p| std::path::Path::new(p).exists());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    let cwd = if std::path::Path::new(&req.cwd).is_dir() {
        req.cwd.as_str()
    } else {
        "/"
    };
    cmd.current_dir(cwd);

    let err_tty = if req.stdio.tty && req.stdio.stderr_on_tty {
        None
    } else {
        Some(console(STDERR_TTY)?)
    };
    if let Some(t) = &err_tty {
        let _ = stdio::make_raw(t);
    }
    if req.stdio.tty {
        let tty_for = |f: &File| f.try_clone().map(ProcStdio::from);
        let io = |e| {
            setup(InitError::Console {
                path: STDIO_TTY.into(),
                source: e,
            })
        };
        cmd.stdin(tty_for(&stdio_tty).map_err(io)?)
            .stdout(tty_for(&stdio_tty).map_err(io)?);
        // A new session with the stdio tty as controlling terminal, so
        // Ctrl-C and job control work.
        let fd = stdio_tty.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        stdio::make_raw(&stdio_tty).map_err(|e| {
            setup(InitError::Console {
                path: STDIO_TTY.into(),
                source: e,
            })
        })?;
        let io = |e| {
            setup(InitError::Console {
                path: "pipe".into(),
                source: e,
            })
        };
        let (in_r, in_w) = stdio::pipe().map_err(io)?;
        let (out_r, out_w) = stdio::pipe().map_err(io)?;
        stdin_state.lock().unwrap().pipe = Some(in_w);
        cmd.stdin(in_r).stdout(out_w);
        let tty_r = stdio_tty.try_clone().map_err(io)?;
        let tty_w = stdio_tty.try_clone().map_err(io)?;
        // The stdin copier may block in read() forever: not joined.
        let _ = stdio::spawn_stdin_copier(tty_r, stdin_state.clone());
        copiers.push(stdio::spawn_output_copier(out_r, tty_w));
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    match &err_tty {
        None => {
            let e = stdio_tty.try_clone().map_err(|e| {
                setup(InitError::Console {
                    path: STDIO_TTY.into(),
                    source: e,
                })
            })?;
            cmd.stderr(e);
        }
        Some(t) => {
            let io = |e| {
                setup(InitError::Console {
                    path: STDERR_TTY.into(),
                    source: e,
                })
            };
            let (err_r, err_w) = stdio::pipe().map_err(io)?;
            cmd.stderr(err_w);
            copiers.push(stdio::spawn_output_copier(
                err_r,
                t.try_clone().map_err(io)?,
            ));
        }
    }

    if !req.stdio.tty {
        // Only now may the launcher send stdin: the tty is raw.
        if let Some(mut w) = control_w {
            let _ = w.write_all(Control::StdinReady.encode().as_bytes());
        }
    }
    timings.command_start = Some(uptime());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(cmd);
            let (outcome, code) = spawn_error_code(&e);
            let msg = format!(
                "usmol: {}: {}",
                argv[0],
                if code == exit::NOT_FOUND {
                    "command not found".to_string()
                } else {
                    e.to_string()
                }
            );
            stdin_state.lock().unwrap().pipe = None;
            user_error(&msg);
            consoles.push(stdio_tty);
            consoles.extend(err_tty);
            return Ok(Finish {
                outcome,
                code,
                message: Some(msg),
            });
        }
    };
    // Our copies of the pipe ends the command holds must go, or the
    // copiers never see end-of-file.
    drop(cmd);
    COMMAND_PID.store(child.id() as i32, Ordering::SeqCst);
    // A signal that raced with the spawn.
    let early = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
    if early != 0 {
        forward_signal(early);
    }
    let code = reap_until(child.id() as i32);
    timings.command_done = Some(uptime());
    stdin_state.lock().unwrap().pipe = None;
    consoles.push(stdio_tty);
    consoles.extend(err_tty);
    Ok(Finish {
        outcome: Outcome::Exited,
        code,
        message: None,
    })
}

/// Reaps every child (PID 1 inherits orphans) until `pid` exits; returns
/// its exit code.
fn reap_until(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return exit::KERNEL_PANIC;
        }
        if got == pid {
            return status_code(std::process::ExitStatus::from_raw(status));
        }
    }
}

/// Whether any user-space process besides init is alive (kernel threads
/// have an empty cmdline).
fn user_processes_left() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != "1"
            && std::fs::read(format!("/proc/{name}/cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

fn reap_all_nonblocking() {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

fn shutdown(
    finish: Finish,
    mut timings: Timings,
    dockerd: Option<std::process::Child>,
    consoles: Vec<File>,
    output_copiers: Vec<std::thread::JoinHandle<()>>,
) -> ! {
    if let Some(mut d) = dockerd {
        docker::stop(&mut d, Duration::from_secs(6));
    }
    // Everything else: TERM, a short grace, KILL. kill(-1) spares PID 1.
    // SAFETY: kill(2).
    unsafe { libc::kill(-1, libc::SIGTERM) };
    for _ in 0..50 {
        reap_all_nonblocking();
        if !user_processes_left() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2).
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_all_nonblocking();
    // Output copiers end when the last writer is gone; give them a moment
    // to flush what the command wrote last.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for c in output_copiers {
        while !c.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for c in &consoles {
        stdio::drain(c);
    }
    timings.shutdown = Some(uptime());
    let status = Status {
        version: FORMAT_VERSION,
        outcome: finish.outcome,
        exit_code: finish.code,
        message: finish.message,
        timings,
    };
    write_status(&status);
    let _ = std::fs::write("/proc/exitcode", format!("{}", finish.code));
    // SAFETY: sync(2), umount(2), reboot(2).
    unsafe {
        libc::sync();
        for target in ["/var/lib/docker", GUEST_SHARE_MOUNT] {
            if let Ok(c) = std::ffi::CString::new(target) {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on error; there is nothing better left to do.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn write_status(status: &Status) {
    let dir = GUEST_SHARE_MOUNT;
    let tmp = format!("{dir}/{STATUS_FILE}.tmp");
    let result = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(status.to_json().as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, format!("{dir}/{STATUS_FILE}")));
    if let Err(e) = result {
        log(&format!("writing {dir}/{STATUS_FILE} failed: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usmol_channel::Stdio;

    fn req() -> Request {
        Request {
            version: FORMAT_VERSION,
            argv: vec![],
            env: vec![
                ("PATH".into(), "/custom".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            cwd: "/".into(),
            stdio: Stdio {
                tty: true,
                stderr_on_tty: true,
            },
            hostname: "h".into(),
            volumes: vec![],
            docker: true,
            dockerd_args: vec![],
            entropy_seed: String::new(),
            dockerd_timeout_secs: 60,
            debug: false,
            network: None,
        }
    }

    #[test]
    fn empty_argv_is_a_login_shell_preferring_bash() {
        assert_eq!(
            command_argv(&req(), |p| p == "/bin/bash"),
            vec!["/bin/bash", "-l"]
        );
        assert_eq!(command_argv(&req(), |_| false), vec!["/bin/sh", "-l"]);
        let mut r = req();
        r.argv = vec!["true".into()];
        assert_eq!(command_argv(&r, |_| true), vec!["true"]);
    }

    #[test]
    fn launcher_env_overrides_defaults_once() {
        let env = command_env(&req());
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        assert!(env.contains(&("PATH".into(), "/custom".into())));
        assert!(env.contains(&("TERM".into(), "xterm".into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(
            spawn_error_code(&std::io::Error::from_raw_os_error(libc::ENOENT)),
            (Outcome::NotFound, 127)
        );
        assert_eq!(
            spawn_error_code(&std::io::Error::from_raw_os_error(libc::EACCES)).1,
            126
        );
        assert_eq!(status_code(std::process::ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(
            status_code(std::process::ExitStatus::from_raw(libc::SIGTERM)),
            143
        );
    }
}
