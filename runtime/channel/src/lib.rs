//! The contract between `usmol-launcher` (outside UML) and `usmol-init`
//! (PID 1 inside UML).
//!
//! Architecture Invariant: this crate is the only code the two runtime
//! binaries share, and it depends on nothing in `builder/`.
//!
//! Three channels connect the two sides:
//!
//! 1. **The share**: a private host directory exported through hostfs. The
//!    kernel is booted with `hostfs=<private dir>` so a guest mount can only
//!    name paths below it. Inside it, [`SHARE_SUBDIR`] holds
//!    [`REQUEST_FILE`] (written by the launcher before boot: argv, env, cwd,
//!    tty-ness, volumes, knobs) and [`STATUS_FILE`] (written by init before
//!    power-off: exit status, failure reason, phase timings). Each volume
//!    is a symlink `v/<n>` to the host path, mounted by init with
//!    `mount -t hostfs none <guest path> -o v/<n>/`.
//! 2. **Console lines** (UML `conN=` channels bound to host fds):
//!    [`STDIO_TTY`] carries stdin/stdout, [`STDERR_TTY`] carries stderr,
//!    [`CONTROL_TTY`] carries [`Control`] lines both ways. The kernel
//!    console (`con0`) goes to the launcher's log pipe, never to stdout.
//! 3. **`/proc/exitcode`**: init writes the final code there as well, so the
//!    UML process exit status is right even when the share is unusable.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Subdirectory of the hostfs root that holds the request and status files.
pub const SHARE_SUBDIR: &str = "share";
/// Written by the launcher, read by init.
pub const REQUEST_FILE: &str = "request.json";
/// Written by init (atomically: temp + rename), read by the launcher.
pub const STATUS_FILE: &str = "status.json";
/// Subdirectory of the hostfs root holding one symlink per volume.
pub const VOLUME_SUBDIR: &str = "v";
/// Where init mounts the share inside the guest.
pub const GUEST_SHARE_MOUNT: &str = "/run/usmol/share";

/// Guest tty whose host side is the user's stdin (or the launcher's stdin
/// relay pipe) and the user's stdout.
pub const STDIO_TTY: &str = "/dev/tty1";
/// Guest tty whose host side is the user's stderr (output only).
pub const STDERR_TTY: &str = "/dev/tty2";
/// Guest tty whose host side is the launcher's control pipes ([`Control`] lines both ways).
pub const CONTROL_TTY: &str = "/dev/tty3";
/// The docker data disk (`ubd1`).
pub const DOCKER_DISK: &str = "/dev/ubdb";
/// Where init is installed inside the root image.
pub const INIT_PATH: &str = "/usr/lib/usmol/init";

/// Version of the request/status format; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Everything the guest needs to run the user's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    /// The command; empty means an interactive login shell.
    pub argv: Vec<String>,
    /// Environment for the command, in order (already filtered by the launcher).
    pub env: Vec<(String, String)>,
    /// Working directory; init falls back to `/` when it does not exist.
    pub cwd: String,
    /// How the command's stdio is wired; see [`Stdio`].
    pub stdio: Stdio,
    /// Guest hostname.
    pub hostname: String,
    /// Host volumes to mount at the same path in the guest.
    pub volumes: Vec<Volume>,
    /// Start dockerd before the command and wait for it to answer `/_ping`.
    pub docker: bool,
    /// Extra arguments for dockerd (from `USMOL_DOCKERD_ARGS`).
    pub dockerd_args: Vec<String>,
    /// Host randomness (hex) that init credits to the guest pool if
    /// `getrandom` would block, so dockerd never waits for entropy.
    pub entropy_seed: String,
    /// Seconds init gives dockerd to answer `/_ping` before giving up.
    pub dockerd_timeout_secs: u64,
    /// Echo init's progress to the kernel log (`USMOL_DEBUG`).
    pub debug: bool,
    /// Guest networking through passt; `None`: loopback only.
    pub network: Option<Network>,
}

/// Guest port of init's docker API relay (reached through passt from the
/// launcher's side only; every connection must first present the token).
pub const API_RELAY_PORT: u16 = 43177;
/// Network interface the passt virtio-net device appears as.
pub const GUEST_NET_IF: &str = "eth0";

/// The passt network: init configures [`GUEST_NET_IF`] with DHCP (passt
/// answers it) before dockerd starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `search` domains of the outer `/etc/resolv.conf` (DHCP from passt
    /// carries the nameservers).
    pub search: Vec<String>,
    /// `options` of the outer `/etc/resolv.conf` (e.g. `ndots:2`).
    pub options: Vec<String>,
    /// Hex secret the docker API relay requires as its first line; `None`:
    /// no relay (`USMOL_DOCKER_SOCKET` unset).
    pub api_token: Option<String>,
}

/// How the command's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// The host's stdin and stdout are a terminal: the command gets
    /// [`STDIO_TTY`] as its controlling terminal for fds 0 and 1.
    pub tty: bool,
    /// Host stderr is the same terminal as well: fd 2 is [`STDIO_TTY`] too.
    /// Otherwise fd 2 is a pipe that init copies to [`STDERR_TTY`].
    pub stderr_on_tty: bool,
}

/// One host mount made visible in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Path relative to the hostfs root (`v/<n>`), a symlink to the host path.
    pub share_path: String,
    /// Absolute mount point in the guest (same as on the host).
    pub guest_path: String,
    pub read_only: bool,
}

/// Why the guest stopped, as init saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The command ran; `exit_code` is its status (128+N for signal N).
    Exited,
    /// The command was not found (`exit_code` 127).
    NotFound,
    /// The command exists but could not be executed (`exit_code` 126).
    NotExecutable,
    /// dockerd did not become ready (`exit_code` [`exit::DOCKERD_FAILED`]).
    DockerdFailed,
    /// Guest setup failed before the command (`exit_code` [`exit::GUEST_SETUP`]).
    SetupFailed,
}

/// Seconds since guest boot (CLOCK_BOOTTIME) at which init reached each phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub init_start: Option<f64>,
    pub mounts_done: Option<f64>,
    #[serde(default)]
    pub network_ready: Option<f64>,
    pub dockerd_ready: Option<f64>,
    pub command_start: Option<f64>,
    pub command_done: Option<f64>,
    pub shutdown: Option<f64>,
}

/// Written by init just before power-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: u32,
    pub outcome: Outcome,
    pub exit_code: i32,
    /// Human-readable detail for failures (already shown on stderr by init).
    pub message: Option<String>,
    pub timings: Timings,
}

/// A line on the control tty (`launcher -> init` unless noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// init -> launcher: the stdio tty is in raw mode and the command is
    /// about to start; the launcher may now copy its stdin (copying earlier
    /// would let the tty echo or mangle it).
    StdinReady,
    /// Forward host signal N to the command (then shut down as usual).
    Signal(i32),
    /// Host stdin ended after N bytes in total: close the command's stdin
    /// once that many bytes were copied to it.
    StdinEof(u64),
}

/// A control line that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("control line {line:?} is not `signal <n>`, `eof <bytes>` or `stdin-ready`")]
pub struct ControlParseError {
    pub line: String,
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::StdinReady => write!(f, "stdin-ready"),
            Control::Signal(n) => write!(f, "signal {n}"),
            Control::StdinEof(n) => write!(f, "eof {n}"),
        }
    }
}

impl Control {
    /// The wire form: one ASCII line, newline-terminated.
    pub fn encode(&self) -> String {
        format!("{self}\n")
    }

    /// Parses one line (without or with its trailing newline / CR).
    pub fn parse(line: &str) -> Result<Self, ControlParseError> {
        let err = || ControlParseError {
            line: line.to_string(),
        };
        let line_text = line.trim_end_matches(['\n', '\r']);
        if line_text == "stdin-ready" {
            return Ok(Control::StdinReady);
        }
        let mut words = line_text.split(' ');
        let (kind, arg) = (words.next().ok_or_else(err)?, words.next().ok_or_else(err)?);
        if words.next().is_some() {
            return Err(err());
        }
        match kind {
            "signal" => arg.parse().map(Control::Signal).map_err(|_| err()),
            "eof" => arg.parse().map(Control::StdinEof).map_err(|_| err()),
            _ => Err(err()),
        }
    }
}

/// Exit codes of the launcher besides the command's own status.
///
/// The command's status passes through unchanged (0..=255; death by signal N
/// is 128+N). The codes below are what the launcher returns when there is
/// no command status; they follow `docker run` for 125..127.
pub mod exit {
    /// Guest setup (mounts, docker disk, share) failed before the command.
    pub const GUEST_SETUP: i32 = 120;
    /// dockerd exited or did not answer `/_ping` in time.
    pub const DOCKERD_FAILED: i32 = 121;
    /// The guest kernel panicked or the guest stopped without a status.
    pub const KERNEL_PANIC: i32 = 122;
    /// Launcher or configuration error: missing assets, bad `USMOL_*` value,
    /// disk in use by another instance, unusable temp dir.
    pub const LAUNCHER: i32 = 125;
    /// The kernel could not be started (exec failed, no seccomp/ptrace,
    /// no usable guest memory backing). Also a guest command that exists but
    /// cannot be executed, like a shell does.
    pub const CANNOT_RUN_KERNEL: i32 = 126;
    /// The command was not found in the guest.
    pub const NOT_FOUND: i32 = 127;

    /// Status of a process killed by `signal`, as shells report it.
    pub fn from_signal(signal: i32) -> i32 {
        128 + signal
    }
}

impl Request {
    /// Serializes to the JSON written to [`REQUEST_FILE`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Request has only serializable fields")
    }

    /// Parses [`REQUEST_FILE`] content and checks the format version.
    pub fn from_json(text: &str) -> Result<Self, FormatError> {
        let req: Request = serde_json::from_str(text).map_err(FormatError::Json)?;
        if req.version != FORMAT_VERSION {
            return Err(FormatError::Version { found: req.version });
        }
        Ok(req)
    }
}

impl Status {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Status has only serializable fields")
    }

    pub fn from_json(text: &str) -> Result<Self, FormatError> {
        let st: Status = serde_json::from_str(text).map_err(FormatError::Json)?;
        if st.version != FORMAT_VERSION {
            return Err(FormatError::Version { found: st.version });
        }
        Ok(st)
    }
}

/// A request or status file that does not match this build.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "invalid JSON: {0}; the launcher and the init in the root image must come from the same build"
    )]
    Json(serde_json::Error),
    #[error(
        "format version {found}, expected {FORMAT_VERSION}; the launcher and the init in the root image must come from the same build"
    )]
    Version { found: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            version: FORMAT_VERSION,
            argv: vec!["sh".into(), "-c".into(), "echo 'a b' \"$X\"\n".into()],
            env: vec![
                ("X".into(), "=y=".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            cwd: "/work dir".into(),
            stdio: Stdio {
                tty: false,
                stderr_on_tty: false,
            },
            hostname: "box".into(),
            volumes: vec![Volume {
                share_path: "v/0".into(),
                guest_path: "/data".into(),
                read_only: true,
            }],
            docker: true,
            dockerd_args: vec!["--debug".into()],
            entropy_seed: "00ff".into(),
            dockerd_timeout_secs: 60,
            debug: false,
            network: Some(Network {
                search: vec!["corp.example".into()],
                options: vec!["ndots:2".into()],
                api_token: Some("ab".repeat(32)),
            }),
        }
    }

    #[test]
    fn request_round_trips_with_awkward_strings() {
        let r = request();
        assert_eq!(Request::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn request_rejects_other_versions_and_unknown_fields() {
        let mut r = request();
        r.version = 99;
        assert!(matches!(
            Request::from_json(&r.to_json()),
            Err(FormatError::Version { found: 99 })
        ));
        let text = request().to_json().replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            Request::from_json(&text),
            Err(FormatError::Json(_))
        ));
    }

    #[test]
    fn status_round_trips() {
        let s = Status {
            version: FORMAT_VERSION,
            outcome: Outcome::NotFound,
            exit_code: 127,
            message: Some("nope: not found".into()),
            timings: Timings {
                init_start: Some(0.3),
                command_done: Some(4.5),
                ..Default::default()
            },
        };
        assert_eq!(Status::from_json(&s.to_json()).unwrap(), s);
        assert!(s.to_json().contains("\"not_found\""));
    }

    #[test]
    fn control_lines_round_trip() {
        for c in [
            Control::StdinReady,
            Control::Signal(15),
            Control::StdinEof(0),
            Control::StdinEof(u64::MAX),
        ] {
            assert_eq!(Control::parse(&c.encode()).unwrap(), c);
        }
        assert_eq!(Control::parse("signal 2\r\n").unwrap(), Control::Signal(2));
    }

    #[test]
    fn control_rejects_garbage() {
        for bad in ["", "signal", "signal x", "eof -1", "eof 1 2", "stop 1"] {
            assert!(Control::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signal_status_is_128_plus_n() {
        assert_eq!(exit::from_signal(15), 143);
        assert_eq!(exit::from_signal(9), 137);
    }
}
