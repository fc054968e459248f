//! dockerd: start, readiness through the API socket, stop.
//!
//! dockerd starts its own containerd (measured no slower than starting
//! containerd separately, and one process less for init to supervise).

use crate::InitError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/run/docker.sock";
pub const LOG: &str = "/run/usmol/dockerd.log";

/// The dockerd command line: defaults first, user arguments last (so they
/// win where dockerd allows repeating a flag).
pub fn dockerd_args(user: &[String]) -> Vec<String> {
    let mut args = vec![format!("--host=unix://{SOCKET}")];
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

/// Starts dockerd with its output in [`LOG`].
pub fn start(user_args: &[String], env: &[(String, String)]) -> Result<Child, InitError> {
    let _ = std::fs::create_dir_all("/run/usmol");
    let log =
        std::fs::File::create(LOG).map_err(|e| InitError::Dockerd(format!("create {LOG}: {e}")))?;
    let log2 = log
        .try_clone()
        .map_err(|e| InitError::Dockerd(format!("dup {LOG}: {e}")))?;
    Command::new("dockerd")
        .args(dockerd_args(user_args))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| {
            InitError::Dockerd(format!(
                "start dockerd: {e}; is docker.io in the root image?"
            ))
        })
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

/// SIGTERM, then SIGKILL after `grace`. dockerd stops its containers and
/// containerd on SIGTERM.
pub fn stop(child: &mut Child, grace: Duration) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::log("dockerd did not stop in time; killing it");
    let _ = child.kill();
    let _ = child.wait();
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
        let a = dockerd_args(&["--debug".into()]);
        assert_eq!(
            a,
            vec![format!("--host=unix://{SOCKET}"), "--debug".to_string()]
        );
    }
}
