//! Fault and soak harness: starts `<out>/usmol/run` as a normal user (uid
//! 65534 through `setpriv` when the tests run as root) in a private temp
//! tree, finds the UML kernel it started, and reports what a run left
//! behind on the host: processes, private directories, guest-RAM files.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const NOBODY: u32 = 65534;

/// One launcher environment: its temp dir (`USMOL_TMPDIR`), a tmpfs dir for
/// guest RAM (`TMPDIR`, so RAM files can be counted) and a home.
pub struct Env {
    pub root: tempfile::TempDir,
    pub ram: tempfile::TempDir,
    pub as_nobody: bool,
    pub run: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let run = usmol_tests::usmol_out().join("usmol/run");
        let root = tempfile::Builder::new()
            .prefix("usmol-fault-")
            .tempdir()
            .expect("create a temporary directory");
        let ram = tempfile::Builder::new()
            .prefix("usmol-fault-ram-")
            .tempdir_in("/dev/shm")
            .expect("create a directory in /dev/shm");
        std::fs::create_dir(root.path().join("tmp")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let as_nobody = unsafe { libc::geteuid() } == 0;
        if as_nobody {
            for p in [root.path(), ram.path()] {
                chown_tree(p, NOBODY);
            }
        }
        Env {
            root,
            ram,
            as_nobody,
            run,
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The launcher's temp dir: every private directory lands here.
    pub fn tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }

    /// `run ARGS` with a clean environment, no network, own temp dirs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(&self.run);
            c
        } else {
            Command::new(&self.run)
        };
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.path())
            .env("TMPDIR", self.ram.path())
            .env("USMOL_TMPDIR", self.tmp())
            .env("USMOL_NETWORK", "none");
        cmd
    }

    /// Entries left in the launcher temp dir and the guest-RAM dir.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in [self.tmp(), self.ram.path().to_owned()] {
            for e in std::fs::read_dir(&d).unwrap() {
                out.push(e.unwrap().path().display().to_string());
            }
        }
        out
    }

    /// Host processes started for this environment that still run: UML
    /// kernels (their command line names a private dir under our temp dir,
    /// their environment too) and every member of their sessions (the
    /// guest stubs), plus the sessions in `known` (kernels seen earlier,
    /// whose /proc files may no longer be readable while they exit).
    pub fn processes_with(&self, known: &[i32]) -> Vec<i32> {
        let marker = format!("{}/usmol-", self.tmp().display());
        let all = all_pids();
        let mut kernels: Vec<i32> = known.iter().copied().filter(|p| alive(*p)).collect();
        for &pid in &all {
            let text = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
            let hit = |b: Vec<u8>| b.windows(marker.len()).any(|w| w == marker.as_bytes());
            if hit(text("cmdline")) || hit(text("environ")) {
                kernels.push(pid);
            }
        }
        let mut out: Vec<i32> = all
            .into_iter()
            .filter(|&p| {
                alive(p)
                    && (kernels.contains(&p)
                        || stat_field(p, 3).is_some_and(|s| kernels.contains(&s)))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn processes(&self) -> Vec<i32> {
        self.processes_with(&[])
    }

    /// Waits up to `limit` for this environment's host processes to end.
    pub fn wait_processes_gone(&self, limit: Duration) -> Result<Duration, Vec<i32>> {
        self.wait_gone_with(&[], limit)
    }

    /// [`Env::wait_processes_gone`], also waiting for the sessions in `known`.
    pub fn wait_gone_with(&self, known: &[i32], limit: Duration) -> Result<Duration, Vec<i32>> {
        let start = Instant::now();
        loop {
            let left = self.processes_with(known);
            if left.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(left);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes `path` (a file the guest's user must write) owned by it.
    pub fn give(&self, path: &Path) {
        if self.as_nobody {
            chown_tree(path, NOBODY);
        }
    }
}

pub fn chown_tree(dir: &Path, id: u32) {
    let st = Command::new("chown")
        .args(["-R", &format!("{id}:{id}")])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R {id} {} failed", dir.display());
}

/// A launcher running in its own process group, its stdout as lines.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    pub started: Instant,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Running::start(cmd, Stdio::null())
    }

    /// [`Running::spawn`] with a pipe to the launcher's stdin in
    /// `child.stdin`, for a guest command that waits for the test.
    pub fn spawn_with_stdin(cmd: &mut Command) -> Running {
        Running::start(cmd, Stdio::piped())
    }

    fn start(cmd: &mut Command, stdin: Stdio) -> Running {
        let mut child = cmd
            .process_group(0)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the launcher");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stdout line equal to `want`; false on timeout or end.
    pub fn wait_line(&self, want: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l == want => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The UML kernel: the launcher's child process named `linux`.
    pub fn kernel_pid(&self) -> Option<i32> {
        children(self.pid())
            .into_iter()
            .find(|&p| comm(p).as_deref() == Some("linux"))
    }

    /// SIGKILLs the launcher alone and reaps it, without waiting for its
    /// output pipes (an orphaned kernel still holds them).
    pub fn kill_launcher(&mut self) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let st = self.child.wait().unwrap();
        assert_eq!(st.code(), None, "the launcher was not killed: {st}");
    }

    /// Waits for the launcher to exit within `limit`; kills it (and its
    /// process group) otherwise. Returns the exit code (None: signal or
    /// timeout), stdout and stderr.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, bool, String, String) {
        let deadline = Instant::now() + limit;
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                timed_out = true;
                // SAFETY: kill(2) on our own child's process group.
                unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.take().unwrap().join().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap();
        (status.code(), timed_out, out, err)
    }
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Exists and is not a zombie.
fn alive(pid: i32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// The state letter of /proc/PID/stat (`R`, `S`, `Z`...), if it exists.
pub fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if stat_field(p, 1) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Field `n` after the command name of /proc/PID/stat (0 = state, 1 =
/// ppid, 3 = session).
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(n)?.parse().ok()
}

pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `e2fsck -fn` (check only, change nothing): its exit code and output.
pub fn fsck_check(disk: &Path) -> (i32, String) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .expect("run e2fsck");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return 0.0;
    }
    s[s.len() / 2]
}
