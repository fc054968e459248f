//! passt, the user-mode network stack the launcher attaches to the guest
//! as a vhost-user virtio-net device, built from Debian's source package.
//!
//! Debian's `passt` binary cannot ship: it is dynamically linked (the
//! outer container is `FROM scratch`, without libc), and it dies under
//! docker's default seccomp profile, which refuses `unshare()`. So the
//! source package is built here with `patches/passt/*.patch` (run without
//! namespaces where they are refused), statically linked.
//!
//! Stages of a cold [`build`], in order:
//! 1. sysroot preflight (gcc, make, strip, libc.a... inside the toolchain
//!    sysroot the kernel also uses);
//! 2. sha256 check of the `.orig.tar.xz` and `.debian.tar.xz`, unpack;
//! 3. `debian/patches/series`, then ours in name order, `patch -p1`;
//! 4. [`BUILD_SCRIPT`] chrooted into the sysroot at a fixed path, with
//!    SOURCE_DATE_EPOCH, `LC_ALL=C`, `TZ=UTC` and nothing else from the
//!    caller's environment: `passt` and `passt.avx2` (passt re-executes
//!    `<its path>.avx2` on AVX2 CPUs), static and stripped;
//! 5. both binaries checked to be static, then renamed with
//!    `debian/copyright` and the build log into `<cache>/passt/<key>/`.
//!
//! A warm call hashes the inputs and finds the entry.

pub mod error;
pub mod source;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use usmol_kernel::cache_key::CacheKey;

pub use error::{Error, Result};

/// Bumped whenever the build steps change in a way that changes output.
const BUILDER_REVISION: u32 = 1;

/// What runs in the source tree inside the sysroot. `make static` would
/// also rebuild qrap, passt-repair and the docs; these two targets with
/// its flags (`-static -DGLIBC_NO_STATIC_NSS`) are what ships.
pub const BUILD_SCRIPT: &str = "set -e
make VERSION=\"$PASST_VERSION\" \
 CFLAGS=\"-static -DGLIBC_NO_STATIC_NSS -ffile-prefix-map=/usmol-build=.\" \
 passt passt.avx2
mkdir -p usmol-out
strip -o usmol-out/passt passt
strip -o usmol-out/passt.avx2 passt.avx2
";

/// A downloaded file and the sha256 it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// Everything that determines the passt binaries.
#[derive(Debug, Clone)]
pub struct PasstInputs {
    /// The upstream tarball, `passt_<upstream>.orig.tar.xz`.
    pub orig: SourceFile,
    /// Debian's packaging, `passt_<version>.debian.tar.xz`.
    pub debian: SourceFile,
    /// The Debian version; `passt --version` prints it with `+usmol`.
    pub version: String,
    /// Our `*.patch` files, applied after Debian's in name order.
    pub patches_dir: PathBuf,
    /// The toolchain sysroot (`<cache>/toolchain/<id>/root`).
    pub sysroot: PathBuf,
    /// Build timestamp; `None` takes the upstream Makefile's mtime.
    pub source_date_epoch: Option<i64>,
}

/// Built passt in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstArtifact {
    pub passt: PathBuf,
    pub passt_avx2: PathBuf,
    /// `debian/copyright`: passt is GPL-2.0-or-later.
    pub copyright: PathBuf,
    pub log: PathBuf,
    pub cache_key: String,
    /// Whether this call found the entry instead of building it.
    pub cached: bool,
}

/// The version string compiled in.
pub fn version_string(debian_version: &str) -> String {
    format!("{debian_version}+usmol")
}

/// Hex sha256 over both source digests, the version, every patch (name and
/// bytes), the build script, the sysroot's identity (its path is keyed by
/// its packages; compiler and linker versions), the timestamp override and
/// the builder revision.
pub fn cache_key(inputs: &PasstInputs) -> Result<String> {
    let toolchain = usmol_kernel::Toolchain::Sysroot(inputs.sysroot.clone());
    cache_key_with(inputs, &toolchain.identity())
}

fn cache_key_with(inputs: &PasstInputs, toolchain_identity: &str) -> Result<String> {
    let mut key = CacheKey::new(BUILDER_REVISION);
    key.field(
        "orig",
        inputs.orig.sha256.trim().to_ascii_lowercase().as_bytes(),
    );
    key.field(
        "debian",
        inputs.debian.sha256.trim().to_ascii_lowercase().as_bytes(),
    );
    key.field("version", inputs.version.as_bytes());
    for path in source::patch_files(&inputs.patches_dir)? {
        let bytes = std::fs::read(&path).map_err(Error::io("reading patches", &path))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        key.field(&format!("patch {name}"), &bytes);
    }
    key.field("script", BUILD_SCRIPT.as_bytes());
    key.field("toolchain", toolchain_identity.as_bytes());
    key.field(
        "epoch",
        format!("{:?}", inputs.source_date_epoch).as_bytes(),
    );
    Ok(key.finish())
}

/// Where the entry for `key` lives.
pub fn entry_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("passt").join(key)
}

const OUTPUTS: [&str; 3] = ["passt", "passt.avx2", "passt.copyright"];

/// Returns the cached passt for `inputs`, building it first when absent.
pub fn build(inputs: &PasstInputs, cache_dir: &Path) -> Result<PasstArtifact> {
    let key = cache_key(inputs)?;
    let entry = entry_dir(cache_dir, &key);
    let artifact = |cached| PasstArtifact {
        passt: entry.join("passt"),
        passt_avx2: entry.join("passt.avx2"),
        copyright: entry.join("passt.copyright"),
        log: entry.join("build.log"),
        cache_key: key.clone(),
        cached,
    };
    // Entries appear only by rename once complete, so presence is enough.
    if OUTPUTS.iter().all(|o| entry.join(o).is_file()) {
        return Ok(artifact(true));
    }

    preflight(&inputs.sysroot)?;
    source::verify(&inputs.orig.path, &inputs.orig.sha256)?;
    source::verify(&inputs.debian.path, &inputs.debian.sha256)?;

    let tmp_root = cache_dir.join("passt").join("tmp");
    std::fs::create_dir_all(&tmp_root).map_err(Error::io("creating the cache", &tmp_root))?;
    remove_stale(&tmp_root);
    let work = tmp_root.join(format!("{key}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let staged = work.join("entry");
    std::fs::create_dir_all(&staged).map_err(Error::io("creating the cache", &staged))?;

    let result = build_in(inputs, &work, &staged);
    if let Err(e) = result {
        // Keep the log next to the failed tree's remains for inspection.
        let _ = std::fs::remove_dir_all(work.join("src"));
        return Err(e);
    }
    let parent = entry.parent().unwrap_or(cache_dir);
    std::fs::create_dir_all(parent).map_err(Error::io("creating the cache", parent))?;
    match std::fs::rename(&staged, &entry) {
        Ok(()) => {}
        // Another build of the same inputs finished first: use its entry.
        Err(_) if OUTPUTS.iter().all(|o| entry.join(o).is_file()) => {}
        Err(e) => return Err(Error::io("publishing the cache entry", &entry)(e)),
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(artifact(false))
}

/// Removes leftovers of builds whose process is gone.
fn remove_stale(tmp_root: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.rsplit_once('.')
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Tools [`BUILD_SCRIPT`], the Makefile and `seccomp.sh` run.
const SYSROOT_TOOLS: &[&str] = &[
    "sh", "make", "cc", "gcc", "strip", "getconf", "sed", "tr", "grep", "mktemp", "awk",
];

fn preflight(sysroot: &Path) -> Result<()> {
    let toolchain = usmol_kernel::Toolchain::Sysroot(sysroot.to_path_buf());
    let mut missing: Vec<String> = SYSROOT_TOOLS
        .iter()
        .filter(|t| toolchain.find(t).is_none())
        .map(|t| (*t).to_owned())
        .collect();
    if !sysroot.join("usr/lib/x86_64-linux-gnu/libc.a").is_file()
        && !sysroot.join("usr/lib/libc.a").is_file()
    {
        missing.push("libc.a (libc6-dev)".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Sysroot {
            path: sysroot.to_path_buf(),
            missing,
        })
    }
}

fn build_in(inputs: &PasstInputs, work: &Path, staged: &Path) -> Result<()> {
    let log_path = staged.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(Error::io("build log", &log_path))?;
    let mut notes = log.try_clone().map_err(Error::io("build log", &log_path))?;
    let mut note =
        |msg: &str| writeln!(notes, "# {msg}").map_err(Error::io("build log", &log_path));
    let tree = work.join("src");
    note(&format!("unpacking {}", inputs.orig.path.display()))?;
    source::unpack_orig(&inputs.orig.path, &work.join("unpack"), &tree)?;
    note(&format!("unpacking {}", inputs.debian.path.display()))?;
    source::unpack_debian(&inputs.debian.path, &tree)?;
    let mut patches = source::debian_series(&tree)?;
    patches.extend(source::patch_files(&inputs.patches_dir)?);
    for p in &patches {
        note(&format!("applying {}", p.display()))?;
    }
    source::apply(&tree, &patches)?;

    let epoch = match inputs.source_date_epoch {
        Some(e) => e,
        None => {
            use std::os::unix::fs::MetadataExt;
            let makefile = tree.join("Makefile");
            std::fs::metadata(&makefile)
                .map_err(Error::io("reading the source date", &makefile))?
                .mtime()
        }
    };
    let version = version_string(&inputs.version);
    note(&format!("passt {version}, SOURCE_DATE_EPOCH={epoch}"))?;
    let mut cmd = usmol_kernel::run::sysroot_command(
        &inputs.sysroot,
        &tree,
        &["sh".into(), "-c".into(), BUILD_SCRIPT.into()],
    );
    // Only what is set here reaches the build: no CFLAGS, CC or MAKEFLAGS
    // from the caller.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("PASST_VERSION", &version);
    let out = log.try_clone().map_err(Error::io("build log", &log_path))?;
    let err = log.try_clone().map_err(Error::io("build log", &log_path))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| Error::Build {
            what: "starting the build in the sysroot (unshare)".into(),
            status: e.to_string(),
            log: log_path.clone(),
            tail: String::new(),
        })?;
    if !status.success() {
        let kept = work.join("build.log");
        let _ = std::fs::copy(&log_path, &kept);
        return Err(Error::Build {
            what: "make passt passt.avx2".into(),
            status: status.to_string(),
            tail: usmol_kernel::run::tail(&kept, 40),
            log: kept,
        });
    }
    for name in ["passt", "passt.avx2"] {
        let built = tree.join("usmol-out").join(name);
        check_static(&built)?;
        let to = staged.join(name);
        std::fs::rename(&built, &to).map_err(Error::io("staging the binaries", &to))?;
    }
    let copyright = staged.join("passt.copyright");
    std::fs::copy(tree.join("debian/copyright"), &copyright)
        .map_err(Error::io("staging the copyright file", &copyright))?;
    note("done")
}

/// Fails unless `path` is an ELF executable without a program interpreter
/// (`PT_INTERP`), i.e. one that runs with no libc on the system.
pub fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(Error::io("checking the binary", path))?;
    elf_static(&bytes).map_err(|reason| Error::NotStatic {
        path: path.to_path_buf(),
        reason,
    })
}

fn elf_static(b: &[u8]) -> std::result::Result<(), String> {
    const PT_INTERP: u32 = 3;
    const PT_DYNAMIC: u32 = 2;
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let e_type = u16_at(16);
    if e_type != 2 {
        return Err(format!("ELF type {e_type}, not an executable (ET_EXEC)"));
    }
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(ph) = b.get(at..at + 4) else {
            return Err("program headers past the end of the file".into());
        };
        match u32::from_le_bytes(ph.try_into().expect("4 bytes")) {
            PT_INTERP => return Err("it names a program interpreter (PT_INTERP)".into()),
            PT_DYNAMIC => return Err("it has a dynamic section (PT_DYNAMIC)".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> PasstInputs {
        let patches = dir.join("patches");
        std::fs::create_dir_all(&patches).unwrap();
        std::fs::write(patches.join("0001-x.patch"), "--- a/x\n+++ b/x\n").unwrap();
        PasstInputs {
            orig: SourceFile {
                path: dir.join("p.orig.tar.xz"),
                sha256: "ab".repeat(32),
            },
            debian: SourceFile {
                path: dir.join("p.debian.tar.xz"),
                sha256: "cd".repeat(32),
            },
            version: "1-1".into(),
            patches_dir: patches,
            sysroot: dir.join("sysroot"),
            source_date_epoch: None,
        }
    }

    #[test]
    fn key_covers_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let base = inputs(dir.path());
        let k = |i: &PasstInputs, t: &str| cache_key_with(i, t).unwrap();
        let k0 = k(&base, "gcc 14");
        assert_eq!(k0, k(&base, "gcc 14"));
        assert_ne!(k0, k(&base, "gcc 15"));
        for change in [
            |i: &mut PasstInputs| i.orig.sha256 = "00".repeat(32),
            |i: &mut PasstInputs| i.debian.sha256 = "00".repeat(32),
            |i: &mut PasstInputs| i.version = "1-2".into(),
            |i: &mut PasstInputs| i.source_date_epoch = Some(1),
        ] {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(k0, k(&other, "gcc 14"));
        }
        std::fs::write(base.patches_dir.join("0002-y.patch"), "").unwrap();
        assert_ne!(k0, k(&base, "gcc 14"));
    }

    #[test]
    fn warm_entry_is_returned_without_building() {
        let dir = tempfile::tempdir().unwrap();
        let mut inp = inputs(dir.path());
        // An empty sysroot: a cold build would fail its preflight.
        std::fs::create_dir_all(&inp.sysroot).unwrap();
        inp.sysroot = inp.sysroot.canonicalize().unwrap();
        let cache = dir.path().join("cache");
        let entry = entry_dir(&cache, &cache_key(&inp).unwrap());
        std::fs::create_dir_all(&entry).unwrap();
        for o in OUTPUTS {
            std::fs::write(entry.join(o), o).unwrap();
        }
        let got = build(&inp, &cache).unwrap();
        assert!(got.cached);
        assert_eq!(got.passt, entry.join("passt"));
        std::fs::remove_file(entry.join("passt.avx2")).unwrap();
        let err = build(&inp, &cache).unwrap_err().to_string();
        assert!(err.contains("lacks") && err.contains("make"), "{err}");
    }

    #[test]
    fn static_check_reads_program_headers() {
        // A minimal ELF64 executable header with one program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16] = 2; // ET_EXEC
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_static(&elf), Ok(()));
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(elf_static(&elf).unwrap_err().contains("PT_INTERP"));
        elf[16] = 3; // ET_DYN: a PIE or a shared object
        assert!(elf_static(&elf).unwrap_err().contains("ET_EXEC"));
        assert!(elf_static(b"#!/bin/sh\n").is_err());
    }
}
