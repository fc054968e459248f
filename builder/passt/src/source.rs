//! The passt source tree: the upstream tarball (`.orig.tar.xz`) unpacked
//! without its top directory, Debian's `debian/` directory from the
//! `.debian.tar.xz` on top, then the patches of `debian/patches/series`
//! and ours, each with `patch -p1`.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Unpacks an `.orig.tar.xz` into `scratch`, then moves its single top
/// directory (`passt-2025_05_03.587980c/`) to `tree`. The tar crate's
/// `unpack` refuses entries that would escape `scratch`.
pub fn unpack_orig(tarball: &Path, scratch: &Path, tree: &Path) -> Result<()> {
    let bad = |reason: String| Error::Source {
        path: tarball.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(tarball).map_err(Error::io("unpacking the source", tarball))?;
    let mut archive = tar::Archive::new(liblzma::read::XzDecoder::new(file));
    archive.set_preserve_mtime(true);
    archive
        .unpack(scratch)
        .map_err(|e| bad(format!("unpacking into {}: {e}", scratch.display())))?;
    let mut tops = Vec::new();
    for entry in std::fs::read_dir(scratch).map_err(Error::io("unpacking the source", scratch))? {
        tops.push(
            entry
                .map_err(Error::io("unpacking the source", scratch))?
                .path(),
        );
    }
    match tops.as_slice() {
        [top] if top.is_dir() => {
            std::fs::rename(top, tree).map_err(Error::io("unpacking the source", tree))
        }
        _ => Err(bad(format!(
            "expected one top-level directory, found {} entries",
            tops.len()
        ))),
    }
}

/// Unpacks a `.debian.tar.xz` (entries under `debian/`) into `tree`.
pub fn unpack_debian(tarball: &Path, tree: &Path) -> Result<()> {
    let file = std::fs::File::open(tarball).map_err(Error::io("unpacking the source", tarball))?;
    let mut archive = tar::Archive::new(liblzma::read::XzDecoder::new(file));
    archive.set_preserve_mtime(true);
    // `unpack` refuses entries that would escape `tree`.
    archive.unpack(tree).map_err(|e| Error::Source {
        path: tarball.to_path_buf(),
        reason: format!("unpacking into {}: {e}", tree.display()),
    })?;
    if !tree.join("debian/copyright").is_file() {
        return Err(Error::Source {
            path: tarball.to_path_buf(),
            reason: "no debian/copyright: not a Debian packaging tarball".into(),
        });
    }
    Ok(())
}

/// The patches `debian/patches/series` lists, in order (quilt format:
/// one name per line, `#` comments, an optional `-p1`). A missing series
/// means no Debian patches.
pub fn debian_series(tree: &Path) -> Result<Vec<PathBuf>> {
    let dir = tree.join("debian/patches");
    let series = dir.join("series");
    let text = match std::fs::read_to_string(&series) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading the Debian patch series", &series)(e)),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let bad = |reason: String| Error::Source {
            path: series.clone(),
            reason: format!("line {}: {reason}", i + 1),
        };
        if let Some(option) = words.find(|w| *w != "-p1") {
            return Err(bad(format!(
                "option {option:?} is not supported (only -p1)"
            )));
        }
        let rel = Path::new(name);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(format!("refusing patch path {name:?}")));
        }
        out.push(dir.join(rel));
    }
    Ok(out)
}

/// The `*.patch` files of `dir`, in name order; a missing `dir` means none
/// (the kernel build's rule, shared).
pub fn patch_files(dir: &Path) -> Result<Vec<PathBuf>> {
    usmol_kernel::patches::patch_files(dir).map_err(|e| Error::Source {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Applies `patches` in order with the kernel build's `patch -p1` runner
/// (`--forward`: an already applied patch is refused, not reverted).
pub fn apply(tree: &Path, patches: &[PathBuf]) -> Result<()> {
    usmol_kernel::patches::apply(tree, patches).map_err(|e| match e {
        usmol_kernel::error::Error::Patch {
            patch,
            tree,
            output,
        } => Error::Patch {
            patch,
            tree,
            output,
        },
        other => Error::Source {
            path: tree.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// sha256 of a file, lower-case hex, compared with `expected`.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = usmol_kernel::source::sha256_file(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if actual != expected.trim().to_ascii_lowercase() {
        return Err(Error::SourceDigest {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tar_xz(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, path, body.as_bytes()).unwrap();
        }
        let raw = b.into_inner().unwrap();
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(&raw[..], 1)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn tree_is_orig_plus_debian_plus_series_patches() {
        let d = tempfile::tempdir().unwrap();
        let orig = d.path().join("p.orig.tar.xz");
        let deb = d.path().join("p.debian.tar.xz");
        std::fs::write(
            &orig,
            tar_xz(&[
                ("passt-1/Makefile", "all:\n"),
                ("passt-1/a.c", "one\ntwo\n"),
            ]),
        )
        .unwrap();
        std::fs::write(
            &deb,
            tar_xz(&[
                ("debian/copyright", "GPL-2.0-or-later\n"),
                ("debian/patches/series", "# c\nfix.patch -p1\n\n"),
                (
                    "debian/patches/fix.patch",
                    "--- a/a.c\n+++ b/a.c\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n",
                ),
            ]),
        )
        .unwrap();
        let tree = d.path().join("tree");
        unpack_orig(&orig, &d.path().join("scratch"), &tree).unwrap();
        unpack_debian(&deb, &tree).unwrap();
        assert!(tree.join("Makefile").is_file());
        let series = debian_series(&tree).unwrap();
        assert_eq!(series, [tree.join("debian/patches/fix.patch")]);
        apply(&tree, &series).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.c")).unwrap(),
            "one\nTWO\n"
        );
        // Applied twice is refused, naming the patch.
        let err = apply(&tree, &series).unwrap_err().to_string();
        assert!(err.contains("fix.patch"), "{err}");
    }

    #[test]
    fn series_options_and_escapes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("debian/patches")).unwrap();
        assert!(debian_series(d.path()).unwrap().is_empty());
        let series = d.path().join("debian/patches/series");
        std::fs::write(&series, "a.patch -p0\n").unwrap();
        let err = debian_series(d.path()).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("-p0"), "{err}");
        std::fs::write(&series, "../../x.patch\n").unwrap();
        assert!(debian_series(d.path()).is_err());
    }

    #[test]
    fn digest_mismatch_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.orig.tar.xz");
        std::fs::write(&f, b"x").unwrap();
        let err = verify(&f, &"0".repeat(64)).unwrap_err().to_string();
        assert!(
            err.contains("x.orig.tar.xz") && err.contains("expected 0000"),
            "{err}"
        );
    }
}
