//! The content-addressed download cache and the HTTP client that fills it.
//!
//! Layout: `<cache>/blobs/sha256/<hex>` holds verified files only;
//! `<cache>/tmp/<hex>.part` holds downloads in progress. A blob appears only
//! by renaming a `.part` whose size and sha256 matched, so a crash or a
//! truncated transfer never leaves a trusted entry. A leftover `.part` is
//! resumed with an HTTP Range request. Blobs are rehashed on use, so a
//! corrupted entry is noticed and fetched again.
//!
//! Several builds may share one cache: a download holds an exclusive lock
//! on `<cache>/tmp/<hex>.lock` while it writes the `.part`, so a second
//! fetch of the same blob waits and then finds it published.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// How many downloads run at once: enough to hide latency, few enough to be
/// polite to a mirror.
pub const DEFAULT_PARALLEL: usize = 4;

/// The default cache directory: `$USMOL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/usmol`, else `~/.cache/usmol`.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("USMOL_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("usmol");
    }
    var("HOME")
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".cache/usmol")
}

/// One file to fetch: where from and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// The same file at a second address, tried once when `url` answers
    /// with other content: an index's canonical path behind its by-hash
    /// one, which a mirror in mid-sync or a caching proxy can serve stale.
    pub fallback_url: Option<String>,
}

/// The download cache plus the HTTP agent used to fill it.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    agent: ureq::Agent,
    parallel: usize,
    progress: bool,
}

/// Streams a reader into sha256, returning (hex digest, bytes read).
fn hash_reader(mut r: impl Read) -> std::io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((hasher, n));
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
}

/// sha256 of a byte slice, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Cache {
    /// A cache rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("usmol/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Cache {
            root: root.into(),
            agent,
            parallel: DEFAULT_PARALLEL,
            // Bars only where a person watches; logs and CI get none.
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// The cache at [`cache_dir`].
    pub fn default_location() -> Self {
        Self::new(cache_dir())
    }

    pub fn with_parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this sha256 lives (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    fn io_err(path: &Path, stage: &'static str) -> impl FnOnce(std::io::Error) -> Error + use<> {
        let path = path.to_owned();
        move |source| Error::Io {
            path,
            stage,
            source,
        }
    }

    /// The verified blob for `sha256`/`size`, if cached and intact. A blob
    /// that no longer matches is deleted so it is fetched again.
    pub fn lookup(&self, sha256: &str, size: u64) -> Result<Option<PathBuf>> {
        let path = self.blob_path(sha256);
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        if meta.len() == size {
            let file = File::open(&path).map_err(Self::io_err(&path, "reading a cached blob"))?;
            let (hasher, _) =
                hash_reader(file).map_err(Self::io_err(&path, "reading a cached blob"))?;
            if hex::encode(hasher.finalize()) == sha256 {
                return Ok(Some(path));
            }
        }
        fs::remove_file(&path).map_err(Self::io_err(&path, "removing a corrupted cached blob"))?;
        Ok(None)
    }

    /// Stores bytes already verified by the caller (e.g. a decompressed
    /// index) under their sha256; returns the blob path.
    pub fn store(&self, bytes: &[u8]) -> Result<PathBuf> {
        let sha = sha256_hex(bytes);
        let path = self.blob_path(&sha);
        if path.exists() {
            return Ok(path);
        }
        // Unique per call: two threads may store the same bytes at once.
        static STORES: AtomicU64 = AtomicU64::new(0);
        let tmp = self.tmp_path(&format!(
            "{sha}.store.{}.{}",
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed)
        ));
        let mk = |p: &Path| fs::create_dir_all(p.parent().unwrap());
        mk(&tmp)
            .and_then(|_| mk(&path))
            .map_err(Self::io_err(&self.root, "creating the cache"))?;
        fs::write(&tmp, bytes).map_err(Self::io_err(&tmp, "writing a cache entry"))?;
        fs::rename(&tmp, &path).map_err(Self::io_err(&path, "publishing a cache entry"))?;
        Ok(path)
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.root.join("tmp").join(name)
    }

    /// Fetches a small file (e.g. InRelease) into memory, uncached: its
    /// hash is not known in advance, and it must be fresh.
    pub fn get_bytes(&self, url: &str) -> Result<Vec<u8>> {
        let http = |message: String| Error::Http {
            url: url.to_owned(),
            message,
        };
        let resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| http(e.to_string()))?;
        let mut out = Vec::new();
        resp.into_body()
            .into_reader()
            .take(64 << 20)
            .read_to_end(&mut out)
            .map_err(|e| http(format!("reading the body: {e}")))?;
        Ok(out)
    }

    /// Makes each download available in the cache, fetching the missing ones
    /// in parallel; returns their blob paths in input order.
    pub fn fetch_all(&self, downloads: &[Download]) -> Result<Vec<PathBuf>> {
        let mut paths: Vec<Option<PathBuf>> = Vec::with_capacity(downloads.len());
        let mut missing = Vec::new();
        for (i, d) in downloads.iter().enumerate() {
            if !is_sha256(&d.sha256) {
                return Err(Error::Http {
                    url: d.url.clone(),
                    message: format!("{:?} is not a sha256 hex digest", d.sha256),
                });
            }
            let hit = self.lookup(&d.sha256, d.size)?;
            // One transfer per blob: two threads must never share a `.part`.
            if hit.is_none()
                && !missing
                    .iter()
                    .any(|&m: &usize| downloads[m].sha256 == d.sha256)
            {
                missing.push(i);
            }
            paths.push(hit);
        }
        if !missing.is_empty() {
            let multi = MultiProgress::with_draw_target(if self.progress {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            });
            let total: u64 = missing.iter().map(|&i| downloads[i].size).sum();
            let overall = multi.add(ProgressBar::new(total));
            overall.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            overall.set_message(format!("fetching {} files", missing.len()));
            let next = Mutex::new(missing.iter().copied());
            let results: Mutex<Vec<(usize, Result<PathBuf>)>> = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for _ in 0..self.parallel.min(missing.len()) {
                    s.spawn(|| {
                        loop {
                            let Some(i) = next.lock().unwrap().next() else {
                                break;
                            };
                            let r = self.download(&downloads[i], &overall);
                            let failed = r.is_err();
                            results.lock().unwrap().push((i, r));
                            if failed {
                                break;
                            }
                        }
                    });
                }
            });
            overall.finish_and_clear();
            let mut results = results.into_inner().unwrap();
            results.sort_by_key(|(i, _)| *i);
            for (i, r) in results {
                let path = r?;
                for (p, d) in paths.iter_mut().zip(downloads) {
                    if p.is_none() && d.sha256 == downloads[i].sha256 {
                        *p = Some(path.clone());
                    }
                }
            }
        }
        paths
            .into_iter()
            .zip(downloads)
            .map(|(p, d)| {
                p.ok_or_else(|| Error::Http {
                    url: d.url.clone(),
                    message: "not fetched (an earlier download failed)".into(),
                })
            })
            .collect()
    }

    /// Downloads one file into `tmp/<sha>.part` (resuming if present),
    /// verifies it and publishes it as a blob.
    fn download(&self, d: &Download, bar: &ProgressBar) -> Result<PathBuf> {
        let blob = self.blob_path(&d.sha256);
        let part = self.tmp_path(&format!("{}.part", d.sha256));
        for dir in [blob.parent().unwrap(), part.parent().unwrap()] {
            fs::create_dir_all(dir).map_err(Self::io_err(dir, "creating the cache"))?;
        }
        let _lock = DownloadLock::acquire(&self.tmp_path(&format!("{}.lock", d.sha256)))?;
        // Whoever held the lock before may have published it meanwhile.
        if let Some(hit) = self.lookup(&d.sha256, d.size)? {
            bar.inc(d.size);
            return Ok(hit);
        }
        let mut result = self.download_from(d, &d.url, &part, bar);
        if let (Err(Error::SizeMismatch { .. } | Error::HashMismatch { .. }), Some(fallback)) =
            (&result, &d.fallback_url)
        {
            result = self.download_from(d, fallback, &part, bar);
        }
        result?;
        fs::rename(&part, &blob).map_err(Self::io_err(&blob, "publishing a download"))?;
        Ok(blob)
    }

    /// Fills `part` from `url` and checks it against `d`'s size and hash;
    /// a mismatch removes it.
    fn download_from(&self, d: &Download, url: &str, part: &Path, bar: &ProgressBar) -> Result<()> {
        // Two attempts: a broken connection is resumed once before giving up.
        let mut last_err = None;
        for _ in 0..2 {
            match self.transfer(d, url, part, bar) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e @ Error::Http { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        let (hasher, len) = File::open(part)
            .and_then(hash_reader)
            .map_err(Self::io_err(part, "hashing a download"))?;
        let actual = hex::encode(hasher.finalize());
        if len != d.size || actual != d.sha256 {
            // Nothing of a bad download is kept: the next try starts afresh.
            let _ = fs::remove_file(part);
            return Err(if len != d.size {
                Error::SizeMismatch {
                    url: url.to_owned(),
                    expected: d.size,
                    actual: len,
                    sha256: actual,
                }
            } else {
                Error::HashMismatch {
                    url: url.to_owned(),
                    expected: d.sha256.clone(),
                    actual,
                }
            });
        }
        Ok(())
    }

    /// One HTTP transfer from `url` into `part`, continuing a partial file
    /// with Range.
    fn transfer(&self, d: &Download, url: &str, part: &Path, bar: &ProgressBar) -> Result<()> {
        let http = |message: String| Error::Http {
            url: url.to_owned(),
            message,
        };
        let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > d.size {
            fs::remove_file(part)
                .map_err(Self::io_err(part, "removing an oversized partial download"))?;
        }
        let have = if have > d.size { 0 } else { have };
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            // The part is complete or wrong; start over.
            Err(ureq::Error::StatusCode(416)) => {
                fs::remove_file(part).map_err(Self::io_err(part, "removing a partial download"))?;
                self.agent
                    .get(url)
                    .call()
                    .map_err(|e| http(e.to_string()))?
            }
            Err(e) => return Err(http(e.to_string())),
        };
        let resumed = resp.status().as_u16() == 206;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .map_err(Self::io_err(part, "writing a download"))?;
        bar.inc(if resumed { have } else { 0 });
        // One byte past the expected size is enough to notice an overlong file.
        let limit = d.size - if resumed { have } else { 0 } + 1;
        let mut body = resp.into_body().into_reader().take(limit);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| http(format!("transfer interrupted: {e}")))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(Self::io_err(part, "writing a download"))?;
            bar.inc(n as u64);
        }
        file.sync_all()
            .map_err(Self::io_err(part, "writing a download"))?;
        Ok(())
    }
}

/// An exclusive lock on one blob's download: an `flock` on its lock file,
/// which is removed before the lock is released, so the cache's `tmp` is
/// left empty.
struct DownloadLock {
    path: PathBuf,
    _file: File,
}

impl DownloadLock {
    fn acquire(path: &Path) -> Result<Self> {
        let err = |stage| Cache::io_err(path, stage);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(err("opening a download lock"))?;
            file.lock().map_err(err("locking a download"))?;
            // A holder removes the file before unlocking it: a lock taken on
            // a removed file guards nothing, so take the current one.
            let held = file.metadata().map_err(err("locking a download"))?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(DownloadLock {
                        path: path.to_owned(),
                        _file: file,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err("locking a download")(e)),
            }
        }
    }
}

impl Drop for DownloadLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_the_env_rule() {
        // Only reads the environment; the rule itself is checked in one test
        // to avoid racing on process-wide variables.
        let dir = cache_dir();
        if let Some(v) = std::env::var_os("USMOL_CACHE_DIR").filter(|v| !v.is_empty()) {
            assert_eq!(dir, PathBuf::from(v));
        } else if let Some(v) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            assert_eq!(dir, PathBuf::from(v).join("usmol"));
        } else {
            assert!(dir.ends_with(".cache/usmol"));
        }
    }

    #[test]
    fn corrupted_blob_is_dropped_on_lookup() {
        let root = std::env::temp_dir().join(format!("usmol-cache-unit-{}", std::process::id()));
        let cache = Cache::new(&root);
        let path = cache.store(b"hello").unwrap();
        let sha = sha256_hex(b"hello");
        assert_eq!(cache.lookup(&sha, 5).unwrap(), Some(path.clone()));
        fs::write(&path, b"jello").unwrap();
        assert_eq!(cache.lookup(&sha, 5).unwrap(), None);
        assert!(!path.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
