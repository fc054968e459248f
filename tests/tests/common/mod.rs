//! Helpers shared by the golden boot tests: running a command with a
//! deadline and its whole output in every failure message, and the nested
//! test images (no registry is reachable, so the tests build their own).

#![allow(dead_code)] // each test binary uses its own subset

pub mod engine;

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use usmol_oci::{ImageConfig, docker_archive_from_files};

/// A finished command with everything it printed.
pub struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the full report unless the exit status is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status\n{self}");
        self
    }

    /// Panics with the full report unless stdout contains `needle`.
    #[track_caller]
    pub fn expect_stdout_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stdout_text().contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "command: {}\nstatus: {} after {:.1}s",
            self.what,
            self.status,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "----- stdout -----\n{}",
            String::from_utf8_lossy(&self.stdout)
        )?;
        write!(
            f,
            "----- stderr -----\n{}------------------",
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// Describes a command the way a shell user would type it.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&format!("{:?}", a.to_string_lossy()));
    }
    s
}

/// Runs `cmd` with `stdin` as its input and waits at most `timeout`. On
/// timeout the process is killed, `on_timeout` runs (to remove what the
/// killed client left behind, e.g. a container), and the test fails with
/// the output so far.
#[track_caller]
pub fn run_with(
    cmd: &mut Command,
    stdin: &[u8],
    timeout: Duration,
    on_timeout: &dyn Fn(),
) -> Outcome {
    let what = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // The command may exit without reading all of its input: a broken pipe
    // here is not the test's failure.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let stdout = reader(child.stdout.take().unwrap());
    let stderr = reader(child.stderr.take().unwrap());
    let deadline = start + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("waiting for the killed child");
            on_timeout();
            let out = Outcome {
                what,
                status,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
                elapsed: start.elapsed(),
            };
            panic!("timed out after {timeout:?}, killed\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = writer.join();
    let out = Outcome {
        what,
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: start.elapsed(),
    };
    eprintln!(
        "ran in {:.1}s (status {}): {}",
        out.elapsed.as_secs_f64(),
        out.status,
        out.what
    );
    out
}

/// [`run_with`] without clean-up on timeout.
#[track_caller]
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Outcome {
    run_with(cmd, stdin, timeout, &|| {})
}

fn reader(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// What the hello program prints: the exact stdout of a nested
/// `docker run --rm hello-world`.
pub fn hello_text() -> String {
    let out = Command::new(usmol_tests::hello_binary())
        .output()
        .expect("run the hello program on the host");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Writes a docker archive of the hello program tagged `hello-world:latest`
/// (command `/hello`) at `<dir>/hello.tar`.
pub fn hello_image(dir: &Path) -> PathBuf {
    image(
        dir,
        "hello.tar",
        ("hello", usmol_tests::hello_binary()),
        ImageConfig {
            cmd: vec!["/hello".into()],
            ..ImageConfig::default()
        },
        "hello-world:latest",
    )
}

/// Writes a docker archive of the file helper tagged `usmol-tool:latest`
/// (entrypoint `/tool`, so `docker run usmol-tool append FILE TEXT`) at
/// `<dir>/tool.tar`.
pub fn tool_image(dir: &Path) -> PathBuf {
    image(
        dir,
        "tool.tar",
        ("tool", usmol_tests::tool_binary()),
        ImageConfig {
            entrypoint: vec!["/tool".into()],
            ..ImageConfig::default()
        },
        "usmol-tool:latest",
    )
}

fn image(dir: &Path, name: &str, file: (&str, &Path), config: ImageConfig, tag: &str) -> PathBuf {
    let out = dir.join(name);
    docker_archive_from_files(
        &[(file.0.to_owned(), file.1.to_owned(), 0o755)],
        config,
        &[tag.to_owned()],
        &out,
        0,
    )
    .unwrap_or_else(|e| panic!("building the {tag} archive at {}: {e}", out.display()));
    out
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
