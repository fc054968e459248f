//! Golden tests under Apptainer: the OCI layout becomes a SIF with
//! `apptainer build`, and `apptainer run` starts usmol from it with
//! apptainer's defaults (read-only image root, user namespace, home and
//! /tmp bound from the host), as an unprivileged user.
//!
//! Apptainer is not installed on the host. `recipes/apptainer.toml` (Debian
//! unstable) is assembled by our own builder into a tree cached under the
//! usmol cache, keyed by the recipe and its lock, and the tests enter it in
//! a private mount namespace with `pivot_root` (not `chroot`: the kernel
//! refuses a user namespace to a chrooted process, and apptainer needs
//! one). As root the test switches to uid 1000 after the mounts; as any
//! other user it makes a user namespace of its own that maps its uid to
//! 1000, so it runs without root wherever unprivileged user namespaces are
//! allowed (apptainer needs them anyway). Slow: they run only with
//! USMOL_SLOW_TESTS=1.

mod common;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Outcome, hello_image, hello_text, run, secs};
use usmol::MirrorChoice;
use usmol_archive::Cache;

/// The user apptainer runs as; `recipes/apptainer.toml` gives it an entry
/// in /etc/passwd with home /home/tester.
const TESTER: u32 = 1000;
const SIF_BUILD: Duration = Duration::from_secs(900);
const PLAIN_BOOT: Duration = Duration::from_secs(180);
const DOCKER_BOOT: Duration = Duration::from_secs(300);

/// The apptainer tree: built once per recipe and lock, then reused.
fn apptainer_tree() -> PathBuf {
    let root = usmol_tests::project_root();
    let recipe = root.join("recipes/apptainer.toml");
    let lock = root.join("recipes/apptainer.lock");
    let mut inputs = Vec::new();
    for file in [&recipe, &lock] {
        let bytes = std::fs::read(file).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (run `usmol lock --recipe recipes/apptainer.toml`)",
                file.display()
            )
        });
        inputs.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        inputs.extend_from_slice(&bytes);
    }
    let key = usmol_archive::sha256_hex(&inputs);
    let cache_dir = usmol_archive::cache_dir();
    let entry = cache_dir.join("apptainer").join(&key[..32]);
    let tree = entry.join("root");
    if tree.join("usr/bin/apptainer").is_file() {
        return tree;
    }
    let start = Instant::now();
    let staging = cache_dir
        .join("apptainer")
        .join(format!("tmp-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).unwrap();
    }
    std::fs::create_dir_all(&staging)
        .unwrap_or_else(|e| panic!("create {}: {e}", staging.display()));
    let cache = Cache::new(&cache_dir).with_progress(false);
    let fetched =
        usmol::fetch(&recipe, &MirrorChoice::default(), false, &cache).unwrap_or_else(|e| {
            panic!(
                "fetch the packages of {}: {e:#}\n(unstable moves on: when the mirror no longer \
                 has a pinned version, refresh the lock with \
                 `usmol lock --recipe recipes/apptainer.toml`)",
                lock.display()
            )
        });
    let epoch = usmol::source_date_epoch(&fetched.lock).unwrap();
    let outputs = usmol::rootfs(
        &fetched,
        epoch,
        &staging.join("out"),
        Some(&staging.join("root")),
    )
    .unwrap_or_else(|e| {
        panic!(
            "assemble the apptainer tree in {}: {e:#}",
            staging.display()
        )
    });
    // Only the tree is used.
    std::fs::remove_dir_all(outputs.tarball.parent().unwrap()).unwrap();
    // A tree that another test process finished first is as good as ours.
    if let Err(e) = std::fs::rename(&staging, &entry) {
        assert!(
            tree.join("usr/bin/apptainer").is_file(),
            "move {} to {}: {e}",
            staging.display(),
            entry.display()
        );
        std::fs::remove_dir_all(&staging).unwrap();
    }
    eprintln!(
        "assembled the apptainer tree {} in {}",
        tree.display(),
        secs(start.elapsed())
    );
    tree
}

/// A scratch directory that becomes /tmp (with the out directory bound
/// read-only at /tmp/out) and /home inside the apptainer tree.
struct Host {
    tree: PathBuf,
    scratch: tempfile::TempDir,
    out: PathBuf,
    /// Running as root: switch to the tester after the mounts. Otherwise
    /// a user namespace maps the caller to the tester.
    root: bool,
}

/// Why unprivileged user namespaces are off here, if they are.
fn userns_refused() -> Option<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|v| v.trim().to_owned())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0".into());
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some("kernel.apparmor_restrict_unprivileged_userns is 1".into());
    }
    None
}

impl Host {
    /// None, after saying why, when the namespace cannot be made here.
    fn new(test: &str) -> Option<Host> {
        if !usmol_tests::slow_tests_enabled(test) {
            return None;
        }
        // Apptainer runs unprivileged only in a user namespace: without
        // them it cannot run at all, as the tester or anyone else.
        if let Some(why) = userns_refused() {
            eprintln!(
                "{test}: skipped: NOT RUN: {why}, so unprivileged apptainer cannot run on this host"
            );
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let out = usmol_tests::usmol_out();
        let tree = apptainer_tree();
        let scratch = tempfile::Builder::new()
            .prefix("usmol-apptainer-")
            .tempdir()
            .expect("create a temporary directory");
        let tmp = scratch.path().join("tmp");
        let home = scratch.path().join("home/tester");
        for dir in [tmp.join("out"), tmp.join("work"), home.clone()] {
            std::fs::create_dir_all(&dir).unwrap();
        }
        set_mode(&tmp, 0o1777);
        // Without root the caller's own files are the tester's already.
        if root {
            for dir in [tmp.join("work"), home] {
                std::os::unix::fs::chown(&dir, Some(TESTER), Some(TESTER)).unwrap();
            }
        }
        Some(Host {
            tree,
            scratch,
            out,
            root,
        })
    }

    /// The host side of the tree's /tmp/work.
    fn work(&self) -> PathBuf {
        self.scratch.path().join("tmp/work")
    }

    /// `apptainer ARGS` as the tester inside the tree, with a clean
    /// environment plus `env`.
    fn apptainer(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("/usr/bin/apptainer");
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", "/home/tester")
            .env("USER", "tester")
            .env("LANG", "C.UTF-8")
            .envs(env.iter().copied());
        let enter = Enter::new(&self.tree, self.scratch.path(), &self.out, self.root);
        // SAFETY: the closure makes only async-signal-safe system calls on
        // memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || enter.run());
        }
        cmd
    }

    /// `apptainer build` of the image in the OCI layout into
    /// /tmp/work/usmol.sif. Apptainer 1.4 reads a layout by digest only
    /// (a tag is taken for part of the path), so the test names the digest
    /// of the `latest` entry.
    fn build_sif(&self) -> Outcome {
        let (descriptor, _) =
            usmol_oci::image::read_layout_manifest(&self.out.join("usmol-oci"), Some("latest"))
                .unwrap_or_else(|e| panic!("read {}/usmol-oci: {e}", self.out.display()));
        let source = format!("oci:/tmp/out/usmol-oci@{}", descriptor.digest);
        let out = run(
            &mut self.apptainer(&["build", "/tmp/work/usmol.sif", &source], &[]),
            b"",
            SIF_BUILD,
        );
        out.expect_code(0);
        assert!(
            self.work().join("usmol.sif").is_file(),
            "apptainer build wrote no SIF\n{out}"
        );
        out
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {} {mode:o}: {e}", path.display()));
}

/// The mounts that turn the cached tree into the root of a private mount
/// namespace, prepared before the fork.
struct Enter {
    tree: CString,
    proc_: CString,
    sys: CString,
    dev: CString,
    tmp: CString,
    home: CString,
    tree_tmp: CString,
    tree_home: CString,
    out: CString,
    tree_out: CString,
    /// None as root; else the uid_map and gid_map lines of the caller's
    /// user namespace.
    maps: Option<(String, String)>,
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

impl Enter {
    fn new(tree: &Path, scratch: &Path, out: &Path, root: bool) -> Enter {
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Enter {
            tree: cstring(tree),
            proc_: cstring(&tree.join("proc")),
            sys: cstring(&tree.join("sys")),
            dev: cstring(&tree.join("dev")),
            tmp: cstring(&scratch.join("tmp")),
            home: cstring(&scratch.join("home")),
            tree_tmp: cstring(&tree.join("tmp")),
            tree_home: cstring(&tree.join("home")),
            out: cstring(out),
            tree_out: cstring(&tree.join("tmp/out")),
            maps: (!root).then(|| (format!("{TESTER} {uid} 1"), format!("{TESTER} {gid} 1"))),
        }
    }

    /// In the child: a private mount namespace whose root is the tree,
    /// with /proc, /sys, /dev, the scratch /tmp and /home, then the
    /// tester's ids (as root by setuid, else by a user namespace's map).
    fn run(&self) -> std::io::Result<()> {
        use libc::{MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT};
        match &self.maps {
            None => {
                // SAFETY: a plain system call.
                check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            }
            Some((uid_map, gid_map)) => {
                // SAFETY: a plain system call.
                check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
                // The capabilities of the new namespace last until exec.
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
            }
        }
        let root = self.maps.is_none();
        mount(None, c"/", None, MS_REC | MS_PRIVATE)?;
        mount(Some(&self.tree), &self.tree, None, MS_BIND | MS_REC)?;
        if root {
            mount(Some(c"proc"), &self.proc_, Some(c"proc"), 0)?;
        } else {
            // A new proc needs a pid namespace of our own; the host's does.
            mount(Some(c"/proc"), &self.proc_, None, MS_BIND | MS_REC)?;
        }
        mount(Some(c"/sys"), &self.sys, None, MS_BIND | MS_REC)?;
        mount(Some(c"/dev"), &self.dev, None, MS_BIND | MS_REC)?;
        mount(Some(&self.tmp), &self.tree_tmp, None, MS_BIND)?;
        mount(Some(&self.home), &self.tree_home, None, MS_BIND)?;
        mount(Some(&self.out), &self.tree_out, None, MS_BIND)?;
        // In a user namespace a remount must repeat the flags the host
        // mount has locked; the read-only views are for the root case.
        if root {
            mount(None, &self.tree_out, None, MS_BIND | MS_REMOUNT | MS_RDONLY)?;
            mount(None, &self.tree, None, MS_BIND | MS_REMOUNT | MS_RDONLY)?;
        }
        // SAFETY: plain system calls on valid NUL-terminated strings.
        unsafe {
            check(libc::chdir(self.tree.as_ptr()))?;
            // pivot_root(".", "."): the old root ends up stacked on the new
            // one and is detached at once.
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            )?;
            check(libc::umount2(c".".as_ptr(), MNT_DETACH))?;
            check(libc::chdir(c"/tmp/work".as_ptr()))?;
            if root {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(TESTER))?;
                check(libc::setuid(TESTER))?;
            }
        }
        Ok(())
    }
}

/// Writes `data` to a /proc file with plain system calls (no allocation:
/// this runs between fork and exec).
fn write_proc(path: &CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid path; `data` outlives the write.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if written != data.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// mount(2) with optional source and filesystem type, no data.
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is a NUL-terminated string or null.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    })
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One SIF, then what a user does with it: a plain command that reads a
/// file through apptainer's /tmp bind, an exit status, and the nested
/// hello-world with the inner image cache on a state directory bound at
/// /var/lib/usmol (seeded with `docker load`: no registry is reachable).
#[test]
fn sif_from_the_oci_layout_runs_under_apptainer_defaults() {
    let test = "sif_from_the_oci_layout_runs_under_apptainer_defaults";
    let Some(host) = Host::new(test) else {
        return;
    };
    let version = run(&mut host.apptainer(&["version"], &[]), b"", PLAIN_BOOT);
    version.expect_code(0);
    let build = host.build_sif();
    eprintln!(
        "apptainer {}: SIF built in {}",
        version.stdout_text().trim(),
        secs(build.elapsed)
    );
    let sif = "/tmp/work/usmol.sif";
    let no_docker = [("USMOL_DOCKER", "0")];

    std::fs::write(host.work().join("from-host.txt"), "written on the host\n").unwrap();
    let out = run(
        &mut host.apptainer(
            &[
                "run",
                sif,
                "sh",
                "-c",
                "echo guest says hi; cat from-host.txt; pwd",
            ],
            &no_docker,
        ),
        b"",
        PLAIN_BOOT,
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        "guest says hi\nwritten on the host\n/tmp/work\n",
        "the guest did not see the working directory through apptainer's /tmp\n{out}"
    );

    // `exec` of the launcher itself, and the command's status through both.
    run(
        &mut host.apptainer(
            &["exec", sif, "/usmol/run", "sh", "-c", "exit 42"],
            &no_docker,
        ),
        b"",
        PLAIN_BOOT,
    )
    .expect_code(42);

    let state = host.work().join("state");
    std::fs::create_dir(&state).unwrap();
    if host.root {
        std::os::unix::fs::chown(&state, Some(TESTER), Some(TESTER)).unwrap();
    }
    let bind = "/tmp/work/state:/var/lib/usmol";
    let scratch = tempfile::tempdir().unwrap();
    let hello = std::fs::read(hello_image(scratch.path())).unwrap();
    run(
        &mut host.apptainer(&["run", "--bind", bind, sif, "docker", "load"], &[]),
        &hello,
        DOCKER_BOOT,
    )
    .expect_code(0)
    .expect_stdout_contains("hello-world:latest");
    assert!(
        state.join("docker.ext4").is_file(),
        "no docker.ext4 in the state directory {}",
        state.display()
    );
    let out = run(
        &mut host.apptainer(
            &[
                "run",
                "--bind",
                bind,
                sif,
                "docker",
                "run",
                "--rm",
                "hello-world",
            ],
            &[],
        ),
        b"",
        DOCKER_BOOT,
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        hello_text(),
        "stdout carries more than the hello output\n{out}"
    );
}
