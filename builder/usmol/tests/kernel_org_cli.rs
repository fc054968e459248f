//! `--kernel-org-tarball`/`--kernel-org-signature` on the real CLI: both or
//! neither, and verification happens before any fetch.

use std::process::Command;

fn usmol(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_usmol"))
        .args(args)
        .current_dir(dir)
        // Nothing may be fetched: a mirror that refuses every connection.
        .env("USMOL_MIRROR", "http://127.0.0.1:1/debian")
        .env("USMOL_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tarball_without_signature_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["kernel", "--kernel-org-tarball", "linux-6.1.2.tar.xz"][..],
        &["kernel", "--kernel-org-signature", "linux-6.1.2.tar.sign"][..],
    ] {
        let (ok, stderr) = usmol(args, dir.path());
        assert!(!ok);
        assert!(stderr.contains("required"), "{stderr}");
    }
}

#[test]
fn kernel_org_source_is_verified_before_anything_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("linux-6.1.2.tar.xz"), b"not xz").unwrap();
    std::fs::write(dir.path().join("linux-6.1.2.tar.sign"), b"not a signature").unwrap();
    for command in ["kernel", "image"] {
        let mut args = vec![
            command,
            "--kernel-org-tarball",
            "linux-6.1.2.tar.xz",
            "--kernel-org-signature",
            "linux-6.1.2.tar.sign",
        ];
        if command == "image" {
            args.extend(["--launcher", "run", "--init", "init"]);
        }
        let (ok, stderr) = usmol(&args, dir.path());
        assert!(!ok);
        assert!(stderr.contains("linux-6.1.2.tar.sign"), "{stderr}");
        assert!(
            stderr.contains("not an OpenPGP detached signature"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("127.0.0.1"),
            "fetched before verifying: {stderr}"
        );
    }
}
