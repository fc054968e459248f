//! kernel.org source verification on fixtures: a throwaway key signs a small
//! uncompressed tar detached, as kernel.org does, and the tar is xz-compressed.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use pgp::composed::{
    ArmorOptions, DetachedSignature, KeyType, SecretKeyParamsBuilder, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::{KeyDetails, Password};
use sha2::{Digest, Sha256};
use usmol_archive::{Error, Keyring, verify_kernel_org, verify_kernel_org_with};

fn make_key(name: &str) -> SignedSecretKey {
    SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519Legacy)
        .can_sign(true)
        .can_certify(true)
        .primary_user_id(format!("{name} <{name}@example.invalid>"))
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

/// A small Linux-looking tar (uncompressed).
fn small_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("linux-6.1.2/Makefile", &b"VERSION = 6\n"[..]),
        ("linux-6.1.2/arch/um/Kconfig", &b"config UML\n"[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append_data(&mut header, path, body).unwrap();
    }
    builder.into_inner().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn sign_detached(key: &SignedSecretKey, data: &[u8]) -> Vec<u8> {
    DetachedSignature::sign_binary_data(
        rand::thread_rng(),
        &key.primary_key,
        &Password::empty(),
        HashAlgorithm::Sha256,
        data,
    )
    .unwrap()
    .to_armored_bytes(ArmorOptions::default())
    .unwrap()
}

fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

struct Fixture {
    _dir: tempfile::TempDir,
    tarball: PathBuf,
    signature: PathBuf,
    compressed: Vec<u8>,
}

fn fixture(signer: &SignedSecretKey) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tar = small_tar();
    let compressed = xz(&tar);
    let tarball = dir.path().join("linux-6.1.2.tar.xz");
    let signature = dir.path().join("linux-6.1.2.tar.sign");
    std::fs::write(&tarball, &compressed).unwrap();
    std::fs::write(&signature, sign_detached(signer, &tar)).unwrap();
    Fixture {
        _dir: dir,
        tarball,
        signature,
        compressed,
    }
}

fn message(err: Error) -> String {
    err.to_string()
}

fn names(err: &str, path: &Path) {
    assert!(
        err.contains(&path.display().to_string()),
        "error does not name {}: {err}",
        path.display()
    );
}

#[test]
fn signed_tarball_verifies_and_reports_signer_and_hash() {
    let key = make_key("signer");
    let fx = fixture(&key);
    let verified =
        verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &fx.signature, now()).unwrap();
    assert_eq!(
        verified.signer_fingerprint,
        hex::encode_upper(key.primary_key.fingerprint().as_bytes())
    );
    assert_eq!(verified.sha256, hex::encode(Sha256::digest(&fx.compressed)));
}

#[test]
fn tampered_tarball_is_a_bad_signature() {
    let key = make_key("signer");
    let fx = fixture(&key);
    // Same structure, one byte of content changed, recompressed: the xz
    // stream is valid, only the signature can catch it.
    let mut tar = small_tar();
    let at = tar.windows(4).position(|w| w == b"VERS").unwrap();
    tar[at] = b'W';
    std::fs::write(&fx.tarball, xz(&tar)).unwrap();
    let err = message(
        verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &fx.signature, now()).unwrap_err(),
    );
    assert!(err.contains("BAD signature"), "{err}");
    assert!(err.contains("download both again"), "{err}");
    names(&err, &fx.tarball);
}

#[test]
fn signature_by_a_key_outside_the_keyring_is_refused() {
    let trusted = make_key("trusted");
    let stranger = make_key("stranger");
    let fx = fixture(&stranger);
    let err = message(
        verify_kernel_org_with(&keyring_of(&trusted), &fx.tarball, &fx.signature, now())
            .unwrap_err(),
    );
    assert!(err.contains("unknown key"), "{err}");
    assert!(
        err.contains(&hex::encode_upper(
            stranger.primary_key.fingerprint().as_bytes()
        )),
        "{err}"
    );
    names(&err, &fx.signature);
}

#[test]
fn truncated_xz_is_reported_as_unreadable_not_as_bad_signature() {
    let key = make_key("signer");
    let fx = fixture(&key);
    std::fs::write(&fx.tarball, &fx.compressed[..fx.compressed.len() / 2]).unwrap();
    let err = message(
        verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &fx.signature, now()).unwrap_err(),
    );
    assert!(err.contains("cannot decompress"), "{err}");
    assert!(err.contains("truncated or corrupt"), "{err}");
    assert!(!err.contains("BAD signature"), "{err}");
    names(&err, &fx.tarball);
}

#[test]
fn uncompressed_or_gzip_tarball_is_unsupported_compression() {
    let key = make_key("signer");
    let fx = fixture(&key);
    std::fs::write(&fx.tarball, small_tar()).unwrap();
    let err = message(
        verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &fx.signature, now()).unwrap_err(),
    );
    assert!(err.contains("unsupported compression"), "{err}");
    assert!(err.contains(".tar.xz"), "{err}");
    std::fs::write(&fx.tarball, [0x1F, 0x8B, 8, 0, 0, 0, 0, 0]).unwrap();
    let err = message(
        verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &fx.signature, now()).unwrap_err(),
    );
    assert!(err.contains("unsupported compression (gzip)"), "{err}");
}

#[test]
fn missing_files_are_named() {
    let key = make_key("signer");
    let fx = fixture(&key);
    let gone = fx.tarball.with_extension("missing");
    let err = message(
        verify_kernel_org_with(&keyring_of(&key), &gone, &fx.signature, now()).unwrap_err(),
    );
    names(&err, &gone);
    let err =
        message(verify_kernel_org_with(&keyring_of(&key), &fx.tarball, &gone, now()).unwrap_err());
    names(&err, &gone);
    assert!(err.contains(".tar.sign"), "{err}");
}

#[test]
fn vendored_kernel_org_keyring_has_exactly_the_two_release_signers() {
    let ring = Keyring::kernel_org().unwrap();
    let mut primaries = ring.primary_fingerprints();
    primaries.sort();
    assert_eq!(
        primaries,
        [
            // Greg Kroah-Hartman
            "647F28654894E3BD457199BE38DBBDC86092693E",
            // Linus Torvalds
            "ABAF11C65A2970B130ABE3C479BE3E4300411886",
        ]
    );
}

#[test]
fn vendored_keyring_refuses_a_fixture_signature() {
    let stranger = make_key("stranger");
    let fx = fixture(&stranger);
    let err = message(verify_kernel_org(&fx.tarball, &fx.signature).unwrap_err());
    assert!(err.contains("unknown key"), "{err}");
    assert!(
        err.contains("ABAF11C65A2970B130ABE3C479BE3E4300411886"),
        "{err}"
    );
}
