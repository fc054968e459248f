//! The signed Debian archive: mirror configuration, InRelease verification,
//! Packages indexes, dependency resolution, lock files and the download cache.
//!
//! Chain of trust: the vendored archive keys (`vendor-keys/`) verify
//! `dists/<suite>/InRelease`; its SHA256 list pins each `Packages.xz`; each
//! Packages stanza pins a `.deb`'s sha256 and size, which the lock records.
//! A build with a lock checks only the lock's hashes ([`fetch`]). Source
//! packages follow the same chain through `Sources.xz` ([`sources`]).

mod cache;
pub mod deb822;
pub mod kernel_org;
mod lock;
pub mod mirror;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod sources;

use std::path::PathBuf;

pub use cache::{Cache, DEFAULT_PARALLEL, Download, cache_dir, sha256_hex};
pub use kernel_org::{VerifiedSource, verify_kernel_org, verify_kernel_org_with};
pub use lock::{FetchedPackage, Trust, fetch, lock, lock_with, recipe_sha256};
pub use mirror::{
    MIRROR_ENV, Mirror, MirrorOrigin, resolve_mirror, resolve_mirror_for, resolve_mirror_from,
};
pub use release::{Keyring, Release, ReleaseCheck, verify_inrelease};
pub use resolve::{Universe, resolve};
pub use sources::{FetchedSourceFile, cached_source, fetch_source, lock_source};

/// Errors of the archive stage; each names the URL or path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no Debian mirror configured: pass --mirror URL, set USMOL_MIRROR, set distribution.mirror in the recipe, \
         or add a `deb` entry to /etc/apt/sources.list(.d) ({detail})"
    )]
    NoMirror { detail: String },
    #[error("mirror {url:?} (from {origin}): {message}")]
    BadMirror {
        url: String,
        origin: String,
        message: String,
    },
    #[error("{stage}: {path}: {source}")]
    Io {
        path: PathBuf,
        stage: &'static str,
        source: std::io::Error,
    },
    #[error("archive key {name}: {message}")]
    Key { name: String, message: String },
    #[error("{path}: kernel.org source verification failed: {message}")]
    KernelOrg { path: PathBuf, message: String },
    #[error("{url}: signature verification failed: {message}")]
    Signature { url: String, message: String },
    #[error("{url}: {message}")]
    Release { url: String, message: String },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "{url}: sha256 mismatch: expected {expected}, got {actual}; the download was discarded (mirror out of sync or tampered)"
    )]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{url}: size mismatch (truncated or wrong file): expected {expected} bytes, got {actual} (sha256 {sha256}); the download was discarded"
    )]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
        sha256: String,
    },
    #[error("index {url}: {message}")]
    Index { url: String, message: String },
    #[error("cannot resolve {chain}: {reason}")]
    Resolve { chain: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
