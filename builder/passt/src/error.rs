//! Errors of the passt build. Each names the stage and the input or path
//! involved, and says what to do about it.

use std::path::PathBuf;

/// Everything that can stop a passt build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("passt {stage}: {path}: {source}")]
    Io {
        stage: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "passt source: {path} has sha256 {actual}, expected {expected}; \
         fetch the source package again (the cached file is corrupt or a different version)"
    )]
    SourceDigest {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("passt source: {path}: {reason}")]
    Source { path: PathBuf, reason: String },

    #[error(
        "passt patch {patch} does not apply to {tree}; refresh it against this source \
         version.\n--- patch output ---\n{output}"
    )]
    Patch {
        patch: PathBuf,
        tree: PathBuf,
        output: String,
    },

    #[error(
        "passt toolchain: sysroot {path} lacks {}; add the packages providing them to \
         recipes/toolchain.toml and refresh its lock", missing.join(", ")
    )]
    Sysroot { path: PathBuf, missing: Vec<String> },

    #[error("passt build: {what} failed ({status}); full log: {log}\n--- last lines ---\n{tail}")]
    Build {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("passt build: {path} is not a static executable ({reason}); check the build flags")]
    NotStatic { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
