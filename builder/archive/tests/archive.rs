//! End-to-end tests of lock and fetch against a fixture archive: signed with
//! a throwaway key and served over HTTP from 127.0.0.1 by a small server
//! that also speaks Range and can be told to misbehave.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedSecretKey,
};
use pgp::types::Password;
use sha2::{Digest, Sha256};
use usmol_archive::{Cache, Keyring, Mirror, MirrorOrigin, Trust, fetch, lock_with};
use usmol_recipe::{Lock, Recipe};

// ---------------------------------------------------------------- server

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Vec<u8>>,
    /// Path -> bytes actually sent before the connection is dropped (the
    /// headers still announce the full length).
    cut_after: HashMap<String, usize>,
    /// Path -> a pause halfway through the body.
    stall: HashMap<String, Duration>,
    ignore_range: bool,
    /// Every request as "GET path [range]".
    log: Vec<String>,
}

struct Server {
    url: String,
    state: Arc<Mutex<ServerState>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/debian", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ServerState::default()));
        let shared = state.clone();
        // The thread ends with the test process; each connection is one request.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Server { url, state }
    }

    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), bytes);
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<ServerState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches("/debian")
        .to_owned();
    let (body, cut, stall, ignore_range) = {
        let mut s = state.lock().unwrap();
        s.log.push(format!(
            "GET {path}{}",
            range_start
                .map(|r| format!(" from {r}"))
                .unwrap_or_default()
        ));
        (
            s.files.get(&path).cloned(),
            s.cut_after.get(&path).copied(),
            s.stall.get(&path).copied(),
            s.ignore_range,
        )
    };
    let Some(body) = body else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let (status, start) = match range_start {
        Some(r) if !ignore_range && r >= body.len() => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(r) if !ignore_range => (
            format!(
                "206 Partial Content\r\nContent-Range: bytes {r}-{}/{}",
                body.len() - 1,
                body.len()
            ),
            r,
        ),
        _ => ("200 OK".to_owned(), 0),
    };
    let part = &body[start..];
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let send = cut.map_or(part.len(), |c| c.saturating_sub(start).min(part.len()));
    if let Some(pause) = stall {
        let _ = stream.write_all(&part[..send / 2]);
        let _ = stream.flush();
        std::thread::sleep(pause);
        let _ = stream.write_all(&part[send / 2..send]);
    } else {
        let _ = stream.write_all(&part[..send]);
    }
    let _ = stream.flush();
}

// ---------------------------------------------------------------- fixture

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn xz(text: &str) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

fn make_key() -> SignedSecretKey {
    SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519Legacy)
        .can_sign(true)
        .can_certify(true)
        .primary_user_id("Fixture Archive <archive@example.invalid>".into())
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

fn keyring_of(key: &SignedSecretKey) -> Keyring {
    let armored = key
        .to_public_key()
        .to_armored_string(ArmorOptions::default())
        .unwrap();
    Keyring::from_armored([("fixture.asc".to_owned(), armored)]).unwrap()
}

fn sign(key: &SignedSecretKey, text: &str) -> Vec<u8> {
    CleartextSignedMessage::sign(
        rand::thread_rng(),
        text,
        &key.primary_key,
        &Password::empty(),
    )
    .unwrap()
    .to_armored_string(ArmorOptions::default())
    .unwrap()
    .into_bytes()
}

/// A package of the fixture: (name, version, arch, extra control fields).
struct Pkg(&'static str, &'static str, &'static str, &'static str);

const PACKAGES: &[Pkg] = &[
    Pkg("tini", "0.19.0-1", "amd64", "Depends: libc6 (>= 2.34)\n"),
    Pkg("libc6", "2.41-12", "amd64", "Depends: libgcc-s1\n"),
    Pkg(
        "libgcc-s1",
        "14.2.0-19",
        "amd64",
        "Source: gcc-14 (14.2.0-19)\nDepends: libc6 (>= 2.35), gcc-14-base | gcc-base\n",
    ),
    Pkg("gcc-14-base", "14.2.0-19", "amd64", "Source: gcc-14\n"),
    Pkg(
        "base-files",
        "13.8",
        "amd64",
        "Essential: yes\nPre-Depends: awk\n",
    ),
    Pkg("mawk", "1.3.4-1", "amd64", "Provides: awk\n"),
    Pkg(
        "tzdata",
        "2025b-4",
        "all",
        "Depends: debconf (>= 0.5) | debconf-2.0\n",
    ),
];

const DATE: &str = "Sat, 21 Nov 2026 09:15:44 UTC";

struct Fixture {
    server: Server,
    key: SignedSecretKey,
    dir: PathBuf,
    recipe_path: PathBuf,
    recipe: Recipe,
    trust: Trust,
    /// pool path -> content
    debs: HashMap<String, Vec<u8>>,
}

impl Fixture {
    fn new(name: &str, include: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("usmol-archive-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let server = Server::start();
        let key = make_key();
        let mut debs = HashMap::new();
        let mut index = String::new();
        for Pkg(n, v, a, extra) in PACKAGES {
            let filename = format!("pool/main/{}/{n}/{n}_{v}_{a}.deb", &n[..1]);
            let content = format!("!<arch>\nfixture {n} {v}\n")
                .repeat(50)
                .into_bytes();
            index.push_str(&format!(
                "Package: {n}\nVersion: {v}\nArchitecture: {a}\n{extra}Filename: {filename}\nSize: {}\nSHA256: {}\n\n",
                content.len(),
                sha256(&content)
            ));
            server.put(&format!("/{filename}"), content.clone());
            debs.insert(filename, content);
        }
        let fx = Fixture {
            recipe_path: dir.join("r.toml"),
            recipe: Recipe::parse(
                Path::new("r.toml"),
                "[distribution]\nsuites=[\"x\"]\n[packages]\ninclude=[\"x\"]\n",
            )
            .unwrap(),
            trust: Trust {
                keyring: keyring_of(&key),
                now: now(),
            },
            server,
            key,
            dir,
            debs,
        };
        fx.publish(&index, DATE, None);
        fx.with_recipe(include)
    }

    fn with_recipe(mut self, packages: &str) -> Fixture {
        let text = format!(
            "[distribution]\nsuites = [\"trixie\"]\n\n[packages]\n{packages}\nexclude = [\"debconf\", \"debconf-2.0\"]\n"
        );
        std::fs::write(&self.recipe_path, &text).unwrap();
        self.recipe = Recipe::load(&self.recipe_path).unwrap();
        self
    }

    /// Publishes a Packages index and a signed InRelease naming it (by hash).
    fn publish(&self, index: &str, date: &str, valid_until: Option<&str>) {
        let packages_xz = xz(index);
        let hash = sha256(&packages_xz);
        self.server.put(
            &format!("/dists/trixie/main/binary-amd64/by-hash/SHA256/{hash}"),
            packages_xz.clone(),
        );
        self.server.put(
            "/dists/trixie/main/binary-amd64/Packages.xz",
            packages_xz.clone(),
        );
        let release = format!(
            "Origin: Debian\nSuite: stable\nCodename: trixie\nDate: {date}\n{}Acquire-By-Hash: yes\n\
No-Support-for-Architecture-all: Packages\nArchitectures: all amd64\nComponents: main\nSHA256:\n {hash} {} main/binary-amd64/Packages.xz\n",
            valid_until
                .map(|v| format!("Valid-Until: {v}\n"))
                .unwrap_or_default(),
            packages_xz.len()
        );
        self.server
            .put("/dists/trixie/InRelease", sign(&self.key, &release));
    }

    fn mirror(&self) -> Mirror {
        Mirror::new(&self.server.url, MirrorOrigin::Flag).unwrap()
    }

    fn cache(&self) -> Cache {
        Cache::new(self.dir.join("cache"))
            .with_progress(false)
            .with_parallel(3)
    }

    fn lock(&self, previous: Option<&Lock>) -> Result<Lock, usmol_archive::Error> {
        lock_with(
            &self.recipe,
            &self.recipe_path,
            &self.mirror(),
            &self.cache(),
            previous,
            &self.trust,
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> DateTime<Utc> {
    usmol_archive::release::parse_date("Sun, 22 Nov 2026 00:00:00 UTC").unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn lock_then_fetch_then_warm_fetch_needs_no_network() {
    let fx = Fixture::new(
        "happy",
        "include = [\"tini\", \"tzdata\"]\nessential = true",
    );
    let lock = fx.lock(None).unwrap();
    let names: Vec<String> = lock
        .packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    assert_eq!(
        names,
        [
            "base-files 13.8",
            "gcc-14-base 14.2.0-19",
            "libc6 2.41-12",
            "libgcc-s1 14.2.0-19",
            "mawk 1.3.4-1",
            "tini 0.19.0-1",
            "tzdata 2025b-4"
        ]
    );
    let gcc = lock
        .packages
        .iter()
        .find(|p| p.name == "libgcc-s1")
        .unwrap();
    assert_eq!(
        (
            gcc.source.as_str(),
            gcc.source_version.as_str(),
            gcc.suite.as_str()
        ),
        ("gcc-14", "14.2.0-19", "trixie")
    );
    assert_eq!(lock.releases.len(), 1);
    assert_eq!(
        (
            lock.releases[0].codename.as_str(),
            lock.releases[0].date.as_str()
        ),
        ("trixie", DATE)
    );
    assert_eq!(
        lock.recipe_sha256,
        sha256(&std::fs::read(&fx.recipe_path).unwrap())
    );
    assert!(
        fx.server
            .requests()
            .iter()
            .any(|r| r.contains("/by-hash/SHA256/")),
        "{:?}",
        fx.server.requests()
    );

    fx.server.clear_log();
    let fetched = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(fetched.len(), 7);
    for f in &fetched {
        assert_eq!(
            std::fs::read(&f.path).unwrap(),
            fx.debs[&f.package.filename]
        );
        assert!(f.path.starts_with(fx.dir.join("cache/blobs/sha256")));
    }
    assert_eq!(fx.server.requests().len(), 7);
    // No partial files remain once everything is verified.
    assert_eq!(
        std::fs::read_dir(fx.dir.join("cache/tmp")).unwrap().count(),
        0
    );

    fx.server.clear_log();
    let again = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(again, fetched);
    assert!(
        fx.server.requests().is_empty(),
        "warm fetch made requests: {:?}",
        fx.server.requests()
    );

    // A relock with a warm index cache only asks for the InRelease.
    fx.server.clear_log();
    assert_eq!(fx.lock(Some(&lock)).unwrap(), lock);
    assert_eq!(fx.server.requests(), ["GET /dists/trixie/InRelease"]);
}

#[test]
fn corrupted_cache_entry_is_refetched() {
    let fx = Fixture::new("corrupt", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let first = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    std::fs::write(&first[0].path, b"bit rot").unwrap();
    fx.server.clear_log();
    let second = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(
        std::fs::read(&second[0].path).unwrap(),
        fx.debs[&lock.packages[0].filename]
    );
    assert_eq!(fx.server.requests().len(), 1);
}

#[test]
fn tampered_inrelease_is_refused() {
    let fx = Fixture::new("tamper", "include = [\"tini\"]");
    let signed = fx.server.state.lock().unwrap().files["/dists/trixie/InRelease"].clone();
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Codename: trixie", "Codename: trixiE");
    fx.server
        .put("/dists/trixie/InRelease", tampered.into_bytes());
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(
        msg.contains("dists/trixie/InRelease: signature verification failed")
            && msg.contains("BAD signature"),
        "{msg}"
    );
}

#[test]
fn text_outside_the_signed_part_is_not_trusted() {
    let fx = Fixture::new("outside", "include = [\"tini\"]");
    let signed = fx.server.state.lock().unwrap().files["/dists/trixie/InRelease"].clone();
    let mut prefixed = b"Suite: evil\nSHA256:\n 00 1 main/binary-amd64/Packages.xz\n\n".to_vec();
    prefixed.extend(signed);
    fx.server.put("/dists/trixie/InRelease", prefixed);
    // Either refused outright or parsed from the signed text only.
    if let Ok(lock) = fx.lock(None) {
        assert_eq!(lock.releases[0].codename, "trixie");
        assert!(lock.packages.iter().any(|p| p.name == "tini"));
    }
}

#[test]
fn unknown_signing_key_is_refused() {
    let mut fx = Fixture::new("wrongkey", "include = [\"tini\"]");
    let other = make_key();
    fx.trust.keyring = keyring_of(&other);
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(msg.contains("signed by unknown key"), "{msg}");
}

#[test]
fn expired_valid_until_is_refused() {
    let fx = Fixture::new("expired", "include = [\"tini\"]");
    let index = String::from_utf8(liblzma_decode(&fx)).unwrap();
    fx.publish(&index, DATE, Some("Sat, 21 Nov 2026 12:00:00 UTC"));
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(msg.contains("expired: Valid-Until"), "{msg}");
    // Still valid at an earlier time.
    fx.publish(&index, DATE, Some("Mon, 23 Nov 2026 12:00:00 UTC"));
    fx.lock(None).unwrap();
}

#[test]
fn expired_valid_until_is_accepted_only_when_the_recipe_says_so() {
    let mut fx = Fixture::new("snapshot", "include = [\"tini\"]");
    let index = String::from_utf8(liblzma_decode(&fx)).unwrap();
    fx.publish(&index, DATE, Some("Sat, 21 Nov 2026 12:00:00 UTC"));
    std::fs::write(
        &fx.recipe_path,
        "[distribution]\nsuites = [\"trixie\"]\ncheck_valid_until = false\n\n\
         [packages]\ninclude = [\"tini\"]\n",
    )
    .unwrap();
    fx.recipe = Recipe::load(&fx.recipe_path).unwrap();
    let lock = fx.lock(None).unwrap();
    assert!(lock.packages.iter().any(|p| p.name == "tini"));
    // The signature still counts.
    fx.trust.keyring = keyring_of(&make_key());
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(msg.contains("signed by unknown key"), "{msg}");
}

fn liblzma_decode(fx: &Fixture) -> Vec<u8> {
    let s = fx.server.state.lock().unwrap();
    let (_, xz) = s.files.iter().find(|(k, _)| k.contains("by-hash")).unwrap();
    let mut out = Vec::new();
    liblzma::read::XzDecoder::new(&xz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn release_older_than_the_lock_is_a_rollback() {
    let fx = Fixture::new("rollback", "include = [\"tini\"]");
    let lock = fx.lock(None).unwrap();
    let index = String::from_utf8(liblzma_decode(&fx)).unwrap();
    fx.publish(&index, "Fri, 20 Nov 2026 09:15:44 UTC", None);
    let msg = fx.lock(Some(&lock)).unwrap_err().to_string();
    assert!(
        msg.contains("rollback") && msg.contains("Fri, 20 Nov 2026"),
        "{msg}"
    );
    // Without a previous lock the same Release is acceptable.
    fx.lock(None).unwrap();
}

#[test]
fn truncated_download_is_an_error_and_not_cached() {
    let fx = Fixture::new("truncated", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let file = format!("/{}", lock.packages[0].filename);
    let full = fx.debs[&lock.packages[0].filename].clone();
    // The server itself holds a short file: the size check must catch it.
    fx.server.put(&file, full[..full.len() / 2].to_vec());
    let msg = fetch(&lock, &fx.mirror(), &fx.cache())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&file)
            && msg.contains("size mismatch")
            && msg.contains(&format!("expected {}", full.len())),
        "{msg}"
    );
    assert!(!fx.cache().blob_path(&lock.packages[0].sha256).exists());
    // The connection drops mid-body: retried once with Range, then an error.
    fx.server.put(&file, full.clone());
    fx.server
        .state
        .lock()
        .unwrap()
        .cut_after
        .insert(file.clone(), 100);
    let msg = fetch(&lock, &fx.mirror(), &fx.cache())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&file) && msg.contains("interrupted"), "{msg}");
    assert!(!fx.cache().blob_path(&lock.packages[0].sha256).exists());
    // The partial file is resumed with a Range request next time.
    fx.server.state.lock().unwrap().cut_after.clear();
    fx.server.clear_log();
    let fetched = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(std::fs::read(&fetched[0].path).unwrap(), full);
    assert_eq!(fx.server.requests(), [format!("GET {file} from 100")]);
}

/// Two builds sharing one cache fetch the same package at once: one
/// downloads it, the other waits for that download and finds the blob,
/// instead of writing into the same partial file.
#[test]
fn two_fetches_of_one_blob_share_the_download() {
    let fx = Fixture::new("shared", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let file = format!("/{}", lock.packages[0].filename);
    fx.server
        .state
        .lock()
        .unwrap()
        .stall
        .insert(file.clone(), Duration::from_millis(300));
    fx.server.clear_log();
    let (mirror, first_cache, second_cache) = (fx.mirror(), fx.cache(), fx.cache());
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| fetch(&lock, &mirror, &first_cache));
        // The second starts while the first transfer is under way.
        while fx.server.requests().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = s.spawn(|| fetch(&lock, &mirror, &second_cache));
        (first.join().unwrap(), second.join().unwrap())
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(&first[0].path).unwrap(),
        fx.debs[&lock.packages[0].filename]
    );
    assert_eq!(fx.server.requests(), [format!("GET {file}")]);
    assert_eq!(
        std::fs::read_dir(fx.dir.join("cache/tmp")).unwrap().count(),
        0
    );
}

#[test]
fn server_ignoring_range_restarts_the_download() {
    let fx = Fixture::new("norange", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let pkg = &lock.packages[0];
    let part = fx
        .dir
        .join("cache/tmp")
        .join(format!("{}.part", pkg.sha256));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, b"garbage from an older attempt").unwrap();
    fx.server.state.lock().unwrap().ignore_range = true;
    let fetched = fetch(&lock, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(
        std::fs::read(&fetched[0].path).unwrap(),
        fx.debs[&pkg.filename]
    );
}

#[test]
fn hash_mismatch_names_url_and_both_hashes() {
    let fx = Fixture::new("mismatch", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let file = format!("/{}", lock.packages[0].filename);
    let mut evil = fx.debs[&lock.packages[0].filename].clone();
    evil[10] ^= 1;
    let evil_hash = sha256(&evil);
    fx.server.put(&file, evil);
    let msg = fetch(&lock, &fx.mirror(), &fx.cache())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&file) && msg.contains(&lock.packages[0].sha256) && msg.contains(&evil_hash),
        "{msg}"
    );
    assert!(!fx.cache().blob_path(&lock.packages[0].sha256).exists());
    assert_eq!(
        std::fs::read_dir(fx.dir.join("cache/tmp")).unwrap().count(),
        0
    );
}

#[test]
fn tampered_index_is_refused() {
    let fx = Fixture::new("index", "include = [\"tini\"]");
    let mut s = fx.server.state.lock().unwrap();
    for (path, content) in s.files.iter_mut() {
        if path.contains("/binary-amd64/") {
            content.push(0);
        }
    }
    drop(s);
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(
        msg.contains("binary-amd64/Packages.xz") && msg.contains("size mismatch"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(fx.dir.join("cache/tmp")).unwrap().count(),
        0,
        "no partial index is left behind"
    );
}

/// A by-hash index with other content (a mirror in mid-sync, a stale
/// caching proxy) gives way to the canonical path, verified the same way.
#[test]
fn a_stale_by_hash_index_falls_back_to_the_canonical_path() {
    let fx = Fixture::new("stale-by-hash", "include = [\"tini\"]");
    let mut s = fx.server.state.lock().unwrap();
    let key = s
        .files
        .keys()
        .find(|k| k.contains("by-hash"))
        .unwrap()
        .clone();
    *s.files.get_mut(&key).unwrap() = xz("Package: stale\n\n").repeat(3);
    drop(s);
    let lock = fx.lock(None).unwrap();
    assert!(lock.packages.iter().any(|p| p.name == "tini"));
    let requests = fx.server.requests();
    let by_hash = requests.iter().position(|r| r.contains("/by-hash/SHA256/"));
    let canonical = requests
        .iter()
        .position(|r| r.contains("/binary-amd64/Packages.xz"));
    assert!(
        matches!((by_hash, canonical), (Some(b), Some(c)) if b < c),
        "by hash first, then the canonical path: {requests:?}"
    );
}

#[test]
fn unknown_package_names_the_chain() {
    let fx = Fixture::new("unknown", "include = [\"tini\", \"nosuch\"]");
    let msg = fx.lock(None).unwrap_err().to_string();
    assert!(
        msg.contains("cannot resolve nosuch: nosuch is not in suites trixie"),
        "{msg}"
    );
}

/// Locks a tiny real recipe against the host's configured mirror.
#[test]
fn slow_real_mirror_lock_and_fetch() {
    if std::env::var("USMOL_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set USMOL_SLOW_TESTS=1");
        return;
    }
    let dir = std::env::temp_dir().join(format!("usmol-archive-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe_path = dir.join("tini.toml");
    std::fs::write(
        &recipe_path,
        "[distribution]\nsuites = [\"trixie\"]\n\n[packages]\ninclude = [\"tini\"]\n",
    )
    .unwrap();
    let recipe = Recipe::load(&recipe_path).unwrap();
    let mirror = usmol_archive::resolve_mirror(None, &recipe).unwrap();
    let cache = Cache::default_location();
    let start = std::time::Instant::now();
    let lock = usmol_archive::lock(&recipe, &recipe_path, &mirror, &cache, None).unwrap();
    eprintln!(
        "locked {} packages in {:?}",
        lock.packages.len(),
        start.elapsed()
    );
    assert!(lock.packages.iter().any(|p| p.name == "tini"));
    assert_eq!(lock.releases[0].codename, "trixie");
    let fetched = fetch(&lock, &mirror, &cache).unwrap();
    assert!(fetched.iter().all(|f| f.path.is_file()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Locks and fetches the project's guest recipe against the host's mirror,
/// twice: the second run finds the indexes and .debs in the cache.
#[test]
fn slow_real_mirror_guest_recipe() {
    if std::env::var("USMOL_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set USMOL_SLOW_TESTS=1");
        return;
    }
    let recipe_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/usmol.toml");
    let recipe = Recipe::load(&recipe_path).unwrap();
    let mirror = usmol_archive::resolve_mirror(None, &recipe).unwrap();
    let cache = Cache::default_location();
    for round in ["first", "second"] {
        let start = std::time::Instant::now();
        let lock = usmol_archive::lock(&recipe, &recipe_path, &mirror, &cache, None).unwrap();
        let locked = start.elapsed();
        let fetched = fetch(&lock, &mirror, &cache).unwrap();
        let bytes: u64 = fetched.iter().map(|f| f.package.size).sum();
        eprintln!(
            "{round} run: locked {} packages in {locked:?}, fetched {bytes} bytes, total {:?}",
            lock.packages.len(),
            start.elapsed()
        );
        for name in [
            "docker.io",
            "containerd",
            "runc",
            "tini",
            "iptables",
            "bash",
            "coreutils",
        ] {
            assert!(
                lock.packages.iter().any(|p| p.name == name),
                "{name} missing"
            );
        }
        for name in &recipe.packages.exclude {
            assert!(
                !lock.packages.iter().any(|p| &p.name == name),
                "{name} was excluded"
            );
        }
    }
}

#[test]
fn the_same_blob_twice_is_fetched_once() {
    let fx = Fixture::new("dup", "include = [\"gcc-14-base\"]");
    let lock = fx.lock(None).unwrap();
    let mut doubled = lock.clone();
    doubled.packages.push(lock.packages[0].clone());
    fx.server.clear_log();
    let fetched = fetch(&doubled, &fx.mirror(), &fx.cache()).unwrap();
    assert_eq!(fetched.len(), 2);
    assert_eq!(fetched[0].path, fetched[1].path);
    assert_eq!(fx.server.requests().len(), 1);
}
