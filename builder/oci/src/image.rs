//! The OCI image layout, its tar (oci-archive) and the docker archive.
//!
//! Layer plan for the usmol image (rarely changing part first, so that a
//! rebuild that only touches the launcher re-uses the big layer):
//!   1. `/tmp` (1777), `/usmol/lib/linux`, `/usmol/lib/rootfs.ext4`,
//!      `/usmol/lib/passt`, `/usmol/lib/passt.avx2`, `/usmol/lib/passt.copyright`
//!   2. `/usmol/run`, `/usmol/lib/manifest.json` and anything else in the
//!      artifact directory.
//!
//! The image is `FROM scratch`: the launcher is static, docker itself
//! provides `/dev`, `/proc`, `/sys` and `/etc/{hosts,hostname,resolv.conf}`.
//!
//! Layers are compressed with zstd or gzip ([`Compression`]); the config,
//! and so the image ID, is the same either way, since it names the layers by
//! their uncompressed digests. The usmol build writes both: the zstd layout
//! for registries and modern engines, the gzip layout for engines before
//! Docker 23.
//!
//! The docker archive is a (gzip) OCI layout plus docker's `manifest.json`
//! and `repositories` (the shape `docker save` writes since engine 25);
//! engine 20.10 reads only `manifest.json`.
//!
//! JSON is written from structs whose fields are declared in sorted key
//! order with `BTreeMap`s for maps, which gives the canonical form without a
//! separate canonicaliser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::layer::{Blob, Compression, Layer, Source, Tree, write_blob, write_layer};
use crate::{Error, Result, io_err};

const STAGE: &str = "image";

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runtime configuration of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec![DEFAULT_PATH.to_owned()],
            working_dir: "/".to_owned(),
            labels: BTreeMap::new(),
        }
    }
}

/// Build metadata stamped into the usmol image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub version: String,
    pub revision: String,
    /// Source repository URL.
    pub source: String,
    /// SOURCE_DATE_EPOCH: every time in every output.
    pub epoch: u64,
}

impl Metadata {
    /// The image config of the usmol image: entrypoint `/usmol/run` and the
    /// `org.opencontainers.image.*` labels.
    pub fn image_config(&self) -> ImageConfig {
        let mut labels = BTreeMap::new();
        labels.insert(
            "org.opencontainers.image.created".into(),
            rfc3339(self.epoch),
        );
        labels.insert(
            "org.opencontainers.image.revision".into(),
            self.revision.clone(),
        );
        labels.insert(
            "org.opencontainers.image.source".into(),
            self.source.clone(),
        );
        labels.insert("org.opencontainers.image.title".into(), "usmol".into());
        labels.insert(
            "org.opencontainers.image.version".into(),
            self.version.clone(),
        );
        ImageConfig {
            entrypoint: vec!["/usmol/run".into()],
            labels,
            ..ImageConfig::default()
        }
    }

    /// `usmol:<version>` and `usmol:latest`.
    pub fn tags(&self) -> Vec<String> {
        vec![format!("usmol:{}", self.version), "usmol:latest".to_owned()]
    }
}

pub(crate) fn rfc3339(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

// --- JSON documents (fields in sorted key order) -------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub digest: String,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ConfigFile {
    architecture: String,
    config: RunConfig,
    created: String,
    history: Vec<History>,
    os: String,
    rootfs: RootFs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RunConfig {
    #[serde(rename = "Cmd", skip_serializing_if = "Vec::is_empty", default)]
    cmd: Vec<String>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Vec::is_empty", default)]
    entrypoint: Vec<String>,
    #[serde(rename = "Env", skip_serializing_if = "Vec::is_empty", default)]
    env: Vec<String>,
    #[serde(rename = "Labels", skip_serializing_if = "BTreeMap::is_empty", default)]
    labels: BTreeMap<String, String>,
    #[serde(
        rename = "WorkingDir",
        skip_serializing_if = "String::is_empty",
        default
    )]
    working_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct History {
    created: String,
    created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
}

/// docker's `manifest.json` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs serialise")
}

/// An image written as an OCI layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub layout: PathBuf,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Layer>,
    /// Full references (`name:tag`) recorded in `index.json`.
    pub tags: Vec<String>,
}

/// Splits `name:tag` (tag defaults to `latest`; a `:` before the last `/`
/// belongs to a registry port).
pub(crate) fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

/// Writes an OCI layout at `dir` (replaced atomically) from `layers`, bottom
/// first, each paired with its history text.
pub fn write_layout(
    layers: &[(Tree, &str)],
    config: &ImageConfig,
    tags: &[String],
    epoch: u64,
    compression: Compression,
    layer_cache: Option<&Path>,
    dir: &Path,
) -> Result<BuiltImage> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(STAGE, parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".usmol-layout-")
        .tempdir_in(parent)
        .map_err(io_err(STAGE, parent))?;
    let blobs = tmp.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err(STAGE, &blobs))?;
    let created = rfc3339(epoch);
    let mut written = Vec::new();
    let mut history = Vec::new();
    for (tree, comment) in layers {
        written.push(write_layer(tree, &blobs, epoch, compression, layer_cache)?);
        history.push(History {
            created: created.clone(),
            created_by: (*comment).to_owned(),
        });
    }
    let cfg = ConfigFile {
        architecture: "amd64".into(),
        config: RunConfig {
            cmd: config.cmd.clone(),
            entrypoint: config.entrypoint.clone(),
            env: config.env.clone(),
            labels: config.labels.clone(),
            working_dir: config.working_dir.clone(),
        },
        created,
        history,
        os: "linux".into(),
        rootfs: RootFs {
            diff_ids: written.iter().map(|l| l.diff_id.clone()).collect(),
            kind: "layers".into(),
        },
    };
    let config_blob = write_blob(&to_json(&cfg), &blobs)?;
    let manifest = Manifest {
        config: Descriptor {
            annotations: BTreeMap::new(),
            digest: config_blob.digest.clone(),
            media_type: MEDIA_CONFIG.into(),
            platform: None,
            size: config_blob.size,
        },
        layers: written
            .iter()
            .map(|l| Descriptor {
                annotations: BTreeMap::new(),
                digest: l.blob.digest.clone(),
                media_type: compression.media_type().into(),
                platform: None,
                size: l.blob.size,
            })
            .collect(),
        media_type: Some(MEDIA_MANIFEST.into()),
        schema_version: 2,
    };
    let manifest_blob = write_blob(&to_json(&manifest), &blobs)?;
    let index = Index {
        manifests: tags
            .iter()
            .map(|t| Descriptor {
                annotations: BTreeMap::from([
                    ("io.containerd.image.name".to_owned(), t.clone()),
                    (
                        "org.opencontainers.image.ref.name".to_owned(),
                        split_tag(t).1.to_owned(),
                    ),
                ]),
                digest: manifest_blob.digest.clone(),
                media_type: MEDIA_MANIFEST.into(),
                platform: Some(Platform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                }),
                size: manifest_blob.size,
            })
            .collect(),
        media_type: Some(MEDIA_INDEX.into()),
        schema_version: 2,
    };
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).map_err(io_err(STAGE, p))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write("index.json", &to_json(&index))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(STAGE, dir))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(io_err(STAGE, dir))?;
    Ok(BuiltImage {
        layout: dir.to_path_buf(),
        manifest: manifest_blob,
        config: config_blob,
        layers: written,
        tags: tags.to_vec(),
    })
}

/// Builds the usmol image layout at `layout_dir` from the artifact dir
/// (`run`, `lib/linux`, `lib/rootfs.ext4`, `lib/manifest.json`), its layers
/// compressed with `compression` (zstd layers found in `layer_cache` are
/// re-used). The image config, and so the image ID, does not depend on the
/// compression.
pub fn build_image(
    artifact_dir: &Path,
    meta: &Metadata,
    compression: Compression,
    layer_cache: Option<&Path>,
    layout_dir: &Path,
) -> Result<BuiltImage> {
    for required in [
        "run",
        "lib/linux",
        "lib/rootfs.ext4",
        "lib/manifest.json",
        "lib/passt",
        "lib/passt.avx2",
    ] {
        let p = artifact_dir.join(required);
        if !p.is_file() {
            return Err(Error::Invalid {
                stage: STAGE,
                path: p,
                message: "missing from the artifact directory; build the launcher, kernel, passt and rootfs first".into(),
            });
        }
    }
    let mut top = Tree::new();
    top.insert_dir("usmol", artifact_dir)?;
    // The kernel, the disk and passt change rarely; the launcher often.
    let mut base = top.split_off(|p| {
        matches!(
            p,
            "usmol/lib/linux"
                | "usmol/lib/rootfs.ext4"
                | "usmol/lib/passt"
                | "usmol/lib/passt.avx2"
                | "usmol/lib/passt.copyright"
        )
    });
    base.insert("tmp", Source::Dir, 0o1777)?;
    write_layout(
        &[
            (base, "usmol: UML kernel, root disk and passt"),
            (top, "usmol: launcher and manifest"),
        ],
        &meta.image_config(),
        &meta.tags(),
        meta.epoch,
        compression,
        layer_cache,
        layout_dir,
    )
}

/// Tar of a directory with normalised metadata, written atomically.
fn tar_tree(tree: &Tree, out: &Path, epoch: u64) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(io_err(STAGE, parent))?;
    let w = std::io::BufWriter::new(
        tmp.as_file()
            .try_clone()
            .map_err(io_err(STAGE, tmp.path()))?,
    );
    let mut w = tree.write_tar(w, epoch)?;
    std::io::Write::flush(&mut w).map_err(io_err(STAGE, tmp.path()))?;
    drop(w);
    persist(tmp, out)
}

pub(crate) fn persist(tmp: tempfile::NamedTempFile, out: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(STAGE, tmp.path()))?;
    tmp.persist(out).map_err(|e| Error::Io {
        stage: STAGE,
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Writes the layout as an uncompressed tar (`oci-archive:` for skopeo,
/// apptainer, podman).
pub fn write_oci_archive(image: &BuiltImage, out: &Path, epoch: u64) -> Result<()> {
    let mut tree = Tree::new();
    tree.insert_dir("", &image.layout)?;
    tar_tree(&tree, out, epoch)
}

/// Writes a `docker load` archive tagged with `repo_tags` (`name:tag`).
/// Engines before 23 load only gzip (or plain tar) layers: give it an image
/// built with [`Compression::Gzip`].
pub fn write_docker_archive(
    image: &BuiltImage,
    repo_tags: &[String],
    out: &Path,
    epoch: u64,
) -> Result<()> {
    let extra = tempfile::tempdir().map_err(io_err(STAGE, std::env::temp_dir()))?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let manifest = vec![DockerManifest {
        config: format!("blobs/sha256/{}", hex(&image.config.digest)),
        layers: image
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", hex(&l.blob.digest)))
            .collect(),
        repo_tags: repo_tags.to_vec(),
    }];
    // `repositories` is the pre-1.10 tag map; current engines ignore it when
    // manifest.json is present. Point the tags at the image ID.
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for t in repo_tags {
        let (name, tag) = split_tag(t);
        repositories
            .entry(name.to_owned())
            .or_default()
            .insert(tag.to_owned(), hex(&image.config.digest));
    }
    let mpath = extra.path().join("manifest.json");
    std::fs::write(&mpath, to_json(&manifest)).map_err(io_err(STAGE, &mpath))?;
    let rpath = extra.path().join("repositories");
    std::fs::write(&rpath, to_json(&repositories)).map_err(io_err(STAGE, &rpath))?;
    let mut tree = Tree::new();
    tree.insert_dir("", &image.layout)?;
    tree.insert("manifest.json", Source::File(mpath), 0o644)?;
    tree.insert("repositories", Source::File(rpath), 0o644)?;
    tar_tree(&tree, out, epoch)
}

/// Builds a one-layer image from host files — `(path in image, host path,
/// mode)` — and writes it as a docker archive tagged `tags`. The OCI layout
/// is kept beside `out` as `<out>.layout`.
pub fn docker_archive_from_files(
    files: &[(String, PathBuf, u32)],
    config: ImageConfig,
    tags: &[String],
    out: &Path,
    epoch: u64,
) -> Result<BuiltImage> {
    let mut tree = Tree::new();
    for (path, host, mode) in files {
        tree.insert(path, Source::File(host.clone()), *mode)?;
    }
    let mut layout = out.as_os_str().to_owned();
    layout.push(".layout");
    let image = write_layout(
        &[(tree, "usmol: files")],
        &config,
        tags,
        epoch,
        Compression::Gzip,
        None,
        Path::new(&layout),
    )?;
    write_docker_archive(&image, tags, out, epoch)?;
    Ok(image)
}

/// Reads `index.json` and the manifests it lists, following nested indexes
/// to the linux/amd64 image. `tag` selects by ref name when given.
pub fn read_layout_manifest(layout: &Path, tag: Option<&str>) -> Result<(Descriptor, Manifest)> {
    let index_path = layout.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(io_err("export", &index_path))?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
        stage: "export",
        path: index_path.clone(),
        message: format!("not an OCI index: {e}"),
    })?;
    let pick = index
        .manifests
        .iter()
        .find(|d| match tag {
            Some(t) => {
                d.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(t)
                    || d.annotations
                        .get("io.containerd.image.name")
                        .map(String::as_str)
                        == Some(t)
            }
            None => true,
        })
        .cloned()
        .ok_or_else(|| Error::Invalid {
            stage: "export",
            path: index_path.clone(),
            message: format!("no manifest for tag {tag:?}"),
        })?;
    resolve_manifest(layout, pick, 0)
}

fn resolve_manifest(layout: &Path, desc: Descriptor, depth: u32) -> Result<(Descriptor, Manifest)> {
    let bytes = read_blob_verified(layout, &desc)?;
    if desc.media_type == MEDIA_INDEX || desc.media_type.ends_with("manifest.list.v2+json") {
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            stage: "export",
            path: layout.join(&desc.digest),
            message: format!("not an OCI index: {e}"),
        })?;
        let next = index
            .manifests
            .into_iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .filter(|_| depth < 4)
            .ok_or_else(|| Error::Invalid {
                stage: "export",
                path: layout.join(&desc.digest),
                message: "index has no linux/amd64 manifest".into(),
            })?;
        return resolve_manifest(layout, next, depth + 1);
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
        stage: "export",
        path: layout.join(&desc.digest),
        message: format!("not an image manifest: {e}"),
    })?;
    Ok((desc, manifest))
}

/// Path of a blob inside a layout, refusing digests that are not sha256 hex.
pub(crate) fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| Error::Invalid {
            stage: "export",
            path: layout.to_path_buf(),
            message: format!("unsupported or malformed digest `{digest}`"),
        })?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// Reads a small blob and checks its size and digest.
pub(crate) fn read_blob_verified(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>> {
    let path = blob_path(layout, &desc.digest)?;
    let bytes = std::fs::read(&path).map_err(io_err("export", &path))?;
    let actual = crate::sha256_digest(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(Error::Invalid {
            stage: "export",
            path,
            message: format!(
                "blob does not match its descriptor: digest {actual} size {} (expected {} size {})",
                bytes.len(),
                desc.digest,
                desc.size
            ),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_epoch() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn tags_split_with_ports() {
        assert_eq!(split_tag("usmol:1.0"), ("usmol", "1.0"));
        assert_eq!(
            split_tag("127.0.0.1:5000/usmol"),
            ("127.0.0.1:5000/usmol", "latest")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/usmol:x"),
            ("127.0.0.1:5000/usmol", "x")
        );
    }

    #[test]
    fn config_json_keys_are_sorted() {
        let meta = Metadata {
            version: "1.2.3".into(),
            revision: "abc".into(),
            source: "https://example.invalid/usmol".into(),
            epoch: 1,
        };
        let c = meta.image_config();
        let json = String::from_utf8(to_json(&RunConfig {
            cmd: vec![],
            entrypoint: c.entrypoint,
            env: c.env,
            labels: c.labels,
            working_dir: c.working_dir,
        }))
        .unwrap();
        let e = json.find("\"Entrypoint\"").unwrap();
        let v = json.find("\"Env\"").unwrap();
        let l = json.find("\"Labels\"").unwrap();
        let w = json.find("\"WorkingDir\"").unwrap();
        assert!(e < v && v < l && l < w, "{json}");
        assert!(json.contains(r#""org.opencontainers.image.created":"1970-01-01T00:00:01Z""#));
    }
}
