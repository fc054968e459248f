//! OCI layout, docker archive, plain tarball and local export.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;
use usmol_oci::image::write_oci_archive;
use usmol_oci::{
    Compression, ImageConfig, Metadata, build_image, docker_archive_from_files,
    write_docker_archive,
};

const EPOCH: u64 = 1_700_000_000;

fn meta() -> Metadata {
    Metadata {
        version: "0.1.0".into(),
        revision: "0123abcd".into(),
        source: "https://example.invalid/usmol".into(),
        epoch: EPOCH,
    }
}

fn artifact(dir: &Path, run: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let a = dir.join("artifact");
    std::fs::create_dir_all(a.join("lib")).unwrap();
    std::fs::write(a.join("run"), run).unwrap();
    std::fs::set_permissions(a.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(a.join("lib/linux"), vec![1u8; 100_000]).unwrap();
    std::fs::set_permissions(a.join("lib/linux"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(a.join("lib/rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(a.join("lib/manifest.json"), b"{}").unwrap();
    for bin in ["lib/passt", "lib/passt.avx2"] {
        std::fs::write(a.join(bin), vec![2u8; 10_000]).unwrap();
        std::fs::set_permissions(a.join(bin), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(a.join("lib/passt.copyright"), b"GPL-2.0-or-later\n").unwrap();
    a
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// (path, mode, uid, mtime) of each tar entry.
fn tar_list(bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect()
}

#[test]
fn layout_is_valid_deterministic_and_layered() {
    let d = tempfile::tempdir().unwrap();
    let a = artifact(d.path(), b"launcher v1");
    let one = build_image(&a, &meta(), Compression::Zstd, None, &d.path().join("one")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let two = build_image(&a, &meta(), Compression::Zstd, None, &d.path().join("two")).unwrap();
    assert_eq!(one.manifest, two.manifest);
    assert_eq!(
        std::fs::read(one.layout.join("index.json")).unwrap(),
        std::fs::read(two.layout.join("index.json")).unwrap()
    );

    // Every blob's name is its digest; the index, manifest and config agree.
    let layout = &one.layout;
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha(&bytes),
            format!("sha256:{}", e.file_name().to_str().unwrap())
        );
    }
    let index = json(&layout.join("index.json"));
    let refs: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(refs, ["0.1.0", "latest"]);
    let mdesc = &index["manifests"][0];
    let mbytes = blob(layout, mdesc["digest"].as_str().unwrap());
    assert_eq!(mbytes.len() as u64, mdesc["size"].as_u64().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&mbytes).unwrap();
    let cbytes = blob(layout, manifest["config"]["digest"].as_str().unwrap());
    let config: serde_json::Value = serde_json::from_slice(&cbytes).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usmol/run"])
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(labels["org.opencontainers.image.revision"], "0123abcd");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.invalid/usmol"
    );
    assert_eq!(
        labels["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );

    // Layers: zstd of a tar whose digest is the diff_id; base holds kernel,
    // disk and /tmp; top holds launcher and manifest.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let mut lists = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let zst = blob(layout, l["digest"].as_str().unwrap());
        assert_eq!(zst.len() as u64, l["size"].as_u64().unwrap());
        let raw = zstd::decode_all(&zst[..]).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][i], sha(&raw));
        lists.push(tar_list(&raw));
    }

    // The gzip image differs in its layer blobs only: same config, so the
    // same image ID whichever an engine pulls or loads.
    let gz = build_image(&a, &meta(), Compression::Gzip, None, &d.path().join("gz")).unwrap();
    assert_eq!(gz.config, one.config);
    let gz_manifest: serde_json::Value =
        serde_json::from_slice(&blob(&gz.layout, &gz.manifest.digest)).unwrap();
    for (i, l) in gz_manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_ne!(l["digest"], layers[i]["digest"]);
        let raw = gunzip(&blob(&gz.layout, l["digest"].as_str().unwrap()));
        assert_eq!(config["rootfs"]["diff_ids"][i], sha(&raw));
    }
    assert_eq!(
        lists[0],
        [
            ("tmp/".to_owned(), 0o1777, 0, EPOCH),
            ("usmol/".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/linux".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/passt".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/passt.avx2".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/passt.copyright".to_owned(), 0o644, 0, EPOCH),
            ("usmol/lib/rootfs.ext4".to_owned(), 0o644, 0, EPOCH),
        ]
    );
    assert_eq!(
        lists[1],
        [
            ("usmol/".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/".to_owned(), 0o755, 0, EPOCH),
            ("usmol/lib/manifest.json".to_owned(), 0o644, 0, EPOCH),
            ("usmol/run".to_owned(), 0o755, 0, EPOCH),
        ]
    );

    // A new launcher leaves the big layer untouched.
    let d2 = tempfile::tempdir().unwrap();
    let a2 = artifact(d2.path(), b"launcher v2");
    let three = build_image(
        &a2,
        &meta(),
        Compression::Zstd,
        None,
        &d2.path().join("three"),
    )
    .unwrap();
    assert_eq!(three.layers[0], one.layers[0]);
    assert_ne!(three.layers[1], one.layers[1]);
}

/// Blob digests of an image's layers.
fn layer_digests(img: &usmol_oci::BuiltImage) -> Vec<String> {
    img.layers.iter().map(|l| l.blob.digest.clone()).collect()
}

#[test]
fn zstd_layers_come_from_the_cache_and_a_damaged_entry_is_redone() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let a = artifact(d.path(), b"launcher");
    let plain = build_image(&a, &meta(), Compression::Zstd, None, &d.path().join("p")).unwrap();
    let first = build_image(
        &a,
        &meta(),
        Compression::Zstd,
        Some(&cache),
        &d.path().join("1"),
    )
    .unwrap();
    assert_eq!(layer_digests(&first), layer_digests(&plain));
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "{entries:?}");

    // A hit marks the entry used (its digest file's mtime).
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for e in &entries {
        let f = std::fs::File::options()
            .append(true)
            .open(e.join("digest"))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    let again = build_image(
        &a,
        &meta(),
        Compression::Zstd,
        Some(&cache),
        &d.path().join("2"),
    )
    .unwrap();
    assert_eq!(layer_digests(&again), layer_digests(&plain));
    for e in &entries {
        let used = e.join("digest").metadata().unwrap().modified().unwrap();
        assert!(used > old, "{} was not used", e.display());
    }

    // A damaged blob is not trusted: the layer is compressed anew and the
    // entry rewritten.
    for e in &entries {
        let mut bytes = std::fs::read(e.join("blob")).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::remove_file(e.join("blob")).unwrap();
        std::fs::write(e.join("blob"), bytes).unwrap();
    }
    let redone = build_image(
        &a,
        &meta(),
        Compression::Zstd,
        Some(&cache),
        &d.path().join("3"),
    )
    .unwrap();
    assert_eq!(layer_digests(&redone), layer_digests(&plain));
    for e in &entries {
        let digest = std::fs::read_to_string(e.join("digest")).unwrap();
        assert_eq!(sha(&std::fs::read(e.join("blob")).unwrap()), digest);
    }

    // Only the newest three entries stay: each launcher makes a new top layer.
    for i in 0..3 {
        let a = artifact(
            &d.path().join(format!("v{i}")),
            format!("launcher v{i}").as_bytes(),
        );
        build_image(
            &a,
            &meta(),
            Compression::Zstd,
            Some(&cache),
            &d.path().join(format!("l{i}")),
        )
        .unwrap();
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);

    // gzip layers are quick and never cached.
    let gz_cache = d.path().join("gz-cache");
    build_image(
        &a,
        &meta(),
        Compression::Gzip,
        Some(&gz_cache),
        &d.path().join("g"),
    )
    .unwrap();
    assert!(!gz_cache.exists());
}

#[test]
fn docker_archive_has_docker_and_oci_shapes() {
    let d = tempfile::tempdir().unwrap();
    let a = artifact(d.path(), b"launcher");
    let img = build_image(
        &a,
        &meta(),
        Compression::Gzip,
        None,
        &d.path().join("layout"),
    )
    .unwrap();
    let tags = meta().tags();
    let out1 = d.path().join("one.tar");
    let out2 = d.path().join("two.tar");
    write_docker_archive(&img, &tags, &out1, EPOCH).unwrap();
    write_docker_archive(&img, &tags, &out2, EPOCH).unwrap();
    let bytes = std::fs::read(&out1).unwrap();
    assert_eq!(bytes, std::fs::read(&out2).unwrap());

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(e.header().uid().unwrap(), 0);
        assert_eq!(e.header().mtime().unwrap(), EPOCH);
        let name = e.path().unwrap().display().to_string();
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        files.insert(name, v);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let m = &manifest[0];
    assert_eq!(
        m["RepoTags"],
        serde_json::json!(["usmol:0.1.0", "usmol:latest"])
    );
    let config_path = m["Config"].as_str().unwrap();
    let config_bytes = &files[config_path];
    assert_eq!(sha(config_bytes), img.config.digest);
    let config: serde_json::Value = serde_json::from_slice(config_bytes).unwrap();
    for (i, l) in m["Layers"].as_array().unwrap().iter().enumerate() {
        let raw = gunzip(&files[l.as_str().unwrap()]);
        assert_eq!(config["rootfs"]["diff_ids"][i], sha(&raw));
    }
    let repos: serde_json::Value = serde_json::from_slice(&files["repositories"]).unwrap();
    assert!(repos["usmol"]["latest"].is_string());
    assert!(files.contains_key("oci-layout") && files.contains_key("index.json"));

    let oci = d.path().join("oci.tar");
    write_oci_archive(&img, &oci, EPOCH).unwrap();
    let names: Vec<_> = tar_list(&std::fs::read(&oci).unwrap())
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(
        names.contains(&"oci-layout".to_owned()) && !names.contains(&"manifest.json".to_owned())
    );
}

#[test]
fn plain_tarball_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let a = artifact(d.path(), b"launcher");
    let p1 = usmol_oci::write_plain_tarball(&a, "0.1.0", &d.path().join("o1"), EPOCH).unwrap();
    let p2 = usmol_oci::write_plain_tarball(&a, "0.1.0", &d.path().join("o2"), EPOCH).unwrap();
    assert_eq!(p1.file_name().unwrap(), "usmol-0.1.0.tar.zst");
    let bytes = std::fs::read(&p1).unwrap();
    assert_eq!(bytes, std::fs::read(&p2).unwrap());
    let raw = zstd::decode_all(&bytes[..]).unwrap();
    let names: Vec<_> = tar_list(&raw).into_iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        names,
        [
            ("usmol/".to_owned(), 0o755),
            ("usmol/lib/".to_owned(), 0o755),
            ("usmol/lib/linux".to_owned(), 0o755),
            ("usmol/lib/manifest.json".to_owned(), 0o644),
            ("usmol/lib/passt".to_owned(), 0o755),
            ("usmol/lib/passt.avx2".to_owned(), 0o755),
            ("usmol/lib/passt.copyright".to_owned(), 0o644),
            ("usmol/lib/rootfs.ext4".to_owned(), 0o644),
            ("usmol/run".to_owned(), 0o755),
        ]
    );
}

#[test]
fn export_from_layout_and_archive_gives_a_runnable_dir() {
    let d = tempfile::tempdir().unwrap();
    let a = artifact(d.path(), b"launcher");
    let img = build_image(
        &a,
        &meta(),
        Compression::Zstd,
        None,
        &d.path().join("layout"),
    )
    .unwrap();
    let out = d.path().join("exported");
    usmol_oci::export(img.layout.to_str().unwrap(), &out).unwrap();
    for f in ["run", "lib/linux", "lib/rootfs.ext4", "lib/manifest.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(a.join(f)).unwrap(),
            "{f}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(out.join("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // From the (gzip) docker archive tar too; a non-empty destination is
    // refused.
    let gz = build_image(&a, &meta(), Compression::Gzip, None, &d.path().join("gz")).unwrap();
    let tarball = d.path().join("docker.tar");
    write_docker_archive(&gz, &meta().tags(), &tarball, EPOCH).unwrap();
    let out2 = d.path().join("exported2");
    usmol_oci::export(tarball.to_str().unwrap(), &out2).unwrap();
    assert!(out2.join("run").is_file());
    assert!(usmol_oci::export(tarball.to_str().unwrap(), &out2).is_err());

    // A corrupted blob is refused.
    let layer = img
        .layout
        .join("blobs/sha256")
        .join(img.layers[1].blob.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&layer).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let err = usmol_oci::export(img.layout.to_str().unwrap(), &d.path().join("bad")).unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
}

#[test]
fn hello_image_from_files() {
    let d = tempfile::tempdir().unwrap();
    let hello = d.path().join("hello");
    std::fs::write(&hello, b"\x7fELF static hello").unwrap();
    let config = ImageConfig {
        entrypoint: vec!["/hello".into()],
        ..ImageConfig::default()
    };
    let out = d.path().join("hello.tar");
    let img = docker_archive_from_files(
        &[("/hello".into(), hello.clone(), 0o755)],
        config,
        &["hello:latest".into()],
        &out,
        EPOCH,
    )
    .unwrap();
    assert_eq!(img.layers.len(), 1);
    let root = d.path().join("root");
    usmol_oci::export_rootfs(out.to_str().unwrap(), &root).unwrap();
    assert_eq!(
        std::fs::read(root.join("hello")).unwrap(),
        b"\x7fELF static hello"
    );
}
