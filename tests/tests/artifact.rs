//! Golden boot tests of the plain artifact: `usmol-<version>.tar.zst`
//! unpacked into a fresh directory and started as a normal user, the way a
//! user without docker would run it (`./usmol/run CMD...`).
//!
//! As root the launcher runs as uid/gid 65534 through `setpriv`, with the
//! unpacked tree chowned to it; otherwise as the current user. Slow: each
//! boot takes seconds, so these run only with USMOL_SLOW_TESTS=1.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Outcome, hello_image, hello_text, run, secs};
use tempfile::TempDir;

const NOBODY: u32 = 65534;
/// A boot with dockerd, on a loaded 2-CPU machine.
const DOCKER_BOOT: Duration = Duration::from_secs(240);
/// A boot without dockerd.
const PLAIN_BOOT: Duration = Duration::from_secs(90);

/// One unpacked artifact in its own temporary directory.
struct Artifact {
    dir: TempDir,
    as_nobody: bool,
}

impl Artifact {
    fn unpack() -> Artifact {
        let out = usmol_tests::usmol_out();
        let tarball = find_tarball(&out);
        let dir = tempfile::Builder::new()
            .prefix("usmol-golden-")
            .tempdir()
            .expect("create a temporary directory");
        let start = Instant::now();
        let file = std::fs::File::open(&tarball)
            .unwrap_or_else(|e| panic!("open {}: {e}", tarball.display()));
        let zst = zstd::Decoder::new(file)
            .unwrap_or_else(|e| panic!("read {} as zstd: {e}", tarball.display()));
        let mut archive = tar::Archive::new(zst);
        archive.set_preserve_permissions(true);
        archive.unpack(dir.path()).unwrap_or_else(|e| {
            panic!(
                "unpack {} into {}: {e}",
                tarball.display(),
                dir.path().display()
            )
        });
        assert!(
            dir.path().join("usmol/run").is_file(),
            "{} holds no usmol/run",
            tarball.display()
        );
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let as_nobody = unsafe { libc::geteuid() } == 0;
        if as_nobody {
            chown_tree(dir.path(), NOBODY);
        }
        eprintln!(
            "unpacked {} in {}",
            tarball.display(),
            secs(start.elapsed())
        );
        Artifact { dir, as_nobody }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `./usmol/run ARGS` in the artifact's directory, with a clean
    /// environment (no stray USMOL_* knobs from the caller) and the
    /// launcher's private directory under the temporary directory.
    fn command(&self, args: &[&str]) -> Command {
        let run = self.path().join("usmol/run");
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(&run);
            c
        } else {
            Command::new(&run)
        };
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.path())
            .env("USMOL_TMPDIR", self.path().join("tmp"));
        cmd
    }

    /// A boot without dockerd.
    fn plain(&self, args: &[&str], stdin: &[u8]) -> Outcome {
        run(
            self.command(args).env("USMOL_DOCKER", "0"),
            stdin,
            PLAIN_BOOT,
        )
    }

    /// A boot with dockerd, on the docker disk `disk` if given.
    fn docker(&self, args: &[&str], stdin: &[u8], disk: Option<&Path>) -> Outcome {
        let mut cmd = self.command(args);
        cmd.env("USMOL_DOCKER", "1");
        if let Some(disk) = disk {
            cmd.env("USMOL_DISK", disk);
        }
        run(&mut cmd, stdin, DOCKER_BOOT)
    }
}

fn find_tarball(out: &Path) -> PathBuf {
    let entries = std::fs::read_dir(out).unwrap_or_else(|e| panic!("list {}: {e}", out.display()));
    let found: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("usmol-") && n.ends_with(".tar.zst"))
        })
        .collect();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!(
            "{} has no usmol-<version>.tar.zst: run `cargo xtask build-image` first",
            out.display()
        ),
        many => panic!("{} has several plain tarballs: {many:?}", out.display()),
    }
}

fn chown_tree(dir: &Path, id: u32) {
    let st = Command::new("chown")
        .args(["-R", &format!("{id}:{id}")])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R {id} {} failed", dir.display());
}

/// The hello image archive, as bytes for the launcher's stdin.
fn hello_archive() -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    let path = hello_image(scratch.path());
    std::fs::read(&path).unwrap()
}

#[test]
fn hello_world_from_the_plain_artifact() {
    if !usmol_tests::slow_tests_enabled("hello_world_from_the_plain_artifact") {
        return;
    }
    let art = Artifact::unpack();
    let out = art.docker(
        &["sh", "-c", "docker load -q && docker run --rm hello-world"],
        &hello_archive(),
        None,
    );
    out.expect_code(0)
        .expect_stdout_contains("Hello from Docker!");
}

#[test]
fn exit_codes_pass_through() {
    if !usmol_tests::slow_tests_enabled("exit_codes_pass_through") {
        return;
    }
    let art = Artifact::unpack();
    for code in [0, 1, 42, 255] {
        art.plain(&["sh", "-c", &format!("exit {code}")], b"")
            .expect_code(code);
    }
    // Death by SIGKILL is 128 + 9, as a shell reports it.
    art.plain(&["sh", "-c", "kill -9 $$"], b"").expect_code(137);
}

#[test]
fn arguments_and_stdin_arrive_intact() {
    if !usmol_tests::slow_tests_enabled("arguments_and_stdin_arrive_intact") {
        return;
    }
    let art = Artifact::unpack();
    let args = [
        "two words",
        "it's",
        "say \"hi\"",
        "line one\nline two",
        "",
        " lead and trail ",
        "$HOME `x` \\ * ;|&",
        "tab\there",
    ];
    let mut argv = vec!["printf", "[%s]\\n"];
    argv.extend(args);
    let out = art.plain(&argv, b"");
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        expected,
        "arguments changed on the way\n{out}"
    );

    let out = art.plain(&["cat"], b"hi\n");
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        "hi\n",
        "stdin did not pipe through\n{out}"
    );
}

/// sha256 of `data` by the host's `sha256sum`, in hex.
fn host_sha256(data: &[u8]) -> String {
    let out = run(
        &mut Command::new("sha256sum"),
        data,
        Duration::from_secs(60),
    );
    out.expect_code(0);
    out.stdout_text()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A stdin far larger than the guest tty's buffers arrives byte-exact,
/// every byte value included, also when the command starts reading only
/// after a pause: the console line is then throttled and unthrottled many
/// times on the way in (kernel patch 0004).
#[test]
fn a_large_stdin_arrives_byte_exact_through_throttling() {
    if !usmol_tests::slow_tests_enabled("a_large_stdin_arrives_byte_exact_through_throttling") {
        return;
    }
    let art = Artifact::unpack();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let want = host_sha256(&data);
    for script in ["sha256sum", "sleep 2; sha256sum"] {
        let out = art.plain(&["sh", "-c", script], &data);
        out.expect_code(0);
        assert_eq!(
            out.stdout_text().split_whitespace().next(),
            Some(want.as_str()),
            "`{script}`: 16 MiB of stdin changed on the way\n{out}"
        );
    }
}

#[test]
fn sigterm_stops_the_guest_and_keeps_the_docker_disk_clean() {
    if !usmol_tests::slow_tests_enabled("sigterm_stops_the_guest_and_keeps_the_docker_disk_clean") {
        return;
    }
    let art = Artifact::unpack();
    let disk = art.path().join("docker.ext4");
    let mut cmd = art.command(&["sh", "-c", "echo ready; exec sleep 300"]);
    cmd.env("USMOL_DOCKER", "1")
        .env("USMOL_DISK", &disk)
        .env("USMOL_TIMINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start the launcher");
    let pid = child.id() as libc::pid_t;
    let stderr = {
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        })
    };
    let (tx, rx) = mpsc::channel();
    let stdout = {
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        })
    };
    // The command prints `ready` once dockerd is up and it has started.
    let up = loop {
        match rx.recv_timeout(DOCKER_BOOT.saturating_sub(started.elapsed())) {
            Ok(line) if line == "ready" => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    if !up {
        let _ = child.kill();
        let status = child.wait().unwrap();
        panic!(
            "the guest never printed `ready` ({status} after {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            secs(started.elapsed()),
            stdout.join().unwrap(),
            stderr.join().unwrap()
        );
    }
    let booted = started.elapsed();
    // SAFETY: pid is our own live child (not yet waited for).
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill -TERM {pid}"
    );
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stop = signalled.elapsed();
    let out = stdout.join().unwrap();
    let err = stderr.join().unwrap();
    let report = format!(
        "booted in {}, stopped {} after SIGTERM, status {status:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
        secs(booted),
        secs(stop)
    );
    eprintln!("sigterm: {}", report.lines().next().unwrap());
    let status = status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM\n{report}"));
    assert_eq!(status.code(), Some(143), "SIGTERM must give 143\n{report}");
    // The launcher kills the kernel 10 s after the first signal: a graceful
    // shutdown (dockerd stopped, disk unmounted) must finish before that.
    assert!(
        stop < Duration::from_secs(10),
        "shutdown took too long\n{report}"
    );

    let fsck = run(
        Command::new("e2fsck").arg("-fn").arg(&disk),
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(
        fsck.code(),
        Some(0),
        "the docker disk is not clean after SIGTERM\n{fsck}"
    );
}

#[test]
fn docker_disk_keeps_images_across_starts() {
    if !usmol_tests::slow_tests_enabled("docker_disk_keeps_images_across_starts") {
        return;
    }
    let art = Artifact::unpack();
    let disk = art.path().join("docker.ext4");
    art.docker(&["docker", "load", "-q"], &hello_archive(), Some(&disk))
        .expect_code(0)
        .expect_stdout_contains("hello-world:latest");
    let out = art.docker(
        &[
            "docker",
            "image",
            "inspect",
            "--format",
            "{{.RepoTags}}",
            "hello-world",
        ],
        b"",
        Some(&disk),
    );
    out.expect_code(0)
        .expect_stdout_contains("hello-world:latest");
}

#[test]
fn unknown_command_and_clean_stdout() {
    if !usmol_tests::slow_tests_enabled("unknown_command_and_clean_stdout") {
        return;
    }
    let art = Artifact::unpack();
    art.plain(&["no-such-command-in-usmol"], b"")
        .expect_code(127);

    // Kernel and init messages stay off stdout: the nested program's output
    // is all there is.
    let out = art.docker(
        &[
            "sh",
            "-c",
            "docker load -q >/dev/null && docker run --rm hello-world",
        ],
        &hello_archive(),
        None,
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        hello_text(),
        "stdout carries more than the hello output\n{out}"
    );
}
