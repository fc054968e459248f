//! The builder's pipeline: the stages that turn recipes, kernel fragments and
//! the runtime binaries into every artifact, each stage a function over the
//! crates that do the work.
//!
//! Stages, in order (see ARCHITECTURE.md):
//! 1. fetch: recipe -> lock (resolved only when missing or asked) -> `.deb`s;
//! 2. rootfs: `.deb`s -> deterministic tarball + manifest;
//! 3. kernel: `linux-source` (or a kernel.org tarball whose signature verified
//!    first) -> patched, configured, cached `linux`;
//! 4. passt: Debian's passt source (pinned by `recipes/passt.lock`, verified
//!    through `Sources.xz`) + `patches/passt/` -> static `passt` and
//!    `passt.avx2`, built in the toolchain sysroot and cached;
//! 5. image: rootfs + init -> ext4 disk; disk + kernel + passt + launcher ->
//!    the artifact directory, the OCI layout and archive, the docker archive and
//!    the plain tarball.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use usmol_archive::{Cache, FetchedPackage, FetchedSourceFile, Mirror};
use usmol_recipe::{Lock, Recipe, SourceLock, SourceRecipe};

/// Where the mirror comes from when a stage needs one.
#[derive(Debug, Clone, Default)]
pub struct MirrorChoice {
    /// `--mirror`, the strongest source.
    pub flag: Option<String>,
}

impl MirrorChoice {
    fn resolve(&self, recipe: &Recipe) -> Result<Mirror> {
        usmol_archive::resolve_mirror(self.flag.as_deref(), recipe)
            .context("fetch: choosing the Debian mirror")
    }

    fn resolve_for(&self, recipe_mirror: Option<&str>) -> Result<Mirror> {
        usmol_archive::resolve_mirror_for(self.flag.as_deref(), recipe_mirror)
            .context("fetch: choosing the Debian mirror")
    }
}

/// A recipe with its lock, and the verified `.deb`s the lock pins.
pub struct Fetched {
    pub recipe: Recipe,
    pub lock: Lock,
    pub packages: Vec<FetchedPackage>,
}

/// Whether a recipe's lock file can be used as it is.
enum LockState<L> {
    /// It exists, matches the recipe, and no update was asked for.
    Current(L),
    /// Resolve anew; the previous lock (if any) guides the resolver.
    Resolve(Option<L>),
}

/// Loads the lock at `lock_path`; a lock written for another version of the
/// recipe is an error unless `update_lock` asks to resolve anew.
fn current_lock<L, E>(
    recipe_path: &Path,
    lock_path: &Path,
    update_lock: bool,
    load: impl Fn(&Path) -> std::result::Result<L, E>,
    recipe_sha256: impl Fn(&L) -> &str,
) -> Result<LockState<L>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let previous = if lock_path.exists() {
        Some(load(lock_path).context("fetch: reading the lock file")?)
    } else {
        None
    };
    match previous {
        Some(lock) if !update_lock => {
            if recipe_sha256(&lock) != usmol_archive::recipe_sha256(recipe_path)? {
                bail!(
                    "fetch: {} changed since {} was written; refresh the lock with --update-lock",
                    recipe_path.display(),
                    lock_path.display()
                );
            }
            Ok(LockState::Current(lock))
        }
        previous => Ok(LockState::Resolve(previous)),
    }
}

/// Stage 1: the lock for `recipe_path` (resolved anew only when it is
/// missing or `update_lock` is set), then every pinned `.deb` from the cache
/// or the mirror.
pub fn fetch(
    recipe_path: &Path,
    mirror: &MirrorChoice,
    update_lock: bool,
    cache: &Cache,
) -> Result<Fetched> {
    let recipe = Recipe::load(recipe_path).context("fetch: reading the recipe")?;
    let lock_path = Lock::path_for(recipe_path);
    let lock = match current_lock(recipe_path, &lock_path, update_lock, Lock::load, |l| {
        &l.recipe_sha256
    })? {
        LockState::Current(lock) => lock,
        LockState::Resolve(previous) => {
            let mirror = mirror.resolve(&recipe)?;
            eprintln!(
                "usmol: resolving {} against {}",
                recipe_path.display(),
                mirror.join("")
            );
            let lock = usmol_archive::lock(&recipe, recipe_path, &mirror, cache, previous.as_ref())
                .with_context(|| format!("fetch: resolving {}", recipe_path.display()))?;
            lock.save(&lock_path)
                .context("fetch: writing the lock file")?;
            eprintln!(
                "usmol: wrote {} ({} packages)",
                lock_path.display(),
                lock.packages.len()
            );
            lock
        }
    };
    let packages = fetch_locked(&recipe, &lock, mirror, cache)
        .with_context(|| format!("fetch: downloading the packages of {}", lock_path.display()))?;
    Ok(Fetched {
        recipe,
        lock,
        packages,
    })
}

/// Downloads what the lock pins; a warm cache needs no mirror at all.
fn fetch_locked(
    recipe: &Recipe,
    lock: &Lock,
    mirror: &MirrorChoice,
    cache: &Cache,
) -> Result<Vec<FetchedPackage>> {
    let mut cached = Vec::with_capacity(lock.packages.len());
    for package in &lock.packages {
        match cache.lookup(&package.sha256, package.size)? {
            Some(path) => cached.push(FetchedPackage {
                package: package.clone(),
                path,
            }),
            None => break,
        }
    }
    if cached.len() == lock.packages.len() {
        return Ok(cached);
    }
    let mirror = mirror.resolve(recipe)?;
    Ok(usmol_archive::fetch(lock, &mirror, cache)?)
}

/// A source recipe with its lock, and the verified files the lock pins.
pub struct FetchedSource {
    pub recipe: SourceRecipe,
    pub lock: SourceLock,
    pub files: Vec<FetchedSourceFile>,
}

/// Stage 1 for a source recipe (`recipes/passt.toml`): its lock (resolved
/// anew through InRelease and `Sources.xz` only when missing or
/// `update_lock`), then the `.dsc` and tarballs from the cache or mirror.
pub fn fetch_source(
    recipe_path: &Path,
    mirror: &MirrorChoice,
    update_lock: bool,
    cache: &Cache,
) -> Result<FetchedSource> {
    let recipe = SourceRecipe::load(recipe_path).context("fetch: reading the source recipe")?;
    let lock_path = Lock::path_for(recipe_path);
    let lock = match current_lock(
        recipe_path,
        &lock_path,
        update_lock,
        SourceLock::load,
        |l| &l.recipe_sha256,
    )? {
        LockState::Current(lock) => lock,
        LockState::Resolve(previous) => {
            let mirror = mirror.resolve_for(recipe.distribution.mirror.as_deref())?;
            eprintln!(
                "usmol: resolving {} against {}",
                recipe_path.display(),
                mirror.join("")
            );
            let lock = usmol_archive::lock_source(
                &recipe,
                recipe_path,
                &mirror,
                cache,
                previous.as_ref(),
                &usmol_archive::Trust::system()?,
            )
            .with_context(|| format!("fetch: resolving {}", recipe_path.display()))?;
            lock.save(&lock_path)
                .context("fetch: writing the lock file")?;
            eprintln!(
                "usmol: wrote {} ({} {})",
                lock_path.display(),
                lock.source.package,
                lock.source.version
            );
            lock
        }
    };
    let files = match usmol_archive::cached_source(&lock, cache)? {
        Some(files) => files,
        None => {
            let mirror = mirror.resolve_for(recipe.distribution.mirror.as_deref())?;
            usmol_archive::fetch_source(&lock, &mirror, cache).with_context(|| {
                format!("fetch: downloading the files of {}", lock_path.display())
            })?
        }
    };
    Ok(FetchedSource {
        recipe,
        lock,
        files,
    })
}

/// Stage 4: static `passt` and `passt.avx2` from the source the passt lock
/// pins, Debian's patches and ours, built in the toolchain sysroot.
pub fn passt(
    fetched: &FetchedSource,
    patches_dir: &Path,
    sysroot: &Path,
    cache: &Path,
) -> Result<usmol_passt::PasstArtifact> {
    let file = |suffix: &str| -> Result<usmol_passt::SourceFile> {
        let f = fetched
            .files
            .iter()
            .find(|f| f.file.name.ends_with(suffix))
            .with_context(|| {
                format!(
                    "passt: the lock of {} {} pins no *{suffix}",
                    fetched.lock.source.package, fetched.lock.source.version
                )
            })?;
        Ok(usmol_passt::SourceFile {
            path: f.path.clone(),
            sha256: f.file.sha256.clone(),
        })
    };
    let inputs = usmol_passt::PasstInputs {
        orig: file(".orig.tar.xz")?,
        debian: file(".debian.tar.xz")?,
        version: fetched.lock.source.version.clone(),
        patches_dir: std::path::absolute(patches_dir)
            .with_context(|| format!("passt: resolving {}", patches_dir.display()))?,
        sysroot: sysroot.to_owned(),
        source_date_epoch: match std::env::var_os("SOURCE_DATE_EPOCH") {
            Some(_) => Some(source_date_epoch_from_env()?),
            None => None,
        },
    };
    let artifact = usmol_passt::build(&inputs, cache).with_context(|| {
        format!(
            "passt: building {} {}",
            fetched.lock.source.package, fetched.lock.source.version
        )
    })?;
    Ok(artifact)
}

/// Stage 2 outputs.
pub struct RootfsOutputs {
    pub tarball: PathBuf,
    pub manifest: PathBuf,
    /// The recipe's `rootfs.disk_tail`: files the root disk ends with.
    pub disk_tail: Vec<String>,
    /// Digest of everything the outputs were made from.
    pub key: String,
}

/// A stage's record of the inputs its outputs in `out/` were made from, so
/// a warm build with nothing changed skips the stage. The key includes the
/// builder binary itself: new builder code rebuilds everything.
mod stamp {
    use std::path::Path;

    use anyhow::{Context, Result};

    /// sha256 over length-prefixed parts, so no two part lists collide.
    pub fn key(parts: &[&[u8]]) -> Result<String> {
        let exe = std::env::current_exe().context("finding the builder's own binary")?;
        let exe_digest = usmol_kernel::source::sha256_file(&exe)?;
        let mut bytes = Vec::new();
        for part in std::iter::once(exe_digest.as_bytes()).chain(parts.iter().copied()) {
            bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        Ok(usmol_archive::sha256_hex(&bytes))
    }

    /// The outputs exist and were made from `key`.
    pub fn fresh(stamp: &Path, key: &str, outputs: &[&Path]) -> bool {
        std::fs::read_to_string(stamp).is_ok_and(|recorded| recorded == key)
            && outputs.iter().all(|output| output.exists())
    }

    /// Forgets the record before a stage rewrites its outputs, so a stage
    /// that stops half-way is never taken for done.
    pub fn clear(stamp: &Path) -> Result<()> {
        match std::fs::remove_file(stamp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", stamp.display()))
            }
            _ => Ok(()),
        }
    }

    /// Records `key` once every output is complete (temp file + rename).
    pub fn record(stamp: &Path, key: &str) -> Result<()> {
        let tmp = stamp.with_extension("tmp");
        std::fs::write(&tmp, key).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, stamp)
            .with_context(|| format!("renaming {} to {}", tmp.display(), stamp.display()))
    }
}

/// Stage 2: the rootfs tarball and manifest from fetched packages.
pub fn rootfs(
    fetched: &Fetched,
    epoch: u64,
    out_dir: &Path,
    tree: Option<&Path>,
) -> Result<RootfsOutputs> {
    let debs: Vec<usmol_rootfs::DebInput> = fetched
        .packages
        .iter()
        .map(|f| usmol_rootfs::DebInput {
            name: f.package.name.clone(),
            version: f.package.version.clone(),
            architecture: f.package.architecture.clone(),
            source: f.package.source.clone(),
            source_version: f.package.source_version.clone(),
            sha256: f.package.sha256.clone(),
            path: f.path.clone(),
        })
        .collect();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("rootfs: creating {}", out_dir.display()))?;
    let outputs = usmol_rootfs::Outputs {
        dir: tree.map(Path::to_owned),
        tarball: out_dir.join("rootfs.tar"),
        manifest: out_dir.join("manifest.json"),
    };
    let packages: Vec<&str> = debs.iter().map(|d| d.sha256.as_str()).collect();
    let key = stamp::key(&[
        b"rootfs",
        packages.join(" ").as_bytes(),
        format!("{:?}", fetched.recipe.rootfs).as_bytes(),
        &epoch.to_le_bytes(),
    ])?;
    let stamp_path = out_dir.join(".rootfs-inputs");
    // A tree output is not tracked by the stamp: build it every time.
    if tree.is_none() && stamp::fresh(&stamp_path, &key, &[&outputs.tarball, &outputs.manifest]) {
        eprintln!("usmol: rootfs: {} is up to date", outputs.tarball.display());
        return Ok(RootfsOutputs {
            tarball: outputs.tarball,
            manifest: outputs.manifest,
            disk_tail: fetched.recipe.rootfs.disk_tail.clone(),
            key,
        });
    }
    stamp::clear(&stamp_path)?;
    let summary = usmol_rootfs::build_rootfs(&debs, &fetched.recipe.rootfs, epoch, &outputs)
        .context("rootfs: assembling the root filesystem")?;
    for warning in &summary.warnings {
        eprintln!("usmol: rootfs: {warning}");
    }
    eprintln!(
        "usmol: rootfs: {} packages, {} entries, tarball sha256 {}",
        summary.packages, summary.entries, summary.tarball_sha256
    );
    stamp::record(&stamp_path, &key)?;
    Ok(RootfsOutputs {
        tarball: outputs.tarball,
        manifest: outputs.manifest,
        disk_tail: fetched.recipe.rootfs.disk_tail.clone(),
        key,
    })
}

/// Stage 3a: the kernel's build environment, a sysroot assembled from the
/// toolchain recipe's packages and cached by the lock's package hashes.
pub fn toolchain_sysroot(fetched: &Fetched, cache: &Path) -> Result<PathBuf> {
    let entry = usmol_kernel::toolchain::sysroot_entry(
        cache,
        fetched.lock.packages.iter().map(|p| p.sha256.as_str()),
    );
    let root = entry.join("root");
    if root.join("usr/bin").is_dir() {
        return Ok(root);
    }
    let staging = cache
        .join("toolchain")
        .join(format!("tmp-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("toolchain: removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("toolchain: creating {}", staging.display()))?;
    eprintln!(
        "usmol: toolchain: assembling the kernel build sysroot ({} packages)",
        fetched.packages.len()
    );
    let epoch = source_date_epoch(&fetched.lock)?;
    let outputs = rootfs(
        fetched,
        epoch,
        &staging.join("out"),
        Some(&staging.join("root")),
    )
    .context("toolchain: assembling the sysroot")?;
    // Only the tree is needed; the tarball would double the cache's size.
    std::fs::remove_file(&outputs.tarball)
        .with_context(|| format!("toolchain: removing {}", outputs.tarball.display()))?;
    std::fs::rename(&staging, &entry).with_context(|| {
        format!(
            "toolchain: moving {} to {}",
            staging.display(),
            entry.display()
        )
    })?;
    Ok(root)
}

/// Stage 3 inputs beyond the kernel recipe.
pub struct KernelOptions {
    pub fragments_dir: PathBuf,
    pub patches_dir: PathBuf,
    pub toolchain: usmol_kernel::Toolchain,
    pub progress: bool,
}

/// Stage 3: the kernel from the `linux-source` package the kernel recipe pins.
pub fn kernel(
    fetched: &Fetched,
    options: &KernelOptions,
    cache: &Path,
) -> Result<usmol_kernel::KernelArtifact> {
    let source = fetched
        .packages
        .iter()
        .find(|f| f.package.name.starts_with("linux-source"))
        .context("kernel: the kernel recipe pins no linux-source-X.Y package")?;
    let label = format!("{} {}", source.package.name, source.package.version);
    build_kernel(&source.path, &source.package.sha256, &label, options, cache)
}

/// A kernel.org release tarball whose signature verified against the
/// vendored kernel.org keys.
pub struct KernelOrgSource {
    pub tarball: PathBuf,
    pub verified: usmol_archive::VerifiedSource,
}

/// Stage 3, kernel.org variant, first step: verify `linux-X.Y.Z.tar.xz`
/// against `linux-X.Y.Z.tar.sign` before anything else uses it.
pub fn verify_kernel_org(tarball: &Path, signature: &Path) -> Result<KernelOrgSource> {
    let verified = usmol_archive::verify_kernel_org(tarball, signature)
        .with_context(|| format!("kernel: verifying {}", tarball.display()))?;
    Ok(KernelOrgSource {
        tarball: std::path::absolute(tarball)
            .with_context(|| format!("kernel: resolving {}", tarball.display()))?,
        verified,
    })
}

/// Stage 3 from a verified kernel.org tarball instead of `linux-source`.
pub fn kernel_from_kernel_org(
    source: &KernelOrgSource,
    options: &KernelOptions,
    cache: &Path,
) -> Result<usmol_kernel::KernelArtifact> {
    let label = format!(
        "{} (signed by {})",
        source.tarball.display(),
        source.verified.signer_fingerprint
    );
    // The kernel build re-checks this hash, so the file it unpacks is the
    // one whose signature verified.
    build_kernel(
        &source.tarball,
        &source.verified.sha256,
        &label,
        options,
        cache,
    )
}

fn build_kernel(
    source: &Path,
    sha256: &str,
    label: &str,
    options: &KernelOptions,
    cache: &Path,
) -> Result<usmol_kernel::KernelArtifact> {
    // The build runs in another directory: relative paths would not resolve.
    let absolute = |dir: &Path| {
        std::path::absolute(dir).with_context(|| format!("kernel: resolving {}", dir.display()))
    };
    let inputs = usmol_kernel::KernelInputs {
        source: source.to_path_buf(),
        source_sha256: sha256.to_owned(),
        fragments_dir: absolute(&options.fragments_dir)?,
        patches_dir: absolute(&options.patches_dir)?,
        toolchain: options.toolchain.clone(),
        // SOURCE_DATE_EPOCH when the caller fixes one; otherwise the kernel
        // crate takes the source's own date, which the source pins.
        source_date_epoch: match std::env::var_os("SOURCE_DATE_EPOCH") {
            Some(_) => Some(source_date_epoch_from_env()?),
            None => None,
        },
    };
    let artifact = usmol_kernel::build(&inputs, cache, options.progress)
        .with_context(|| format!("kernel: building {label}"))?;
    Ok(artifact)
}

/// Build metadata for the image.
pub struct ImageMeta {
    pub version: String,
    pub revision: String,
    pub source: String,
    pub epoch: u64,
}

/// Where stage 4 put everything.
pub struct ImageOutputs {
    pub artifact_dir: PathBuf,
    /// zstd layers: for registries and engines from Docker 23 on.
    pub oci_layout: PathBuf,
    /// gzip layers, same image ID: for engines before Docker 23; the docker
    /// archive carries this one.
    pub oci_layout_gzip: PathBuf,
    pub oci_archive: PathBuf,
    pub docker_archive: PathBuf,
    pub plain_tarball: PathBuf,
    pub tags: Vec<String>,
}

/// Stage 5: the root disk, the artifact directory and every image format;
/// `cache` is the user's cache directory (compressed layers are kept there).
#[allow(clippy::too_many_arguments)] // the stage's inputs, each a prior stage's output
pub fn image(
    rootfs: &RootfsOutputs,
    kernel: &usmol_kernel::KernelArtifact,
    passt: &usmol_passt::PasstArtifact,
    launcher: &Path,
    init: &Path,
    meta: &ImageMeta,
    out_dir: &Path,
    cache: &Path,
) -> Result<ImageOutputs> {
    let artifact_dir = out_dir.join("usmol");
    // Compressed zstd layers by content: a launcher-only change re-uses the
    // disk layer's minutes of compression.
    let layer_cache = cache.join("layers");
    let lib = artifact_dir.join("lib");
    let oci_meta = usmol_oci::Metadata {
        version: meta.version.clone(),
        revision: meta.revision.clone(),
        source: meta.source.clone(),
        epoch: meta.epoch,
    };
    let outputs = ImageOutputs {
        oci_layout: out_dir.join("usmol-oci"),
        oci_layout_gzip: out_dir.join("usmol-oci-gzip"),
        oci_archive: out_dir.join("usmol-oci.tar"),
        docker_archive: out_dir.join("usmol-docker.tar"),
        plain_tarball: out_dir.join(format!("usmol-{}.tar.zst", meta.version)),
        tags: oci_meta.tags(),
        artifact_dir,
    };
    let key = stamp::key(&[
        b"image",
        rootfs.key.as_bytes(),
        kernel.cache_key.as_bytes(),
        passt.cache_key.as_bytes(),
        usmol_kernel::source::sha256_file(launcher)?.as_bytes(),
        usmol_kernel::source::sha256_file(init)?.as_bytes(),
        format!("{:?}", oci_meta).as_bytes(),
    ])?;
    let stamp_path = out_dir.join(".image-inputs");
    let all = [
        &outputs.oci_layout,
        &outputs.oci_layout_gzip,
        &outputs.oci_archive,
        &outputs.docker_archive,
        &outputs.plain_tarball,
        &outputs.artifact_dir.join("run"),
        &lib.join("rootfs.ext4"),
        &lib.join("linux"),
        &lib.join("passt"),
        &lib.join("passt.avx2"),
    ];
    if stamp::fresh(&stamp_path, &key, &all.map(PathBuf::as_path)) {
        eprintln!("usmol: image: every artifact is up to date");
        return Ok(outputs);
    }
    stamp::clear(&stamp_path)?;
    let artifact_dir = &outputs.artifact_dir;
    std::fs::create_dir_all(&lib).with_context(|| format!("image: creating {}", lib.display()))?;
    usmol_oci::make_ext4(
        &rootfs.tarball,
        &[usmol_oci::ExtraFile {
            guest_path: "/usr/lib/usmol/init".into(),
            host_path: init.to_owned(),
            mode: 0o755,
        }],
        &rootfs.disk_tail,
        &lib.join("rootfs.ext4"),
        meta.epoch,
    )
    .context("image: writing the root disk")?;
    copy(&kernel.binary, &lib.join("linux"), 0o755)?;
    copy(&kernel.config, &lib.join("linux.config"), 0o644)?;
    copy(&passt.passt, &lib.join("passt"), 0o755)?;
    copy(&passt.passt_avx2, &lib.join("passt.avx2"), 0o755)?;
    copy(&passt.copyright, &lib.join("passt.copyright"), 0o644)?;
    copy(&rootfs.manifest, &lib.join("manifest.json"), 0o644)?;
    copy(launcher, &artifact_dir.join("run"), 0o755)?;

    // Three independent single-threaded compressions of the same 430 MB;
    // the zstd layer is the long one (minutes), so the others run beside it.
    let (zstd_done, gzip_done, plain_tarball) = std::thread::scope(|scope| {
        let zstd = scope.spawn(|| -> Result<()> {
            let built = usmol_oci::build_image(
                artifact_dir,
                &oci_meta,
                usmol_oci::Compression::Zstd,
                Some(&layer_cache),
                &outputs.oci_layout,
            )
            .context("image: writing the OCI layout (zstd)")?;
            usmol_oci::write_oci_archive(&built, &outputs.oci_archive, meta.epoch)
                .context("image: writing the OCI archive")
        });
        let gzip = scope.spawn(|| -> Result<()> {
            let built = usmol_oci::build_image(
                artifact_dir,
                &oci_meta,
                usmol_oci::Compression::Gzip,
                None,
                &outputs.oci_layout_gzip,
            )
            .context("image: writing the OCI layout (gzip)")?;
            usmol_oci::write_docker_archive(
                &built,
                &outputs.tags,
                &outputs.docker_archive,
                meta.epoch,
            )
            .context("image: writing the docker archive")
        });
        let tarball =
            usmol_oci::write_plain_tarball(artifact_dir, &meta.version, out_dir, meta.epoch)
                .context("image: writing the plain tarball");
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("image: a compression thread panicked")))
        };
        (join(zstd), join(gzip), tarball)
    });
    zstd_done?;
    gzip_done?;
    let plain_tarball = plain_tarball?;
    anyhow::ensure!(
        plain_tarball == outputs.plain_tarball,
        "image: the plain tarball went to {}, expected {}",
        plain_tarball.display(),
        outputs.plain_tarball.display()
    );
    stamp::record(&stamp_path, &key)?;
    Ok(outputs)
}

/// Copies `from` to `to` atomically with `mode`.
fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("usmol-tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("image: copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("image: setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("image: renaming {} to {}", tmp.display(), to.display()))
}

/// SOURCE_DATE_EPOCH, which the caller has checked is set.
fn source_date_epoch_from_env() -> Result<i64> {
    let value = std::env::var_os("SOURCE_DATE_EPOCH").unwrap_or_default();
    let text = value.to_string_lossy();
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|epoch| *epoch >= 0)
        .with_context(|| {
            format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970")
        })
}

/// SOURCE_DATE_EPOCH when set, else the newest Release date in the lock, so
/// the same inputs always give the same timestamps.
pub fn source_date_epoch(lock: &Lock) -> Result<u64> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
        return source_date_epoch_from_env().map(|epoch| epoch as u64);
    }
    lock.releases
        .iter()
        .filter_map(|r| usmol_archive::release::parse_date(&r.date))
        .map(|d| d.timestamp().max(0) as u64)
        .max()
        .context("the lock records no Release date; set SOURCE_DATE_EPOCH")
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn stamp_is_fresh_only_for_the_same_key_and_present_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("rootfs.tar");
        let record = dir.path().join(".inputs");
        let key = stamp::key(&[b"a", b"b"]).unwrap();
        assert_ne!(
            key,
            stamp::key(&[b"ab"]).unwrap(),
            "parts are length-prefixed"
        );
        std::fs::write(&output, b"x").unwrap();
        assert!(!stamp::fresh(&record, &key, &[&output]), "no record yet");
        stamp::record(&record, &key).unwrap();
        assert!(stamp::fresh(&record, &key, &[&output]));
        assert!(
            !stamp::fresh(&record, &stamp::key(&[b"c"]).unwrap(), &[&output]),
            "other inputs"
        );
        std::fs::remove_file(&output).unwrap();
        assert!(!stamp::fresh(&record, &key, &[&output]), "output gone");
        stamp::clear(&record).unwrap();
        stamp::clear(&record).unwrap();
        assert!(!record.exists());
    }
}
