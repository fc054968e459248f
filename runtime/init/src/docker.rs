//! containerd and dockerd: start, readiness through the API socket, stop.
//!
//! Init starts containerd itself, waits until its socket listens, and only
//! then starts dockerd pointed at it (`--containerd`). dockerd's managed
//! containerd cost about 1.5 s a run in UML: dockerd dials containerd before
//! it listens and gRPC's reconnect backoff then waits about a second, and on
//! shutdown dockerd polls its containerd's exit once a second. The paths and
//! settings are those of dockerd's managed containerd, so a docker disk keeps
//! working whichever way it was used before.

use crate::InitError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/run/docker.sock";
/// dockerd's and containerd's output, one file.
pub const LOG: &str = "/run/usmol/dockerd.log";
pub const CONTAINERD_SOCKET: &str = "/run/docker/containerd/containerd.sock";
const CONTAINERD_CONFIG: &str = "/run/usmol/containerd.toml";
/// How long containerd may take to listen (it takes under a second when
/// the host is not overloaded).
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);
/// libnetwork's store on the docker disk (see [`forget_default_networks`]).
pub const NETWORK_STORE: &str = "/var/lib/docker/network/files/local-kv.db";
/// The networks dockerd creates by itself on every start.
const BUILTIN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// Timer slack of containerd and dockerd (and the shims containerd starts),
/// against Linux's 50 us default. Go's sysmon thread polls with 20 us
/// sleeps while its program is busy, and in UML each sleep is a trapped
/// system call and a timer round trip on the one guest CPU; with the slack
/// its wakeups coalesce (cold start -4%, warm nested run -6%). Containers
/// get the default back: [`CONTAINER_TIMER_SLACK_NS`].
const DAEMON_TIMER_SLACK_NS: libc::c_ulong = 1_000_000;
/// Linux's default timer slack, which init's OCI runtime role sets again
/// before it becomes crun, so containers sleep as they would on any host.
pub const CONTAINER_TIMER_SLACK_NS: libc::c_ulong = 50_000;

/// The containerd child, stopped after dockerd by [`stop`].
static CONTAINERD: Mutex<Option<Child>> = Mutex::new(None);

/// containerd's configuration: dockerd's managed one (same root, state and
/// socket; CRI off), minus the snapshotters that cannot work in the guest
/// (no btrfs, zfs, devmapper or aufs; `aufs` would also exec modprobe).
pub fn containerd_config() -> String {
    let disabled = [
        "io.containerd.grpc.v1.cri",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
    ];
    let list: Vec<String> = disabled.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "version = 2\n\
         root = \"/var/lib/docker/containerd/daemon\"\n\
         state = \"/run/docker/containerd/daemon\"\n\
         disabled_plugins = [{}]\n\
         \n\
         [grpc]\n  address = \"{CONTAINERD_SOCKET}\"\n",
        list.join(", ")
    )
}

/// crun, when the root image has it, is dockerd's default runtime: a C
/// program starts in a few milliseconds in UML where each of runc's four Go
/// starts per container (create, init, start, delete) costs 60-90 ms; a
/// nested `docker run` measured about 0.35 s faster. runc stays available
/// (`--runtime=runc`).
pub const CRUN: &str = "/usr/bin/crun";

/// The dockerd command line: defaults first, user arguments last (so they
/// win where dockerd allows repeating a flag). `crun` is the path dockerd
/// runs crun by, when the image has it.
pub fn dockerd_args(user: &[String], crun: Option<&str>) -> Vec<String> {
    let mut args = vec![
        format!("--host=unix://{SOCKET}"),
        format!("--containerd={CONTAINERD_SOCKET}"),
    ];
    if let Some(path) = crun {
        args.push(format!("--add-runtime=crun={path}"));
        args.push("--default-runtime=crun".into());
    }
    args.extend(user.iter().cloned());
    args
}

/// Whether an HTTP response is `200 OK` from `/_ping`.
pub fn ping_ok(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let status = text.lines().next().unwrap_or("");
    status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200")
}

fn ping() -> bool {
    let Ok(mut s) = UnixStream::connect(SOCKET) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    ping_ok(&buf)
}

/// Whether libnetwork's store (a bolt file) names no network but the
/// built-in ones: every `"name":"…"` in it, live record or stale page, is
/// `bridge`, `host` or `none`. Endpoint records carry names too, so a store
/// with endpoints is never called default-only.
pub fn only_default_networks(store: &[u8]) -> bool {
    const KEY: &[u8] = b"\"name\":\"";
    let mut rest = store;
    while let Some(at) = find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
        if !BUILTIN_NETWORKS
            .iter()
            .any(|n| n.as_bytes() == &rest[..end])
        {
            return false;
        }
    }
    true
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// dockerd deletes and re-creates the default bridge on every start; with
/// a stored copy it first restores the old one (bridge device, iptables
/// rules) only to delete it again, about a second of iptables calls in UML.
/// When the store holds nothing but the built-in networks, removing it
/// leaves dockerd where it ends up anyway; user networks keep the store.
fn forget_default_networks() {
    match std::fs::read(NETWORK_STORE) {
        Ok(bytes) if only_default_networks(&bytes) => {
            if let Err(e) = std::fs::remove_file(NETWORK_STORE) {
                crate::log(&format!("removing {NETWORK_STORE}: {e}"));
            }
        }
        _ => {}
    }
}

/// Where containerd and dockerd write: one file, appended to by both.
fn log_file() -> Result<std::fs::File, InitError> {
    let _ = std::fs::create_dir_all("/run/usmol");
    std::fs::write(LOG, b"").map_err(|e| InitError::Dockerd(format!("create {LOG}: {e}")))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(LOG)
        .map_err(|e| InitError::Dockerd(format!("open {LOG}: {e}")))
}

fn spawn(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    log: &std::fs::File,
    timer_slack_ns: Option<libc::c_ulong>,
) -> Result<Child, InitError> {
    let out = log
        .try_clone()
        .map_err(|e| InitError::Dockerd(format!("dup {LOG}: {e}")))?;
    let err = log
        .try_clone()
        .map_err(|e| InitError::Dockerd(format!("dup {LOG}: {e}")))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(slack) = timer_slack_ns {
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_TIMERSLACK, slack);
                Ok(())
            });
        }
    }
    command.spawn().map_err(|e| {
        InitError::Dockerd(format!(
            "start {program}: {e}; is docker.io in the root image?"
        ))
    })
}

/// Waits until containerd listens on its socket.
fn wait_containerd(child: &mut Child, timeout: Duration) -> Result<(), InitError> {
    let start = Instant::now();
    loop {
        if UnixStream::connect(CONTAINERD_SOCKET).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(InitError::Dockerd(format!(
                "containerd exited ({st}) before it listened on {CONTAINERD_SOCKET}"
            )));
        }
        if start.elapsed() > timeout {
            return Err(InitError::Dockerd(format!(
                "containerd did not listen on {CONTAINERD_SOCKET} within {} s; its log: {LOG}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts containerd, and dockerd once containerd listens; both write to
/// [`LOG`].
pub fn start(user_args: &[String], env: &[(String, String)]) -> Result<Child, InitError> {
    forget_default_networks();
    let log = log_file()?;
    std::fs::write(CONTAINERD_CONFIG, containerd_config())
        .map_err(|e| InitError::Dockerd(format!("write {CONTAINERD_CONFIG}: {e}")))?;
    let crun = std::path::Path::new(CRUN).is_file().then(crun_entry);
    // Only when containers start through init's runtime role, which gives
    // them the default slack back.
    let slack = (crun == Some(crate::oci::OCI_RUNTIME_LINK)).then_some(DAEMON_TIMER_SLACK_NS);
    let mut containerd = spawn(
        "containerd",
        &["--config".into(), CONTAINERD_CONFIG.into()],
        env,
        &log,
        slack,
    )?;
    let listening = wait_containerd(&mut containerd, CONTAINERD_TIMEOUT);
    *CONTAINERD.lock().unwrap_or_else(|e| e.into_inner()) = Some(containerd);
    listening?;
    spawn("dockerd", &dockerd_args(user_args, crun), env, &log, slack)
}

/// The path dockerd runs crun by: init's OCI runtime role
/// ([`crate::oci`]), which spares each container a Go start of dockerd,
/// or crun itself when the link cannot be made.
fn crun_entry() -> &'static str {
    let link = crate::oci::OCI_RUNTIME_LINK;
    let _ = std::fs::remove_file(link);
    match std::os::unix::fs::symlink(usmol_channel::INIT_PATH, link) {
        Ok(()) => link,
        Err(e) => {
            crate::log(&format!(
                "linking {link}: {e}; dockerd runs {CRUN} directly"
            ));
            CRUN
        }
    }
}

/// Waits until dockerd answers `/_ping`, fails if it exits or times out;
/// returns early (Ok) when `cancelled` says the boot was interrupted.
pub fn wait_ready(
    child: &mut Child,
    timeout: Duration,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), InitError> {
    let start = Instant::now();
    loop {
        if cancelled() || ping() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(InitError::Dockerd(format!(
                "dockerd exited ({st}) before it was ready"
            )));
        }
        if start.elapsed() > timeout {
            return Err(InitError::Dockerd(format!(
                "dockerd did not answer on {SOCKET} within {} s (raise USMOL_DOCKERD_TIMEOUT)",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of the dockerd log, for failure reports.
pub fn log_tail(n: usize) -> String {
    let text = std::fs::read_to_string(LOG).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL after `grace`. A child that init's reaper already
/// collected (`try_wait` fails with ECHILD) counts as stopped.
fn terminate(name: &str, child: &mut Child, grace: Duration) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Ok(Some(_)) | Err(_) => return,
        }
    }
    crate::log(&format!("{name} did not stop in time; killing it"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops dockerd (it stops its containers on SIGTERM), then containerd;
/// each gets `grace` before SIGKILL.
pub fn stop(child: &mut Child, grace: Duration) {
    terminate("dockerd", child, grace);
    let containerd = CONTAINERD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut c) = containerd {
        terminate("containerd", &mut c, grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_response_parsing() {
        assert!(ping_ok(b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\n\r\nOK"));
        assert!(ping_ok(b"HTTP/1.0 200 OK\r\n\r\nOK"));
        assert!(!ping_ok(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"));
        assert!(!ping_ok(b""));
        assert!(!ping_ok(b"garbage 200"));
    }

    #[test]
    fn user_args_come_after_defaults() {
        let a = dockerd_args(&["--debug".into()], None);
        assert_eq!(
            a,
            vec![
                format!("--host=unix://{SOCKET}"),
                format!("--containerd={CONTAINERD_SOCKET}"),
                "--debug".to_string()
            ]
        );
    }

    #[test]
    fn crun_becomes_the_default_runtime_when_present() {
        let a = dockerd_args(&["--default-runtime=runc".into()], Some(CRUN));
        assert_eq!(
            a[2..],
            [
                format!("--add-runtime=crun={CRUN}"),
                "--default-runtime=crun".to_string(),
                // The user's choice comes last and wins.
                "--default-runtime=runc".to_string(),
            ]
        );
    }

    #[test]
    fn containerd_config_matches_dockerd_managed_paths() {
        let c = containerd_config();
        assert!(c.contains("root = \"/var/lib/docker/containerd/daemon\""));
        assert!(c.contains("state = \"/run/docker/containerd/daemon\""));
        assert!(c.contains(&format!("address = \"{CONTAINERD_SOCKET}\"")));
        assert!(c.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(!c.contains("snapshotter.v1.overlayfs"));
    }

    fn record(name: &str, kind: &str) -> String {
        format!(
            "docker/network/v1.0/network/0123/\u{0}{{\"addrSpace\":\"\",\"name\":\"{name}\",\"networkType\":\"{kind}\",\"persist\":true}}"
        )
    }

    #[test]
    fn a_store_of_builtin_networks_is_default_only() {
        let mut store = vec![0u8; 4096];
        for (n, k) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
            store.extend_from_slice(record(n, k).as_bytes());
        }
        store.extend_from_slice(b"{\"Count\":0}libnetwork");
        assert!(only_default_networks(&store));
        assert!(only_default_networks(b""));
    }

    #[test]
    fn a_user_network_or_an_endpoint_keeps_the_store() {
        let mut store = record("bridge", "bridge").into_bytes();
        store.extend_from_slice(record("myapp_default", "bridge").as_bytes());
        assert!(!only_default_networks(&store));
        let endpoint = b"docker/network/v1.0/endpoint/ab/cd/{\"name\":\"quirky_swanson\"}";
        assert!(!only_default_networks(endpoint));
        // A name cut off at the end of the file is not a built-in one.
        assert!(!only_default_networks(b"\"name\":\"bri"));
    }
}
