//! The guest's OCI runtime entry point and docker's network hook, both
//! served by the init binary under other names (chosen by `argv[0]`).
//!
//! Before Docker 28, dockerd gives every container with its own network
//! namespace a prestart hook that re-executes dockerd itself
//! (`/proc/<dockerd>/exe libnetwork-setkey …`) to tell the daemon the
//! namespace's path over a unix socket. In UML that re-exec is a Go start
//! of a 94 MB binary, about a quarter of a second per `docker run`. The
//! runtime dockerd uses by default here is [`OCI_RUNTIME_LINK`], a link to
//! init: for `create` and `run` it points that one hook at init (which
//! speaks the same socket protocol in a few milliseconds) and then execs
//! crun with its arguments unchanged. Hooks of any other shape are left as
//! they are, so an unexpected dockerd keeps working, only slower.

use crate::docker::{CONTAINER_TIMER_SLACK_NS, CRUN};
use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The link dockerd's default runtime points at (made by init at boot).
pub const OCI_RUNTIME_LINK: &str = "/run/usmol/oci-runtime";
/// `argv[0]` of docker's network hook.
pub const SETKEY: &str = "libnetwork-setkey";

/// What the init binary was started as.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    Init,
    OciRuntime,
    SetKey,
}

/// The role for an `argv[0]`: its file name decides.
pub fn role(argv0: Option<&std::ffi::OsStr>) -> Role {
    let name = argv0.map(Path::new).and_then(Path::file_name);
    if name == Some(std::ffi::OsStr::new(SETKEY)) {
        Role::SetKey
    } else if name.is_some() && name == Path::new(OCI_RUNTIME_LINK).file_name() {
        Role::OciRuntime
    } else {
        Role::Init
    }
}

/// The `create`/`run` bundle directory named by a runtime command line
/// (OCI runtime CLI: global options, the subcommand, its options, the
/// container id), or `None` for every other subcommand.
pub fn bundle_to_rewrite(args: &[String]) -> Option<PathBuf> {
    // Global options of runc/crun that take a separate value.
    const GLOBAL_WITH_VALUE: [&str; 5] = [
        "--root",
        "--log",
        "--log-format",
        "--log-level",
        "--cgroup-manager",
    ];
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        i += if GLOBAL_WITH_VALUE.contains(&args[i].as_str()) {
            2
        } else {
            1
        };
    }
    if !matches!(args.get(i).map(String::as_str), Some("create" | "run")) {
        return None;
    }
    let rest = args.get(i + 1..).unwrap_or_default();
    for (j, arg) in rest.iter().enumerate() {
        if arg == "--bundle" || arg == "-b" {
            return rest.get(j + 1).map(PathBuf::from);
        }
        if let Some(dir) = arg.strip_prefix("--bundle=").or(arg.strip_prefix("-b=")) {
            return Some(PathBuf::from(dir));
        }
    }
    // No --bundle: the OCI CLI's default is the working directory.
    std::env::current_dir().ok()
}

/// Whether a hook is dockerd's own network hook, in the shape this module
/// knows: `/proc/<pid>/exe`, argv `libnetwork-setkey -exec-root=<dir> <id>
/// <controller id>`.
fn is_docker_setkey(hook: &Value) -> bool {
    let path_ok = hook["path"].as_str().is_some_and(|p| {
        p.strip_prefix("/proc/")
            .and_then(|r| r.strip_suffix("/exe"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    });
    let args: Vec<&str> = match hook["args"].as_array() {
        Some(a) => a.iter().filter_map(Value::as_str).collect(),
        None => return false,
    };
    path_ok && parse_setkey_args(&args).is_ok()
}

/// Points dockerd's network hooks in an OCI config at `replacement`;
/// returns how many it changed.
pub fn rewrite_hooks(config: &mut Value, replacement: &str) -> usize {
    let mut changed = 0;
    for stage in ["prestart", "createRuntime"] {
        let Some(hooks) = config
            .get_mut("hooks")
            .and_then(|h| h.get_mut(stage))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for hook in hooks.iter_mut().filter(|h| is_docker_setkey(h)) {
            hook["path"] = Value::String(replacement.into());
            changed += 1;
        }
    }
    changed
}

/// Rewrites `<bundle>/config.json` in place (temp file + rename).
fn rewrite_bundle(bundle: &Path) -> Result<usize, String> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    let changed = rewrite_hooks(&mut config, usmol_channel::INIT_PATH);
    if changed > 0 {
        let tmp = bundle.join(".config.json.usmol");
        let bytes = serde_json::to_vec(&config).map_err(|e| format!("encoding config: {e}"))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("writing {}: {e}", path.display())
            })?;
    }
    Ok(changed)
}

/// The OCI runtime role: rewrite the hook for `create`/`run`, then become
/// crun. Never returns.
pub fn runtime_main() -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(bundle) = bundle_to_rewrite(&text) {
        // A failed rewrite costs speed, not correctness: crun runs the
        // original hook.
        if let Err(e) = rewrite_bundle(&bundle) {
            let _ = writeln!(
                std::io::stderr(),
                "usmol oci-runtime: {e}; hooks left as they are"
            );
        }
    }
    // The daemons above run with a coarse timer slack; the container and
    // everything crun starts get Linux's default.
    // SAFETY: prctl(2) on this process.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, CONTAINER_TIMER_SLACK_NS) };
    let err = std::process::Command::new(CRUN)
        .arg0(CRUN)
        .args(&args)
        .exec();
    let _ = writeln!(std::io::stderr(), "usmol oci-runtime: exec {CRUN}: {err}");
    std::process::exit(127)
}

/// The network hook's arguments after `argv[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetKeyArgs {
    pub exec_root: String,
    pub container_id: String,
    pub controller_id: String,
}

impl SetKeyArgs {
    /// libnetwork's key socket for this controller.
    pub fn socket(&self) -> PathBuf {
        Path::new(&self.exec_root)
            .join("libnetwork")
            .join(format!("{}.sock", self.controller_id))
    }
}

/// Parses `libnetwork-setkey [-exec-root=DIR] <container id> <controller
/// id>` (argv including `argv[0]`), with Go's flag syntax for the option.
pub fn parse_setkey_args(argv: &[&str]) -> Result<SetKeyArgs, String> {
    if argv.first() != Some(&SETKEY) {
        return Err(format!("argv[0] is not {SETKEY}"));
    }
    let mut exec_root = "/var/run/docker".to_string();
    let mut positional = Vec::new();
    let mut it = argv[1..].iter();
    while let Some(arg) = it.next() {
        match arg.trim_start_matches('-') {
            _ if !arg.starts_with('-') => positional.push(arg.to_string()),
            "exec-root" => {
                exec_root = it.next().ok_or("-exec-root needs a value")?.to_string();
            }
            flag => match flag.strip_prefix("exec-root=") {
                Some(v) => exec_root = v.to_string(),
                None => return Err(format!("unknown option {arg}")),
            },
        }
    }
    let [container_id, controller_id]: [String; 2] = positional
        .try_into()
        .map_err(|p: Vec<String>| format!("expected <container id> <controller id>, got {p:?}"))?;
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(&container_id) || !plain(&controller_id) {
        return Err(format!(
            "ids must be alphanumeric: {container_id:?} {controller_id:?}"
        ));
    }
    Ok(SetKeyArgs {
        exec_root,
        container_id,
        controller_id,
    })
}

/// The container's pid from the OCI state the runtime gives a hook.
pub fn pid_from_state(state: &str) -> Result<u32, String> {
    let v: Value = serde_json::from_str(state).map_err(|e| format!("OCI state on stdin: {e}"))?;
    v["pid"]
        .as_u64()
        .filter(|&p| p > 0)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| "OCI state on stdin has no pid".to_string())
}

/// The request libnetwork's key socket expects.
pub fn setkey_request(args: &SetKeyArgs, pid: u32) -> String {
    serde_json::json!({
        "ContainerID": args.container_id,
        "Key": format!("/proc/{pid}/ns/net"),
    })
    .to_string()
        + "\n"
}

/// Sends the namespace path to dockerd; its answer is `success` or an
/// error text.
pub fn set_key(args: &SetKeyArgs, pid: u32) -> Result<(), String> {
    let socket = args.socket();
    let mut conn =
        UnixStream::connect(&socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    // dockerd answers at once; never hang a container start on it.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    conn.write_all(setkey_request(args, pid).as_bytes())
        .map_err(|e| format!("send to {}: {e}", socket.display()))?;
    let mut answer = Vec::new();
    conn.take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("read from {}: {e}", socket.display()))?;
    match String::from_utf8_lossy(&answer).as_ref() {
        "success" => Ok(()),
        other => Err(format!("dockerd: {other}")),
    }
}

/// The hook role: exit 0 when dockerd took the key, else 1 with the reason
/// on stderr (crun reports it as the hook's failure).
pub fn setkey_main() -> ! {
    let argv: Vec<String> = std::env::args().collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let result = parse_setkey_args(&argv).and_then(|args| {
        let mut state = String::new();
        std::io::stdin()
            .read_to_string(&mut state)
            .map_err(|e| format!("reading the OCI state on stdin: {e}"))?;
        set_key(&args, pid_from_state(&state)?)
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{SETKEY}: {e}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv0_picks_the_role() {
        assert_eq!(role(Some(OsStr::new("/usr/lib/usmol/init"))), Role::Init);
        assert_eq!(role(Some(OsStr::new(OCI_RUNTIME_LINK))), Role::OciRuntime);
        assert_eq!(role(Some(OsStr::new("libnetwork-setkey"))), Role::SetKey);
        assert_eq!(role(None), Role::Init);
    }

    #[test]
    fn the_bundle_of_create_and_run_only() {
        let create = strings(&[
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b/one",
            "--pid-file",
            "/b/one/init.pid",
            "c0ffee",
        ]);
        assert_eq!(bundle_to_rewrite(&create), Some(PathBuf::from("/b/one")));
        let run = strings(&["--root=/r", "run", "-d", "--bundle=/b/two", "id"]);
        assert_eq!(bundle_to_rewrite(&run), Some(PathBuf::from("/b/two")));
        for other in [
            &["--root", "/r", "start", "create"][..],
            &["--root", "/r", "delete", "--force", "id"],
            &["--root", "/r", "state", "run"],
            &["--version"],
            &[],
        ] {
            assert_eq!(bundle_to_rewrite(&strings(other)), None, "{other:?}");
        }
        // The value of a global option is not the subcommand.
        assert_eq!(
            bundle_to_rewrite(&strings(&["--log", "create", "kill", "id"])),
            None
        );
    }

    fn docker_config(hook_path: &str) -> Value {
        serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/hello"]},
            "hooks": {"prestart": [
                {"path": "/usr/bin/other-hook", "args": ["other-hook", "x"]},
                {"path": hook_path, "args": [
                    "libnetwork-setkey", "-exec-root=/var/run/docker",
                    "0123abcd", "89ef4567"
                ]}
            ]}
        })
    }

    #[test]
    fn only_dockerds_setkey_hook_is_redirected() {
        let mut config = docker_config("/proc/412/exe");
        assert_eq!(rewrite_hooks(&mut config, "/usr/lib/usmol/init"), 1);
        let hooks = &config["hooks"]["prestart"];
        assert_eq!(hooks[0]["path"], "/usr/bin/other-hook");
        assert_eq!(hooks[1]["path"], "/usr/lib/usmol/init");
        // argv stays as dockerd wrote it: argv[0] selects the role.
        assert_eq!(hooks[1]["args"][0], SETKEY);
        assert_eq!(config["process"]["args"][0], "/hello");

        // A hook dockerd did not write that way stays.
        for path in ["/usr/sbin/dockerd", "/proc/self/exe", "/proc//exe"] {
            let mut config = docker_config(path);
            assert_eq!(rewrite_hooks(&mut config, "/x"), 0, "{path}");
        }
        let mut unknown_flag = docker_config("/proc/1/exe");
        unknown_flag["hooks"]["prestart"][1]["args"][1] = "-sock=/x.sock".into();
        assert_eq!(rewrite_hooks(&mut unknown_flag, "/x"), 0);
        let mut no_hooks = serde_json::json!({"ociVersion": "1.1.0"});
        assert_eq!(rewrite_hooks(&mut no_hooks, "/x"), 0);
    }

    #[test]
    fn setkey_arguments_in_go_flag_syntax() {
        let want = SetKeyArgs {
            exec_root: "/var/run/docker".into(),
            container_id: "0123abcd".into(),
            controller_id: "89ef4567".into(),
        };
        for argv in [
            &[SETKEY, "-exec-root=/var/run/docker", "0123abcd", "89ef4567"][..],
            &[
                SETKEY,
                "--exec-root",
                "/var/run/docker",
                "0123abcd",
                "89ef4567",
            ],
            &[SETKEY, "0123abcd", "89ef4567"],
        ] {
            assert_eq!(parse_setkey_args(argv), Ok(want.clone()));
        }
        assert_eq!(
            want.socket(),
            PathBuf::from("/var/run/docker/libnetwork/89ef4567.sock")
        );
        for bad in [
            &["dockerd", "a", "b"][..],
            &[SETKEY, "a"],
            &[SETKEY, "a", "b", "c"],
            &[SETKEY, "-exec-root"],
            &[SETKEY, "-sock=/s", "a", "b"],
            &[SETKEY, "../x", "b"],
        ] {
            assert!(parse_setkey_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pid_comes_from_the_oci_state() {
        let state =
            r#"{"ociVersion":"1.0.2","id":"c","status":"created","pid":4242,"bundle":"/b"}"#;
        assert_eq!(pid_from_state(state), Ok(4242));
        assert!(pid_from_state(r#"{"id":"c"}"#).is_err());
        assert!(pid_from_state(r#"{"pid":0}"#).is_err());
        assert!(pid_from_state("not json").is_err());
    }

    /// A stand-in for dockerd's key socket: one connection, the request
    /// line kept, `answer` written back.
    fn key_server(dir: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        let sock = dir.join("libnetwork").join("cafe.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8];
            while conn.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            conn.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(line).unwrap()
        })
    }

    #[test]
    fn set_key_speaks_libnetworks_socket_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let args = SetKeyArgs {
            exec_root: dir.path().to_str().unwrap().into(),
            container_id: "0123abcd".into(),
            controller_id: "cafe".into(),
        };
        let server = key_server(dir.path(), "success");
        assert_eq!(set_key(&args, 77), Ok(()));
        let request: Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"ContainerID": "0123abcd", "Key": "/proc/77/ns/net"})
        );

        std::fs::remove_file(args.socket()).unwrap();
        let server = key_server(dir.path(), "failed to set key: no such sandbox");
        let err = set_key(&args, 77).unwrap_err();
        assert!(err.contains("no such sandbox"), "{err}");
        server.join().unwrap();

        std::fs::remove_file(args.socket()).unwrap();
        let err = set_key(&args, 77).unwrap_err();
        assert!(err.contains("cafe.sock"), "{err}");
    }

    #[test]
    fn a_bundle_is_rewritten_in_place_or_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, docker_config("/proc/9/exe").to_string()).unwrap();
        assert_eq!(rewrite_bundle(dir.path()), Ok(1));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        assert_eq!(v["hooks"]["prestart"][1]["path"], usmol_channel::INIT_PATH);
        // Second pass: nothing left to change, the file stays byte-equal.
        let before = std::fs::read(&config).unwrap();
        assert_eq!(rewrite_bundle(dir.path()), Ok(0));
        assert_eq!(std::fs::read(&config).unwrap(), before);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(&config, "{ not json").unwrap();
        let err = rewrite_bundle(dir.path()).unwrap_err();
        assert!(err.contains("config.json"), "{err}");
    }
}
