//! The read-only root disk: an ext4 image built from the rootfs tarball.
//!
//! Tool choice: Debian 12's e2fsprogs (1.47.0) cannot read a tarball with
//! `mke2fs -d` (that arrived in 1.47.1), and unpacking the tarball on the host
//! would make ownership, device nodes and `security.*` xattrs depend on
//! running as root and on the host filesystem. Instead `mke2fs` creates an
//! empty filesystem and one `debugfs -w` script populates it from the parsed
//! tarball: `write` for contents, then `sif` for mode, owner and times,
//! `ea_set` for xattrs, `mknod`/`symlink`/`ln` for the rest. Everything that
//! lands in the image comes from the tar headers, so the result does not
//! depend on the user, umask or host filesystem; only long-standing debugfs
//! commands are used (tested with 1.47.0).
//!
//! Determinism: the mke2fs profile is ours (the host's /etc/mke2fs.conf is
//! ignored), the UUID and directory hash seed derive from a hash of the
//! inputs, `E2FSPROGS_FAKE_TIME` pins every superblock time, inodes are
//! created in sorted path order, and each inode's times are set explicitly.
//! No journal: the root is mounted read-only with copy-on-write in the ubd
//! layer, so a journal would only cost space.
//!
//! The result is checked with `e2fsck -fn` before it is renamed into place.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

use crate::{Error, Result, io_err};

const STAGE: &str = "ext4 image";
const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;

/// mke2fs profile used instead of the host's, so features do not drift with
/// the host's e2fsprogs configuration.
const MKE2FS_PROFILE: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// A host file to place into the image, owned by root, with mtime = epoch.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path inside the image, e.g. `/usr/lib/usmol/init`.
    pub guest_path: String,
    pub host_path: PathBuf,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
}

/// What was built, for logs and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Summary {
    pub uuid: String,
    pub blocks: u64,
    pub inodes: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File { staged: PathBuf, size: u64 },
    Symlink(String),
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Builds `out` from `rootfs_tar` plus `extra_files`. All inode times are
/// clamped to `epoch`. `tail` names regular files (absolute guest paths)
/// written after all others, in that order, so their blocks end the disk
/// side by side. Returns the figures of the image.
pub fn make_ext4(
    rootfs_tar: &Path,
    extra_files: &[ExtraFile],
    tail: &[String],
    out: &Path,
    epoch: u64,
) -> Result<Ext4Summary> {
    let work = tempfile::Builder::new()
        .prefix(".usmol-ext4-")
        .tempdir_in(parent_dir(out))
        .map_err(io_err(STAGE, parent_dir(out)))?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"usmol-ext4-v1\0");
    hasher.update(epoch.to_le_bytes());
    let mut tree = read_tar(rootfs_tar, work.path(), epoch, &mut hasher)?;
    add_extra_files(&mut tree, extra_files, epoch, &mut hasher)?;
    let tail = tail_paths(&tree, tail, rootfs_tar)?;
    hasher.update(format!("tail\0{tail:?}\n").as_bytes());

    let uuid = uuid_from(&hasher.finalize());
    let (blocks, inodes) = estimate_size(&tree);
    let tmp_img = work.path().join("image.ext4");
    let mut attempt_blocks = blocks;
    // The estimate is deliberately tight; grow and retry if debugfs runs out.
    let mut last_err = None;
    for _ in 0..4 {
        match build_once(
            &tree,
            &tail,
            &tmp_img,
            work.path(),
            &uuid,
            attempt_blocks,
            inodes,
            epoch,
        ) {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e) => {
                last_err = Some(e);
                attempt_blocks += attempt_blocks / 4 + 256;
            }
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    fsck(&tmp_img)?;
    let bytes = std::fs::metadata(&tmp_img)
        .map_err(io_err(STAGE, &tmp_img))?
        .len();
    std::fs::rename(&tmp_img, out).map_err(io_err(STAGE, out))?;
    Ok(Ext4Summary {
        uuid,
        blocks: attempt_blocks,
        inodes,
        bytes,
    })
}

/// Normalises the `tail` list and checks that each entry is a regular file.
fn tail_paths(
    tree: &BTreeMap<String, Node>,
    tail: &[String],
    rootfs_tar: &Path,
) -> Result<Vec<String>> {
    tail.iter()
        .map(|raw| {
            let path = normalize(raw, rootfs_tar)?;
            match tree.get(&path).map(|n| &n.kind) {
                Some(Kind::File { .. }) => Ok(path),
                _ => Err(Error::Invalid {
                    stage: STAGE,
                    path: rootfs_tar.to_path_buf(),
                    message: format!(
                        "the recipe's rootfs.disk_tail names {raw}, which is not a regular file in this tarball; remove it from the list"
                    ),
                }),
            }
        })
        .collect()
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Normalises a tar or guest path to `a/b/c` (no leading slash; `` = root).
fn normalize(raw: &str, what: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::Invalid {
                    stage: STAGE,
                    path: what.to_path_buf(),
                    message: format!("entry `{raw}` contains `..`; refusing it"),
                });
            }
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    // debugfs reads `<N>` as an inode number and cannot quote a newline.
    if path.contains('\n') || parts.iter().any(|p| p.starts_with('<') && p.ends_with('>')) {
        return Err(Error::Invalid {
            stage: STAGE,
            path: what.to_path_buf(),
            message: format!("entry `{raw}` has a name debugfs cannot address"),
        });
    }
    Ok(path)
}

fn read_tar(
    tar_path: &Path,
    work: &Path,
    epoch: u64,
    hasher: &mut sha2::Sha256,
) -> Result<BTreeMap<String, Node>> {
    let file = std::fs::File::open(tar_path).map_err(io_err(STAGE, tar_path))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let files_dir = work.join("files");
    std::fs::create_dir(&files_dir).map_err(io_err(STAGE, &files_dir))?;
    let mut tree = BTreeMap::new();
    let bad = |message: String| Error::Invalid {
        stage: STAGE,
        path: tar_path.to_path_buf(),
        message,
    };
    let entries = archive.entries().map_err(io_err(STAGE, tar_path))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(io_err(STAGE, tar_path))?;
        let raw_path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| bad("an entry name is not UTF-8".into()))?;
        let path = normalize(&raw_path, tar_path)?;
        let header = entry.header().clone();
        let mode = header.mode().map_err(io_err(STAGE, tar_path))? & 0o7777;
        let uid = header.uid().map_err(io_err(STAGE, tar_path))?;
        let gid = header.gid().map_err(io_err(STAGE, tar_path))?;
        let mtime = header.mtime().map_err(io_err(STAGE, tar_path))?.min(epoch);
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().map_err(io_err(STAGE, tar_path))? {
            for ext in exts {
                let ext = ext.map_err(io_err(STAGE, tar_path))?;
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let link = || -> Result<String> {
            let l = entry
                .link_name_bytes()
                .ok_or_else(|| bad(format!("link `{raw_path}` has no target")))?;
            String::from_utf8(l.into_owned())
                .map_err(|_| bad(format!("link `{raw_path}` target is not UTF-8")))
        };
        let device = || -> Result<(u32, u32)> {
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            Ok((major, minor))
        };
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let staged = files_dir.join(index.to_string());
                let mut f = std::fs::File::create(&staged).map_err(io_err(STAGE, &staged))?;
                let mut buf = vec![0u8; 1 << 16];
                let mut size = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(io_err(STAGE, tar_path))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    f.write_all(&buf[..n]).map_err(io_err(STAGE, &staged))?;
                    size += n as u64;
                }
                Kind::File { staged, size }
            }
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => Kind::Hardlink(normalize(&link()?, tar_path)?),
            tar::EntryType::Char => {
                let (a, b) = device()?;
                Kind::Char(a, b)
            }
            tar::EntryType::Block => {
                let (a, b) = device()?;
                Kind::Block(a, b)
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(bad(format!(
                    "entry `{raw_path}` has unsupported type {other:?}"
                )));
            }
        };
        // The staging path is random; the content was hashed above.
        let kind_key = match &kind {
            Kind::File { size, .. } => format!("file {size}"),
            other => format!("{other:?}"),
        };
        hasher.update(
            format!("{path}\0{kind_key}\0{mode}\0{uid}\0{gid}\0{mtime}\0{xattrs:?}\n").as_bytes(),
        );
        if path.is_empty() && !matches!(kind, Kind::Dir) {
            return Err(bad("the root entry is not a directory".into()));
        }
        ensure_parents(&mut tree, &path, epoch, tar_path)?;
        tree.insert(
            path,
            Node {
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            },
        );
    }
    Ok(tree)
}

/// Creates missing parent directories (root-owned, 0755) and refuses a
/// parent that is not a directory.
fn ensure_parents(
    tree: &mut BTreeMap<String, Node>,
    path: &str,
    epoch: u64,
    what: &Path,
) -> Result<()> {
    let mut parent = String::new();
    let comps: Vec<&str> = path.split('/').collect();
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(comp);
        match tree.get(&parent) {
            Some(n) if matches!(n.kind, Kind::Dir) => {}
            Some(_) => {
                return Err(Error::Invalid {
                    stage: STAGE,
                    path: what.to_path_buf(),
                    message: format!("`{path}` is below `{parent}`, which is not a directory"),
                });
            }
            None => {
                tree.insert(parent.clone(), dir_node(epoch));
            }
        }
    }
    tree.entry(String::new()).or_insert_with(|| dir_node(epoch));
    Ok(())
}

fn dir_node(epoch: u64) -> Node {
    Node {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: epoch,
        xattrs: BTreeMap::new(),
    }
}

fn add_extra_files(
    tree: &mut BTreeMap<String, Node>,
    extra: &[ExtraFile],
    epoch: u64,
    hasher: &mut sha2::Sha256,
) -> Result<()> {
    for f in extra {
        let path = normalize(&f.guest_path, &f.host_path)?;
        let meta = std::fs::metadata(&f.host_path).map_err(io_err(STAGE, &f.host_path))?;
        if !meta.is_file() {
            return Err(Error::Invalid {
                stage: STAGE,
                path: f.host_path.clone(),
                message: "extra file is not a regular file".into(),
            });
        }
        let mut file = std::fs::File::open(&f.host_path).map_err(io_err(STAGE, &f.host_path))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err(STAGE, &f.host_path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.update(format!("extra\0{path}\0{}\n", f.mode).as_bytes());
        ensure_parents(tree, &path, epoch, &f.host_path)?;
        tree.insert(
            path,
            Node {
                kind: Kind::File {
                    staged: f.host_path.clone(),
                    size: meta.len(),
                },
                mode: f.mode & 0o7777,
                uid: 0,
                gid: 0,
                mtime: epoch,
                xattrs: BTreeMap::new(),
            },
        );
    }
    Ok(())
}

/// A version-4-shaped UUID from the first 16 bytes of the content hash.
fn uuid_from(hash: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Blocks and inodes for the tree: data rounded to blocks, directory blocks,
/// out-of-inode xattr and long-symlink blocks, inode tables, group metadata,
/// plus a small slack. A read-only root needs no free space beyond that.
fn estimate_size(tree: &BTreeMap<String, Node>) -> (u64, u64) {
    let mut data = 0u64;
    let mut dir_bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for (path, node) in tree {
        match &node.kind {
            // Extent index blocks for big files: one per ~128 MiB extent run.
            Kind::File { size, .. } => data += size.div_ceil(BLOCK) + size / (128 << 20),
            Kind::Symlink(t) if t.len() >= 60 => data += 1,
            _ => {}
        }
        // In-inode xattr space is ~100 bytes; beyond that, a block.
        if node
            .xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 20)
            .sum::<usize>()
            > 96
        {
            data += 1;
        }
        if !path.is_empty() {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            *dir_bytes.entry(parent).or_default() += (8 + name.len() as u64).next_multiple_of(4);
        }
    }
    for node in tree.values() {
        if matches!(node.kind, Kind::Dir) {
            data += 1;
        }
    }
    // Directory blocks beyond the first, with htree index overhead.
    data += dir_bytes
        .values()
        .map(|b| (b * 5 / 4).div_ceil(BLOCK))
        .sum::<u64>();
    let inodes = (tree.len() as u64 + 32).next_multiple_of(16);
    let inode_blocks = (inodes * INODE_SIZE).div_ceil(BLOCK);
    let total = data + data / 50 + inode_blocks;
    let groups = total.div_ceil(32768).max(1);
    // Superblock/descriptor backups, bitmaps, lost+found and slack.
    let blocks = total + groups * 4 + 64 + 256;
    (blocks, inodes)
}

/// Quotes a debugfs argument: ss parses `"..."` with `""` as a literal quote.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn tool(stage: &'static str, cmd: &mut Command) -> Result<std::process::Output> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Tool {
        stage,
        command: desc.clone(),
        message: format!("{e} (install e2fsprogs)"),
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            stage,
            command: desc,
            message: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_once(
    tree: &BTreeMap<String, Node>,
    tail: &[String],
    img: &Path,
    work: &Path,
    uuid: &str,
    blocks: u64,
    inodes: u64,
    epoch: u64,
) -> Result<()> {
    let _ = std::fs::remove_file(img);
    let profile = work.join("mke2fs.conf");
    std::fs::write(&profile, MKE2FS_PROFILE).map_err(io_err(STAGE, &profile))?;
    let fake_time = epoch.to_string();
    tool(
        STAGE,
        Command::new("mke2fs")
            .env("MKE2FS_CONFIG", &profile)
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .env("SOURCE_DATE_EPOCH", &fake_time)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-o", "Linux",
            ])
            .args(["-L", "usmol-root", "-U", uuid, "-N", &inodes.to_string()])
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,nodiscard"
            ))
            .arg(img)
            .arg(blocks.to_string()),
    )?;

    let script_path = work.join("populate.debugfs");
    let script = debugfs_script(tree, tail, work, epoch)?;
    std::fs::write(&script_path, script).map_err(io_err(STAGE, &script_path))?;
    let out = tool(
        STAGE,
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(img),
    )?;
    // debugfs exits 0 even when a command fails; its errors go to stderr,
    // where the only expected line is its version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !errors.is_empty() {
        return Err(Error::Tool {
            stage: STAGE,
            command: format!("debugfs -w -f {}", script_path.display()),
            message: errors
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(())
}

fn debugfs_script(
    tree: &BTreeMap<String, Node>,
    tail: &[String],
    work: &Path,
    epoch: u64,
) -> Result<String> {
    let mut s = String::new();
    let mut links: BTreeMap<&str, u64> = BTreeMap::new();
    let write = |s: &mut String, path: &str, staged: &Path| -> Result<()> {
        let host = staged.to_str().ok_or_else(|| Error::Invalid {
            stage: STAGE,
            path: staged.to_owned(),
            message: "staging path is not UTF-8".into(),
        })?;
        writeln!(s, "write {} {}", q(host), q(&format!("/{path}"))).unwrap();
        Ok(())
    };
    // Pass 1: create inodes in sorted order (parents sort before children),
    // the tail files last: debugfs allocates blocks first-fit in write order.
    for (path, node) in tree {
        let p = q(&format!("/{path}"));
        match &node.kind {
            Kind::Dir if path.is_empty() => {}
            Kind::Dir => writeln!(s, "mkdir {p}").unwrap(),
            Kind::File { .. } if tail.contains(path) => {}
            Kind::File { staged, .. } => write(&mut s, path, staged)?,
            Kind::Symlink(t) => writeln!(s, "symlink {p} {}", q(t)).unwrap(),
            // debugfs `mknod` links the name into the cwd without splitting
            // the path, so change into the parent first.
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                let spec = match node.kind {
                    Kind::Char(a, b) => format!("c {a} {b}"),
                    Kind::Block(a, b) => format!("b {a} {b}"),
                    _ => "p".to_owned(),
                };
                writeln!(
                    s,
                    "cd {}\nmknod {} {spec}\ncd /",
                    q(&format!("/{parent}")),
                    q(name)
                )
                .unwrap()
            }
            Kind::Hardlink(_) => {}
        }
    }
    for path in tail {
        if let Some(Node {
            kind: Kind::File { staged, .. },
            ..
        }) = tree.get(path)
        {
            write(&mut s, path, staged)?;
        }
    }
    // Pass 2: hard links, once every target exists. debugfs `ln` does not
    // count links, so the target's count is set in pass 3.
    for (path, node) in tree {
        if let Kind::Hardlink(target) = &node.kind {
            match tree.get(target).map(|n| &n.kind) {
                Some(Kind::File { .. }) => {}
                _ => {
                    return Err(Error::Invalid {
                        stage: STAGE,
                        path: PathBuf::from(path),
                        message: format!(
                            "hard link target `{target}` is not a regular file in the tarball"
                        ),
                    });
                }
            }
            *links.entry(target.as_str()).or_insert(1) += 1;
            writeln!(
                s,
                "ln {} {}",
                q(&format!("/{target}")),
                q(&format!("/{path}"))
            )
            .unwrap();
        }
    }
    // Pass 3: metadata, children before parents is irrelevant since no
    // later command touches a directory's times.
    let xattr_dir = work.join("xattrs");
    std::fs::create_dir_all(&xattr_dir).map_err(io_err(STAGE, &xattr_dir))?;
    let mut xattr_n = 0usize;
    for (path, node) in tree {
        let type_bits = match node.kind {
            Kind::Dir => 0o040000,
            Kind::File { .. } => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Hardlink(_) => continue,
        };
        let p = q(&format!("/{path}"));
        let mode = if matches!(node.kind, Kind::Symlink(_)) {
            0o777
        } else {
            node.mode
        };
        writeln!(s, "sif {p} mode 0{:o}", type_bits | mode).unwrap();
        writeln!(s, "sif {p} uid {}", node.uid).unwrap();
        writeln!(s, "sif {p} gid {}", node.gid).unwrap();
        for field in ["atime", "ctime", "crtime"] {
            writeln!(s, "sif {p} {field} @{epoch}").unwrap();
        }
        writeln!(s, "sif {p} mtime @{}", node.mtime).unwrap();
        if let Some(n) = links.get(path.as_str()) {
            writeln!(s, "sif {p} links_count {n}").unwrap();
        }
        for (name, value) in &node.xattrs {
            let f = xattr_dir.join(xattr_n.to_string());
            xattr_n += 1;
            std::fs::write(&f, value).map_err(io_err(STAGE, &f))?;
            writeln!(
                s,
                "ea_set -f {} {p} {}",
                q(f.to_str().unwrap_or_default()),
                q(name)
            )
            .unwrap();
        }
    }
    // lost+found was made by mke2fs at the fake time already; nothing else
    // carries a host time.
    Ok(s)
}

fn fsck(img: &Path) -> Result<()> {
    tool(STAGE, Command::new("e2fsck").arg("-fn").arg(img)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_dotdot_and_inode_syntax() {
        let p = Path::new("t.tar");
        assert_eq!(normalize("./usr/bin/", p).unwrap(), "usr/bin");
        assert_eq!(normalize("/", p).unwrap(), "");
        assert!(normalize("usr/../../etc", p).is_err());
        assert!(normalize("a/<12>", p).is_err());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(q(r#"a "b" c"#), r#""a ""b"" c""#);
    }

    #[test]
    fn uuid_is_v4_shaped_and_stable() {
        let u = uuid_from(&[0xffu8; 32]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
