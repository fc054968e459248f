//! The root filesystem as an in-memory table: canonical path -> node.
//!
//! Every package entry is placed by resolving its path against this table,
//! never against the host filesystem, so an entry cannot leave the root by
//! construction: symlinks are followed lexically inside the table and a
//! `..` that would climb above the root is refused. File contents live in a
//! [`BlobStore`] under names we choose, so hostile names never touch a real
//! path until the tree is materialised from the table.
//!
//! Architecture Invariant: keys are canonical — no key has a symlink or a
//! non-directory as a proper prefix, and no key holds `.`, `..` or empty
//! components.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Ownership, permission bits and extended attributes of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// xattr name (e.g. `security.capability`) -> raw value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Meta {
    pub fn new(mode: u32, mtime: u64) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }
}

/// Index into [`Tree::inodes`]; hardlinked paths share one.
pub type InodeId = usize;

/// A regular file's content and metadata, shared by all its hardlinks.
#[derive(Debug, Clone)]
pub struct Inode {
    pub blob: BlobId,
    pub size: u64,
    pub meta: Meta,
}

#[derive(Debug, Clone)]
pub enum Node {
    Dir(Meta),
    File(InodeId),
    Symlink { target: String, meta: Meta },
}

/// Who put a node there: a package index, or the assembly step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Package(usize),
    Assembly,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub node: Node,
    pub owner: Owner,
}

/// A canonical relative path (`usr/bin/env`), ordered component by
/// component so that a directory's subtree is contiguous and follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub String);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.split('/').cmp(other.0.split('/'))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    pub fn from_components(components: &[String]) -> Self {
        Key(components.join("/"))
    }

    pub fn components(&self) -> Vec<String> {
        self.0.split('/').map(str::to_owned).collect()
    }

    /// The absolute form used in messages and path patterns.
    pub fn absolute(&self) -> String {
        format!("/{}", self.0)
    }
}

/// Why a path could not be resolved inside the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving it climbs above the root at /{0}")]
    Escape(String),
    #[error("too many levels of symbolic links at /{0}")]
    Loop(String),
    #[error("/{0} is not a directory")]
    NotDir(String),
    #[error("/{0} does not exist")]
    Missing(String),
}

/// What to do about a missing intermediate directory while resolving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Report [`ResolveError::Missing`].
    Fail,
    /// Create it (root-owned, `0755`), as an unpacker creates parents.
    Create { mtime: u64 },
    /// Pretend it exists, to learn the canonical path without changing
    /// anything (used for path filters).
    Pretend,
}

/// How `..` above the root is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Above {
    /// An error: package entries may not reach out of the root.
    Refuse,
    /// Stays at the root, as the kernel does at run time inside the image.
    Clamp,
}

const MAX_SYMLINK_HOPS: usize = 40;

/// Splits a path into its non-empty, non-`.` components.
pub fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

#[derive(Debug, Default)]
pub struct Tree {
    pub root: Option<Meta>,
    pub nodes: BTreeMap<Key, Entry>,
    pub inodes: Vec<Inode>,
}

impl Tree {
    pub fn get(&self, components: &[String]) -> Option<&Entry> {
        self.nodes.get(&Key::from_components(components))
    }

    pub fn get_path(&self, absolute: &str) -> Option<&Entry> {
        let components: Vec<String> = split(absolute).map(str::to_owned).collect();
        self.get(&components)
    }

    /// Resolves `path` (relative to the directory `base`, or to the root when
    /// absolute) to canonical components. Symlinks in intermediate
    /// components are always followed; the last one only if `follow_last`.
    /// A missing last component is not an error: the caller decides.
    pub fn resolve(
        &mut self,
        base: &[String],
        path: &str,
        follow_last: bool,
        missing: Missing,
        above: Above,
    ) -> Result<Vec<String>, ResolveError> {
        let mut current: Vec<String> = if path.starts_with('/') {
            Vec::new()
        } else {
            base.to_vec()
        };
        let mut queue: VecDeque<String> = split(path).map(str::to_owned).collect();
        let mut hops = 0;
        // Once a component is pretended, everything below it is too.
        let mut pretending = false;
        while let Some(component) = queue.pop_front() {
            if component == ".." {
                if current.pop().is_none() && above == Above::Refuse {
                    return Err(ResolveError::Escape(String::new()));
                }
                continue;
            }
            let last = queue.is_empty();
            current.push(component);
            if pretending {
                continue;
            }
            let key = Key::from_components(&current);
            match self.nodes.get(&key).map(|e| &e.node) {
                None if last => return Ok(current),
                None => match missing {
                    Missing::Fail => return Err(ResolveError::Missing(key.0)),
                    Missing::Pretend => pretending = true,
                    Missing::Create { mtime } => {
                        self.nodes.insert(
                            key,
                            Entry {
                                node: Node::Dir(Meta::new(0o755, mtime)),
                                owner: Owner::Assembly,
                            },
                        );
                    }
                },
                Some(Node::Dir(_)) => {}
                Some(Node::File(_)) if last => return Ok(current),
                Some(Node::File(_)) => return Err(ResolveError::NotDir(key.0)),
                Some(Node::Symlink { .. }) if last && !follow_last => return Ok(current),
                Some(Node::Symlink { target, .. }) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveError::Loop(key.0));
                    }
                    let target = target.clone();
                    current.pop();
                    if target.starts_with('/') {
                        current.clear();
                    }
                    let parts: Vec<&str> = split(&target).collect();
                    for c in parts.into_iter().rev() {
                        queue.push_front(c.to_owned());
                    }
                    if queue.is_empty() {
                        // A link to "/" or ".": the directory itself.
                        return Ok(current);
                    }
                }
            }
        }
        Ok(current)
    }

    /// Places `node` at canonical `key`, replacing a non-directory.
    pub fn put(&mut self, key: Key, node: Node, owner: Owner) {
        self.nodes.insert(key, Entry { node, owner });
    }

    pub fn add_inode(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// The inode of the regular file at `absolute`, following symlinks.
    pub fn file_at(&mut self, absolute: &str) -> Option<InodeId> {
        let components = self
            .resolve(&[], absolute, true, Missing::Fail, Above::Clamp)
            .ok()?;
        match self.get(&components)?.node {
            Node::File(id) => Some(id),
            _ => None,
        }
    }

    /// Whether `absolute` names something that exists (following symlinks).
    pub fn exists(&mut self, absolute: &str) -> bool {
        self.resolve(&[], absolute, true, Missing::Fail, Above::Clamp)
            .ok()
            .is_some_and(|c| c.is_empty() || self.get(&c).is_some())
    }
}

/// Names a file in the [`BlobStore`].
pub type BlobId = u64;

/// File contents on disk under counter names inside a private directory.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    next: BlobId,
}

impl BlobStore {
    pub fn new(dir: PathBuf) -> Self {
        BlobStore { dir, next: 0 }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(id: BlobId) -> String {
        format!("{id:08}")
    }

    pub fn path(&self, id: BlobId) -> PathBuf {
        self.dir.join(Self::name(id))
    }

    /// Copies `reader` into a new blob; returns its id and size.
    pub fn put_reader(&mut self, reader: &mut dyn Read) -> io::Result<(BlobId, u64)> {
        let id = self.next;
        self.next += 1;
        let mut file = io::BufWriter::new(File::create_new(self.path(id))?);
        let size = io::copy(reader, &mut file)?;
        file.into_inner().map_err(|e| e.into_error())?;
        Ok((id, size))
    }

    pub fn put_bytes(&mut self, mut bytes: &[u8]) -> io::Result<(BlobId, u64)> {
        self.put_reader(&mut bytes)
    }

    pub fn read(&self, id: BlobId) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(id))
    }

    pub fn open(&self, id: BlobId) -> io::Result<File> {
        File::open(self.path(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(path: &str) -> Vec<String> {
        split(path).map(str::to_owned).collect()
    }

    fn tree_with(links: &[(&str, &str)], dirs: &[&str]) -> Tree {
        let mut tree = Tree::default();
        for d in dirs {
            tree.put(
                Key(d.to_string()),
                Node::Dir(Meta::new(0o755, 0)),
                Owner::Assembly,
            );
        }
        for (l, t) in links {
            tree.put(
                Key(l.to_string()),
                Node::Symlink {
                    target: t.to_string(),
                    meta: Meta::new(0o777, 0),
                },
                Owner::Assembly,
            );
        }
        tree
    }

    #[test]
    fn keys_sort_parents_first_and_subtrees_together() {
        let mut keys = [
            Key("a-b".into()),
            Key("a/c".into()),
            Key("a".into()),
            Key("a/b/c".into()),
        ];
        keys.sort();
        let got: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(got, ["a", "a/b/c", "a/c", "a-b"]);
    }

    #[test]
    fn usrmerge_link_is_followed_inside_the_root() {
        let mut tree = tree_with(&[("bin", "usr/bin")], &["usr", "usr/bin"]);
        let got = tree.resolve(&[], "bin/ls", false, Missing::Fail, Above::Refuse);
        assert_eq!(got.unwrap(), c("usr/bin/ls"));
    }

    #[test]
    fn absolute_link_stays_in_the_root() {
        let mut tree = tree_with(&[("x", "/usr")], &["usr"]);
        let got = tree.resolve(&[], "x/f", false, Missing::Fail, Above::Refuse);
        assert_eq!(got.unwrap(), c("usr/f"));
    }

    #[test]
    fn climbing_above_the_root_is_refused_or_clamped() {
        let mut tree = tree_with(&[("usr/x", "../../../etc")], &["usr", "etc"]);
        let refused = tree.resolve(&[], "usr/x/passwd", false, Missing::Fail, Above::Refuse);
        assert!(
            matches!(refused, Err(ResolveError::Escape(_))),
            "{refused:?}"
        );
        let clamped = tree.resolve(&[], "usr/x/passwd", false, Missing::Fail, Above::Clamp);
        assert_eq!(clamped.unwrap(), c("etc/passwd"));
    }

    #[test]
    fn symlink_loops_end() {
        let mut tree = tree_with(&[("a", "b"), ("b", "a")], &[]);
        let got = tree.resolve(&[], "a/f", false, Missing::Fail, Above::Refuse);
        assert!(matches!(got, Err(ResolveError::Loop(_))), "{got:?}");
    }

    #[test]
    fn pretend_does_not_create() {
        let mut tree = Tree::default();
        let got = tree.resolve(&[], "a/b/c", false, Missing::Pretend, Above::Refuse);
        assert_eq!(got.unwrap(), c("a/b/c"));
        assert!(tree.nodes.is_empty());
        tree.resolve(
            &[],
            "a/b/c",
            false,
            Missing::Create { mtime: 1 },
            Above::Refuse,
        )
        .unwrap();
        assert_eq!(tree.nodes.len(), 2);
    }
}
