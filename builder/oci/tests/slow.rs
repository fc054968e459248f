//! Slow tests (USMOL_SLOW_TESTS=1): a real registry on 127.0.0.1 (Debian's
//! `docker-registry`) and, when an engine answers `docker info`, `docker
//! load` + `docker run` of the archives. Plus loopback-only error tests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use usmol_oci::{
    Compression, ImageConfig, Metadata, build_image, docker_archive_from_files,
    write_docker_archive,
};

const EPOCH: u64 = 1_700_000_000;

fn slow() -> bool {
    if std::env::var("USMOL_SLOW_TESTS").as_deref() == Ok("1") {
        true
    } else {
        eprintln!("skipped: set USMOL_SLOW_TESTS=1");
        false
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Option<Registry> {
    let bin = Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        eprintln!(
            "!!!!!! SKIPPED registry tests: /usr/bin/docker-registry missing (apt-get install -y docker-registry) !!!!!!"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "registry did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Registry {
        child,
        addr,
        _dir: dir,
    })
}

fn artifact(dir: &Path, run: &Path) -> PathBuf {
    let a = dir.join("artifact");
    std::fs::create_dir_all(a.join("lib")).unwrap();
    std::fs::copy(run, a.join("run")).unwrap();
    std::fs::write(a.join("lib/linux"), vec![1u8; 200_000]).unwrap();
    std::fs::write(a.join("lib/rootfs.ext4"), vec![0u8; 2 << 20]).unwrap();
    std::fs::write(a.join("lib/manifest.json"), b"{}").unwrap();
    std::fs::write(a.join("lib/passt"), vec![2u8; 10_000]).unwrap();
    std::fs::write(a.join("lib/passt.avx2"), vec![3u8; 10_000]).unwrap();
    a
}

fn meta() -> Metadata {
    Metadata {
        version: "0.1.0".into(),
        revision: "0123abcd".into(),
        source: "https://example.invalid/usmol".into(),
        epoch: EPOCH,
    }
}

#[test]
fn push_is_idempotent_and_export_round_trips() {
    if !slow() {
        return;
    }
    let Some(reg) = start_registry() else { return };
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("fake-run");
    std::fs::write(&run, b"#!/bin/sh\necho usmol\n").unwrap();
    let a = artifact(d.path(), &run);
    let img = build_image(
        &a,
        &meta(),
        Compression::Zstd,
        None,
        &d.path().join("layout"),
    )
    .unwrap();
    let reference = format!("{}/usmol:0.1.0", reg.addr);

    let first = usmol_oci::push(&img.layout, &reference).unwrap();
    assert_eq!(first.manifest_digest, img.manifest.digest);
    assert_eq!((first.blobs_uploaded, first.blobs_skipped), (3, 0));
    let again = usmol_oci::push(&img.layout, &reference).unwrap();
    assert_eq!((again.blobs_uploaded, again.blobs_skipped), (0, 3));
    assert_eq!(again.index_digest, first.index_digest);

    let out = d.path().join("exported");
    usmol_oci::export(&reference, &out).unwrap();
    for f in ["run", "lib/linux", "lib/rootfs.ext4", "lib/manifest.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(a.join(f)).unwrap(),
            "{f}"
        );
    }

    let err =
        usmol_oci::export(&format!("{}/usmol:nope", reg.addr), &d.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(!d.path().join("x").exists());
}

#[test]
fn unreachable_registry_is_named() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let err =
        usmol_oci::export(&format!("127.0.0.1:{port}/usmol:1"), &d.path().join("x")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unreachable") && msg.contains(&port.to_string()),
        "{msg}"
    );
}

#[test]
fn unauthorized_registry_says_how_to_log_in() {
    // A loopback server that answers every request with 401 Basic.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let d = tempfile::tempdir().unwrap();
    let err = usmol_oci::export(&format!("{addr}/usmol:1"), &d.path().join("x")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("USMOL_REGISTRY_USER"), "{msg}");
}

fn docker_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A static `hello` built with gcc, the smallest binary a scratch image runs.
fn static_hello(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"hello from scratch\");return 0;}\n",
    )
    .unwrap();
    let bin = dir.join("hello");
    let ok = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(bin)
}

/// A one-layer (gzip) image of the static `hello` as its entrypoint, tagged
/// `tag`, written as a docker archive at `archive` (layout beside it).
fn hello_archive(hello: &Path, tag: &str, archive: &Path) -> usmol_oci::BuiltImage {
    docker_archive_from_files(
        &[("/hello".into(), hello.to_owned(), 0o755)],
        ImageConfig {
            entrypoint: vec!["/hello".into()],
            ..ImageConfig::default()
        },
        &[tag.to_owned()],
        archive,
        EPOCH,
    )
    .unwrap()
}

#[test]
fn docker_loads_and_runs_the_archives() {
    if !slow() {
        return;
    }
    if !docker_ok() {
        eprintln!(
            "!!!!!! SKIPPED docker load test: `docker info` fails (no engine reachable) !!!!!!"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(hello) = static_hello(d.path()) else {
        eprintln!("!!!!!! SKIPPED docker load test: gcc -static unavailable !!!!!!");
        return;
    };
    let tag = format!("usmol-test-hello:{}", std::process::id());
    let archive = d.path().join("hello.tar");
    hello_archive(&hello, &tag, &archive);
    let loaded = docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(&tag), "{loaded}");
    let out = docker(&["run", "--rm", "--network", "none", &tag]);
    assert_eq!(out.trim(), "hello from scratch");
    docker(&["rmi", &tag]);

    // The usmol image shape, with the static hello standing in for the
    // launcher: entrypoint, labels, /tmp and the layers all load.
    let a = artifact(d.path(), &hello);
    let img = build_image(
        &a,
        &meta(),
        Compression::Gzip,
        None,
        &d.path().join("layout"),
    )
    .unwrap();
    let name = format!("usmol-test:{}", std::process::id());
    let archive = d.path().join("usmol.tar");
    write_docker_archive(&img, std::slice::from_ref(&name), &archive, EPOCH).unwrap();
    docker(&["load", "-i", archive.to_str().unwrap()]);
    let inspect = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}} {{.Id}}",
        &name,
    ]);
    assert!(
        inspect.contains(r#""Entrypoint":["/usmol/run"]"#),
        "{inspect}"
    );
    assert!(
        inspect.contains(r#""org.opencontainers.image.version":"0.1.0""#),
        "{inspect}"
    );
    assert!(
        inspect.contains(&img.config.digest),
        "image ID is the config digest: {inspect}"
    );
    let out = docker(&["run", "--rm", "--network", "none", &name]);
    assert_eq!(out.trim(), "hello from scratch");
    let tmp = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usmol/run",
        &name,
    ]);
    assert_eq!(tmp.trim(), "hello from scratch");
    docker(&["rmi", &name]);
}

/// The gzip layout is what engines before Docker 23 (Debian 12's 20.10)
/// pull: pushed to a registry on loopback, the engine here pulls and runs it.
#[test]
fn docker_pulls_a_pushed_gzip_layout() {
    if !slow() {
        return;
    }
    if !docker_ok() {
        eprintln!(
            "!!!!!! SKIPPED docker pull test: `docker info` fails (no engine reachable) !!!!!!"
        );
        return;
    }
    let Some(reg) = start_registry() else { return };
    let d = tempfile::tempdir().unwrap();
    let Some(hello) = static_hello(d.path()) else {
        eprintln!("!!!!!! SKIPPED docker pull test: gcc -static unavailable !!!!!!");
        return;
    };
    let tag = format!("{}/usmol-test-pull:{}", reg.addr, std::process::id());
    let img = hello_archive(&hello, &tag, &d.path().join("hello.tar"));
    usmol_oci::push(&img.layout, &tag).unwrap();
    docker(&["pull", &tag]);
    let out = docker(&["run", "--rm", "--network", "none", &tag]);
    assert_eq!(out.trim(), "hello from scratch");
    docker(&["rmi", &tag]);
}
