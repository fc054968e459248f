//! The plain tarball `usmol-<version>.tar.zst`: `usmol/` = the artifact
//! directory, with normalised modes, root ownership and mtime = epoch.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::layer::Tree;
use crate::{Result, io_err};

const STAGE: &str = "plain tarball";

/// zstd level: fixed so the bytes do not change between builds; single
/// threaded for the same reason.
const ZSTD_LEVEL: i32 = 15;
/// A 128 MiB window with long-distance matching finds what the Go
/// binaries on the root disk share (measured on the disk alone: 116.7 MB
/// -> 100.5 MB, and 128 s -> 82 s). 2^27 is the largest window `zstd -d`
/// (and so `tar xf`) decodes without being told `--long`.
const ZSTD_WINDOW_LOG: u32 = 27;

/// Writes `<out_dir>/usmol-<version>.tar.zst` and returns its path.
pub fn write_plain_tarball(
    artifact_dir: &Path,
    version: &str,
    out_dir: &Path,
    epoch: u64,
) -> Result<PathBuf> {
    let mut tree = Tree::new();
    tree.insert_dir("usmol", artifact_dir)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(STAGE, out_dir))?;
    let out = out_dir.join(format!("usmol-{version}.tar.zst"));
    let tmp = tempfile::NamedTempFile::new_in(out_dir).map_err(io_err(STAGE, out_dir))?;
    let file = std::io::BufWriter::new(
        tmp.as_file()
            .try_clone()
            .map_err(io_err(STAGE, tmp.path()))?,
    );
    let mut enc = zstd::Encoder::new(file, ZSTD_LEVEL).map_err(io_err(STAGE, tmp.path()))?;
    enc.long_distance_matching(true)
        .and_then(|()| enc.window_log(ZSTD_WINDOW_LOG))
        .map_err(io_err(STAGE, tmp.path()))?;
    let enc = tree.write_tar(enc, epoch)?;
    let mut file = enc.finish().map_err(io_err(STAGE, tmp.path()))?;
    file.flush().map_err(io_err(STAGE, tmp.path()))?;
    drop(file);
    crate::image::persist(tmp, &out)?;
    Ok(out)
}
