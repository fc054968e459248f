//! Image outputs: the ext4 root disk, the OCI image layout, the docker
//! archive, the plain tarball, registry push and export.
//!
//! Every output is deterministic: the same inputs and `SOURCE_DATE_EPOCH`
//! give the same bytes (tar headers carry the epoch and uid/gid 0, entries are
//! sorted, gzip and zstd run with fixed settings, JSON keys are in a fixed
//! sorted order, the ext4 image gets a UUID and hash seed derived from its
//! content).
//!
//! Architecture Invariant: only [`registry`] touches the network, and tokio
//! never leaks out of it: `push` and `export` are blocking functions that run
//! a current-thread runtime inside.

pub mod apply;
pub mod ext4;
pub mod image;
pub mod layer;
pub mod registry;
pub mod tarball;

use std::path::PathBuf;

pub use apply::{ApplyError, apply_layer};
pub use ext4::{Ext4Summary, ExtraFile, make_ext4};
pub use image::{
    BuiltImage, ImageConfig, Metadata, build_image, docker_archive_from_files,
    write_docker_archive, write_oci_archive,
};
pub use layer::Compression;
pub use registry::{Auth, PushReport, export, export_rootfs, push, resolve_auth};
pub use tarball::write_plain_tarball;

/// Errors of this crate. Each names the path or input and the stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{stage}: {path}: {source}")]
    Io {
        stage: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage}: {path}: {message}")]
    Invalid {
        stage: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{stage}: `{command}` failed: {message}")]
    Tool {
        stage: &'static str,
        command: String,
        message: String,
    },
    #[error("export: applying layer {digest}: {source}")]
    Apply { digest: String, source: ApplyError },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for mapping an `io::Error` to [`Error::Io`].
pub(crate) fn io_err(
    stage: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        stage,
        path,
        source,
    }
}

/// `sha256:<hex>` of a byte slice.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
