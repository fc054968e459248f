//! usmol-launcher: the image entrypoint. Boots the UML kernel around the
//! user's command and returns the command's exit status.
//!
//! Flow: read knobs -> locate assets -> size the guest -> private dir
//! (COW file, hostfs root with the request and volume symlinks) -> lock the
//! docker disk -> spawn the kernel with its fds wired (see
//! [`config::fds`]) -> relay stdin and signals -> map the result to an exit
//! code ([`exit_code`]).
//!
//! Architecture Invariant: the launcher never writes the shipped root image
//! (ubd0 is a COW overlay in the private dir) and shares no code with the
//! builder; its contract with init is `usmol-channel`.

pub mod config;
pub mod hardening;
pub mod host;
pub mod mountinfo;
pub mod net;
pub mod run;
pub mod sizing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use usmol_channel::{FORMAT_VERSION, Outcome, Request, Status, Stdio, Volume, exit};

/// A launcher failure; each maps to an exit code with [`LaunchError::code`].
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what}; fix: {fix}")]
    Config { what: String, fix: String },
    #[error("cannot run the kernel {kernel}: {detail}; fix: {fix}")]
    Kernel {
        kernel: String,
        detail: String,
        fix: String,
    },
}

impl LaunchError {
    pub fn code(&self) -> i32 {
        match self {
            LaunchError::Config { .. } => exit::LAUNCHER,
            LaunchError::Kernel { .. } => exit::CANNOT_RUN_KERNEL,
        }
    }
}

/// Where the persistent docker disk lives when the user mounts a volume.
pub const STATE_DIR: &str = "/var/lib/usmol";
const DEFAULT_DISK_SIZE: u64 = 64 << 30;

/// How the guest ended, as far as the launcher knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// The status file init wrote, if any.
    pub status: Option<Status>,
    /// Exit code of the UML process (`None` if killed by a signal).
    pub uml_code: Option<i32>,
    /// The kernel log showed a panic.
    pub panicked: bool,
    /// First shutdown signal the launcher received (0: none).
    pub signal: i32,
}

/// The launcher's exit code, and a message for stderr when the guest did
/// not report one itself.
pub fn exit_code(e: &Ending) -> (i32, Option<String>) {
    if let Some(st) = &e.status {
        return (st.exit_code, None);
    }
    if e.panicked {
        return (exit::KERNEL_PANIC, Some("the guest kernel panicked".into()));
    }
    if e.signal != 0 {
        return (exit::from_signal(e.signal), None);
    }
    match e.uml_code {
        Some(c) => (
            exit::KERNEL_PANIC,
            Some(format!(
                "the guest stopped without a status (kernel exit code {c})"
            )),
        ),
        None => (
            exit::KERNEL_PANIC,
            Some("the kernel process was killed".into()),
        ),
    }
}

/// Hints for kernel start failures recognized in the kernel log.
pub fn kernel_failure_hint(log: &str) -> Option<&'static str> {
    if log.contains("must be not mounted noexec") || log.contains("Failed to choose tempdir") {
        Some(
            "guest RAM needs an exec-able tmpfs: run the container with `--tmpfs /tmp:exec` (and TMPDIR=/tmp), or use a kernel with the memfd patch",
        )
    } else if log.contains("ptrace")
        && (log.contains("failed") || log.contains("Operation not permitted"))
    {
        Some(
            "the container forbids ptrace and seccomp filters; allow one of them (docker's default seccomp profile allows both)",
        )
    } else if log.contains("Failed to lock") {
        Some("a disk file is locked by another UML process")
    } else {
        None
    }
}

fn env_map() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn write_file(path: &Path, text: &str) -> Result<(), LaunchError> {
    std::fs::write(path, text).map_err(|e| LaunchError::Config {
        what: format!("writing {}: {e}", path.display()),
        fix: "make the temp dir writable (TMPDIR or USMOL_TMPDIR)".into(),
    })
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.3}s"))
}

/// Runs the command in `args` (empty: interactive shell). Returns the exit
/// code for the process.
pub fn main_with(args: Vec<String>) -> i32 {
    match launch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usmol: {e}");
            e.code()
        }
    }
}

fn launch(args: Vec<String>) -> Result<i32, LaunchError> {
    hardening::harden();
    let t0 = Instant::now();
    let env = env_map();
    let get = |k: &str| env.get(k).map(String::as_str);
    let debug = config::flag("USMOL_DEBUG", get("USMOL_DEBUG"), false)?;
    let timings = config::flag("USMOL_TIMINGS", get("USMOL_TIMINGS"), false)?;
    let docker = config::flag("USMOL_DOCKER", get("USMOL_DOCKER"), true)?;
    let keep = config::flag("USMOL_KEEP", get("USMOL_KEEP"), false)?;
    let seccomp = config::Seccomp::parse(get("USMOL_SECCOMP"))?;
    let dockerd_args = config::split_args(get("USMOL_DOCKERD_ARGS").unwrap_or(""))?;
    let dockerd_timeout = match get("USMOL_DOCKERD_TIMEOUT") {
        None => 120,
        Some(t) => t.trim().parse().map_err(|_| LaunchError::Config {
            what: format!("USMOL_DOCKERD_TIMEOUT={t:?}"),
            fix: "use a number of seconds".into(),
        })?,
    };

    let network = net::Mode::parse(get("USMOL_NETWORK"))?;
    let mut publish = net::parse_publish(get("USMOL_PUBLISH").unwrap_or(""))?;
    let api_socket = get("USMOL_DOCKER_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if network == net::Mode::None && (!publish.is_empty() || api_socket.is_some()) {
        return Err(LaunchError::Config {
            what: "USMOL_PUBLISH or USMOL_DOCKER_SOCKET with USMOL_NETWORK=none".into(),
            fix: "both travel through passt: drop USMOL_NETWORK=none".into(),
        });
    }
    if api_socket.is_some() && !docker {
        return Err(LaunchError::Config {
            what: "USMOL_DOCKER_SOCKET with USMOL_DOCKER=0".into(),
            fix: "the socket serves the guest's dockerd: drop USMOL_DOCKER=0".into(),
        });
    }

    let assets = host::assets(get("USMOL_LIB_DIR"))?;
    if network == net::Mode::Passt && !assets.passt.is_file() {
        return Err(LaunchError::Config {
            what: format!("{} is missing", assets.passt.display()),
            fix: "use a complete usmol artifact, or run without a network: USMOL_NETWORK=none"
                .into(),
        });
    }
    let memory_mib =
        sizing::memory_mib(get("USMOL_MEMORY"), host::memory_limit(), host::mem_total())?;
    let seccomp_ok = seccomp != config::Seccomp::Off && host::seccomp_usable();
    let allowed_cpus = host::allowed_cpus();
    let ncpus = if seccomp_ok {
        Some(sizing::cpus(
            get("USMOL_CPUS"),
            allowed_cpus.len() as u32,
            host::cpu_max(),
        )?)
    } else {
        None
    };
    let pin = sizing::pin_cpu(
        get("USMOL_PIN"),
        ncpus.unwrap_or(1),
        &allowed_cpus,
        host::current_cpu(),
    )?;

    let tmp_base = PathBuf::from(get("USMOL_TMPDIR").or(get("TMPDIR")).unwrap_or("/tmp"));
    let mut private = run::PrivateDir::create(&tmp_base)?;
    private.keep = keep;
    let _private_lock = hardening::claim_private_dir(&tmp_base, &private.path, keep);
    let mounts =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());

    // Docker disk: USMOL_DISK, else the state volume, else the private dir.
    let disk = match get("USMOL_DISK") {
        Some(p) => PathBuf::from(p),
        None if mountinfo::is_mount_point(&mounts, STATE_DIR) => {
            Path::new(STATE_DIR).join("docker.ext4")
        }
        None => private.path.join("docker.ext4"),
    };
    let disk_size = match get("USMOL_DISK_SIZE") {
        None => DEFAULT_DISK_SIZE,
        Some(t) => sizing::parse_size(t).ok_or_else(|| LaunchError::Config {
            what: format!("USMOL_DISK_SIZE={t:?}"),
            fix: "use a size such as 64G".into(),
        })?,
    };
    let root_cow = private.path.join("root.cow");
    let net_socket = private.path.join("passt.sock");
    let hostfs_root = private.path.join("hostfs");
    for p in [
        &assets.kernel,
        &assets.rootfs,
        &disk,
        &root_cow,
        &hostfs_root,
    ] {
        config::check_kernel_path(p)?;
    }
    let _disk_lock = run::lock_disk(&disk, disk_size)?;
    hardening::check_disk_not_held(&disk, &_disk_lock)?;

    // The hostfs root: share/ with the request, v/<n> -> each volume.
    let share = hostfs_root.join(usmol_channel::SHARE_SUBDIR);
    let vdir = hostfs_root.join(usmol_channel::VOLUME_SUBDIR);
    for d in [&share, &vdir] {
        std::fs::create_dir_all(d).map_err(|e| LaunchError::Config {
            what: format!("creating {}: {e}", d.display()),
            fix: "make the temp dir writable (TMPDIR or USMOL_TMPDIR)".into(),
        })?;
    }
    let private_str = private.path.to_string_lossy().into_owned();
    let own = [STATE_DIR, private_str.as_str()];
    let mut volumes = Vec::new();
    for (i, m) in mountinfo::volumes(&mounts, &own).iter().enumerate() {
        let link = vdir.join(i.to_string());
        if std::os::unix::fs::symlink(&m.mount_point, &link).is_ok() {
            volumes.push(Volume {
                share_path: format!("{}/{i}", usmol_channel::VOLUME_SUBDIR),
                guest_path: m.mount_point.clone(),
                read_only: m.read_only,
            });
        }
    }

    let volume_links: Vec<String> = volumes.iter().map(|v| v.share_path.clone()).collect();
    let api_token = api_socket.as_ref().map(|_| host::random_hex(32));
    let mut api_port = None;
    if api_socket.is_some() {
        let port = net::free_loopback_port().map_err(|e| LaunchError::Config {
            what: format!("choosing a loopback port for the docker API relay: {e}"),
            fix: "the outer container needs a loopback interface".into(),
        })?;
        publish.push(net::Publish {
            address: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            outer: port,
            guest: usmol_channel::API_RELAY_PORT,
            proto: net::Proto::Tcp,
        });
        api_port = Some(port);
    }
    let network_request = (network == net::Mode::Passt).then(|| {
        let (search, options) = net::resolv_search_options(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
        usmol_channel::Network {
            search,
            options,
            api_token: api_token.clone(),
        }
    });
    let tty = host::isatty(0) && host::isatty(1);
    let request = Request {
        version: FORMAT_VERSION,
        argv: args,
        env: config::guest_env(
            &env.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>(),
        ),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
        stdio: Stdio {
            tty,
            stderr_on_tty: tty && host::isatty(2),
        },
        hostname: host::hostname(),
        volumes,
        docker,
        dockerd_args,
        entropy_seed: host::random_hex(32),
        dockerd_timeout_secs: dockerd_timeout,
        debug,
        network: network_request,
    };
    write_file(&share.join(usmol_channel::REQUEST_FILE), &request.to_json())?;

    let plan = config::KernelPlan {
        memory_mib,
        ncpus,
        seccomp: if seccomp_ok {
            seccomp
        } else {
            config::Seccomp::Off
        },
        root_cow: &root_cow,
        rootfs: &assets.rootfs,
        docker_disk: &disk,
        hostfs_root: &hostfs_root,
        volume_links: &volume_links,
        uml_dir: &private.path,
        net_socket: (network == net::Mode::Passt).then_some(net_socket.as_path()),
        debug,
    };
    let kargs = config::kernel_args(&plan);
    if debug {
        eprintln!("usmol: {} {}", assets.kernel.display(), kargs.join(" "));
        if let Some(cpu) = pin {
            eprintln!("usmol: kernel pinned to host CPU {cpu} (USMOL_PIN=off to let it move)");
        }
    }

    // Guest RAM: an exec tmpfs with room, else let the kernel use a memfd.
    let mut kenv: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("HOME".into(), private_str.clone()),
    ];
    let candidates: Vec<PathBuf> = [get("TMPDIR"), Some("/dev/shm"), Some("/tmp")]
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .collect();
    match host::ram_dir(&candidates, memory_mib << 20) {
        Some(d) => kenv.push(("TMPDIR".into(), d.to_string_lossy().into_owned())),
        // A missing dir makes the kernel fall back to a memfd.
        None => kenv.push((
            "TMPDIR".into(),
            private
                .path
                .join("no-ram-dir")
                .to_string_lossy()
                .into_owned(),
        )),
    }

    let io_err = |what: &str, e: std::io::Error| LaunchError::Config {
        what: format!("{what}: {e}"),
        fix: "check the open-file limit".into(),
    };
    let (log_r, log_w) = run::pipe().map_err(|e| io_err("kernel log pipe", e))?;
    let (cin_r, cin_w) = run::pipe().map_err(|e| io_err("control pipe", e))?;
    let (cout_r, cout_w) = run::pipe().map_err(|e| io_err("control pipe", e))?;
    let (stdin_fd, relay) = if tty {
        (
            std::io::stdin()
                .lock()
                .as_fd_owned()
                .map_err(|e| io_err("stdin", e))?,
            None,
        )
    } else {
        let (r, w) = run::pipe().map_err(|e| io_err("stdin relay pipe", e))?;
        (std::os::fd::OwnedFd::from(r), Some(w))
    };
    let dup = |fd: i32| -> Result<std::os::fd::OwnedFd, LaunchError> {
        use std::os::fd::AsFd;
        // SAFETY: fds 1 and 2 are open for the life of the process.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        b.as_fd()
            .try_clone_to_owned()
            .map_err(|e| io_err("stdio", e))
    };
    let wiring = run::Wiring {
        stdin: stdin_fd,
        stdout: dup(1)?,
        stderr: dup(2)?,
        control_in: cin_r.into(),
        control_out: cout_w.into(),
        log: log_w.into(),
    };

    let mut passt = match network {
        net::Mode::Passt => Some(net::Passt::start(
            &assets.passt,
            &net_socket,
            &private.path.join("passt.log"),
            &publish,
            debug,
        )?),
        net::Mode::None => None,
    };
    let _api = match (&api_socket, api_port, api_token) {
        (Some(path), Some(port), Some(token)) => Some(net::ApiSocket::start(path, port, token)?),
        _ => None,
    };

    let saved = run::HostStdio::save();
    let sigset = run::block_signals();
    let uml_pid = Arc::new(AtomicI32::new(0));
    let got_signal = Arc::new(AtomicI32::new(0));
    let control = Arc::new(Mutex::new(cin_w));
    let log_file = std::fs::File::create(private.path.join("kernel.log")).ok();
    let (klog, log_thread) = run::spawn_log_reader(log_r, log_file, debug, uml_pid.clone());
    let t_spawn = t0.elapsed();
    let mut child = run::spawn_kernel(&assets.kernel, &kargs, &kenv, pin, wiring).map_err(|e| {
        LaunchError::Kernel {
            kernel: assets.kernel.display().to_string(),
            detail: e.to_string(),
            fix: "the file must be an executable, statically linked UML kernel; check the artifact"
                .into(),
        }
    })?;
    uml_pid.store(child.id() as i32, Ordering::SeqCst);
    run::spawn_control_reader(cout_r, relay, control.clone());
    run::spawn_signal_forwarder(sigset, control.clone(), uml_pid.clone(), got_signal.clone());

    let wait = child.wait();
    uml_pid.store(0, Ordering::SeqCst);
    let t_end = t0.elapsed();
    saved.restore();
    // The log pipe ends with the kernel; collect its last lines.
    let _ = log_thread.join();
    if let Some(p) = passt.as_mut()
        && let Some(st) = p.exited()
        && !st.success()
    {
        eprintln!("usmol: passt exited with {st}: {}", p.log_tail(8));
    }
    drop(passt);

    let status_path = share.join(usmol_channel::STATUS_FILE);
    let status = std::fs::read_to_string(&status_path)
        .ok()
        .and_then(|t| Status::from_json(&t).ok());
    let ending = Ending {
        status: status.clone(),
        uml_code: wait.ok().and_then(|s| s.code()),
        panicked: klog.panicked.load(Ordering::SeqCst),
        signal: got_signal.load(Ordering::SeqCst),
    };
    let (code, message) = exit_code(&ending);
    if let Some(msg) = message {
        eprintln!("usmol: {msg}; last kernel messages:\n{}", klog.tail_text());
        if let Some(h) = kernel_failure_hint(&klog.tail_text()) {
            eprintln!("usmol: fix: {h}");
        }
        if keep {
            eprintln!("usmol: kept {}", private.path.display());
        }
    }
    if timings {
        let t = status
            .as_ref()
            .map(|s| s.timings.clone())
            .unwrap_or_default();
        eprintln!(
            "usmol: timings: launcher setup {:.3}s; guest uptime at init {}, network {}, mounts {}, dockerd ready {}, command start {}, command done {}, shutdown {}; wall total {:.3}s",
            t_spawn.as_secs_f64(),
            secs(t.init_start),
            secs(t.network_ready),
            secs(t.mounts_done),
            secs(t.dockerd_ready),
            secs(t.command_start),
            secs(t.command_done),
            secs(t.shutdown),
            t_end.as_secs_f64()
        );
    }
    if let Some(st) = &status
        && st.outcome != Outcome::Exited
        && debug
    {
        eprintln!(
            "usmol: guest outcome {:?}: {}",
            st.outcome,
            st.message.as_deref().unwrap_or("")
        );
    }
    Ok(code)
}

/// `Stdin` into an owned fd for the kernel's stdio console.
trait StdinFd {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl StdinFd for std::io::StdinLock<'_> {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usmol_channel::Timings;

    fn status(code: i32, outcome: Outcome) -> Status {
        Status {
            version: FORMAT_VERSION,
            outcome,
            exit_code: code,
            message: None,
            timings: Timings::default(),
        }
    }

    #[test]
    fn guest_status_wins() {
        let e = Ending {
            status: Some(status(42, Outcome::Exited)),
            uml_code: Some(42),
            panicked: false,
            signal: 0,
        };
        assert_eq!(exit_code(&e), (42, None));
        let e = Ending {
            status: Some(status(143, Outcome::Exited)),
            uml_code: None,
            panicked: false,
            signal: 15,
        };
        assert_eq!(exit_code(&e).0, 143);
        let e = Ending {
            status: Some(status(121, Outcome::DockerdFailed)),
            uml_code: Some(121),
            panicked: false,
            signal: 0,
        };
        assert_eq!(exit_code(&e), (121, None));
    }

    #[test]
    fn failures_without_status() {
        let panic = Ending {
            status: None,
            uml_code: None,
            panicked: true,
            signal: 15,
        };
        assert_eq!(exit_code(&panic).0, exit::KERNEL_PANIC);
        let killed = Ending {
            status: None,
            uml_code: None,
            panicked: false,
            signal: 15,
        };
        assert_eq!(exit_code(&killed), (143, None));
        let silent = Ending {
            status: None,
            uml_code: Some(1),
            panicked: false,
            signal: 0,
        };
        let (c, m) = exit_code(&silent);
        assert_eq!(c, exit::KERNEL_PANIC);
        assert!(m.unwrap().contains("exit code 1"));
    }

    #[test]
    fn launcher_error_codes() {
        assert_eq!(
            LaunchError::Config {
                what: "x".into(),
                fix: "y".into()
            }
            .code(),
            125
        );
        let k = LaunchError::Kernel {
            kernel: "k".into(),
            detail: "d".into(),
            fix: "f".into(),
        };
        assert_eq!(k.code(), 126);
        assert!(k.to_string().contains("fix: f"));
    }

    #[test]
    fn hints() {
        assert!(
            kernel_failure_hint("/dev/shm must be not mounted noexec")
                .unwrap()
                .contains("--tmpfs /tmp:exec")
        );
        assert!(kernel_failure_hint("all good").is_none());
    }
}
