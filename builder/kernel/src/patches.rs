//! Kernel patches: every `*.patch` of the patches directory, applied in
//! name order with `patch -p1`; the first that fails stops the build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The `*.patch` files of `dir`, in the order they apply. A missing
/// directory means no patches.
pub fn patch_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("kernel patches", dir))? {
        let path = entry.map_err(Error::io("kernel patches", dir))?.path();
        if path.extension().is_some_and(|e| e == "patch") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Applies `patches` to `tree`. `--forward` refuses an already applied
/// patch instead of reverting it, `--batch` never asks.
pub fn apply(tree: &Path, patches: &[PathBuf]) -> Result<()> {
    for patch in patches {
        let out = Command::new("patch")
            .args([
                "-p1",
                "--forward",
                "--batch",
                "--no-backup-if-mismatch",
                "-r",
                "-",
                "-i",
            ])
            .arg(patch)
            .current_dir(tree)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Patch {
                patch: patch.clone(),
                tree: tree.to_path_buf(),
                output: format!("could not run patch(1): {e}; install the `patch` package"),
            })?;
        if !out.status.success() {
            return Err(Error::Patch {
                patch: patch.clone(),
                tree: tree.to_path_buf(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n";
    const BAD: &str = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,2 @@\n one\n-three\n+THREE\n";

    #[test]
    fn applies_in_order_and_names_the_failing_patch() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let pdir = dir.path().join("patches");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(tree.join("f.c"), "one\ntwo\n").unwrap();
        std::fs::write(pdir.join("0001-good.patch"), GOOD).unwrap();
        std::fs::write(pdir.join("0002-bad.patch"), BAD).unwrap();
        std::fs::write(pdir.join("README"), "not a patch").unwrap();

        let files = patch_files(&pdir).unwrap();
        assert_eq!(files.len(), 2);
        let err = apply(&tree, &files).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("0002-bad.patch"), "{text}");
        assert_eq!(
            std::fs::read_to_string(tree.join("f.c")).unwrap(),
            "one\nTWO\n"
        );
        // No reject or backup files left behind in the tree.
        assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 1);
    }

    #[test]
    fn missing_dir_means_no_patches() {
        assert!(
            patch_files(Path::new("/nonexistent/usmol/patches"))
                .unwrap()
                .is_empty()
        );
    }
}
