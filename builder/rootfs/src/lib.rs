//! Turns verified `.deb` files into a root filesystem without running
//! maintainer scripts: safe extraction, assembly, deterministic tarball.
//!
//! Stages of [`build_rootfs`]:
//! 1. verify each `.deb` against its sha256 (the lock's);
//! 2. unpack every `data.tar` into an in-memory table (path -> node) with
//!    contents in a private blob store ([`extract`] documents the policy for
//!    hostile entries); `path_exclude`/`path_include` apply here;
//! 3. assemble what maintainer scripts would have done ([`assemble`]);
//! 4. write the tarball (always), the directory (optional) and the
//!    manifest from the table ([`output`]).
//!
//! Architecture Invariant: nothing here runs code from a package, and no
//! path from a package is ever handed to the host filesystem; only the
//! canonical table is materialised, under a directory this crate created.
//!
//! Architecture Invariant: ownership, modes and xattrs come from the table,
//! so a build without root yields the same tarball as one with root.

mod assemble;
mod extract;
mod output;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use assemble::{Registration, parse_alternatives};

/// One package to install: the lock's identity for it and where the
/// verified file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInput {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
    pub source_version: String,
    /// Expected sha256 of the file, hex.
    pub sha256: String,
    pub path: PathBuf,
}

/// Where the results go. The tarball and manifest are always written; the
/// directory tree only when `dir` is set (it must be absent or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    pub dir: Option<PathBuf>,
    pub tarball: PathBuf,
    pub manifest: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub packages: usize,
    /// Entries in the tarball (directories, files, links).
    pub entries: usize,
    /// Bytes of regular-file content (each hardlinked file counted once).
    pub content_bytes: u64,
    /// sha256 of the tarball, hex.
    pub tarball_sha256: String,
    /// `update-alternatives` links made: link -> chosen target.
    pub alternatives: BTreeMap<String, String>,
    /// Things a human should know but that did not stop the build
    /// (overwritten files, kept directories, skipped alternatives).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {stage}: {source}")]
    Deb {
        path: PathBuf,
        stage: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path}: sha256 is {actual} but {expected} was expected; the file is corrupt or was replaced: delete it and fetch it again"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("package {package} ({deb}): refused entry {entry:?}: {message}")]
    Entry {
        package: String,
        deb: PathBuf,
        entry: String,
        message: String,
    },
    #[error("rootfs.{field}: invalid pattern {pattern:?}: {message}")]
    Pattern {
        field: &'static str,
        pattern: String,
        message: String,
    },
    #[error("rootfs assembly: {message}")]
    Assembly { message: String },
    #[error("{path}: {stage}: {source}")]
    Io {
        path: PathBuf,
        stage: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the root filesystem from `debs` shaped by `cfg`. Timestamps newer
/// than `source_date_epoch` are clamped to it and files made here carry it.
pub fn build_rootfs(
    debs: &[DebInput],
    cfg: &usmol_recipe::Rootfs,
    source_date_epoch: u64,
    out: &Outputs,
) -> Result<Summary> {
    // Processing order is by identity, not by the caller's order, so the
    // result depends only on the set of packages.
    let mut debs = debs.to_vec();
    debs.sort_by(|a, b| {
        (&a.name, &a.architecture, &a.version).cmp(&(&b.name, &b.architecture, &b.version))
    });
    for deb in &debs {
        extract::verify_sha256(&deb.path, &deb.sha256)?;
    }
    let filter = extract::PathFilter::new(&cfg.path_exclude, &cfg.path_include)?;

    // Staging lives beside the outputs so that the directory can be made of
    // hard links to the staged contents (same filesystem).
    let staging_parent = out
        .dir
        .as_deref()
        .map_or_else(|| output_parent(&out.tarball), output_parent);
    std::fs::create_dir_all(&staging_parent).map_err(|source| Error::Io {
        path: staging_parent.clone(),
        stage: "create staging directory",
        source,
    })?;
    let staging = tempfile::Builder::new()
        .prefix(".usmol-staging-")
        .tempdir_in(&staging_parent)
        .map_err(|source| Error::Io {
            path: staging_parent.clone(),
            stage: "create staging directory",
            source,
        })?;
    let mut blobs = tree::BlobStore::new(staging.path().to_owned());
    let mut tree = tree::Tree::default();
    let mut warnings = Vec::new();

    let lib64 = debs.iter().any(|d| d.architecture == "amd64");
    assemble::usrmerge(&mut tree, source_date_epoch, lib64);

    let mut registrations = Vec::new();
    {
        let mut unpacker = extract::Unpacker {
            tree: &mut tree,
            blobs: &mut blobs,
            filter: &filter,
            warnings: &mut warnings,
            packages: &debs,
        };
        for (index, deb) in debs.iter().enumerate() {
            let control = unpacker.unpack(index)?;
            if let Some(script) = control.postinst {
                let (found, unreadable) = parse_alternatives(&script);
                registrations.extend(found.into_iter().map(|r| (deb.name.clone(), r)));
                unpacker.warnings.extend(unreadable.into_iter().map(|line| {
                    format!(
                        "{}: postinst alternatives call not evaluated: {line}",
                        deb.name
                    )
                }));
            }
        }
    }

    let alternatives = {
        let mut a = assemble::Assembler {
            tree: &mut tree,
            blobs: &mut blobs,
            filter: &filter,
            epoch: source_date_epoch,
            warnings: &mut warnings,
        };
        assemble::accounts(&mut a, cfg)?;
        assemble::ca_certificates(&mut a)?;
        assemble::etc_files(&mut a)?;
        assemble::alternatives(&mut a, cfg, &registrations)?
    };

    let tarball_sha256 = output::write_tarball(&tree, &blobs, source_date_epoch, &out.tarball)?;
    if let Some(dir) = &out.dir {
        output::write_dir(&tree, &blobs, source_date_epoch, dir)?;
    }
    output::write_atomic(
        &out.manifest,
        &output::manifest_json(&debs),
        "write manifest",
    )?;

    let mut seen = std::collections::HashSet::new();
    let content_bytes = tree
        .nodes
        .values()
        .filter_map(|e| match e.node {
            tree::Node::File(id) if seen.insert(id) => Some(tree.inodes[id].size),
            _ => None,
        })
        .sum();
    Ok(Summary {
        packages: debs.len(),
        entries: tree.nodes.len(),
        content_bytes,
        tarball_sha256,
        alternatives,
        warnings,
    })
}

fn output_parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
