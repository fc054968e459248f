//! Applying image layers to a directory, safely, per the OCI layer spec.
//!
//! A layer is untrusted input. Rules:
//! - names are normalised; `..` anywhere is refused (not clamped), so a
//!   hostile layer fails loudly instead of landing somewhere unexpected;
//! - every parent directory is walked with `symlink_metadata`: a symlink or
//!   a non-directory on the way is refused, so nothing is written through a
//!   symlink, whether it came from this layer or a lower one;
//! - an existing final component is removed before the new entry is created
//!   (`create_new`, so a racing symlink would make creation fail, never
//!   follow); symlink targets are stored verbatim and never resolved;
//! - hard link targets must already exist inside the root as regular files;
//! - `.wh.<name>` removes `<name>` and `.wh..wh..opq` empties its directory,
//!   both only for content of lower layers (the spec: entries of the same
//!   layer are not hidden by its whiteouts);
//! - device nodes are refused (an unprivileged export cannot make them);
//!   setuid/setgid bits are dropped, ownership is the exporting user's.
//!
//! The process runs with the caller's privileges only; no chroot, no mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a layer entry was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("entry `{entry}` refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("entry `{entry}`: {path}: {source}")]
    Io {
        entry: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading the layer tar: {0}")]
    Tar(io::Error),
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Applies layers, bottom first, onto one root directory.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    /// Final directory modes, applied in [`Applier::finish`]: directories
    /// stay owner-writable until every layer is in.
    dir_modes: BTreeMap<PathBuf, u32>,
}

/// Applies one uncompressed layer tar onto `root` and sets directory modes.
pub fn apply_layer<R: Read>(root: &Path, tar: R) -> Result<(), ApplyError> {
    let mut a = Applier::new(root);
    a.apply(tar)?;
    a.finish()
}

impl Applier {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dir_modes: BTreeMap::new(),
        }
    }

    /// Applies one uncompressed layer tar.
    pub fn apply<R: Read>(&mut self, tar: R) -> Result<(), ApplyError> {
        let mut archive = tar::Archive::new(tar);
        // Paths (relative to root) created or replaced by this layer.
        let mut added: BTreeSet<PathBuf> = BTreeSet::new();
        for entry in archive.entries().map_err(ApplyError::Tar)? {
            let mut entry = entry.map_err(ApplyError::Tar)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind == tar::EntryType::XGlobalHeader {
                continue;
            }
            let refuse = |reason: &str| ApplyError::Refused {
                entry: raw.clone(),
                reason: reason.to_owned(),
            };
            let rel =
                normalize(&raw).ok_or_else(|| refuse("path contains `..` or is not UTF-8"))?;
            let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                // The root itself: nothing to create.
                continue;
            };
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let parent = self.walk_parents(&raw, &parent_rel, &mut added)?;

            if name == OPAQUE {
                self.clear_dir(&raw, &parent, &parent_rel, &added)?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                    return Err(refuse("whiteout names no valid entry"));
                }
                let hidden_rel = parent_rel.join(hidden);
                if !added.contains(&hidden_rel) {
                    remove_any(&raw, &parent.join(hidden))?;
                }
                continue;
            }

            let target = parent.join(&name);
            let mode = entry.header().mode().map_err(ApplyError::Tar)? & 0o1777;
            let io = |path: &Path| {
                let entry = raw.clone();
                let path = path.to_path_buf();
                move |source| ApplyError::Io {
                    entry,
                    path,
                    source,
                }
            };
            let existing = fs::symlink_metadata(&target).ok();
            match kind {
                tar::EntryType::Directory => {
                    match existing {
                        Some(m) if m.is_dir() => {}
                        Some(_) => {
                            remove_any(&raw, &target)?;
                            fs::create_dir(&target).map_err(io(&target))?;
                        }
                        None => fs::create_dir(&target).map_err(io(&target))?,
                    }
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o700 | mode))
                        .map_err(io(&target))?;
                    self.dir_modes.insert(target.clone(), mode);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if existing.is_some() {
                        remove_any(&raw, &target)?;
                    }
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&target)
                        .map_err(io(&target))?;
                    io::copy(&mut entry, &mut f).map_err(io(&target))?;
                    f.set_permissions(fs::Permissions::from_mode(mode & 0o777))
                        .map_err(io(&target))?;
                }
                tar::EntryType::Symlink => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("symlink without target"))?
                        .into_owned();
                    if existing.is_some() {
                        remove_any(&raw, &target)?;
                    }
                    let link =
                        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(link);
                    std::os::unix::fs::symlink(&link, &target).map_err(io(&target))?;
                }
                tar::EntryType::Link => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("hard link without target"))?
                        .into_owned();
                    let link = String::from_utf8_lossy(&link).into_owned();
                    let link_rel =
                        normalize(&link).ok_or_else(|| refuse("hard link target contains `..`"))?;
                    let source = self.existing_path(&raw, &link_rel)?;
                    let meta = fs::symlink_metadata(&source).map_err(io(&source))?;
                    if !meta.file_type().is_file() {
                        return Err(refuse("hard link target is not a regular file"));
                    }
                    if existing.is_some() {
                        remove_any(&raw, &target)?;
                    }
                    // linkat without AT_SYMLINK_FOLLOW: never follows.
                    fs::hard_link(&source, &target).map_err(io(&target))?;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    return Err(refuse("device nodes and fifos cannot be exported"));
                }
                other => return Err(refuse(&format!("unsupported entry type {other:?}"))),
            }
            added.insert(rel);
        }
        Ok(())
    }

    /// Sets the directory modes recorded while applying.
    pub fn finish(self) -> Result<(), ApplyError> {
        // Deepest first, so a read-only parent does not block its children.
        for (dir, mode) in self.dir_modes.iter().rev() {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(|source| {
                    ApplyError::Io {
                        entry: dir.display().to_string(),
                        path: dir.clone(),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Walks (creating when missing) the parent directories of an entry,
    /// refusing symlinks and non-directories on the way.
    fn walk_parents(
        &self,
        raw: &str,
        parent_rel: &Path,
        added: &mut BTreeSet<PathBuf>,
    ) -> Result<PathBuf, ApplyError> {
        let mut cur = self.root.clone();
        let mut rel = PathBuf::new();
        for comp in parent_rel.components() {
            cur.push(comp);
            rel.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ApplyError::Refused {
                        entry: raw.to_owned(),
                        reason: format!(
                            "parent `{}` is a symlink; refusing to write through it",
                            rel.display()
                        ),
                    });
                }
                Ok(_) => {
                    return Err(ApplyError::Refused {
                        entry: raw.to_owned(),
                        reason: format!("parent `{}` is not a directory", rel.display()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|source| ApplyError::Io {
                        entry: raw.to_owned(),
                        path: cur.clone(),
                        source,
                    })?;
                    added.insert(rel.clone());
                }
                Err(source) => {
                    return Err(ApplyError::Io {
                        entry: raw.to_owned(),
                        path: cur,
                        source,
                    });
                }
            }
        }
        Ok(cur)
    }

    /// Resolves an existing path inside the root without following symlinks
    /// in its parents.
    fn existing_path(&self, raw: &str, rel: &Path) -> Result<PathBuf, ApplyError> {
        let mut cur = self.root.clone();
        let n = rel.components().count();
        for (i, comp) in rel.components().enumerate() {
            cur.push(comp);
            let m = fs::symlink_metadata(&cur).map_err(|source| ApplyError::Io {
                entry: raw.to_owned(),
                path: cur.clone(),
                source,
            })?;
            if i + 1 < n && !m.is_dir() {
                return Err(ApplyError::Refused {
                    entry: raw.to_owned(),
                    reason: format!(
                        "hard link target goes through non-directory `{}`",
                        cur.display()
                    ),
                });
            }
        }
        Ok(cur)
    }

    /// Opaque whiteout: remove what lower layers put in `dir`, keeping this
    /// layer's own entries.
    fn clear_dir(
        &self,
        raw: &str,
        dir: &Path,
        dir_rel: &Path,
        added: &BTreeSet<PathBuf>,
    ) -> Result<(), ApplyError> {
        let io = |path: &Path| {
            let entry = raw.to_owned();
            let path = path.to_path_buf();
            move |source| ApplyError::Io {
                entry,
                path,
                source,
            }
        };
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io(dir))?;
        names.sort();
        for name in names {
            let child = dir.join(&name);
            let child_rel = dir_rel.join(&name);
            if added.contains(&child_rel) {
                if fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
                    self.clear_dir(raw, &child, &child_rel, added)?;
                }
            } else {
                remove_any(raw, &child)?;
            }
        }
        Ok(())
    }
}

/// `a/./b/` -> `a/b`; `None` for `..` or a non-UTF-8 name.
fn normalize(raw: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

/// Removes a file, symlink (not its target) or directory tree; missing is
/// fine.
fn remove_any(raw: &str, path: &Path) -> Result<(), ApplyError> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            // Make read-only directories writable first so their contents
            // can go (remove_dir_all never follows symlinks).
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|source| ApplyError::Io {
        entry: raw.to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}
