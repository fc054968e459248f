//! The sandbox boundary: from inside the guest, as root, hostfs reaches the
//! share and the declared volumes and nothing else of the outer filesystem,
//! whatever the guest plants in the places it can write.

use std::io::Write;
use std::process::{Command, Stdio};

use usmol_tests::{hostfs_probe_binary, slow_tests_enabled, usmol_out};

#[test]
fn hostfs_mounts_stay_inside_the_share_and_the_volumes() {
    if !slow_tests_enabled("hostfs_mounts_stay_inside_the_share_and_the_volumes") {
        return;
    }
    // A writable directory the guest sees at the same path. In the plain
    // artifact a volume is a mount of the launcher's namespace, so make one
    // with unshare when we can; otherwise test the share alone.
    let volume = tempfile::tempdir().unwrap();
    let volume_path = volume.path().to_str().unwrap().to_owned();
    let run = usmol_out().join("usmol/run");
    let probe = std::fs::read(hostfs_probe_binary()).unwrap();
    let script = format!("cat > /tmp/p && chmod +x /tmp/p && exec /tmp/p {volume_path}");
    let mut command = if unsafe { libc::geteuid() } == 0 {
        // A bind mount of the directory onto itself makes it a volume.
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&volume_path)
            .arg(&run);
        c
    } else {
        Command::new(&run)
    };
    let mut child = command
        .args(["sh", "-c", &script])
        .env("USMOL_DOCKER", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", run.display()));
    child.stdin.take().unwrap().write_all(&probe).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    let result = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no result for {what}: {report}"))
            .to_owned()
    };
    assert_eq!(result("share-root"), "mounted", "{report}");
    assert_eq!(result("dotdot"), "EINVAL", "'..' in a mount root: {report}");
    assert_eq!(
        result("share-symlink"),
        "EACCES",
        "a symlink planted in the share: {report}"
    );
    let escapes: Vec<&str> = stdout.lines().filter(|l| l.contains("/escape ")).collect();
    // The link exists only in our volume (EACCES there); other volumes of
    // the launcher's namespace have none (ENOENT). Never "mounted".
    for line in &escapes {
        assert!(
            line.ends_with(" EACCES") || line.ends_with(" ENOENT"),
            "a symlink planted in a volume: {line}\n{report}"
        );
    }
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            escapes.iter().any(|l| l.ends_with(" EACCES")),
            "the planted link was not refused in any volume: {report}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("v/") && l.ends_with(" mounted")),
            "the volume itself must mount: {report}"
        );
        // The planted link is really there on the outer side, and harmless.
        assert_eq!(
            std::fs::read_link(volume.path().join("escape"))
                .unwrap()
                .to_str(),
            Some("/etc")
        );
    }
}
