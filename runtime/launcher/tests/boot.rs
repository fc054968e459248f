//! Boots a real artifact (`run` + `lib/linux` + `lib/rootfs.ext4`) and
//! checks the launcher's contract: exit codes, stdin, stdout/stderr
//! separation, dockerd. Slow: runs only with USMOL_SLOW_TESTS=1, against
//! the unpacked artifact directory named by USMOL_ARTIFACT_DIR, else the
//! one `cargo xtask build-image` writes (`out/usmol`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn artifact() -> Option<PathBuf> {
    if std::env::var("USMOL_SLOW_TESTS").as_deref() != Ok("1") {
        println!("skipped: set USMOL_SLOW_TESTS=1");
        return None;
    }
    let dir = std::env::var_os("USMOL_ARTIFACT_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../out/usmol"),
        PathBuf::from,
    );
    assert!(
        dir.join("run").is_file(),
        "{} has no `run`: run `cargo xtask build-image` first, or set USMOL_ARTIFACT_DIR to an unpacked artifact",
        dir.display()
    );
    Some(dir)
}

fn run(dir: &Path, docker: bool, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(dir.join("run"))
        .args(args)
        .env("USMOL_DOCKER", if docker { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn exit_status_stdin_and_streams() {
    let Some(dir) = artifact() else { return };
    let out = run(&dir, false, &["sh", "-c", "exit 42"], b"");
    assert_eq!(
        out.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let out = run(&dir, false, &["cat"], &data);
    assert!(
        out.stdout == data,
        "cat returned {} bytes, different from its input",
        out.stdout.len()
    );

    let out = run(
        &dir,
        false,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; test -t 1 || echo notty",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nnotty\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));

    let out = run(&dir, false, &["no-such-command"], b"");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn dockerd_answers() {
    let Some(dir) = artifact() else { return };
    let out = run(
        &dir,
        true,
        &["docker", "version", "--format", "{{.Server.Version}}"],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
