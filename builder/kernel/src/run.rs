//! Running tools in the source tree: with the host's tools, or chrooted
//! into a sysroot (in a private mount namespace where the tree is bound to
//! `/usmol-build`, and a user namespace when not root). Output goes to the
//! build log; `make` lines like `  CC      mm/slub.o` drive the spinner.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::toolchain::Toolchain;

/// Where the tree appears inside a sysroot.
pub const SYSROOT_TREE: &str = "/usmol-build";

/// A tool invocation in the source tree.
pub struct Runner<'a> {
    pub toolchain: &'a Toolchain,
    pub tree: &'a Path,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub spinner: Option<ProgressBar>,
}

impl Runner<'_> {
    /// The spinner shown while `make` runs: hidden unless asked for and
    /// stderr is a terminal (indicatif's stderr target checks that).
    pub fn spinner(progress: bool) -> Option<ProgressBar> {
        if !progress {
            return None;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} kernel [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    }

    /// The tree's path as the tools see it (fixed inside a sysroot).
    pub fn tree_path_for(toolchain: &Toolchain, tree: &Path) -> PathBuf {
        match toolchain {
            Toolchain::Host => tree.to_path_buf(),
            Toolchain::Sysroot(_) => PathBuf::from(SYSROOT_TREE),
        }
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut cmd = match self.toolchain {
            Toolchain::Host => {
                let mut c = Command::new(&args[0]);
                c.args(&args[1..]).current_dir(self.tree);
                c
            }
            Toolchain::Sysroot(root) => sysroot_command(root, self.tree, args),
        };
        // Locale and time zone leak into tool output and timestamps.
        cmd.env("LC_ALL", "C").env("TZ", "UTC");
        // A caller's make flags (e.g. from cargo's jobserver) must not
        // change the kernel build.
        cmd.env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `args`, appending all output to the log; fails with the log's
    /// tail. Compile lines update the spinner.
    pub fn run(&self, args: &[&str]) -> Result<()> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(Error::io("kernel build log", &self.log))?;
        writeln!(log, "$ {shown}").map_err(Error::io("kernel build log", &self.log))?;

        let (reader, writer) = std::io::pipe().map_err(Error::io("kernel build", self.tree))?;
        let writer2 = writer
            .try_clone()
            .map_err(Error::io("kernel build", self.tree))?;
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        if let Some(bar) = &self.spinner {
            bar.set_message(shown.clone());
        }
        let mut child = cmd.spawn().map_err(|e| Error::Make {
            command: shown.clone(),
            status: format!("could not start: {e}"),
            log: self.log.clone(),
            tail: String::new(),
        })?;
        // The command holds the write ends; dropping ours lets EOF arrive.
        drop(cmd);
        for line in BufReader::new(reader).split(b'\n') {
            let line = line.map_err(Error::io("kernel build", self.tree))?;
            log.write_all(&line)
                .and_then(|()| log.write_all(b"\n"))
                .map_err(Error::io("kernel build log", &self.log))?;
            if let (Some(bar), Some(target)) = (&self.spinner, make_target(&line)) {
                bar.set_message(target);
            }
        }
        let status = child.wait().map_err(Error::io("kernel build", self.tree))?;
        if status.success() {
            return Ok(());
        }
        Err(Error::Make {
            command: shown,
            status: status.to_string(),
            log: self.log.clone(),
            tail: tail(&self.log, 40),
        })
    }
}

/// `args` run chrooted into the sysroot `root`, in `tree` bound at the
/// fixed path [`SYSROOT_TREE`] (so no build path leaks into outputs). The
/// caller adds the environment.
pub fn sysroot_command(root: &Path, tree: &Path, args: &[OsString]) -> Command {
    // unshare(1) gives the mount namespace (and the user namespace that
    // allows it when not root); the tree is bound into the sysroot so paths
    // inside are fixed.
    let mut c = enter_sysroot(root);
    c.arg("sh")
        .arg("-c")
        .arg(concat!(
            "set -e; tree=$1; root=$2; shift 2; ",
            "mkdir -p \"$root/usmol-build\" \"$root/dev\"; ",
            "mount --rbind \"$tree\" \"$root/usmol-build\"; ",
            // Compilers and make write to /dev/null.
            "mount --rbind /dev \"$root/dev\"; ",
            "exec chroot \"$root\" /bin/sh -c 'cd /usmol-build && exec \"$@\"' sh \"$@\""
        ))
        .arg("sh")
        .arg(tree)
        .arg(root)
        .args(args)
        .current_dir(tree)
        // chroot lives in sbin on the host.
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    c
}

/// `unshare` with a private mount namespace, plus a user namespace (mapped
/// to root) when not root, so chroot and bind mounts work unprivileged.
/// The caller appends the command.
pub fn enter_sysroot(root: &Path) -> Command {
    let mut c = Command::new("unshare");
    if !is_root() {
        c.arg("--user").arg("--map-root-user");
    }
    c.arg("--mount").arg("--").current_dir(root);
    c
}

/// `  CC      mm/slub.o` -> `CC mm/slub.o`.
pub fn make_target(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("  ")?;
    let (verb, target) = rest.split_once(' ')?;
    let target = target.trim();
    let is_verb = !verb.is_empty()
        && verb
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (is_verb && !target.is_empty()).then(|| format!("{verb} {target}"))
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_make_progress_lines() {
        assert_eq!(
            make_target(b"  CC      mm/slub.o").as_deref(),
            Some("CC mm/slub.o")
        );
        assert_eq!(
            make_target(b"  LD      vmlinux.o").as_deref(),
            Some("LD vmlinux.o")
        );
        assert_eq!(
            make_target(b"  HOSTCC  scripts/basic/fixdep").as_deref(),
            Some("HOSTCC scripts/basic/fixdep")
        );
        assert_eq!(make_target(b"make[1]: Entering directory"), None);
        assert_eq!(make_target(b"  in file included from x"), None);
        assert_eq!(make_target(b"warning: foo"), None);
    }

    #[test]
    fn failing_command_reports_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Runner {
            toolchain: &Toolchain::Host,
            tree: dir.path(),
            env: vec![("USMOL_T".into(), "from-env".into())],
            log: dir.path().join("build.log"),
            spinner: None,
        };
        runner
            .run(&["sh", "-c", "echo \"$USMOL_T\"; echo '  CC      a.o'"])
            .unwrap();
        let err = runner
            .run(&["sh", "-c", "echo out; echo boom >&2; exit 3"])
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit status: 3") && text.contains("boom"),
            "{text}"
        );
        let log = std::fs::read_to_string(dir.path().join("build.log")).unwrap();
        assert!(log.contains("from-env\n  CC      a.o\n"), "{log}");
        assert!(log.contains("out\nboom\n"), "{log}");
    }
}
