//! Reading `.deb` files and placing their `data.tar` entries into the
//! in-memory [`Tree`] without running any maintainer script.
//!
//! Rules (the hostile-package policy):
//! - `..` in an entry path or a hardlink target: refused (error).
//! - Absolute entry paths: taken relative to the root (as dpkg and GNU tar do).
//! - Symlinks in parent components are followed inside the tree (this is
//!   how `/bin/x` lands in `/usr/bin/x` on merged-/usr), but a target that
//!   climbs above the root is refused. The last component is never
//!   followed: a file replaces a symlink, it is not written through it.
//! - A directory is never replaced: a symlink entry over it is ignored with
//!   a warning (as dpkg does); a file or hardlink over it is an error.
//! - A directory entry over a symlink to a directory keeps the symlink.
//! - Hardlinks must name a regular file already unpacked from the same or an
//!   earlier package.
//! - Device nodes and FIFOs are refused with an error that names the
//!   package and path; `rootfs.path_exclude` can drop them. A non-root build
//!   could not create them, dockerd's /dev comes from devtmpfs, and silently
//!   dropping package content would hide it.
//! - Duplicate paths: the later entry wins (packages are processed sorted by
//!   name, then architecture and version); overwrites across packages are
//!   reported as warnings.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::tree::{Above, BlobStore, Inode, Key, Meta, Missing, Node, Owner, ResolveError, Tree};
use crate::{DebInput, Error, Result};

/// The `path_exclude` / `path_include` patterns, compiled.
#[derive(Debug)]
pub struct PathFilter {
    exclude: GlobSet,
    include: GlobSet,
}

impl PathFilter {
    pub fn new(exclude: &[String], include: &[String]) -> Result<Self> {
        Ok(PathFilter {
            exclude: glob_set(exclude, "path_exclude")?,
            include: glob_set(include, "path_include")?,
        })
    }

    /// Whether the absolute canonical `path` is dropped.
    pub fn excludes(&self, path: &str) -> bool {
        self.exclude.is_match(path) && !self.include.is_match(path)
    }
}

fn glob_set(patterns: &[String], field: &'static str) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        // `*` stays inside one component; `**` crosses them.
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Pattern {
                field,
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| Error::Pattern {
        field,
        pattern: patterns.join(" "),
        message: e.to_string(),
    })
}

/// What a package's control archive says that assembly needs.
#[derive(Debug, Default)]
pub struct Control {
    pub postinst: Option<String>,
}

/// State shared across packages while unpacking.
pub struct Unpacker<'a> {
    pub tree: &'a mut Tree,
    pub blobs: &'a mut BlobStore,
    pub filter: &'a PathFilter,
    pub warnings: &'a mut Vec<String>,
    pub packages: &'a [DebInput],
}

fn deb_err<'a>(deb: &'a DebInput, stage: &'static str) -> impl Fn(io::Error) -> Error + 'a {
    move |source| Error::Deb {
        path: deb.path.clone(),
        stage,
        source,
    }
}

/// A decompressing reader for an archive member, chosen by the suffix
/// after `.tar`.
fn decompressor<'r>(
    name: &str,
    suffix: &str,
    inner: Box<dyn Read + 'r>,
) -> io::Result<Box<dyn Read + 'r>> {
    match suffix {
        "" => Ok(inner),
        ".xz" => Ok(Box::new(liblzma::read::XzDecoder::new_multi_decoder(inner))),
        ".zst" => zstd::stream::read::Decoder::new(inner).map(|d| Box::new(d) as Box<dyn Read>),
        ".gz" => Ok(Box::new(flate2::read::GzDecoder::new(inner))),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "member {name} uses an unsupported compression (supported: none, xz, zstd, gzip)"
            ),
        )),
    }
}

impl Unpacker<'_> {
    /// Unpacks package number `index` (into `self.packages`).
    pub fn unpack(&mut self, index: usize) -> Result<Control> {
        let packages = self.packages;
        let deb = &packages[index];
        let file = std::fs::File::open(&deb.path).map_err(deb_err(deb, "open"))?;
        let mut archive = ar::Archive::new(io::BufReader::new(file));
        let mut control = Control::default();
        let mut saw_data = false;
        while let Some(member) = archive.next_entry() {
            let member = member.map_err(deb_err(deb, "read ar archive"))?;
            let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
            if let Some(suffix) = name.strip_prefix("control.tar") {
                let reader = decompressor(&name, suffix, Box::new(member))
                    .map_err(deb_err(deb, "open control archive"))?;
                control = read_control(reader).map_err(deb_err(deb, "read control archive"))?;
            } else if let Some(suffix) = name.strip_prefix("data.tar") {
                let reader = decompressor(&name, suffix, Box::new(member))
                    .map_err(deb_err(deb, "open data archive"))?;
                self.unpack_data(index, reader)?;
                saw_data = true;
            }
        }
        if !saw_data {
            return Err(Error::Deb {
                path: deb.path.clone(),
                stage: "find data archive",
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no data.tar member: not a Debian binary package",
                ),
            });
        }
        Ok(control)
    }

    fn unpack_data(&mut self, index: usize, reader: Box<dyn Read + '_>) -> Result<()> {
        let packages = self.packages;
        let deb = &packages[index];
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(deb_err(deb, "read data.tar"))?;
        for entry in entries {
            let mut entry = entry.map_err(deb_err(deb, "read data.tar"))?;
            self.unpack_entry(index, &mut entry)?;
        }
        Ok(())
    }

    fn hostile(&self, index: usize, entry: &str, message: impl Into<String>) -> Error {
        Error::Entry {
            package: self.packages[index].name.clone(),
            deb: self.packages[index].path.clone(),
            entry: entry.to_owned(),
            message: message.into(),
        }
    }

    fn unpack_entry(
        &mut self,
        index: usize,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<()> {
        let packages = self.packages;
        let deb = &packages[index];
        let raw = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw).map_err(|e| {
            self.hostile(
                index,
                &String::from_utf8_lossy(e.as_bytes()),
                "path is not UTF-8",
            )
        })?;
        let header = entry.header();
        let kind = header.entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let components = normalize(&raw).map_err(|m| self.hostile(index, &raw, m))?;
        let Some((name, parent)) = components.split_last() else {
            // "./" itself: the root directory's metadata.
            if kind.is_dir() {
                self.tree.root =
                    Some(meta_of(header, &raw).map_err(|m| self.hostile(index, &raw, m))?);
            }
            return Ok(());
        };
        let mut meta = meta_of(header, &raw).map_err(|m| self.hostile(index, &raw, m))?;
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(deb_err(deb, "read data.tar"))?
        {
            for ext in pax {
                let ext = ext.map_err(deb_err(deb, "read data.tar"))?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let name = String::from_utf8(name.to_vec())
                        .map_err(|_| self.hostile(index, &raw, "xattr name is not UTF-8"))?;
                    meta.xattrs.insert(name, ext.value_bytes().to_vec());
                }
            }
        }

        // Where would it land? Decide exclusion on the canonical path before
        // creating anything, so excluded subtrees leave no empty parents.
        let parent_path = parent.join("/");
        let pretend = self
            .tree
            .resolve(&[], &parent_path, true, Missing::Pretend, Above::Refuse)
            .map_err(|e: ResolveError| {
                self.hostile(index, &raw, format!("parent directory: {e}"))
            })?;
        let mut key = pretend.clone();
        key.push(name.clone());
        let key = Key::from_components(&key);
        if self.filter.excludes(&key.absolute()) {
            return Ok(());
        }
        let parent = self
            .tree
            .resolve(
                &[],
                &parent_path,
                true,
                Missing::Create { mtime: meta.mtime },
                Above::Refuse,
            )
            .map_err(|e| self.hostile(index, &raw, format!("parent directory: {e}")))?;
        match self.tree.get(&parent).map(|e| &e.node) {
            None if !parent.is_empty() => {
                let mtime = meta.mtime;
                self.tree.put(
                    Key::from_components(&parent),
                    Node::Dir(Meta::new(0o755, mtime)),
                    Owner::Assembly,
                );
            }
            Some(Node::File(_)) => {
                return Err(self.hostile(
                    index,
                    &raw,
                    format!("parent /{} is a file", parent.join("/")),
                ));
            }
            _ => {}
        }
        let owner = Owner::Package(index);
        let existing = self.tree.nodes.get(&key).map(|e| (e.node.clone(), e.owner));

        use tar::EntryType as T;
        match kind {
            T::Directory => match existing {
                Some((Node::Dir(_), _)) | None => self.tree.put(key, Node::Dir(meta), owner),
                Some((Node::Symlink { .. }, _)) => {
                    // Keep a symlink to a directory (merged /usr); replace
                    // one that leads nowhere useful.
                    let to_dir = self
                        .tree
                        .resolve(&[], &key.0, true, Missing::Fail, Above::Refuse)
                        .ok()
                        .and_then(|c| self.tree.get(&c).map(|e| matches!(e.node, Node::Dir(_))));
                    if to_dir != Some(true) {
                        self.tree.put(key, Node::Dir(meta), owner);
                    }
                }
                Some((Node::File(_), previous)) => {
                    self.warn_overwrite(index, &key, previous);
                    self.tree.put(key, Node::Dir(meta), owner);
                }
            },
            T::Regular | T::Continuous | T::Link | T::Symlink => {
                if let Some((Node::Dir(_), _)) = existing {
                    if kind == T::Symlink {
                        self.warnings.push(format!(
                            "{}: kept directory {} instead of replacing it with a symlink",
                            self.packages[index].name,
                            key.absolute()
                        ));
                        return Ok(());
                    }
                    return Err(self.hostile(
                        index,
                        &raw,
                        format!("would replace directory {} with a file", key.absolute()),
                    ));
                }
                if let Some((_, previous)) = existing {
                    self.warn_overwrite(index, &key, previous);
                }
                let node = match kind {
                    T::Symlink => {
                        let target = entry
                            .link_name_bytes()
                            .map(|b| String::from_utf8(b.into_owned()))
                            .transpose()
                            .map_err(|_| self.hostile(index, &raw, "symlink target is not UTF-8"))?
                            .filter(|t| !t.is_empty())
                            .ok_or_else(|| self.hostile(index, &raw, "symlink without a target"))?;
                        Node::Symlink { target, meta }
                    }
                    T::Link => Node::File(self.hardlink_target(index, &raw, entry)?),
                    _ => {
                        let (blob, size) = self
                            .blobs
                            .put_reader(entry)
                            .map_err(deb_err(deb, "unpack file content"))?;
                        Node::File(self.tree.add_inode(Inode { blob, size, meta }))
                    }
                };
                self.tree.put(key, node, owner);
            }
            T::Char | T::Block | T::Fifo => {
                return Err(self.hostile(
                    index,
                    &raw,
                    "device nodes and FIFOs are not unpacked (the guest's /dev is devtmpfs); \
                     add the path to rootfs.path_exclude to drop it",
                ));
            }
            other => {
                return Err(self.hostile(
                    index,
                    &raw,
                    format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    fn hardlink_target(
        &mut self,
        index: usize,
        raw: &str,
        entry: &tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<usize> {
        let target = entry
            .link_name_bytes()
            .map(|b| String::from_utf8(b.into_owned()))
            .transpose()
            .map_err(|_| self.hostile(index, raw, "hardlink target is not UTF-8"))?
            .ok_or_else(|| self.hostile(index, raw, "hardlink without a target"))?;
        let components = normalize(&target)
            .map_err(|m| self.hostile(index, raw, format!("hardlink target: {m}")))?;
        let resolved = self
            .tree
            .resolve(
                &[],
                &components.join("/"),
                false,
                Missing::Fail,
                Above::Refuse,
            )
            .map_err(|e| self.hostile(index, raw, format!("hardlink target {target}: {e}")))?;
        match self.tree.get(&resolved).map(|e| &e.node) {
            Some(Node::File(id)) => Ok(*id),
            _ => Err(self.hostile(
                index,
                raw,
                format!("hardlink target {target} is not a regular file unpacked before it"),
            )),
        }
    }

    fn warn_overwrite(&mut self, index: usize, key: &Key, previous: Owner) {
        if let Owner::Package(p) = previous
            && p != index
        {
            self.warnings.push(format!(
                "{} overwrites {} from {}",
                self.packages[index].name,
                key.absolute(),
                self.packages[p].name
            ));
        }
    }
}

/// Splits an entry path into components; refuses `..`.
pub fn normalize(raw: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for component in crate::tree::split(raw) {
        if component == ".." {
            return Err("path contains '..'".into());
        }
        if component.contains('\0') {
            return Err("path contains NUL".into());
        }
        out.push(component.to_owned());
    }
    Ok(out)
}

fn meta_of(header: &tar::Header, raw: &str) -> std::result::Result<Meta, String> {
    let field = |what: &str, e: io::Error| format!("bad {what} field in tar header of {raw}: {e}");
    let uid = header.uid().map_err(|e| field("uid", e))?;
    let gid = header.gid().map_err(|e| field("gid", e))?;
    Ok(Meta {
        mode: header.mode().map_err(|e| field("mode", e))? & 0o7777,
        uid: u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?,
        gid: u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?,
        mtime: header.mtime().map_err(|e| field("mtime", e))?,
        xattrs: BTreeMap::new(),
    })
}

fn read_control(reader: Box<dyn Read + '_>) -> io::Result<Control> {
    let mut control = Control::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        if split(&String::from_utf8_lossy(&path)).eq(["postinst"]) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            control.postinst = Some(text);
        }
    }
    Ok(control)
}

use crate::tree::split;

/// Checks a file's sha256 against the expected hex digest.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    let io_err = |source| Error::Deb {
        path: path.to_owned(),
        stage: "verify sha256",
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = crate::hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(Error::Checksum {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}
