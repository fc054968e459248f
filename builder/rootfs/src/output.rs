//! Writing the tree out: the deterministic tarball, the directory tree and
//! the manifest, each atomically (temporary name, then rename).
//!
//! Architecture Invariant: the tarball is a function of the metadata table
//! and the file contents only — never of the host (no stat of staged files,
//! no user names, no clock); entries come in [`Key`] order, parents first,
//! mtimes clamped to the build's epoch.

use std::collections::HashMap;
use std::fs::Permissions;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use sha2::{Digest, Sha256};

use crate::tree::{BlobStore, InodeId, Meta, Node, Tree};
use crate::{Error, Result};

fn io_err<'a>(path: &'a Path, stage: &'static str) -> impl Fn(io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_owned(),
        stage,
        source,
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file beside `path`, mode 0644 whatever the umask.
fn temp_beside(path: &Path, stage: &'static str) -> Result<tempfile::NamedTempFile> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir).map_err(io_err(dir, stage))?;
    let tmp = tempfile::Builder::new()
        .prefix(".usmol-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir, stage))?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o644))
        .map_err(io_err(path, stage))?;
    Ok(tmp)
}

fn persist(tmp: tempfile::NamedTempFile, path: &Path, stage: &'static str) -> Result<()> {
    tmp.as_file().sync_all().map_err(io_err(path, stage))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        stage,
        source: e.error,
    })?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], stage: &'static str) -> Result<()> {
    let mut tmp = temp_beside(path, stage)?;
    tmp.write_all(bytes).map_err(io_err(path, stage))?;
    persist(tmp, path, stage)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn header(meta: &Meta, epoch: u64, kind: tar::EntryType, size: u64) -> tar::Header {
    // GNU headers leave user and group names empty and device numbers
    // zero; only numeric ids are stored.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid.into());
    h.set_gid(meta.gid.into());
    h.set_mtime(meta.mtime.min(epoch));
    h.set_size(size);
    h
}

/// Writes the tarball and returns its sha256 (hex).
pub fn write_tarball(tree: &Tree, blobs: &BlobStore, epoch: u64, path: &Path) -> Result<String> {
    const STAGE: &str = "write rootfs tarball";
    let err = io_err(path, STAGE);
    let tmp = temp_beside(path, STAGE)?;
    let file = tmp.as_file().try_clone().map_err(&err)?;
    let mut builder = tar::Builder::new(HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    });
    let mut first_path: HashMap<InodeId, &str> = HashMap::new();
    for (key, entry) in &tree.nodes {
        let meta = match &entry.node {
            Node::Dir(meta) | Node::Symlink { meta, .. } => meta,
            Node::File(id) => &tree.inodes[*id].meta,
        };
        let first_link = match &entry.node {
            Node::File(id) => first_path.get(id).copied(),
            _ => None,
        };
        // Hardlinks carry the inode's attributes already.
        if !meta.xattrs.is_empty() && first_link.is_none() {
            let mut records = Vec::new();
            for (name, value) in &meta.xattrs {
                records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
            }
            let mut h = header(
                &Meta::new(0o644, 0),
                0,
                tar::EntryType::XHeader,
                records.len() as u64,
            );
            builder
                .append_data(&mut h, "@PaxHeader", &records[..])
                .map_err(&err)?;
        }
        match &entry.node {
            Node::Dir(meta) => {
                let mut h = header(meta, epoch, tar::EntryType::Directory, 0);
                builder
                    .append_data(&mut h, format!("{}/", key.0), io::empty())
                    .map_err(&err)?;
            }
            Node::Symlink { target, meta } => {
                let mut h = header(meta, epoch, tar::EntryType::Symlink, 0);
                builder.append_link(&mut h, &key.0, target).map_err(&err)?;
            }
            Node::File(id) => {
                let inode = &tree.inodes[*id];
                if let Some(first) = first_link {
                    let mut h = header(&inode.meta, epoch, tar::EntryType::Link, 0);
                    builder.append_link(&mut h, &key.0, first).map_err(&err)?;
                } else {
                    let mut h = header(&inode.meta, epoch, tar::EntryType::Regular, inode.size);
                    let content = blobs
                        .open(inode.blob)
                        .map_err(io_err(blobs.dir(), "read staged file"))?;
                    let len = content
                        .metadata()
                        .map_err(io_err(blobs.dir(), "read staged file"))?
                        .len();
                    if len != inode.size {
                        return Err(Error::Io {
                            path: blobs.path(inode.blob),
                            stage: "read staged file",
                            source: io::Error::other(format!(
                                "staged content changed size ({} -> {len}); is another process writing the staging directory?",
                                inode.size
                            )),
                        });
                    }
                    builder.append_data(&mut h, &key.0, content).map_err(&err)?;
                    first_path.insert(*id, &key.0);
                }
            }
        }
    }
    let mut writer = builder.into_inner().map_err(&err)?;
    writer.flush().map_err(&err)?;
    let digest = crate::hex(&writer.hasher.finalize());
    persist(tmp, path, STAGE)?;
    Ok(digest)
}

fn timestamps(meta: &Meta, epoch: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime.min(epoch) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Ownership, xattrs, mode and times of an open file or directory. Order
/// matters: chown clears setuid bits, so the mode comes after it.
fn apply_meta(fd: impl AsFd, meta: &Meta, epoch: u64, as_root: bool) -> io::Result<()> {
    if as_root {
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty())?;
        }
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(&fd, &timestamps(meta, epoch))?;
    Ok(())
}

/// Materialises the tree as a directory at `dest` (which must be absent or
/// an empty directory). Built under a temporary name beside it, then
/// renamed. Every entry is created with `*at` calls relative to an open
/// parent directory that this function created itself, never following a
/// symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). Without root, ownership
/// and non-`user.` xattrs cannot be set: the tarball keeps them.
pub fn write_dir(tree: &Tree, blobs: &BlobStore, epoch: u64, dest: &Path) -> Result<()> {
    const STAGE: &str = "write rootfs directory";
    let err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustix::io::Errno| Error::Io {
            path: path.clone(),
            stage: STAGE,
            source: e.into(),
        }
    };
    let as_root = rustix::process::geteuid().is_root();
    let parent = parent_of(dest);
    std::fs::create_dir_all(parent).map_err(io_err(parent, STAGE))?;
    let tmp = tempfile::Builder::new()
        .prefix(".usmol-rootfs-")
        .tempdir_in(parent)
        .map_err(io_err(parent, STAGE))?;
    let dir_flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let root_fd =
        rustix::fs::open(tmp.path(), dir_flags, Mode::empty()).map_err(err(tmp.path()))?;
    let blob_fd =
        rustix::fs::open(blobs.dir(), dir_flags, Mode::empty()).map_err(err(blobs.dir()))?;

    // Open ancestors of the current entry; the key order is a depth-first
    // walk, so the parent of every entry is on this stack.
    let mut stack: Vec<(Vec<String>, OwnedFd, &Meta)> = Vec::new();
    let mut done_inodes: HashMap<InodeId, ()> = HashMap::new();
    let close = |(components, fd, meta): (Vec<String>, OwnedFd, &Meta)| {
        apply_meta(&fd, meta, epoch, as_root)
            .map_err(io_err(&tmp.path().join(components.join("/")), STAGE))
    };
    for (key, entry) in &tree.nodes {
        let components = key.components();
        let (name, parent) = components.split_last().expect("keys are never empty");
        while stack.last().is_some_and(|(c, _, _)| c.as_slice() != parent) {
            close(stack.pop().expect("checked non-empty"))?;
        }
        let parent_fd = stack
            .last()
            .map_or(root_fd.as_fd(), |(_, fd, _)| fd.as_fd());
        let here = tmp.path().join(&key.0);
        match &entry.node {
            Node::Dir(meta) => {
                // Created private and tightened on close, so a 0555 directory
                // can still be filled without root.
                rustix::fs::mkdirat(parent_fd, name.as_str(), Mode::from_raw_mode(0o700))
                    .map_err(err(&here))?;
                let fd = rustix::fs::openat(parent_fd, name.as_str(), dir_flags, Mode::empty())
                    .map_err(err(&here))?;
                stack.push((components.clone(), fd, meta));
            }
            Node::Symlink { target, meta } => {
                rustix::fs::symlinkat(target.as_str(), parent_fd, name.as_str())
                    .map_err(err(&here))?;
                if as_root {
                    rustix::fs::chownat(
                        parent_fd,
                        name.as_str(),
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(err(&here))?;
                }
                rustix::fs::utimensat(
                    parent_fd,
                    name.as_str(),
                    &timestamps(meta, epoch),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(err(&here))?;
            }
            Node::File(id) => {
                let inode = &tree.inodes[*id];
                let blob_name = BlobStore::name(inode.blob);
                if done_inodes.insert(*id, ()).is_none() {
                    let fd = rustix::fs::openat(
                        &blob_fd,
                        blob_name.as_str(),
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(err(&blobs.path(inode.blob)))?;
                    apply_meta(&fd, &inode.meta, epoch, as_root).map_err(io_err(&here, STAGE))?;
                }
                // Every path of an inode is a hard link to its one blob.
                rustix::fs::linkat(
                    &blob_fd,
                    blob_name.as_str(),
                    parent_fd,
                    name.as_str(),
                    AtFlags::empty(),
                )
                .map_err(err(&here))?;
            }
        }
    }
    while let Some(open) = stack.pop() {
        close(open)?;
    }
    let root_meta = tree.root.clone().unwrap_or_else(|| Meta::new(0o755, epoch));
    apply_meta(&root_fd, &root_meta, epoch, as_root).map_err(io_err(tmp.path(), STAGE))?;
    drop(root_fd);
    let built: PathBuf = tmp.keep();
    if let Err(e) = rustix::fs::rename(&built, dest) {
        let _ = std::fs::remove_dir_all(&built);
        return Err(Error::Io {
            path: dest.to_owned(),
            stage: STAGE,
            source: io::Error::other(format!(
                "cannot replace it ({e}); it must be absent or an empty directory: remove it and build again"
            )),
        });
    }
    Ok(())
}

/// The sorted `lib/manifest.json` content.
pub fn manifest_json(debs: &[crate::DebInput]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Package<'a> {
        name: &'a str,
        version: &'a str,
        architecture: &'a str,
        source: &'a str,
        source_version: &'a str,
        sha256: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Manifest<'a> {
        packages: Vec<Package<'a>>,
    }
    let mut packages: Vec<Package<'_>> = debs
        .iter()
        .map(|d| Package {
            name: &d.name,
            version: &d.version,
            architecture: &d.architecture,
            source: &d.source,
            source_version: &d.source_version,
            sha256: &d.sha256,
        })
        .collect();
    packages.sort_by(|a, b| {
        (a.name, a.architecture, a.version).cmp(&(b.name, b.architecture, b.version))
    });
    let mut out =
        serde_json::to_vec_pretty(&Manifest { packages }).expect("plain strings serialise");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("a", b"b");
        assert_eq!(r, b"6 a=b\n");
        let long = pax_record("SCHILY.xattr.security.capability", &[0u8; 60]);
        let digits = long.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&long[..digits])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, long.len());
    }
}
