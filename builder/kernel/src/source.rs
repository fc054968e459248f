//! The kernel source: Debian's `linux-source-X.Y` .deb (holding
//! `usr/src/linux-source-X.Y.tar.xz`) or that tarball itself, verified by
//! sha256 and unpacked in-process (no dpkg, tar or xz needed on the host).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(Error::io("kernel source digest", path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(Error::io("kernel source digest", path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Fails unless `path` has the expected sha256.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(Error::SourceDigest {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Unpacks the source into `dest` (which must not exist) and returns it.
/// `scratch` receives the archive's top directory before it is renamed to
/// `dest`; both must be on one filesystem.
pub fn unpack(source: &Path, scratch: &Path, dest: &Path) -> Result<PathBuf> {
    let bad = |reason: String| Error::Source {
        path: source.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(scratch).map_err(Error::io("kernel source unpack", scratch))?;
    let mut file = File::open(source).map_err(Error::io("kernel source unpack", source))?;
    let mut magic = [0u8; 8];
    let is_deb = file.read_exact(&mut magic).is_ok() && &magic == b"!<arch>\n";
    let file = File::open(source).map_err(Error::io("kernel source unpack", source))?;
    if is_deb {
        unpack_deb(source, BufReader::new(file), scratch)?;
    } else {
        unpack_tar_xz(source, BufReader::new(file), scratch)?;
    }

    // The tarball holds one top directory, `linux-source-X.Y/`.
    let mut tops = std::fs::read_dir(scratch)
        .map_err(Error::io("kernel source unpack", scratch))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect::<Vec<_>>();
    if tops.len() != 1 {
        return Err(bad(format!(
            "expected one top directory in the source tarball, found {}",
            tops.len()
        )));
    }
    let top = tops.pop().unwrap_or_default();
    if !top.join("Makefile").is_file() || !top.join("arch/um").is_dir() {
        return Err(bad(format!(
            "{} does not look like a Linux source tree (no Makefile or arch/um)",
            top.display()
        )));
    }
    std::fs::rename(&top, dest).map_err(Error::io("kernel source unpack", dest))?;
    Ok(dest.to_path_buf())
}

fn unpack_deb(source: &Path, reader: impl Read, scratch: &Path) -> Result<()> {
    let bad = |reason: String| Error::Source {
        path: source.to_path_buf(),
        reason,
    };
    let mut deb = ar::Archive::new(reader);
    while let Some(member) = deb.next_entry() {
        let member = member.map_err(Error::io("kernel source .deb", source))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        if name != "data.tar.xz" {
            return Err(bad(format!(
                "unsupported .deb payload {name} (expected data.tar.xz)"
            )));
        }
        let mut data = tar::Archive::new(liblzma::read::XzDecoder::new(member));
        for entry in data
            .entries()
            .map_err(Error::io("kernel source .deb", source))?
        {
            let entry = entry.map_err(Error::io("kernel source .deb", source))?;
            let path = entry
                .path()
                .map_err(Error::io("kernel source .deb", source))?;
            // dpkg-deb writes `./usr/...`; compare without the `.`.
            let path: PathBuf = path
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            let is_tarball = path.starts_with("usr/src")
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"));
            if is_tarball {
                return unpack_tar_xz(source, entry, scratch);
            }
        }
        return Err(bad("no usr/src/linux-source-*.tar.xz in the .deb".into()));
    }
    Err(bad("no data.tar member: not a Debian package".into()))
}

fn unpack_tar_xz(source: &Path, reader: impl Read, scratch: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(liblzma::read::XzDecoder::new(reader));
    archive.set_preserve_mtime(true);
    // `unpack` refuses entries that would escape `scratch`.
    archive.unpack(scratch).map_err(|e| Error::Source {
        path: source.to_path_buf(),
        reason: format!(
            "unpacking the source tarball into {}: {e}",
            scratch.display()
        ),
    })
}

/// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from the top Makefile.
pub fn kernel_version(tree: &Path) -> Result<String> {
    let path = tree.join("Makefile");
    let text = std::fs::read_to_string(&path).map_err(Error::io("kernel version", &path))?;
    parse_version(&text).ok_or_else(|| Error::Source {
        path,
        reason: "no VERSION/PATCHLEVEL/SUBLEVEL in the top Makefile".into(),
    })
}

fn parse_version(makefile: &str) -> Option<String> {
    let get = |key: &str| {
        makefile.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let (v, p, s) = (get("VERSION")?, get("PATCHLEVEL")?, get("SUBLEVEL")?);
    Some(format!(
        "{v}.{p}.{s}{}",
        get("EXTRAVERSION").unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_makefile() {
        let mk = "# SPDX\nVERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION =\nNAME = x\n";
        assert_eq!(parse_version(mk).as_deref(), Some("7.3.4"));
        assert_eq!(parse_version("VERSION = 7\n"), None);
    }

    /// A tiny tree packed as tarball and as .deb unpacks to the same place.
    #[test]
    fn unpacks_tarball_and_deb() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux-source-9.9.tar.xz");
        let tar_bytes = {
            let mut b = tar::Builder::new(Vec::new());
            for (path, body) in [
                (
                    "linux-source-9.9/Makefile",
                    "VERSION = 9\nPATCHLEVEL = 9\nSUBLEVEL = 1\n",
                ),
                ("linux-source-9.9/arch/um/Kconfig", "config UML\n"),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(1_700_000_000);
                h.set_cksum();
                b.append_data(&mut h, path, body.as_bytes()).unwrap();
            }
            b.into_inner().unwrap()
        };
        let xz = {
            let mut out = Vec::new();
            let mut enc = liblzma::read::XzEncoder::new(&tar_bytes[..], 1);
            enc.read_to_end(&mut out).unwrap();
            out
        };
        std::fs::write(&tarball, &xz).unwrap();

        let tree = unpack(&tarball, &dir.path().join("s1"), &dir.path().join("t1")).unwrap();
        assert_eq!(kernel_version(&tree).unwrap(), "9.9.1");

        // data.tar.xz holding usr/src/linux-source-9.9.tar.xz, inside an ar archive.
        let data = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(xz.len() as u64);
            h.set_mode(0o644);
            // Written raw: set_path would drop the `./` that dpkg-deb emits.
            let name = b"./usr/src/linux-source-9.9.tar.xz";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, &xz[..]).unwrap();
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(&b.into_inner().unwrap()[..], 1)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let deb = dir.path().join("linux-source-9.9_all.deb");
        {
            let mut a = ar::Builder::new(File::create(&deb).unwrap());
            a.append(
                &ar::Header::new(b"debian-binary".to_vec(), 4),
                &b"2.0\n"[..],
            )
            .unwrap();
            a.append(&ar::Header::new(b"control.tar.xz".to_vec(), 0), &b""[..])
                .unwrap();
            a.append(
                &ar::Header::new(b"data.tar.xz".to_vec(), data.len() as u64),
                &data[..],
            )
            .unwrap();
        }
        let tree = unpack(&deb, &dir.path().join("s2"), &dir.path().join("t2")).unwrap();
        assert_eq!(kernel_version(&tree).unwrap(), "9.9.1");
        assert!(tree.join("arch/um/Kconfig").is_file());

        let err = verify(&deb, "00").unwrap_err().to_string();
        assert!(err.contains("expected 00"), "{err}");
        verify(&deb, &sha256_file(&deb).unwrap()).unwrap();
    }
}
