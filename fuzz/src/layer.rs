//! The check behind the `oci_apply` fuzz target, also replayed over
//! `fuzz/corpus/oci_apply` by `cargo test -p usmol-oci`: the input is up to
//! four layer tars separated by [`SEPARATOR`], applied bottom first onto
//! one root. Whatever the applier decides (refuse or apply), nothing may
//! appear or change outside the root, and the root holds no device node
//! and no setuid or setgid file.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use usmol_oci::apply::Applier;

/// Splits the input into layers.
pub const SEPARATOR: &[u8] = b"\n--usmol-layer--\n";

pub fn check(data: &[u8]) {
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let root = sandbox.path().join("root");
    let outside = sandbox.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();

    let mut applier = Applier::new(&root);
    let mut ok = true;
    for layer in split(data).into_iter().take(4) {
        if applier.apply(layer).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = applier.finish();
    }

    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(sandbox.path()),
        ["outside", "root"],
        "written beside the root"
    );
    assert_eq!(names(&outside), ["victim"], "written outside the root");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    check_tree(&root);
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..i]);
        rest = &rest[i + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// Checks every node below `dir` and makes directories writable again so
/// the sandbox can be removed.
fn check_tree(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let path = e.path();
        assert!(
            !(t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()),
            "special file {} in the root",
            path.display()
        );
        if t.is_file() {
            let mode = std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o6000, 0, "setuid/setgid kept on {}", path.display());
        }
        if t.is_dir() {
            check_tree(&path);
        }
    }
}
