//! The guest userland from the committed lock: byte-identical across
//! builds that differ in TMPDIR, umask and locale, and the docker tools in
//! it run in a chroot.
//!
//! One test in its own binary: it changes the process's umask and
//! environment, which no other test thread may see.

use std::path::Path;
use std::process::Command;

use usmol::MirrorChoice;
use usmol_archive::Cache;
use usmol_tests::{project_root, slow_tests_enabled};

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn rootfs_is_reproducible_and_its_tools_run() {
    if !slow_tests_enabled("rootfs_is_reproducible_and_its_tools_run") {
        return;
    }
    let recipe = project_root().join("recipes/usmol.toml");
    let cache = Cache::new(usmol_archive::cache_dir());
    // The lock is committed: this must not resolve anew.
    let fetched = usmol::fetch(&recipe, &MirrorChoice::default(), false, &cache)
        .expect("fetching the locked packages");
    let epoch = usmol::source_date_epoch(&fetched.lock).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    let mut tarballs = Vec::new();
    for (n, (umask, locale)) in [(0o022, "C"), (0o077, "de_DE.UTF-8")]
        .into_iter()
        .enumerate()
    {
        let tmp = scratch.path().join(format!("tmp{n}"));
        std::fs::create_dir_all(&tmp).unwrap();
        // SAFETY: this test binary runs this one test, on one thread.
        unsafe {
            std::env::set_var("TMPDIR", &tmp);
            std::env::set_var("LC_ALL", locale);
            libc::umask(umask);
        }
        let tree = (n == 0).then(|| scratch.path().join("tree"));
        let outputs = usmol::rootfs(
            &fetched,
            epoch,
            &scratch.path().join(format!("out{n}")),
            tree.as_deref(),
        )
        .unwrap_or_else(|e| panic!("rootfs build {n}: {e:#}"));
        tarballs.push(outputs.tarball);
    }
    unsafe { libc::umask(0o022) };
    let (first, second) = (sha256(&tarballs[0]), sha256(&tarballs[1]));
    assert_eq!(
        first,
        second,
        "the two rootfs tarballs differ: {} vs {}",
        tarballs[0].display(),
        tarballs[1].display()
    );

    // SAFETY: as above.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "rootfs_is_reproducible_and_its_tools_run: chroot part skipped: it needs root (CI runs as root)"
        );
        return;
    }
    let tree = scratch.path().join("tree");
    for tool in [
        ["dockerd", "--version"],
        ["containerd", "--version"],
        ["runc", "--version"],
        ["iptables", "-V"],
    ] {
        let out = Command::new("chroot")
            .arg(&tree)
            .args(tool)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap_or_else(|e| panic!("chroot {} {:?}: {e}", tree.display(), tool));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.trim().is_empty(),
            "chroot {:?}: {}\nstdout: {text}\nstderr: {}",
            tool,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}: {}", tool[0], text.lines().next().unwrap_or_default());
    }
    let legacy = Command::new("chroot")
        .arg(&tree)
        .args(["iptables", "-V"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&legacy.stdout).contains("legacy"),
        "the recipe chooses iptables-legacy"
    );
}
