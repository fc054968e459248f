//! Locking and fetching: the two ways a build uses the archive.
//!
//! `lock` follows the signed chain InRelease -> Packages -> .deb and
//! resolves the recipe anew; `fetch` downloads exactly what a lock pins and
//! checks it against the lock alone.
//!
//! Architecture Invariant: `fetch` never reads an index or resolves; with a
//! warm cache it makes no network request at all.

use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use usmol_recipe::{LOCK_VERSION, Lock, LockedPackage, LockedRelease, Recipe};

use crate::cache::{Cache, Download, sha256_hex};
use crate::mirror::Mirror;
use crate::packages::{Package, parse_packages};
use crate::release::{Keyring, Release, ReleaseCheck, verify_inrelease};
use crate::resolve::{Universe, resolve};
use crate::{Error, Result};

/// What signatures are checked against, and the time used for expiry.
#[derive(Debug, Clone)]
pub struct Trust {
    pub keyring: Keyring,
    pub now: DateTime<Utc>,
}

impl Trust {
    /// The vendored Debian keys and the current time.
    pub fn system() -> Result<Self> {
        Ok(Trust {
            keyring: Keyring::vendored()?,
            now: DateTime::<Utc>::from(std::time::SystemTime::now()),
        })
    }
}

/// A package of the lock and its verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPackage {
    pub package: LockedPackage,
    pub path: PathBuf,
}

/// sha256 of a recipe file's bytes, as recorded in `Lock::recipe_sha256`.
pub fn recipe_sha256(recipe_path: &Path) -> Result<String> {
    let bytes = std::fs::read(recipe_path).map_err(|source| Error::Io {
        path: recipe_path.to_owned(),
        stage: "hashing the recipe",
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// Resolves the recipe anew against the mirror, with the vendored keys.
/// `previous` is the lock being replaced: a Release older than the one it
/// recorded is refused as a rollback.
pub fn lock(
    recipe: &Recipe,
    recipe_path: &Path,
    mirror: &Mirror,
    cache: &Cache,
    previous: Option<&Lock>,
) -> Result<Lock> {
    lock_with(
        recipe,
        recipe_path,
        mirror,
        cache,
        previous,
        &Trust::system()?,
    )
}

/// [`lock`] with an explicit keyring and clock.
pub fn lock_with(
    recipe: &Recipe,
    recipe_path: &Path,
    mirror: &Mirror,
    cache: &Cache,
    previous: Option<&Lock>,
    trust: &Trust,
) -> Result<Lock> {
    let recipe_sha256 = recipe_sha256(recipe_path)?;
    let dist = &recipe.distribution;
    let mut releases = Vec::new();
    let mut downloads = Vec::new();
    for suite in &dist.suites {
        let (release, locked) = fetch_release(
            suite,
            mirror,
            cache,
            previous,
            dist.check_valid_until,
            trust,
        )?;
        downloads.extend(index_downloads(
            suite,
            &release,
            mirror,
            &dist.components,
            &dist.architecture,
        )?);
        releases.push(locked);
    }
    let paths = cache.fetch_all(&downloads.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>())?;
    let mut packages: Vec<Package> = Vec::new();
    for ((suite, d), path) in downloads.iter().zip(paths) {
        let text = decompress_xz(&path, &d.url)?;
        packages.extend(parse_packages(&d.url, suite, &text)?);
    }
    let universe = Universe::new(packages, &dist.suites, &dist.architecture);
    let chosen = resolve(&universe, recipe)?;
    let mut packages: Vec<LockedPackage> = chosen
        .into_iter()
        .map(|p| LockedPackage {
            name: p.name,
            version: p.version_raw,
            architecture: p.architecture,
            source: p.source,
            source_version: p.source_version,
            suite: p.suite,
            filename: p.filename,
            sha256: p.sha256,
            size: p.size,
        })
        .collect();
    packages.sort();
    Ok(Lock {
        version: LOCK_VERSION,
        recipe_sha256,
        releases,
        packages,
    })
}

/// Fetches and verifies one suite's InRelease.
fn fetch_release(
    suite: &str,
    mirror: &Mirror,
    cache: &Cache,
    previous: Option<&Lock>,
    check_valid_until: bool,
    trust: &Trust,
) -> Result<(Release, LockedRelease)> {
    let previous_date = previous
        .and_then(|l| l.releases.iter().find(|r| r.suite == suite))
        .map(|r| r.date.as_str());
    fetch_inrelease(
        suite,
        mirror,
        cache,
        previous_date,
        check_valid_until,
        trust,
    )
}

/// Fetches and verifies one suite's InRelease; `previous_date` is the
/// `Date` the lock being replaced recorded (an older one is a rollback).
pub(crate) fn fetch_inrelease(
    suite: &str,
    mirror: &Mirror,
    cache: &Cache,
    previous_date: Option<&str>,
    check_valid_until: bool,
    trust: &Trust,
) -> Result<(Release, LockedRelease)> {
    let url = mirror.join(&format!("dists/{suite}/InRelease"));
    let bytes = cache.get_bytes(&url)?;
    let check = ReleaseCheck {
        suite,
        now: trust.now,
        not_older_than: previous_date,
        check_valid_until,
    };
    let release = verify_inrelease(&url, &bytes, &trust.keyring, &check)?;
    let locked = LockedRelease {
        suite: suite.to_owned(),
        codename: release.codename.clone(),
        date: release.date_raw.clone(),
        inrelease_sha256: sha256_hex(&bytes),
    };
    Ok((release, locked))
}

/// The Packages.xz files of one suite, with size and hash from its Release.
fn index_downloads(
    suite: &str,
    release: &Release,
    mirror: &Mirror,
    components: &[String],
    arch: &str,
) -> Result<Vec<(String, Download)>> {
    let mut out = Vec::new();
    for component in components {
        let mut arches = vec![arch];
        // With No-Support-for-Architecture-all the arch-all packages are in
        // each binary-<arch> index; otherwise binary-all is a separate index.
        if !release.arch_all_in_arch_indexes {
            arches.push("all");
        }
        for a in arches {
            let dir = format!("{component}/binary-{a}");
            let path = format!("{dir}/Packages.xz");
            let Some((size, sha256)) = release.sha256.get(&path) else {
                if a == "all" {
                    continue; // Older archives list arch-all packages per arch only.
                }
                return Err(Error::Release {
                    url: mirror.join(&format!("dists/{suite}/InRelease")),
                    message: format!(
                        "no SHA256 entry for {path}: check distribution.components and architecture"
                    ),
                });
            };
            out.push((
                suite.to_owned(),
                index_download(mirror, suite, &path, release.acquire_by_hash, sha256, *size),
            ));
        }
    }
    Ok(out)
}

/// An index of `dists/<suite>/` (`path` as its Release names it): from
/// the `by-hash/SHA256/` directory beside it where the Release offers
/// that, with the canonical path as the fallback, else the canonical path.
pub(crate) fn index_download(
    mirror: &Mirror,
    suite: &str,
    path: &str,
    acquire_by_hash: bool,
    sha256: &str,
    size: u64,
) -> Download {
    let canonical = mirror.join(&format!("dists/{suite}/{path}"));
    let (url, fallback_url) = if acquire_by_hash {
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        (
            mirror.join(&format!("dists/{suite}/{dir}/by-hash/SHA256/{sha256}")),
            Some(canonical),
        )
    } else {
        (canonical, None)
    };
    Download {
        url,
        sha256: sha256.to_owned(),
        size,
        fallback_url,
    }
}

pub(crate) fn decompress_xz(path: &Path, url: &str) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        stage: "reading a downloaded index",
        source,
    })?;
    let mut text = String::new();
    liblzma::read::XzDecoder::new(std::io::BufReader::new(file))
        .read_to_string(&mut text)
        .map_err(|e| Error::Index {
            url: url.to_owned(),
            message: format!("cannot decompress xz: {e}"),
        })?;
    Ok(text)
}

/// Downloads exactly the files a lock pins (or finds them in the cache),
/// each checked against the lock's sha256 and size.
pub fn fetch(lock: &Lock, mirror: &Mirror, cache: &Cache) -> Result<Vec<FetchedPackage>> {
    let downloads: Vec<Download> = lock
        .packages
        .iter()
        .map(|p| Download {
            url: mirror.join(&p.filename),
            sha256: p.sha256.clone(),
            size: p.size,
            fallback_url: None,
        })
        .collect();
    let paths = cache.fetch_all(&downloads)?;
    Ok(lock
        .packages
        .iter()
        .cloned()
        .zip(paths)
        .map(|(package, path)| FetchedPackage { package, path })
        .collect())
}
