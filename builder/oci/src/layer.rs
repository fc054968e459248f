//! Deterministic tar streams: image layers (zstd or gzip) and archives of
//! files.
//!
//! Every header carries mtime = epoch, uid/gid 0, user/group `root`, and the
//! entries are written in sorted path order with their parents first, so the
//! bytes depend only on the content. The compressors run with fixed
//! settings, single-threaded; gzip has no name and mtime 0 in its header.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::{Error, Result, io_err};

const STAGE: &str = "layer";

/// One entry of a layer or archive, by path inside the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir,
    /// Contents read from this host file.
    File(PathBuf),
    Symlink(String),
}

/// A file tree to write as a tar: path (relative, `/`-separated, no leading
/// slash) -> (source, permission bits). Missing parents are added as 0755.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<String, (Source, u32)>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; `path` may start with `/`. Refuses `..` and empty
    /// names.
    pub fn insert(&mut self, path: &str, source: Source, mode: u32) -> Result<()> {
        let clean = path.trim_matches('/');
        if clean.is_empty()
            || clean
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::Invalid {
                stage: STAGE,
                path: PathBuf::from(path),
                message: "path must be a plain relative or absolute path without `.`/`..`".into(),
            });
        }
        let mut parent = String::new();
        let comps: Vec<&str> = clean.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.entries
                .entry(parent.clone())
                .or_insert((Source::Dir, 0o755));
        }
        self.entries
            .insert(clean.to_owned(), (source, mode & 0o7777));
        Ok(())
    }

    /// Adds a host directory recursively under `prefix` (`""` = the archive
    /// root). Modes are normalised (directories and executables 0755, other
    /// files 0644) so that the host's umask does not leak into the bytes;
    /// ownership and times are never taken from the host.
    pub fn insert_dir(&mut self, prefix: &str, host: &Path) -> Result<()> {
        let prefix = prefix.trim_matches('/');
        let mut names: Vec<_> = std::fs::read_dir(host)
            .map_err(io_err(STAGE, host))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err(STAGE, host))?;
        names.sort();
        use std::os::unix::fs::PermissionsExt;
        if !prefix.is_empty() {
            self.insert(prefix, Source::Dir, 0o755)?;
        }
        for name in names {
            let name_str = name.to_str().ok_or_else(|| Error::Invalid {
                stage: STAGE,
                path: host.join(&name),
                message: "file name is not UTF-8".into(),
            })?;
            let child = host.join(&name);
            let path = if prefix.is_empty() {
                name_str.to_owned()
            } else {
                format!("{prefix}/{name_str}")
            };
            let meta = std::fs::symlink_metadata(&child).map_err(io_err(STAGE, &child))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.insert_dir(&path, &child)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&child).map_err(io_err(STAGE, &child))?;
                self.insert(
                    &path,
                    Source::Symlink(target.to_string_lossy().into_owned()),
                    0o777,
                )?;
            } else if ft.is_file() {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.insert(&path, Source::File(child), mode)?;
            } else {
                return Err(Error::Invalid {
                    stage: STAGE,
                    path: child,
                    message: "only files, directories and symlinks can be packed".into(),
                });
            }
        }
        Ok(())
    }

    /// Moves the entries for which `pick` is true into a new tree (parents
    /// are re-created there as 0755 directories).
    pub fn split_off(&mut self, pick: impl Fn(&str) -> bool) -> Tree {
        let mut other = Tree::new();
        let keys: Vec<String> = self.entries.keys().filter(|k| pick(k)).cloned().collect();
        for k in keys {
            let (src, mode) = self.entries.remove(&k).expect("key listed");
            other.insert(&k, src, mode).expect("key was valid");
        }
        other
    }

    /// Writes the tree as a tar to `w`.
    pub fn write_tar<W: Write>(&self, w: W, epoch: u64) -> Result<W> {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Deterministic);
        for (path, (source, mode)) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(epoch);
            h.set_uid(0);
            h.set_gid(0);
            h.set_username("root").expect("short name");
            h.set_groupname("root").expect("short name");
            h.set_mode(*mode);
            let werr = |e| Error::Io {
                stage: STAGE,
                path: PathBuf::from(path),
                source: e,
            };
            match source {
                Source::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())
                        .map_err(werr)?;
                }
                Source::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).map_err(werr)?;
                }
                Source::File(host) => {
                    let f = std::fs::File::open(host).map_err(io_err(STAGE, host))?;
                    let len = f.metadata().map_err(io_err(STAGE, host))?.len();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(len);
                    b.append_data(&mut h, path, io::BufReader::new(f))
                        .map_err(werr)?;
                }
            }
        }
        b.into_inner().map_err(io_err(STAGE, "<tar end>"))
    }
}

/// A blob written to a layout: `sha256:<hex>` and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// A layer blob plus the digest of its uncompressed tar (the diff_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// Counts and hashes what passes through.
pub(crate) struct HashWriter<W> {
    pub inner: W,
    pub hasher: sha2::Sha256,
    pub count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How layer blobs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// What every engine and registry client pulls, Docker 20.10 included.
    Gzip,
    /// Docker 23+, containerd 1.5+, podman, skopeo and apptainer pull it; a
    /// 2^27 window lets it find what the Go programs on the root disk share,
    /// which gzip's 32 KiB window cannot (the usmol image: 144.0 MB with gzip,
    /// 78.4 MB with zstd).
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => crate::image::MEDIA_LAYER_GZIP,
            Compression::Zstd => crate::image::MEDIA_LAYER_ZSTD,
        }
    }
}

/// gzip level for layers: a fixed value, since the bytes must not change
/// between builds.
const GZIP_LEVEL: u32 = 6;
/// zstd level for layers: the slowest, 22. On the usmol layer it saves 7 MB
/// over level 19 (82.8 -> 75.5 MB for the root disk) for ~4 min of one CPU.
const ZSTD_LEVEL: i32 = 22;
/// 2^27: the largest window `zstd -d` and the default decoder limits of
/// libzstd and Go's klauspost/compress accept without being told more.
const ZSTD_WINDOW_LOG: u32 = 27;

/// Writes `tree` as a compressed layer into `blobs_dir` (the
/// `blobs/sha256` directory of a layout), named by its digest. With a
/// `cache` directory, zstd layers are kept there by what they were made
/// from, so a rebuild that changes another layer skips the minutes of
/// level-22 compression.
pub fn write_layer(
    tree: &Tree,
    blobs_dir: &Path,
    epoch: u64,
    compression: Compression,
    cache: Option<&Path>,
) -> Result<Layer> {
    let Some(cache) = cache.filter(|_| compression == Compression::Zstd) else {
        return compress_layer(tree, blobs_dir, epoch, compression);
    };
    let (_, diff_id, _) = tree.write_tar(HashWriter::new(io::sink()), epoch)?.finish();
    let entry = cache.join(cache_key(&diff_id));
    if let Some(blob) = cached_blob(&entry, blobs_dir)? {
        return Ok(Layer { blob, diff_id });
    }
    let layer = compress_layer(tree, blobs_dir, epoch, compression)?;
    if layer.diff_id == diff_id {
        // A cache that cannot be written costs the next build time, not
        // this one its output.
        let _ = store_blob(cache, &entry, blobs_dir, &layer.blob);
        prune_cache(cache, LAYER_CACHE_KEEP);
    }
    Ok(layer)
}

/// Cached zstd layers kept: the newest few (each ~80 MB for the usmol disk).
const LAYER_CACHE_KEEP: usize = 3;

/// The cache entry name: the uncompressed tar and every setting (and the
/// libzstd version) that decides the compressed bytes.
fn cache_key(diff_id: &str) -> String {
    let settings = format!(
        "usmol-layer-v1\0{diff_id}\0zstd level {ZSTD_LEVEL} window_log {ZSTD_WINDOW_LOG} ldm checksum\0libzstd {}",
        zstd::zstd_safe::version_number()
    );
    hex::encode(sha2::Sha256::digest(settings.as_bytes()))
}

/// The cached blob of `entry` copied into `blobs_dir`, or `None` when there
/// is none or its bytes no longer match the digest it was stored with (the
/// entry is then dropped).
fn cached_blob(entry: &Path, blobs_dir: &Path) -> Result<Option<Blob>> {
    let Ok(expected) = std::fs::read_to_string(entry.join("digest")) else {
        return Ok(None);
    };
    let Ok(mut source) = std::fs::File::open(entry.join("blob")) else {
        return Ok(None);
    };
    let tmp = tempfile::NamedTempFile::new_in(blobs_dir).map_err(io_err(STAGE, blobs_dir))?;
    let file = io::BufWriter::new(
        tmp.as_file()
            .try_clone()
            .map_err(io_err(STAGE, tmp.path()))?,
    );
    let mut writer = HashWriter::new(file);
    io::copy(&mut source, &mut writer).map_err(io_err(STAGE, entry))?;
    let (mut file, digest, size) = writer.finish();
    file.flush().map_err(io_err(STAGE, tmp.path()))?;
    drop(file);
    if digest != expected.trim() {
        let _ = std::fs::remove_dir_all(entry);
        return Ok(None);
    }
    // The newest entries survive pruning.
    let _ = std::fs::File::options()
        .append(true)
        .open(entry.join("digest"))
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    persist_blob(tmp, blobs_dir, &digest, size).map(Some)
}

/// Stores `blob` (in `blobs_dir`) as cache `entry`: written under a
/// temporary name and renamed, so a half-written entry is never found.
fn store_blob(cache: &Path, entry: &Path, blobs_dir: &Path, blob: &Blob) -> io::Result<()> {
    std::fs::create_dir_all(cache)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(cache)?;
    let source = blobs_dir.join(blob.digest.trim_start_matches("sha256:"));
    if std::fs::hard_link(&source, tmp.path().join("blob")).is_err() {
        std::fs::copy(&source, tmp.path().join("blob"))?;
    }
    std::fs::write(tmp.path().join("digest"), &blob.digest)?;
    // An entry that was found wanting (no blob, wrong bytes) gives way.
    let _ = std::fs::remove_dir_all(entry);
    // On failure the temporary directory is removed when `tmp` drops.
    std::fs::rename(tmp.path(), entry)
}

/// Removes all but the `keep` most recently used entries.
fn prune_cache(cache: &Path, keep: usize) {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = dir
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let used = e.path().join("digest").metadata().ok()?.modified().ok()?;
            Some((used, e.path()))
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, path) in entries.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(path);
    }
}

fn compress_layer(
    tree: &Tree,
    blobs_dir: &Path,
    epoch: u64,
    compression: Compression,
) -> Result<Layer> {
    let tmp = tempfile::NamedTempFile::new_in(blobs_dir).map_err(io_err(STAGE, blobs_dir))?;
    let file = io::BufWriter::new(
        tmp.as_file()
            .try_clone()
            .map_err(io_err(STAGE, tmp.path()))?,
    );
    let compressed = HashWriter::new(file);
    let (compressed, diff_id) = match compression {
        Compression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(compressed, flate2::Compression::new(GZIP_LEVEL));
            let (gz, diff_id, _) = tree.write_tar(HashWriter::new(gz), epoch)?.finish();
            (gz.finish().map_err(io_err(STAGE, tmp.path()))?, diff_id)
        }
        Compression::Zstd => {
            let mut enc =
                zstd::Encoder::new(compressed, ZSTD_LEVEL).map_err(io_err(STAGE, tmp.path()))?;
            enc.long_distance_matching(true)
                .and_then(|()| enc.window_log(ZSTD_WINDOW_LOG))
                .and_then(|()| enc.include_checksum(true))
                .map_err(io_err(STAGE, tmp.path()))?;
            let (enc, diff_id, _) = tree.write_tar(HashWriter::new(enc), epoch)?.finish();
            (enc.finish().map_err(io_err(STAGE, tmp.path()))?, diff_id)
        }
    };
    let (mut file, digest, size) = compressed.finish();
    file.flush().map_err(io_err(STAGE, tmp.path()))?;
    drop(file);
    let blob = persist_blob(tmp, blobs_dir, &digest, size)?;
    Ok(Layer { blob, diff_id })
}

/// Writes bytes as a blob named by their digest.
pub fn write_blob(bytes: &[u8], blobs_dir: &Path) -> Result<Blob> {
    let digest = crate::sha256_digest(bytes);
    let tmp = tempfile::NamedTempFile::new_in(blobs_dir).map_err(io_err(STAGE, blobs_dir))?;
    std::fs::write(tmp.path(), bytes).map_err(io_err(STAGE, tmp.path()))?;
    persist_blob(tmp, blobs_dir, &digest, bytes.len() as u64)
}

fn persist_blob(
    tmp: tempfile::NamedTempFile,
    blobs_dir: &Path,
    digest: &str,
    size: u64,
) -> Result<Blob> {
    use std::os::unix::fs::PermissionsExt;
    let path = blobs_dir.join(digest.trim_start_matches("sha256:"));
    // Temp files are 0600; blobs are plain readable data.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(STAGE, tmp.path()))?;
    tmp.persist(&path).map_err(|e| Error::Io {
        stage: STAGE,
        path: path.clone(),
        source: e.error,
    })?;
    Ok(Blob {
        digest: digest.to_owned(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_adds_parents_and_refuses_dotdot() {
        let mut t = Tree::new();
        t.insert("/a/b/c", Source::Symlink("x".into()), 0o777)
            .unwrap();
        assert_eq!(t.entries.keys().collect::<Vec<_>>(), ["a", "a/b", "a/b/c"]);
        assert!(t.insert("a/../x", Source::Dir, 0o755).is_err());
        assert!(t.insert("/", Source::Dir, 0o755).is_err());
    }

    #[test]
    fn tar_is_deterministic_and_root_owned() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        let mut t = Tree::new();
        t.insert("z/f", Source::File(f.clone()), 0o4755).unwrap();
        t.insert("a", Source::Dir, 0o1777).unwrap();
        let one = t.write_tar(Vec::new(), 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let two = t.write_tar(Vec::new(), 1_700_000_000).unwrap();
        assert_eq!(one, two);
        let mut ar = tar::Archive::new(&one[..]);
        let names: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a/".to_owned(), 0o1777, 0, 1_700_000_000),
                ("z/".to_owned(), 0o755, 0, 1_700_000_000),
                ("z/f".to_owned(), 0o4755, 0, 1_700_000_000),
            ]
        );
    }
}
