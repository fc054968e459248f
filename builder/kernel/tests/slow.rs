//! Slow tests: a real kernel build (cached under the user's cache dir),
//! booting it, the memfd guest RAM fallback, and build reproducibility.
//! They run only with USMOL_SLOW_TESTS=1. The source is USMOL_KERNEL_SOURCE
//! (the linux-source .deb or tarball; its sha256 is computed here), else
//! the package `recipes/kernel.lock` pins, from the download cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use usmol_kernel::{KernelArtifact, KernelInputs, Toolchain};

fn slow() -> bool {
    if std::env::var("USMOL_SLOW_TESTS").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: set USMOL_SLOW_TESTS=1");
    false
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn inputs() -> KernelInputs {
    let (source, source_sha256) = match std::env::var_os("USMOL_KERNEL_SOURCE") {
        Some(path) => {
            let source = PathBuf::from(path);
            let sha = usmol_kernel::source::sha256_file(&source).expect("hash the kernel source");
            (source, sha)
        }
        None => locked_source(),
    };
    KernelInputs {
        source,
        source_sha256,
        fragments_dir: repo().join("kernel"),
        patches_dir: repo().join("patches"),
        toolchain: toolchain(),
        source_date_epoch: None,
    }
}

/// The sysroot `cargo xtask build-image` assembled from
/// `recipes/toolchain.lock` (the default toolchain), else the host's tools.
fn toolchain() -> Toolchain {
    let lock = usmol_recipe::Lock::load(&repo().join("recipes/toolchain.lock"))
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = usmol_kernel::toolchain::sysroot_entry(
        &user_cache(),
        lock.packages.iter().map(|p| p.sha256.as_str()),
    );
    let root = entry.join("root");
    if root.join("usr/bin").is_dir() {
        Toolchain::Sysroot(root)
    } else {
        println!(
            "no toolchain sysroot at {}: building with the host's tools",
            root.display()
        );
        Toolchain::Host
    }
}

/// The linux-source package `recipes/kernel.lock` pins, as the build
/// fetched it into the download cache.
fn locked_source() -> (PathBuf, String) {
    let lock_path = repo().join("recipes/kernel.lock");
    let lock = usmol_recipe::Lock::load(&lock_path).unwrap_or_else(|e| panic!("{e}"));
    let package = lock
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-source"))
        .unwrap_or_else(|| panic!("{} pins no linux-source package", lock_path.display()));
    let cache = usmol_archive::Cache::new(user_cache());
    let path = cache
        .lookup(&package.sha256, package.size)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| {
            panic!(
                "{} {} is not in the download cache: run `cargo xtask build-image` first, or set USMOL_KERNEL_SOURCE",
                package.name, package.version
            )
        });
    (path, package.sha256.clone())
}

fn user_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("USMOL_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&d).join("usmol");
    }
    Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/usmol")
}

/// One build per test process, shared by every test (tests run in threads).
fn kernel() -> &'static KernelArtifact {
    static KERNEL: OnceLock<KernelArtifact> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let start = Instant::now();
        let art =
            usmol_kernel::build(&inputs(), &user_cache(), true).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "kernel {} ({}) in {:.1?}, {} bytes",
            art.binary.display(),
            if art.cached { "cached" } else { "built" },
            start.elapsed(),
            std::fs::metadata(&art.binary).unwrap().len()
        );
        art
    })
}

/// A root disk holding only the test init (a static C program).
fn root_image(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(root.join("init"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boot/init.c"))
        .status()
        .expect("run gcc");
    assert!(
        status.success(),
        "gcc -static failed (libc6-dev installed?)"
    );
    let img = dir.join("root.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 -d failed");
    img
}

struct Boot {
    output: String,
    elapsed: Duration,
    success: bool,
}

/// Boots `linux` with `extra` arguments; `wrap` prefixes the command
/// (e.g. unshare). Kills it after 60 s.
fn boot(dir: &Path, wrap: &[&str], tmpdir: Option<&Path>, extra: &[&str]) -> Boot {
    let img = root_image(dir);
    let uml_dir = dir.join("uml");
    std::fs::create_dir_all(&uml_dir).unwrap();
    let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
    args.push(kernel().binary.display().to_string());
    args.extend([
        "mem=64M".to_string(),
        format!("ubd0={}", img.display()),
        "root=/dev/ubda".into(),
        "rw".into(),
        "init=/init".into(),
        format!("uml_dir={}", uml_dir.display()),
        "con=null".into(),
        "con0=null,fd:1".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("TMPDIR")
        .env_remove("TMP")
        .env_remove("TEMP");
    if let Some(t) = tmpdir {
        cmd.env("TMPDIR", t);
    }
    let start = Instant::now();
    let child = cmd.spawn().expect("start linux");
    let pid = child.id();
    // A watchdog so a hung guest fails the test instead of blocking it.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().expect("wait for linux");
    let elapsed = start.elapsed();
    let _ = tx.send(());
    let _ = watchdog.join();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- boot {args:?} ({elapsed:.2?}) ---\n{output}");
    Boot {
        output,
        elapsed,
        success: out.status.success(),
    }
}

fn release() -> String {
    let config = std::fs::read_to_string(&kernel().config).unwrap();
    // "# Linux/um 7.3.4 Kernel Configuration"
    config
        .lines()
        .find_map(|l| {
            l.strip_prefix("# Linux/um ")?
                .strip_suffix(" Kernel Configuration")
        })
        .expect("release in .config header")
        .to_string()
}

fn assert_booted(b: &Boot) {
    let want = format!("usmol-boot-test release={}", release());
    assert!(b.output.contains(&want), "no `{want}` in the output");
    assert!(
        b.output.contains("usmol-boot-test uptime="),
        "init did not finish"
    );
    assert!(b.success, "linux exited unsuccessfully");
}

#[test]
fn boots_and_powers_off() {
    if !slow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let b = boot(dir.path(), &[], Some(&tmp), &[]);
    assert_booted(&b);
    assert!(b.output.contains(&format!(
        "Checking PROT_EXEC mmap in {}...OK",
        tmp.display()
    )));
    println!("FIGURE boot ptrace, RAM in TMPDIR file: {:.3?}", b.elapsed);
}

#[test]
fn boots_in_seccomp_mode() {
    if !slow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let b = boot(dir.path(), &[], Some(&tmp), &["seccomp=on"]);
    assert_booted(&b);
    // Printed only when the seccomp mode is chosen (ptrace mode checks
    // ptrace instead).
    assert!(
        b.output
            .contains("Checking that seccomp filters can be installed...OK"),
        "seccomp mode was not used"
    );
    println!("FIGURE boot seccomp=on: {:.3?}", b.elapsed);
}

#[test]
fn memfd_when_tempdir_is_missing() {
    if !slow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = boot(
        dir.path(),
        &[],
        Some(&dir.path().join("does-not-exist")),
        &[],
    );
    assert_booted(&b);
    assert!(
        b.output
            .contains("No usable tempdir, using memfd for memory")
    );
    assert!(b.output.contains("Checking PROT_EXEC mmap of a memfd...OK"));
    println!(
        "FIGURE boot with RAM in a memfd (no tempdir): {:.3?}",
        b.elapsed
    );
}

/// Docker's /dev/shm: noexec and 64 MiB, no TMPDIR. Made here with a
/// private mount namespace (and a user namespace when not root).
#[test]
fn memfd_when_dev_shm_is_noexec() {
    if !slow() {
        return;
    }
    let userns_ok = Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !userns_ok {
        println!("skipped: `unshare -rm` is not permitted here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wrap = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        "mount -t tmpfs -o noexec,nosuid,nodev,size=64m shm /dev/shm && exec \"$@\"",
        "sh",
    ];
    let b = boot(dir.path(), &wrap, None, &["mem=256M"]);
    assert_booted(&b);
    assert!(
        b.output
            .contains("is mounted noexec, using memfd for memory")
    );
    println!(
        "FIGURE boot with RAM in a memfd (noexec /dev/shm): {:.3?}",
        b.elapsed
    );
}

/// A fresh build in another directory gives the cached binary's bytes.
#[test]
fn build_is_reproducible() {
    if !slow() {
        return;
    }
    let cached = kernel();
    let fresh_cache = tempfile::Builder::new()
        .prefix("usmol-kernel-repro")
        .tempdir_in(user_cache())
        .unwrap();
    let start = Instant::now();
    let fresh =
        usmol_kernel::build(&inputs(), fresh_cache.path(), true).unwrap_or_else(|e| panic!("{e}"));
    assert!(!fresh.cached);
    println!("FIGURE cold kernel build: {:.1?}", start.elapsed());
    let a = usmol_kernel::source::sha256_file(&cached.binary).unwrap();
    let b = usmol_kernel::source::sha256_file(&fresh.binary).unwrap();
    println!("FIGURE stripped binary sha256 {a} (cached) {b} (fresh)");
    if a != b {
        // Keep both for diffoscope: the fresh cache is a temp dir.
        let keep = user_cache().join("kernel-repro-mismatch");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&fresh.binary, keep.join("linux.fresh")).unwrap();
        std::fs::copy(&cached.binary, keep.join("linux.cached")).unwrap();
        panic!(
            "two builds of the same inputs differ; both kept in {}",
            keep.display()
        );
    }
    assert_eq!(
        std::fs::read(&cached.config).unwrap(),
        std::fs::read(&fresh.config).unwrap()
    );
}
