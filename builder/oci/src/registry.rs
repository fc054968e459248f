//! Registry push and export.
//!
//! `push` uploads a local OCI layout: blobs the registry already has are
//! skipped (so a re-push is cheap and idempotent), the others go up in
//! chunks streamed from disk; then the image manifest is put by digest and a
//! one-entry image index (linux/amd64) under the tag.
//!
//! `export` takes a registry reference, a local layout directory or a layout
//! tar (our oci-archive and docker archive both are), verifies every blob
//! against its digest, applies the layers with [`crate::apply`] and moves the
//! image's `/usmol` into place, so `<dir>/run` starts usmol. [`export_rootfs`]
//! keeps the whole image root instead (for any image).
//!
//! Credentials: `USMOL_REGISTRY_USER` + `USMOL_REGISTRY_PASSWORD`, else the
//! `auths` entry of `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`), else anonymous. Credential helpers are not run.
//! Loopback registries and those listed in `USMOL_REGISTRY_INSECURE`
//! (comma-separated `host:port`) are spoken to over plain HTTP.
//!
//! tokio stays inside: each call builds a current-thread runtime.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures_util::TryStreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::apply::Applier;
use crate::image::{
    Descriptor, Index, MEDIA_INDEX, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD,
    MEDIA_MANIFEST, Platform, blob_path, read_blob_verified, read_layout_manifest,
};
use crate::{Error, Result, io_err};

/// Credentials source, resolved per registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    Basic { user: String, password: String },
}

const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub manifest_digest: String,
    pub index_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("registry", "<tokio runtime>"))
}

fn parse_reference(reference: &str) -> Result<Reference> {
    reference.parse::<Reference>().map_err(|e| Error::Registry {
        registry: reference.to_owned(),
        message: format!("not an image reference ({e}); expected host[:port]/name[:tag]"),
    })
}

/// Credentials for `registry` (`host[:port]`), see the module docs.
pub fn resolve_auth(registry: &str) -> Result<Auth> {
    if let (Ok(user), Ok(password)) = (
        std::env::var("USMOL_REGISTRY_USER"),
        std::env::var("USMOL_REGISTRY_PASSWORD"),
    ) {
        return Ok(Auth::Basic { user, password });
    }
    let config = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(Auth::Anonymous),
        },
    };
    let Ok(bytes) = std::fs::read(&config) else {
        return Ok(Auth::Anonymous);
    };
    let bad = |message: String| Error::Invalid {
        stage: "registry auth",
        path: config.clone(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Ok(Auth::Anonymous);
    };
    for (key, entry) in auths {
        // Keys may be `host`, `https://host` or `https://host/v1/`.
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        if host != registry {
            continue;
        }
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{key}.auth is not user:password")))?;
            return Ok(Auth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            });
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|v| v.as_str()),
            entry.get("password").and_then(|v| v.as_str()),
        ) {
            return Ok(Auth::Basic {
                user: u.to_owned(),
                password: p.to_owned(),
            });
        }
    }
    Ok(Auth::Anonymous)
}

fn client_for(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_owned();
    let host = registry
        .rsplit_once(':')
        .map_or(registry.as_str(), |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.");
    let listed = std::env::var("USMOL_REGISTRY_INSECURE")
        .map(|v| v.split(',').any(|r| r.trim() == registry))
        .unwrap_or(false);
    let protocol = if loopback || listed {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..ClientConfig::default()
    })
}

fn to_registry_auth(a: &Auth) -> RegistryAuth {
    match a {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { user, password } => RegistryAuth::Basic(user.clone(), password.clone()),
    }
}

/// Turns client errors into messages that say what to do.
fn registry_err(reference: &Reference, what: &str, e: OciDistributionError) -> Error {
    let registry = reference.resolve_registry().to_owned();
    let message = match &e {
        OciDistributionError::UnauthorizedError { url } => format!(
            "{what}: 401 unauthorized at {url}; set USMOL_REGISTRY_USER/USMOL_REGISTRY_PASSWORD or `docker login {registry}`"
        ),
        OciDistributionError::AuthenticationFailure(m) => format!(
            "{what}: authentication failed ({m}); check USMOL_REGISTRY_USER/USMOL_REGISTRY_PASSWORD or ~/.docker/config.json"
        ),
        OciDistributionError::ImageManifestNotFoundError(m) => {
            format!(
                "{what}: {} not found ({m}); check the name and tag",
                reference.whole()
            )
        }
        OciDistributionError::ServerError { code: 404, url, .. } => {
            format!("{what}: 404 not found at {url}; check the name and tag")
        }
        OciDistributionError::RegistryError { envelope, url }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            format!("{what}: not found at {url} ({envelope}); check the name and tag")
        }
        OciDistributionError::RegistryError { envelope, url }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            format!(
                "{what}: {url}: {envelope}; set USMOL_REGISTRY_USER/USMOL_REGISTRY_PASSWORD or `docker login {registry}`"
            )
        }
        OciDistributionError::RegistryError { envelope, url } => {
            format!("{what}: {url}: {envelope}")
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => format!(
            "{what}: registry unreachable ({r}); check the host/port, network, and USMOL_REGISTRY_INSECURE for plain-HTTP registries"
        ),
        other => format!("{what}: {other}"),
    };
    Error::Registry { registry, message }
}

/// Pushes the image in `layout` (its manifest for the reference's tag, else
/// its first) to `reference` (`host[:port]/name[:tag]`).
pub fn push(layout: &Path, reference: &str) -> Result<PushReport> {
    let r = parse_reference(reference)?;
    let tag = r.tag().unwrap_or("latest").to_owned();
    let (desc, manifest) =
        read_layout_manifest(layout, Some(&tag)).or_else(|_| read_layout_manifest(layout, None))?;
    let manifest_bytes = read_blob_verified(layout, &desc)?;
    let auth = to_registry_auth(&resolve_auth(r.resolve_registry())?);
    let client = client_for(&r);
    runtime()?.block_on(async {
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| registry_err(&r, "authenticating", e))?;
        let mut uploaded = 0;
        let mut skipped = 0;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let path = blob_path(layout, &blob.digest)?;
            let exists = client
                .blob_exists(&r, &blob.digest)
                .await
                .map_err(|e| registry_err(&r, "checking blob", e))?;
            if exists {
                skipped += 1;
                continue;
            }
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io_err("push", &path))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .map_err(OciDistributionError::from);
            client
                .push_blob_stream(&r, stream, &blob.digest, Some(blob.size))
                .await
                .map_err(|e| registry_err(&r, &format!("uploading {}", blob.digest), e))?;
            uploaded += 1;
        }
        let by_digest = r.clone_with_digest(desc.digest.clone());
        client
            .push_manifest_raw(
                &by_digest,
                manifest_bytes,
                MEDIA_MANIFEST.parse().expect("valid header"),
            )
            .await
            .map_err(|e| registry_err(&r, "putting the manifest", e))?;
        let index = Index {
            manifests: vec![Descriptor {
                annotations: Default::default(),
                digest: desc.digest.clone(),
                media_type: MEDIA_MANIFEST.into(),
                platform: Some(Platform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                }),
                size: desc.size,
            }],
            media_type: Some(MEDIA_INDEX.into()),
            schema_version: 2,
        };
        let index_bytes = serde_json::to_vec(&index).expect("plain struct");
        let index_digest = crate::sha256_digest(&index_bytes);
        client
            .push_manifest_raw(&r, index_bytes, MEDIA_INDEX.parse().expect("valid header"))
            .await
            .map_err(|e| registry_err(&r, "putting the index", e))?;
        Ok(PushReport {
            manifest_digest: desc.digest.clone(),
            index_digest,
            blobs_uploaded: uploaded,
            blobs_skipped: skipped,
        })
    })
}

/// Exports the usmol image from `source` (registry reference, layout dir or
/// layout tar) so that `<dir>/run` runs it. `dir` must not exist or be empty.
pub fn export(source: &str, dir: &Path) -> Result<PathBuf> {
    export_impl(source, dir, true)
}

/// Like [`export`] but keeps the whole image root filesystem at `dir`.
pub fn export_rootfs(source: &str, dir: &Path) -> Result<PathBuf> {
    export_impl(source, dir, false)
}

fn export_impl(source: &str, dir: &Path, usmol_only: bool) -> Result<PathBuf> {
    if let Ok(mut rd) = std::fs::read_dir(dir) {
        if rd.next().is_some() {
            return Err(Error::Invalid {
                stage: "export",
                path: dir.to_path_buf(),
                message: "destination exists and is not empty; pick a new directory".into(),
            });
        }
        std::fs::remove_dir(dir).map_err(io_err("export", dir))?;
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err("export", parent))?;
    let work = tempfile::Builder::new()
        .prefix(".usmol-export-")
        .tempdir_in(parent)
        .map_err(io_err("export", parent))?;

    let src_path = Path::new(source);
    let (layout, tag) = if src_path.join("oci-layout").is_file() {
        (src_path.to_path_buf(), None)
    } else if src_path.is_file() {
        let layout = work.path().join("layout");
        let f = std::fs::File::open(src_path).map_err(io_err("export", src_path))?;
        // The tar crate's unpack refuses `..` and absolute escapes; the
        // content is verified against digests below anyway.
        tar::Archive::new(std::io::BufReader::new(f))
            .unpack(&layout)
            .map_err(io_err("export: unpacking archive", src_path))?;
        if !layout.join("oci-layout").is_file() {
            return Err(Error::Invalid {
                stage: "export",
                path: src_path.to_path_buf(),
                message: "archive holds no OCI layout (oci-layout missing)".into(),
            });
        }
        (layout, None)
    } else {
        let layout = work.path().join("layout");
        let tag = pull_to_layout(source, &layout)?;
        (layout, Some(tag))
    };

    let (_, manifest) = match &tag {
        Some(t) => read_layout_manifest(&layout, Some(t))?,
        None => read_layout_manifest(&layout, None)?,
    };
    let root = work.path().join("root");
    std::fs::create_dir(&root).map_err(io_err("export", &root))?;
    let mut applier = Applier::new(&root);
    for layer in &manifest.layers {
        let path = blob_path(&layout, &layer.digest)?;
        verify_file(&path, &layer.digest, layer.size)?;
        let f =
            std::io::BufReader::new(std::fs::File::open(&path).map_err(io_err("export", &path))?);
        let apply_err = |source| Error::Apply {
            digest: layer.digest.clone(),
            source,
        };
        match layer.media_type.as_str() {
            MEDIA_LAYER_GZIP | MEDIA_DOCKER_LAYER => applier
                .apply(flate2::read::GzDecoder::new(f))
                .map_err(apply_err)?,
            MEDIA_LAYER_ZSTD => {
                let mut dec = zstd::Decoder::with_buffer(f).map_err(io_err("export", &path))?;
                // Other builders' layers may use windows up to the format's
                // limit; the default decoder refuses more than 2^27.
                dec.window_log_max(31).map_err(io_err("export", &path))?;
                applier.apply(dec).map_err(apply_err)?
            }
            MEDIA_LAYER_TAR => applier.apply(f).map_err(apply_err)?,
            other => {
                return Err(Error::Invalid {
                    stage: "export",
                    path,
                    message: format!("unsupported layer media type `{other}`"),
                });
            }
        }
    }
    applier.finish().map_err(|source| Error::Apply {
        digest: "<directory modes>".into(),
        source,
    })?;
    let result = if usmol_only {
        let usmol = root.join("usmol");
        if !usmol.join("run").is_file() {
            return Err(Error::Invalid {
                stage: "export",
                path: PathBuf::from(source),
                message:
                    "image has no /usmol/run; not a usmol image (use export_rootfs for others)"
                        .into(),
            });
        }
        usmol
    } else {
        root
    };
    std::fs::rename(&result, dir).map_err(io_err("export", dir))?;
    Ok(dir.to_path_buf())
}

/// Hashes a file and compares digest and size.
fn verify_file(path: &Path, digest: &str, size: u64) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(io_err("export", path))?;
    let mut h = crate::layer::HashWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut h).map_err(io_err("export", path))?;
    let (_, actual, n) = h.finish();
    if actual != digest || n != size {
        return Err(Error::Invalid {
            stage: "export",
            path: path.to_path_buf(),
            message: format!(
                "blob is {actual} ({n} bytes), expected {digest} ({size} bytes); refusing it"
            ),
        });
    }
    Ok(())
}

/// Pulls manifest, config and layers of `reference` into a fresh layout and
/// returns the tag it was recorded under.
fn pull_to_layout(reference: &str, layout: &Path) -> Result<String> {
    let r = parse_reference(reference)?;
    let tag = r.tag().unwrap_or("latest").to_owned();
    let auth = to_registry_auth(&resolve_auth(r.resolve_registry())?);
    let client = client_for(&r);
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("export", &blobs))?;
    let accepted = [
        MEDIA_MANIFEST,
        MEDIA_INDEX,
        MEDIA_DOCKER_MANIFEST,
        MEDIA_DOCKER_LIST,
    ];
    runtime()?.block_on(async {
        let (mut bytes, mut digest) = client
            .pull_manifest_raw(&r, &auth, &accepted)
            .await
            .map_err(|e| registry_err(&r, "fetching the manifest", e))?;
        for _ in 0..4 {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
                    registry: r.resolve_registry().to_owned(),
                    message: format!("manifest of {reference} is not JSON: {e}"),
                })?;
            if v.get("manifests").is_none() {
                break;
            }
            let index: Index = serde_json::from_value(v).map_err(|e| Error::Registry {
                registry: r.resolve_registry().to_owned(),
                message: format!("index of {reference} is malformed: {e}"),
            })?;
            let pick = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| Error::Registry {
                    registry: r.resolve_registry().to_owned(),
                    message: format!("{reference} has no linux/amd64 image"),
                })?;
            (bytes, digest) = client
                .pull_manifest_raw(&r.clone_with_digest(pick.digest.clone()), &auth, &accepted)
                .await
                .map_err(|e| registry_err(&r, "fetching the platform manifest", e))?;
        }
        if crate::sha256_digest(&bytes) != digest {
            return Err(Error::Registry {
                registry: r.resolve_registry().to_owned(),
                message: format!("manifest of {reference} does not match its digest {digest}"),
            });
        }
        let manifest: crate::image::Manifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
                registry: r.resolve_registry().to_owned(),
                message: format!("manifest of {reference} is malformed: {e}"),
            })?;
        crate::layer::write_blob(&bytes, &blobs)?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let path = blob_path(layout, &blob.digest)?;
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(io_err("export", &path))?;
            let desc = OciDescriptor {
                digest: blob.digest.clone(),
                media_type: blob.media_type.clone(),
                size: blob.size as i64,
                ..Default::default()
            };
            // pull_blob checks the digest while streaming.
            client
                .pull_blob(&r, &desc, file)
                .await
                .map_err(|e| registry_err(&r, &format!("fetching {}", blob.digest), e))?;
        }
        let index = Index {
            manifests: vec![Descriptor {
                annotations: [("org.opencontainers.image.ref.name".to_owned(), tag.clone())].into(),
                digest,
                media_type: manifest
                    .media_type
                    .clone()
                    .unwrap_or_else(|| MEDIA_MANIFEST.into()),
                platform: None,
                size: bytes.len() as u64,
            }],
            media_type: Some(MEDIA_INDEX.into()),
            schema_version: 2,
        };
        let p = layout.join("index.json");
        std::fs::write(&p, serde_json::to_vec(&index).expect("plain struct"))
            .map_err(io_err("export", &p))?;
        let p = layout.join("oci-layout");
        std::fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("export", &p))?;
        Ok(tag)
    })
}
