//! The check behind the `deb_extract` fuzz target, also replayed over
//! `fuzz/corpus/deb_extract` by `cargo test -p usmol-rootfs`: the input
//! becomes the `data.tar` of a package, `build_rootfs` unpacks it with a
//! directory output, and whatever it decides (refuse or unpack), nothing
//! may appear or change outside the output, and the output holds no
//! device node, no `..` and no absolute name.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use usmol_recipe::Rootfs;
use usmol_rootfs::{DebInput, Outputs, build_rootfs};

const EPOCH: u64 = 1_700_000_000;

pub fn check(data: &[u8]) {
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let outside = sandbox.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let work = sandbox.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let deb = write_deb(&work, data);
    let out = Outputs {
        dir: Some(work.join("tree")),
        tarball: work.join("out/rootfs.tar"),
        manifest: work.join("out/manifest.json"),
    };
    let built = build_rootfs(&[deb], &Rootfs::default(), EPOCH, &out);

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
        ["outside", "work"],
        "written beside the output"
    );
    assert_eq!(names(&outside), ["victim"], "written outside the output");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    for n in names(&work) {
        assert!(
            ["out", "pkg.deb", "tree"].contains(&n.as_str()),
            "stray {n} in the work dir"
        );
    }
    if built.is_ok() {
        check_tarball(&out.tarball);
        check_tree(out.dir.as_ref().unwrap());
    }
}

/// An `ar` package around `data` (as an uncompressed data.tar).
fn write_deb(dir: &Path, data: &[u8]) -> DebInput {
    let mut control = tar::Builder::new(Vec::new());
    let text = b"Package: fuzz\nVersion: 1\nArchitecture: amd64\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    control.append_data(&mut h, "./control", &text[..]).unwrap();
    let control = control.into_inner().unwrap();
    let mut ar = ar::Builder::new(Vec::new());
    for (id, body) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar", &control[..]),
        ("data.tar", data),
    ] {
        let header = ar::Header::new(id.as_bytes().to_vec(), body.len() as u64);
        ar.append(&header, body).unwrap();
    }
    let bytes = ar.into_inner().unwrap();
    let path = dir.join("pkg.deb");
    std::fs::write(&path, &bytes).unwrap();
    use sha2::Digest;
    let sha256 = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    DebInput {
        name: "fuzz".into(),
        version: "1".into(),
        architecture: "amd64".into(),
        source: "fuzz".into(),
        source_version: "1".into(),
        sha256,
        path,
    }
}

fn check_tarball(path: &Path) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        assert!(
            !name.starts_with('/'),
            "absolute name {name:?} in the tarball"
        );
        assert!(!name.split('/').any(|c| c == ".."), "'..' in {name:?}");
        let kind = entry.header().entry_type();
        assert!(
            matches!(
                kind,
                tar::EntryType::Directory
                    | tar::EntryType::Regular
                    | tar::EntryType::Symlink
                    | tar::EntryType::Link
                    | tar::EntryType::XHeader
            ),
            "{kind:?} entry {name:?} in the tarball"
        );
        if kind == tar::EntryType::Link {
            let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap()).into_owned();
            assert!(
                !target.starts_with('/') && !target.split('/').any(|c| c == ".."),
                "hardlink {name:?} -> {target:?} leaves the root"
            );
        }
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).unwrap();
    }
}

fn check_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        assert!(
            !(t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()),
            "special file {} in the tree",
            e.path().display()
        );
        if t.is_dir() {
            check_tree(&e.path());
        }
    }
}
