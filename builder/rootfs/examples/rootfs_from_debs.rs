//! Development aid: builds a rootfs from a directory of `.deb` files named
//! the Debian way (`name_version_arch.deb`), for checks against real data
//! without the archive crate. The recipe's `[rootfs]` section is read from
//! a recipe file.
//!
//! Usage: rootfs_from_debs <recipe.toml> <debs-dir> <out-dir> [epoch]

use std::path::{Path, PathBuf};

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).expect("read deb");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, recipe, debs, out, rest @ ..] = args.as_slice() else {
        eprintln!("usage: rootfs_from_debs <recipe.toml> <debs-dir> <out-dir> [epoch]");
        std::process::exit(2);
    };
    let epoch: u64 = rest
        .first()
        .map_or(1_700_000_000, |e| e.parse().expect("epoch"));
    let recipe = usmol_recipe::Recipe::load(Path::new(recipe)).expect("recipe");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(debs).expect("debs dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "deb") {
            continue;
        }
        let stem = path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace("%3a", ":");
        let parts: Vec<&str> = stem.split('_').collect();
        let [name, version, architecture] = parts[..] else {
            panic!("odd name {stem}")
        };
        inputs.push(usmol_rootfs::DebInput {
            name: name.into(),
            version: version.into(),
            architecture: architecture.into(),
            source: name.into(),
            source_version: version.into(),
            sha256: sha256(&path),
            path,
        });
    }
    let out = PathBuf::from(out);
    let outputs = usmol_rootfs::Outputs {
        dir: Some(out.join("rootfs")),
        tarball: out.join("rootfs.tar"),
        manifest: out.join("manifest.json"),
    };
    let start = std::time::Instant::now();
    let summary = usmol_rootfs::build_rootfs(&inputs, &recipe.rootfs, epoch, &outputs)
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        });
    println!(
        "{} packages, {} entries, {} content bytes, {:.1?}",
        summary.packages,
        summary.entries,
        summary.content_bytes,
        start.elapsed()
    );
    println!("tarball sha256 {}", summary.tarball_sha256);
    for (link, target) in &summary.alternatives {
        println!("alt {link} -> {target}");
    }
    for w in &summary.warnings {
        println!("warning: {w}");
    }
}
