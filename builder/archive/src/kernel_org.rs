//! A kernel.org release tarball as the kernel source, verified against the
//! release signers' keys vendored in `vendor-keys/kernel.org/`.
//!
//! kernel.org signs the *uncompressed* tar (`linux-X.Y.Z.tar.sign` covers
//! `linux-X.Y.Z.tar`), so the `.tar.xz` is decompressed on the fly and the
//! decompressed stream is fed straight into the signature hash: one pass,
//! constant memory, nothing of the ~1.5 GB tar is written to disk. The same
//! pass hashes the compressed file, which the kernel build then pins.
//!
//! Architecture Invariant: the tarball is trusted (its sha256 handed to the
//! kernel build) only after the signature over its decompressed content
//! verified against a vendored key.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use chrono::{DateTime, Utc};
use pgp::composed::{Deserializable, DetachedSignature};
use pgp::packet::SignatureType;
use sha2::{Digest, Sha256};

use crate::release::{KeyMaterial, Keyring};
use crate::{Error, Result};

/// The kernel.org release signers' certificates shipped with the source tree
/// (see `vendor-keys/kernel.org/README.md`).
const VENDORED: &[(&str, &str)] = &[
    (
        "kernel.org/79BE3E4300411886.asc",
        include_str!("../../../vendor-keys/kernel.org/79BE3E4300411886.asc"),
    ),
    (
        "kernel.org/38DBBDC86092693E.asc",
        include_str!("../../../vendor-keys/kernel.org/38DBBDC86092693E.asc"),
    ),
];

/// The xz stream magic; kernel.org's `.tar.xz` starts with it.
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

/// A kernel.org tarball whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSource {
    /// Fingerprint (upper-case hex) of the key that made the signature.
    pub signer_fingerprint: String,
    /// sha256 (hex) of the tarball file as given (the compressed `.tar.xz`).
    pub sha256: String,
}

impl Keyring {
    /// The vendored kernel.org release signers (Linus Torvalds, Greg
    /// Kroah-Hartman).
    pub fn kernel_org() -> Result<Self> {
        // The vendored files keep gpg's key listing above the armour, as
        // published; only the armour is parsed.
        Self::from_armored(VENDORED.iter().map(|(name, text)| {
            let armour = text.find("-----BEGIN").map_or(*text, |at| &text[at..]);
            (name.to_string(), armour.to_string())
        }))
    }
}

/// Verifies `tarball` (`linux-X.Y.Z.tar.xz`) against `signature`
/// (`linux-X.Y.Z.tar.sign`, a detached signature over the uncompressed tar)
/// with the vendored kernel.org keys.
pub fn verify_kernel_org(tarball: &Path, signature: &Path) -> Result<VerifiedSource> {
    verify_kernel_org_with(
        &Keyring::kernel_org()?,
        tarball,
        signature,
        DateTime::<Utc>::from(std::time::SystemTime::now()),
    )
}

/// [`verify_kernel_org`] against any keyring, at time `now` (for key expiry).
pub fn verify_kernel_org_with(
    keyring: &Keyring,
    tarball: &Path,
    signature: &Path,
    now: DateTime<Utc>,
) -> Result<VerifiedSource> {
    let sig_err = |message: String| Error::KernelOrg {
        path: signature.to_path_buf(),
        message,
    };
    let tar_err = |message: String| Error::KernelOrg {
        path: tarball.to_path_buf(),
        message,
    };
    let sig_file = File::open(signature).map_err(|source| Error::Io {
        path: signature.to_path_buf(),
        stage: "kernel.org signature: cannot read it (pass the linux-X.Y.Z.tar.sign downloaded next to the tarball)",
        source,
    })?;
    let (sig, _) =
        DetachedSignature::from_reader_single(BufReader::new(sig_file)).map_err(|e| {
            sig_err(format!(
                "not an OpenPGP detached signature ({e}); pass the linux-X.Y.Z.tar.sign file"
            ))
        })?;
    let sig = sig.signature;
    if sig.typ() != Some(SignatureType::Binary) {
        return Err(sig_err(format!(
            "signature type {:?}, expected a binary-document signature as kernel.org makes",
            sig.typ()
        )));
    }

    let issuers = crate::release::issuer_ids(&sig);
    // Picking the key from the issuer before reading lets one pass over the
    // tarball suffice; a signature naming no issuer is tried against each
    // key in turn (one pass per key).
    let candidates: Vec<_> = keyring
        .keys
        .iter()
        .filter(|k| issuers.is_empty() || issuers.iter().any(|id| k.fingerprint.ends_with(id)))
        .collect();
    if candidates.is_empty() {
        return Err(sig_err(format!(
            "made by unknown key {}; trusted kernel.org signers are {} (see vendor-keys/kernel.org/README.md); \
             check that the tarball and signature come from kernel.org, or refresh the vendored keys",
            issuers.join(", "),
            keyring.primary_fingerprints().join(", ")
        )));
    }

    let mut last_failure = String::new();
    for key in candidates {
        let pass = hash_and_verify(tarball, |data| match &key.key {
            KeyMaterial::Primary(k) => sig.verify(k, data),
            KeyMaterial::Subkey(k) => sig.verify(k, data),
        })?;
        match pass {
            Pass::Verified { sha256 } => {
                if key.expires.is_some_and(|e| e < now.timestamp()) {
                    return Err(sig_err(format!(
                        "made by {} from {}, which has expired; refresh vendor-keys/kernel.org/ (see its README.md)",
                        key.fingerprint, key.origin
                    )));
                }
                return Ok(VerifiedSource {
                    signer_fingerprint: key.fingerprint.clone(),
                    sha256,
                });
            }
            Pass::Unreadable(message) => return Err(tar_err(message)),
            Pass::Bad(message) => last_failure = message,
        }
    }
    Err(tar_err(format!(
        "BAD signature: {} does not verify over the decompressed tarball ({last_failure}); \
         the tarball was altered, corrupted, or does not match this signature; download both again",
        signature.display()
    )))
}

/// The outcome of one pass over the tarball.
enum Pass {
    Verified {
        sha256: String,
    },
    /// The signature did not verify over readable, complete data.
    Bad(String),
    /// The file could not be read or decompressed: no signature verdict.
    Unreadable(String),
}

/// Streams `tarball` through the xz decoder into `verify`, hashing the
/// compressed bytes on the way.
fn hash_and_verify(
    tarball: &Path,
    verify: impl FnOnce(&mut dyn Read) -> pgp::errors::Result<()>,
) -> Result<Pass> {
    let io_err = |source| Error::Io {
        path: tarball.to_path_buf(),
        stage: "kernel.org tarball: cannot read it (pass the downloaded linux-X.Y.Z.tar.xz)",
        source,
    };
    let mut file = File::open(tarball).map_err(io_err)?;
    let mut magic = [0u8; 6];
    let got = read_up_to(&mut file, &mut magic).map_err(io_err)?;
    if &magic[..got] != XZ_MAGIC {
        return Ok(Pass::Unreadable(format!(
            "unsupported compression ({}); pass the xz-compressed release, linux-X.Y.Z.tar.xz",
            describe_magic(&magic[..got])
        )));
    }
    let file = File::open(tarball).map_err(io_err)?;
    let hashed = HashingReader {
        inner: file,
        hasher: Sha256::new(),
    };
    let mut decoder = liblzma::read::XzDecoder::new_multi_decoder(hashed);
    let failure = RefCell::new(None);
    let verdict = {
        let mut tap = ErrorTap {
            inner: &mut decoder,
            failure: &failure,
        };
        verify(&mut tap)
    };
    if let Some(e) = failure.into_inner() {
        return Ok(Pass::Unreadable(format!(
            "cannot decompress ({e}); the file is truncated or corrupt: download it again"
        )));
    }
    // Bytes after the last xz stream (none in a kernel.org release) still
    // belong to the file whose hash is pinned.
    let mut hashed = decoder.into_inner();
    io::copy(&mut hashed, &mut io::sink()).map_err(io_err)?;
    match verdict {
        Ok(()) => Ok(Pass::Verified {
            sha256: hex::encode(hashed.hasher.finalize()),
        }),
        Err(e) => Ok(Pass::Bad(e.to_string())),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn describe_magic(magic: &[u8]) -> &'static str {
    match magic {
        [0x1F, 0x8B, ..] => "gzip",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x28, 0xB5, 0x2F, 0xFD, ..] => "zstd",
        [] => "empty file",
        _ => "not xz",
    }
}

/// Hashes every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Records the first read error, so a decompression failure is reported
/// as such and not as a bad signature (the pgp crate folds it into its own
/// error).
struct ErrorTap<'a, R> {
    inner: R,
    failure: &'a RefCell<Option<io::Error>>,
}

impl<R: Read> Read for ErrorTap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failure
                .borrow_mut()
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }
}
