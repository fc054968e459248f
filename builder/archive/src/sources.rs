//! Debian *source* packages, fetched through the same signed chain as the
//! binary ones: the verified InRelease pins `<component>/source/Sources.xz`
//! by sha256, and the stanza of the pinned version there pins each file of
//! the source package (`.dsc`, `.orig.tar.*`, `.debian.tar.*`) by sha256
//! and size (`Checksums-Sha256`). The `.dsc` carries the uploader's own
//! signature, which is not checked: the archive's signature over the
//! index is the chain relied upon, as for `.deb`s. The lock records the
//! `.dsc` too, but only the tarballs are downloaded: they are all a build
//! reads, and the `.dsc` repeats what `Sources` already says.
//!
//! [`lock_source`] resolves a [`SourceRecipe`] into a [`SourceLock`];
//! [`fetch_source`] downloads exactly what a lock pins.

use std::path::{Path, PathBuf};

use usmol_recipe::{LOCK_VERSION, LockedSource, LockedSourceFile, SourceLock, SourceRecipe};

use crate::cache::{Cache, Download};
use crate::lock::{Trust, decompress_xz, fetch_inrelease, recipe_sha256};
use crate::mirror::Mirror;
use crate::{Error, Result};

/// Finds `package` at exactly `version` in the text of a `Sources` index
/// (`url` names it in errors). A missing package or version is an error
/// that lists the versions present and says where to change the pin.
pub fn find_source(
    url: &str,
    text: &str,
    package: &str,
    version: &str,
    recipe_path: &Path,
) -> Result<LockedSource> {
    let err = |message: String| Error::Index {
        url: url.to_owned(),
        message,
    };
    let mut versions = Vec::new();
    for stanza in crate::deb822::parse(text) {
        if stanza.get("Package") != Some(package) {
            continue;
        }
        let found = stanza.get("Version").unwrap_or_default();
        if found != version {
            versions.push(found.to_owned());
            continue;
        }
        let directory = stanza
            .get("Directory")
            .ok_or_else(|| err(format!("source {package} {version}: no Directory field")))?;
        let checksums = stanza.get("Checksums-Sha256").ok_or_else(|| {
            err(format!(
                "source {package} {version}: no Checksums-Sha256 field"
            ))
        })?;
        let mut files = Vec::new();
        for line in checksums.lines().filter(|l| !l.trim().is_empty()) {
            let mut w = line.split_whitespace();
            let (Some(sha256), Some(size), Some(name), None) =
                (w.next(), w.next(), w.next(), w.next())
            else {
                return Err(err(format!(
                    "source {package} {version}: bad Checksums-Sha256 line {line:?}"
                )));
            };
            let size = size.parse().map_err(|_| {
                err(format!(
                    "source {package} {version}: bad size in Checksums-Sha256 line {line:?}"
                ))
            })?;
            let sha256 = sha256.to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(format!(
                    "source {package} {version}: {name}: {sha256:?} is not a sha256 digest"
                )));
            }
            // A name with a slash would lead outside the pool directory.
            if name.contains('/') || name.starts_with('.') {
                return Err(err(format!(
                    "source {package} {version}: refusing file name {name:?}"
                )));
            }
            files.push(LockedSourceFile {
                name: name.to_owned(),
                sha256,
                size,
            });
        }
        if !files.iter().any(|f| f.name.ends_with(".dsc")) {
            return Err(err(format!(
                "source {package} {version}: Checksums-Sha256 lists no .dsc"
            )));
        }
        files.sort();
        return Ok(LockedSource {
            package: package.to_owned(),
            version: version.to_owned(),
            directory: directory.trim_matches('/').to_owned(),
            files,
        });
    }
    Err(err(if versions.is_empty() {
        format!(
            "no source package {package:?}; check source.package and distribution.suite/component in {}",
            recipe_path.display()
        )
    } else {
        format!(
            "source package {package} has no version {version:?} (available: {}); set source.version in {} to one of them and run with --update-lock",
            versions.join(", "),
            recipe_path.display()
        )
    }))
}

/// Resolves a source recipe against the mirror: InRelease (signature,
/// suite, freshness, rollback against `previous`), then `Sources.xz` by its
/// sha256 from the Release, then the pinned stanza. The files themselves
/// are fetched by [`fetch_source`].
pub fn lock_source(
    recipe: &SourceRecipe,
    recipe_path: &Path,
    mirror: &Mirror,
    cache: &Cache,
    previous: Option<&SourceLock>,
    trust: &Trust,
) -> Result<SourceLock> {
    let suite = &recipe.distribution.suite;
    let previous_date = previous
        .filter(|l| &l.release.suite == suite)
        .map(|l| l.release.date.as_str());
    let (release, locked_release) =
        fetch_inrelease(suite, mirror, cache, previous_date, true, trust)?;
    let index = format!("{}/source/Sources.xz", recipe.distribution.component);
    let Some((size, sha256)) = release.sha256.get(&index) else {
        return Err(Error::Release {
            url: mirror.join(&format!("dists/{suite}/InRelease")),
            message: format!(
                "no SHA256 entry for {index}: check distribution.component in {}",
                recipe_path.display()
            ),
        });
    };
    let download = crate::lock::index_download(
        mirror,
        suite,
        &index,
        release.acquire_by_hash,
        sha256,
        *size,
    );
    let path = cache.fetch_all(std::slice::from_ref(&download))?.remove(0);
    let text = decompress_xz(&path, &download.url)?;
    let source = find_source(
        &download.url,
        &text,
        &recipe.source.package,
        &recipe.source.version,
        recipe_path,
    )?;
    Ok(SourceLock {
        version: LOCK_VERSION,
        recipe_sha256: recipe_sha256(recipe_path)?,
        release: locked_release,
        source,
    })
}

/// A file of the locked source package, verified, in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSourceFile {
    pub file: LockedSourceFile,
    pub path: PathBuf,
}

/// Whether a file of a source package is read by a build (the tarballs).
pub fn is_build_input(name: &str) -> bool {
    name.contains(".tar.")
}

fn build_inputs(lock: &SourceLock) -> impl Iterator<Item = &LockedSourceFile> {
    lock.source.files.iter().filter(|f| is_build_input(&f.name))
}

/// The downloads a source lock pins for a build (the tarballs).
pub fn source_downloads(lock: &SourceLock, mirror: &Mirror) -> Vec<Download> {
    build_inputs(lock)
        .map(|f| Download {
            url: mirror.join(&format!("{}/{}", lock.source.directory, f.name)),
            sha256: f.sha256.clone(),
            size: f.size,
            fallback_url: None,
        })
        .collect()
}

/// Downloads every tarball the lock pins (or finds it in the cache), each
/// checked against the lock's sha256 and size.
pub fn fetch_source(
    lock: &SourceLock,
    mirror: &Mirror,
    cache: &Cache,
) -> Result<Vec<FetchedSourceFile>> {
    let paths = cache.fetch_all(&source_downloads(lock, mirror))?;
    Ok(build_inputs(lock)
        .cloned()
        .zip(paths)
        .map(|(file, path)| FetchedSourceFile { file, path })
        .collect())
}

/// The cached tarballs of the lock, without any network: `None` when one
/// is missing (or corrupt, and then dropped from the cache).
pub fn cached_source(lock: &SourceLock, cache: &Cache) -> Result<Option<Vec<FetchedSourceFile>>> {
    let mut out = Vec::new();
    for file in build_inputs(lock) {
        match cache.lookup(&file.sha256, file.size)? {
            Some(path) => out.push(FetchedSourceFile {
                file: file.clone(),
                path,
            }),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_DSC: &str = "4edfbb2bf4d12db992af4b2f82cde87140d01ace3c9c55d93afd61d23034a8b4";
    const SHA_ORIG: &str = "69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49";

    fn sources() -> String {
        format!(
            "Package: other\nVersion: 1\nDirectory: pool/main/o/other\nChecksums-Sha256:\n {SHA_DSC} 1 other_1.dsc\n\n\
Package: passt\nBinary: passt\nVersion: 1-1\nFiles:\n d41d8cd98f00b204e9800998ecf8427e 3 passt_1-1.dsc\n\
Checksums-Sha256:\n {SHA_ORIG} 261392 passt_1.orig.tar.xz\n {SHA_DSC} 1975 passt_1-1.dsc\nDirectory: pool/main/p/passt\n\n\
Package: passt\nVersion: 2-1\nDirectory: pool/main/p/passt\nChecksums-Sha256:\n {SHA_DSC} 1 passt_2-1.dsc\n"
        )
    }

    #[test]
    fn finds_the_pinned_stanza_and_its_files() {
        let s = find_source("u", &sources(), "passt", "1-1", Path::new("r.toml")).unwrap();
        assert_eq!(s.directory, "pool/main/p/passt");
        let files: Vec<_> = s
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.sha256.as_str(), f.size))
            .collect();
        assert_eq!(
            files,
            [
                ("passt_1-1.dsc", SHA_DSC, 1975),
                ("passt_1.orig.tar.xz", SHA_ORIG, 261392)
            ]
        );
    }

    #[test]
    fn missing_version_names_the_index_the_choices_and_the_fix() {
        let err = find_source(
            "http://m/dists/trixie/main/source/Sources.xz",
            &sources(),
            "passt",
            "9-9",
            Path::new("recipes/passt.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("index http://m/dists/trixie/main/source/Sources.xz:"),
            "{err}"
        );
        assert!(err.contains("available: 1-1, 2-1"), "{err}");
        assert!(
            err.contains("set source.version in recipes/passt.toml"),
            "{err}"
        );
        let err = find_source("u", &sources(), "pasta", "1", Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no source package \"pasta\""), "{err}");
    }

    #[test]
    fn malformed_checksums_are_refused() {
        let bad = sources().replace(&format!(" {SHA_ORIG} 261392"), " abc 261392");
        let err = find_source("u", &bad, "passt", "1-1", Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a sha256 digest"), "{err}");
        let bad = sources().replace("passt_1.orig.tar.xz", "../../etc/passwd");
        assert!(find_source("u", &bad, "passt", "1-1", Path::new("r.toml")).is_err());
    }

    /// A file whose bytes do not match the lock is discarded with an error
    /// naming its URL; no network is involved, since the mirror serves
    /// from a local listener.
    #[test]
    fn hash_mismatch_names_the_url_and_keeps_nothing() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let body = b"not the dsc";
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(body).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).with_progress(false);
        let mirror =
            Mirror::new(&format!("http://{addr}/debian"), crate::MirrorOrigin::Flag).unwrap();
        let lock = SourceLock {
            version: LOCK_VERSION,
            recipe_sha256: "00".into(),
            release: usmol_recipe::LockedRelease {
                suite: "trixie".into(),
                codename: "trixie".into(),
                date: "Sat, 21 Nov 2026 09:15:44 UTC".into(),
                inrelease_sha256: "11".into(),
            },
            source: LockedSource {
                package: "passt".into(),
                version: "1-1".into(),
                directory: "pool/main/p/passt".into(),
                files: vec![
                    LockedSourceFile {
                        name: "passt_1-1.debian.tar.xz".into(),
                        sha256: SHA_DSC.into(),
                        size: 11,
                    },
                    // Recorded, never downloaded: a second request would
                    // find no listener.
                    LockedSourceFile {
                        name: "passt_1-1.dsc".into(),
                        sha256: SHA_ORIG.into(),
                        size: 5,
                    },
                ],
            },
        };
        assert_eq!(cached_source(&lock, &cache).unwrap(), None);
        let err = fetch_source(&lock, &mirror, &cache).unwrap_err();
        server.join().unwrap();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "http://{addr}/debian/pool/main/p/passt/passt_1-1.debian.tar.xz"
            )) && text.contains("sha256 mismatch")
                && text.contains(SHA_DSC),
            "{text}"
        );
        assert!(!cache.blob_path(SHA_DSC).exists());
    }
}
