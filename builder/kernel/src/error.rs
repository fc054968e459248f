//! Errors of the kernel build. Each names the stage and the input or path
//! involved, and says what to do about it.

use std::path::PathBuf;

/// Everything that can stop a kernel build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {stage}: {path}: {source}")]
    Io {
        stage: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "kernel source: {path} has sha256 {actual}, expected {expected}; \
         fetch the source package again (the cached file is corrupt or a different version)"
    )]
    SourceDigest {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("kernel source: {path}: {reason}")]
    Source { path: PathBuf, reason: String },

    #[error("kernel config fragment {path}:{line}: {reason}")]
    Fragment {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error(
        "kernel config: {count} requested option(s) did not survive olddefconfig \
         (fix the fragments in {fragments_dir}; resolved config kept at {config}):\n{details}",
        count = dropped.len(),
        details = dropped.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
    )]
    ConfigDropped {
        dropped: Vec<crate::config::Dropped>,
        fragments_dir: PathBuf,
        config: PathBuf,
    },

    #[error(
        "kernel patch {patch} does not apply to {tree}; refresh it against this source \
         version.\n--- patch output ---\n{output}"
    )]
    Patch {
        patch: PathBuf,
        tree: PathBuf,
        output: String,
    },

    #[error("kernel toolchain: missing {}; install them with: apt-get install {}",
        missing.iter().map(|m| m.what.clone()).collect::<Vec<_>>().join(", "),
        packages.join(" "))]
    Toolchain {
        missing: Vec<crate::toolchain::Missing>,
        packages: Vec<String>,
    },

    #[error("kernel toolchain: sysroot {path}: {reason}")]
    Sysroot { path: PathBuf, reason: String },

    #[error(
        "kernel build: `{command}` failed ({status}); full log: {log}\n--- last lines ---\n{tail}"
    )]
    Make {
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
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
