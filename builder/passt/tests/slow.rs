//! Slow tests: passt built for real from the source `recipes/passt.lock`
//! pins (from the download cache) in the sysroot `recipes/toolchain.lock`
//! pins (from the cache), twice, into fresh caches. They run only with
//! USMOL_SLOW_TESTS=1, after `cargo xtask build-image` (or `usmol passt`)
//! has filled the caches.

use std::path::{Path, PathBuf};
use std::process::Command;

use usmol_passt::{PasstInputs, SourceFile};

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

fn inputs() -> PasstInputs {
    let cache = usmol_archive::Cache::new(usmol_archive::cache_dir());
    let lock_path = repo().join("recipes/passt.lock");
    let lock = usmol_recipe::SourceLock::load(&lock_path).unwrap_or_else(|e| panic!("{e}"));
    let file = |suffix: &str| {
        let f = lock
            .source
            .files
            .iter()
            .find(|f| f.name.ends_with(suffix))
            .unwrap_or_else(|| panic!("{} pins no *{suffix}", lock_path.display()));
        let path = cache
            .lookup(&f.sha256, f.size)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| {
                panic!(
                    "{} is not in the download cache: run `cargo xtask build-image` first",
                    f.name
                )
            });
        SourceFile {
            path,
            sha256: f.sha256.clone(),
        }
    };
    let toolchain = usmol_recipe::Lock::load(&repo().join("recipes/toolchain.lock"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sysroot = usmol_kernel::toolchain::sysroot_entry(
        cache.root(),
        toolchain.packages.iter().map(|p| p.sha256.as_str()),
    )
    .join("root");
    assert!(
        sysroot.join("usr/bin").is_dir(),
        "no toolchain sysroot at {}: run `cargo xtask build-image` first",
        sysroot.display()
    );
    PasstInputs {
        orig: file(".orig.tar.xz"),
        debian: file(".debian.tar.xz"),
        version: lock.source.version.clone(),
        patches_dir: repo().join("patches/passt"),
        sysroot,
        source_date_epoch: None,
    }
}

/// `passt --version` on a pseudo-terminal: passt writes the version with
/// stdio and leaves with `_exit`, so on a pipe the buffered text is lost.
fn version_output(binary: &Path) -> String {
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{} --version", binary.display()),
            "/dev/null",
        ])
        .output()
        .expect("run script(1) from util-linux/bsdutils");
    assert!(
        out.status.success(),
        "{} --version: {out:?}",
        binary.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn builds_static_runs_and_is_reproducible() {
    if !slow() {
        return;
    }
    let inputs = inputs();
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let a = usmol_passt::build(&inputs, one.path()).unwrap_or_else(|e| panic!("{e}"));
    println!("cold passt build: {:?}", start.elapsed());
    assert!(!a.cached);
    let b = usmol_passt::build(&inputs, two.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.cache_key, b.cache_key);

    for (x, y) in [(&a.passt, &b.passt), (&a.passt_avx2, &b.passt_avx2)] {
        usmol_passt::check_static(x).unwrap_or_else(|e| panic!("{e}"));
        let (bx, by) = (std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        assert!(
            bx == by,
            "{} and {} differ: the build is not reproducible",
            x.display(),
            y.display()
        );
        println!("{}: {} bytes", x.display(), bx.len());
    }
    let copyright = std::fs::read_to_string(&a.copyright).unwrap();
    // Debian spells GPL-2.0-or-later `GPL-2+`.
    assert!(copyright.contains("License: GPL-2+"), "{copyright}");

    // The binary execs `<its path>.avx2` when the CPU has AVX2; both print
    // the patched version.
    let expected = format!("passt {}", usmol_passt::version_string(&inputs.version));
    for binary in [&a.passt, &a.passt_avx2] {
        let text = version_output(binary);
        assert!(text.contains(&expected), "{}: {text}", binary.display());
    }

    // A warm call finds the entry.
    let again = usmol_passt::build(&inputs, one.path()).unwrap();
    assert!(again.cached);
    assert_eq!(again.passt, a.passt);
}
