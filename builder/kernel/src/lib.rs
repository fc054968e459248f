//! The User Mode Linux kernel: source unpacking, patches, config fragments,
//! a reproducible build, and a cache keyed by every input.
//!
//! Stages of a cold [`build`], in order:
//! 1. toolchain preflight (names missing tools and their Debian packages);
//! 2. source sha256 check and in-process unpack (.deb or .tar.xz);
//! 3. `patches/*.patch` applied in name order;
//! 4. `make ARCH=um defconfig`, fragments merged on top, `olddefconfig`,
//!    then every requested option checked (a dropped one fails the build
//!    with its unmet `depends on`);
//! 5. `make ARCH=um linux` with fixed timestamp, user, host and path
//!    mapping, then `strip`;
//! 6. binary, resolved config and build log renamed into
//!    `<cache>/kernel/<key>/` in one step.
//!
//! A warm call hashes the inputs and finds the entry: no make, no unpack.

pub mod cache_key;
pub mod config;
pub mod error;
pub mod patches;
pub mod run;
pub mod source;
pub mod toolchain;

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use crate::cache_key::CacheKey;

pub use error::{Error, Result};
pub use toolchain::Toolchain;

/// Bumped whenever the build steps change in a way that changes output.
const BUILDER_REVISION: u32 = 2;

/// Everything that determines the kernel binary.
#[derive(Debug, Clone)]
pub struct KernelInputs {
    /// Debian's `linux-source-X.Y` .deb, or the `linux-source-X.Y.tar.xz`
    /// inside it.
    pub source: PathBuf,
    /// Expected sha256 of `source` (hex), e.g. from the kernel lock file.
    pub source_sha256: String,
    /// Directory of `*.config` fragments, merged in name order.
    pub fragments_dir: PathBuf,
    /// Directory of `*.patch` files, applied in name order (may be absent).
    pub patches_dir: PathBuf,
    pub toolchain: Toolchain,
    /// Build timestamp; `None` takes the source's top Makefile mtime, so
    /// the same source always gives the same binary.
    pub source_date_epoch: Option<i64>,
}

/// How to run a cold build; none of it changes the output.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Show a spinner with the current make target (only on a terminal).
    pub progress: bool,
    /// `make -j`; default: the available parallelism.
    pub jobs: Option<NonZeroUsize>,
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifact {
    /// Stripped, statically linked `linux` binary.
    pub binary: PathBuf,
    /// The resolved `.config` it was built with.
    pub config: PathBuf,
    /// Full output of every build step.
    pub log: PathBuf,
    pub cache_key: String,
    /// Whether this call found the entry instead of building it.
    pub cached: bool,
}

/// Hex sha256 over the source digest, every fragment and patch (names and
/// bytes), the toolchain identity, the timestamp override and the builder
/// revision.
pub fn cache_key(inputs: &KernelInputs) -> Result<String> {
    let mut key = CacheKey::new(BUILDER_REVISION);
    key.field(
        "source",
        inputs.source_sha256.trim().to_ascii_lowercase().as_bytes(),
    );
    for path in config::fragment_files(&inputs.fragments_dir)? {
        let bytes = std::fs::read(&path).map_err(Error::io("config fragments", &path))?;
        key.field(&format!("fragment {}", file_name(&path)), &bytes);
    }
    for path in patches::patch_files(&inputs.patches_dir)? {
        let bytes = std::fs::read(&path).map_err(Error::io("kernel patches", &path))?;
        key.field(&format!("patch {}", file_name(&path)), &bytes);
    }
    key.field("toolchain", inputs.toolchain.identity().as_bytes());
    key.field(
        "epoch",
        format!("{:?}", inputs.source_date_epoch).as_bytes(),
    );
    Ok(key.finish())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Where the entry for `key` lives.
pub fn entry_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("kernel").join(key)
}

/// Returns the cached kernel for `inputs`, building it first when absent.
pub fn build(inputs: &KernelInputs, cache_dir: &Path, progress: bool) -> Result<KernelArtifact> {
    build_with(
        inputs,
        cache_dir,
        &BuildOptions {
            progress,
            jobs: None,
        },
    )
}

/// [`build`] with explicit options.
pub fn build_with(
    inputs: &KernelInputs,
    cache_dir: &Path,
    options: &BuildOptions,
) -> Result<KernelArtifact> {
    let key = cache_key(inputs)?;
    let entry = entry_dir(cache_dir, &key);
    let artifact = |cached| KernelArtifact {
        binary: entry.join("linux"),
        config: entry.join("linux.config"),
        log: entry.join("build.log"),
        cache_key: key.clone(),
        cached,
    };
    // Entries appear only by rename once complete, so presence is enough.
    if entry.join("linux").is_file() && entry.join("linux.config").is_file() {
        return Ok(artifact(true));
    }

    inputs.toolchain.preflight()?;
    source::verify(&inputs.source, &inputs.source_sha256)?;

    let tmp_root = cache_dir.join("kernel").join("tmp");
    std::fs::create_dir_all(&tmp_root).map_err(Error::io("kernel cache", &tmp_root))?;
    remove_stale(&tmp_root);
    let work = tmp_root.join(format!("{key}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(Error::io("kernel cache", &work))?;
    let _in_use = lock_work_dir(&work)?;
    let staged = work.join("entry");
    std::fs::create_dir_all(&staged).map_err(Error::io("kernel cache", &staged))?;
    let tree = work.join("linux");

    let result = build_in(inputs, options, &work, &tree, &staged);
    // The tree is ~1.5 GB; only the small outputs are worth keeping.
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(work.join("unpack"));
    result?;

    let entry_parent = entry.parent().unwrap_or(cache_dir);
    std::fs::create_dir_all(entry_parent).map_err(Error::io("kernel cache", entry_parent))?;
    match std::fs::rename(&staged, &entry) {
        Ok(()) => {}
        // Another build of the same inputs finished first: use its entry.
        Err(_) if entry.join("linux").is_file() => {}
        Err(e) => return Err(Error::io("kernel cache", &entry)(e)),
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(artifact(false))
}

/// The lock a build holds on its work directory (`<key>.<pid>` under the
/// cache's `kernel/tmp`) for as long as it runs.
const WORK_LOCK: &str = ".lock";

/// Marks `work` as in use until the returned file is dropped, or the
/// process ends however it ends.
fn lock_work_dir(work: &Path) -> Result<std::fs::File> {
    let path = work.join(WORK_LOCK);
    let file = std::fs::File::create(&path).map_err(Error::io("kernel cache", &path))?;
    file.lock().map_err(Error::io("kernel cache", &path))?;
    Ok(file)
}

/// Removes the work directories of earlier builds that are gone: killed or
/// crashed, with these inputs or any others (a kernel tree is ~1.5 GB). A
/// directory whose lock is held belongs to a running build, possibly in
/// another container sharing the cache, and is left alone; one without a
/// lock file is judged by the pid in its name.
fn remove_stale(tmp_root: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp_root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let stale = match std::fs::File::open(dir.join(WORK_LOCK)) {
            Ok(lock) => lock.try_lock().is_ok(),
            Err(_) => {
                let name = e.file_name().to_string_lossy().into_owned();
                name.rsplit_once('.')
                    .is_some_and(|(_, pid)| !Path::new("/proc").join(pid).exists())
            }
        };
        if stale {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn build_in(
    inputs: &KernelInputs,
    options: &BuildOptions,
    work: &Path,
    tree: &Path,
    staged: &Path,
) -> Result<()> {
    let log = staged.join("build.log");
    let note = |msg: &str| -> Result<()> {
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(Error::io("kernel build log", &log))?;
        writeln!(f, "# {msg}").map_err(Error::io("kernel build log", &log))
    };
    let spinner = run::Runner::spinner(options.progress);
    if let Some(bar) = &spinner {
        bar.set_message("unpacking the source");
    }
    note(&format!("unpacking {}", inputs.source.display()))?;
    source::unpack(&inputs.source, &work.join("unpack"), tree)?;
    let version = source::kernel_version(tree)?;
    note(&format!("linux {version}"))?;

    let patch_list = patches::patch_files(&inputs.patches_dir)?;
    for p in &patch_list {
        note(&format!("applying {}", p.display()))?;
    }
    patches::apply(tree, &patch_list)?;

    let epoch = match inputs.source_date_epoch {
        Some(e) => e,
        None => source_epoch(tree)?,
    };
    let runner = run::Runner {
        toolchain: &inputs.toolchain,
        tree,
        env: make_env(epoch, &run::Runner::tree_path_for(&inputs.toolchain, tree)),
        log: log.clone(),
        spinner,
    };

    let requests = config::read_fragments(&inputs.fragments_dir)?;
    runner.run(&["make", "ARCH=um", "defconfig"])?;
    let dot_config = tree.join(".config");
    let base =
        std::fs::read_to_string(&dot_config).map_err(Error::io("kernel config", &dot_config))?;
    std::fs::write(&dot_config, config::merge(&base, &requests))
        .map_err(Error::io("kernel config", &dot_config))?;
    runner.run(&["make", "ARCH=um", "olddefconfig"])?;
    let resolved_text =
        std::fs::read_to_string(&dot_config).map_err(Error::io("kernel config", &dot_config))?;
    let kept_config = staged.join("linux.config");
    std::fs::write(&kept_config, &resolved_text)
        .map_err(Error::io("kernel config", &kept_config))?;
    let resolved = config::parse_config(&resolved_text);
    let mut dropped = config::verify(&resolved, &requests);
    if !dropped.is_empty() {
        config::explain(tree, &resolved, &mut dropped);
        // Keep the evidence outside the tree, which is deleted.
        let keep = work.join("linux.config");
        let _ = std::fs::copy(&kept_config, &keep);
        return Err(Error::ConfigDropped {
            dropped,
            fragments_dir: inputs.fragments_dir.clone(),
            config: keep,
        });
    }

    let jobs = options
        .jobs
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let result = runner
        .run(&["make", "ARCH=um", &format!("-j{jobs}"), "linux"])
        .and_then(|()| runner.run(&["strip", "-o", "linux.stripped", "linux"]));
    if let Some(bar) = &runner.spinner {
        bar.finish_and_clear();
    }
    if let Err(e) = result {
        let _ = std::fs::copy(&log, work.join("build.log"));
        return Err(relocate_log(e, &work.join("build.log")));
    }
    let stripped = tree.join("linux.stripped");
    let binary = staged.join("linux");
    std::fs::rename(&stripped, &binary)
        .or_else(|_| std::fs::copy(&stripped, &binary).map(|_| ()))
        .map_err(Error::io("kernel binary", &binary))?;
    note(&format!("done: linux {version}, epoch {epoch}"))
}

/// Failed builds keep their log in the work dir (the staged entry is never
/// renamed into place): point the error there.
fn relocate_log(e: Error, log: &Path) -> Error {
    match e {
        Error::Make {
            command,
            status,
            tail,
            ..
        } => Error::Make {
            command,
            status,
            log: log.to_path_buf(),
            tail,
        },
        other => other,
    }
}

/// The top Makefile's mtime (the tarball's own timestamp).
fn source_epoch(tree: &Path) -> Result<i64> {
    let makefile = tree.join("Makefile");
    let meta = std::fs::metadata(&makefile).map_err(Error::io("kernel source epoch", &makefile))?;
    use std::os::unix::fs::MetadataExt;
    Ok(meta.mtime())
}

/// Environment that makes the binary a function of the inputs only.
pub fn make_env(epoch: i64, tree_seen: &Path) -> Vec<(String, String)> {
    let stamp = chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .format("%a %b %e %H:%M:%S UTC %Y")
        .to_string();
    vec![
        ("SOURCE_DATE_EPOCH".into(), epoch.to_string()),
        ("KBUILD_BUILD_TIMESTAMP".into(), stamp),
        ("KBUILD_BUILD_USER".into(), "usmol".into()),
        ("KBUILD_BUILD_HOST".into(), "usmol".into()),
        // `#1` in `uname -v`, instead of a per-tree build counter.
        ("KBUILD_BUILD_VERSION".into(), "1".into()),
        // The tree lives under a per-build temp dir; keep it out of the
        // binary, for C and assembler sources alike.
        (
            "KCFLAGS".into(),
            format!("-ffile-prefix-map={}=.", tree_seen.display()),
        ),
        (
            "KAFLAGS".into(),
            format!("-ffile-prefix-map={}=.", tree_seen.display()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_work_dirs_go_and_running_builds_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let d = tmp.path().join(name);
            std::fs::create_dir_all(d.join("linux")).unwrap();
            d
        };
        // A build that is still running, with other inputs.
        let running = dir("aaaa.1");
        let _held = lock_work_dir(&running).unwrap();
        // A build killed with its lock file left behind.
        let killed = dir("bbbb.2");
        drop(lock_work_dir(&killed).unwrap());
        // Left by an older builder without a lock, by a process now gone;
        // and one whose pid (this process) still lives.
        let old_gone = dir(&format!("cccc.{}", u32::MAX));
        let old_alive = dir(&format!("dddd.{}", std::process::id()));
        remove_stale(tmp.path());
        assert!(running.join("linux").is_dir());
        assert!(!killed.exists());
        assert!(!old_gone.exists());
        assert!(old_alive.join("linux").is_dir());
    }

    fn inputs(dir: &Path) -> KernelInputs {
        let frags = dir.join("kernel");
        let patches = dir.join("patches");
        std::fs::create_dir_all(&frags).unwrap();
        std::fs::create_dir_all(&patches).unwrap();
        std::fs::write(frags.join("10-a.config"), "CONFIG_A=y\n").unwrap();
        std::fs::write(patches.join("0001-x.patch"), "--- a/x\n+++ b/x\n").unwrap();
        KernelInputs {
            source: dir.join("linux-source.deb"),
            source_sha256: "ab".repeat(32),
            fragments_dir: frags,
            patches_dir: patches,
            toolchain: Toolchain::Host,
            source_date_epoch: None,
        }
    }

    #[test]
    fn key_covers_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let base = inputs(dir.path());
        let k0 = cache_key(&base).unwrap();
        assert_eq!(k0, cache_key(&base).unwrap());
        assert_eq!(k0.len(), 64);

        let mut other = base.clone();
        other.source_sha256 = "cd".repeat(32);
        assert_ne!(k0, cache_key(&other).unwrap());

        let mut other = base.clone();
        other.source_date_epoch = Some(1);
        assert_ne!(k0, cache_key(&other).unwrap());

        std::fs::write(base.fragments_dir.join("10-a.config"), "CONFIG_A=n\n").unwrap();
        let k1 = cache_key(&base).unwrap();
        assert_ne!(k0, k1);
        // Renaming a fragment changes the merge order, hence the key.
        std::fs::rename(
            base.fragments_dir.join("10-a.config"),
            base.fragments_dir.join("20-a.config"),
        )
        .unwrap();
        let k2 = cache_key(&base).unwrap();
        assert_ne!(k1, k2);
        std::fs::write(base.patches_dir.join("0002-y.patch"), "").unwrap();
        assert_ne!(k2, cache_key(&base).unwrap());
    }

    #[test]
    fn warm_entry_is_returned_without_building() {
        let dir = tempfile::tempdir().unwrap();
        let inp = inputs(dir.path());
        let cache = dir.path().join("cache");
        let key = cache_key(&inp).unwrap();
        let entry = entry_dir(&cache, &key);
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("linux"), "bin").unwrap();
        std::fs::write(entry.join("linux.config"), "CONFIG_A=y\n").unwrap();
        let start = std::time::Instant::now();
        // The source file does not exist: a cold build would fail.
        let art = build(&inp, &cache, false).unwrap();
        assert!(art.cached);
        assert_eq!(art.binary, entry.join("linux"));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn cold_build_checks_the_source_digest_first() {
        let dir = tempfile::tempdir().unwrap();
        let inp = inputs(dir.path());
        std::fs::write(&inp.source, "not the source").unwrap();
        let err = build(&inp, &dir.path().join("cache"), false).unwrap_err();
        // Either the toolchain is incomplete here or the digest is wrong;
        // both must stop the build before anything is unpacked.
        assert!(
            matches!(err, Error::SourceDigest { .. } | Error::Toolchain { .. }),
            "{err}"
        );
        assert!(
            !dir.path()
                .join("cache/kernel")
                .join(cache_key(&inp).unwrap())
                .exists()
        );
    }

    #[test]
    fn env_is_fixed() {
        let env = make_env(1_700_000_000, Path::new("/c/kernel/tmp/k.1/linux"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("KBUILD_BUILD_TIMESTAMP"),
            Some("Tue Nov 14 22:13:20 UTC 2023")
        );
        assert_eq!(get("KBUILD_BUILD_USER"), Some("usmol"));
        assert_eq!(get("KAFLAGS"), get("KCFLAGS"));
        assert_eq!(
            get("KCFLAGS"),
            Some("-ffile-prefix-map=/c/kernel/tmp/k.1/linux=.")
        );
    }
}
