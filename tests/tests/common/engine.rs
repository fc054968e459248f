//! The usmol image on the host's docker engine: loading it once per test
//! binary, running it, and directories to mount into it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Outcome, run, run_with};
use tempfile::TempDir;

pub const IMAGE: &str = "usmol:latest";
/// One container with a guest and dockerd, on a loaded 2-CPU machine.
pub const BOOT: Duration = Duration::from_secs(300);

/// True when a docker engine answers; otherwise says loudly why the test
/// does not run.
pub fn engine_answers(test: &str) -> bool {
    if !usmol_tests::slow_tests_enabled(test) {
        return false;
    }
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             {test}: SKIPPED: no docker engine answers `docker info`.\n\
             Start one (e.g. `dockerd &` as root) to run the engine golden tests.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    ok
}

/// Holds `usmol:latest` loaded from the build output while tests use it.
/// The first user loads it; the last one removes it again unless the engine
/// already had that very image before.
pub struct UsmolImage;

/// (users, image id to remove when the last user is done)
static USERS: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

impl UsmolImage {
    pub fn acquire() -> UsmolImage {
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        if users.0 == 0 {
            let before = image_id(IMAGE);
            let archive = usmol_tests::usmol_out().join("usmol-docker.tar");
            assert!(
                archive.is_file(),
                "{} is missing: run `cargo xtask build-image` first",
                archive.display()
            );
            run(
                Command::new("docker").arg("load").arg("-i").arg(&archive),
                b"",
                Duration::from_secs(300),
            )
            .expect_code(0);
            let after = image_id(IMAGE).expect("usmol:latest after docker load");
            users.1 = (before.as_deref() != Some(after.as_str())).then_some(after);
        }
        users.0 += 1;
        UsmolImage
    }
}

impl Drop for UsmolImage {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 -= 1;
        if users.0 == 0
            && let Some(id) = users.1.take()
        {
            let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
        }
    }
}

fn image_id(reference: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `docker run --rm --network none [-i] FLAGS usmol:latest ARGS` under a
/// unique container name that is force-removed if the run times out.
pub fn usmol(flags: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    usmol_on("none", flags, args, stdin)
}

/// [`usmol`] with the outer container on `network` (`none` or `host`: the
/// tests never put it on a bridge that reaches other addresses).
pub fn usmol_on(network: &str, flags: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "usmol-golden-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--network", network, "--name", &name]);
    if stdin.is_some() {
        cmd.arg("-i");
    }
    cmd.args(flags).arg(IMAGE).args(args);
    run_with(&mut cmd, stdin.unwrap_or(b""), BOOT, &|| {
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    })
}

/// A temporary directory anyone may write to (the container may run as
/// another user).
pub fn open_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("usmol-golden-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

pub fn vol(host: &Path, guest: &str) -> String {
    format!("{}:{guest}", host.display())
}
