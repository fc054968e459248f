//! The root of trust: `dists/<suite>/InRelease`, a cleartext-signed Release
//! file, verified against the archive keys vendored in `vendor-keys/`.
//!
//! Architecture Invariant: nothing from an InRelease is read before its
//! signature verified, and only the signed text is parsed (text around the
//! armour is ignored, not trusted).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

use crate::{Error, Result};

/// When a key made at `created` (seconds) expires: the newest of its self
/// or binding signatures states the current lifetime; none means never.
fn expiry<'a>(
    created: u32,
    signatures: impl Iterator<Item = &'a pgp::packet::Signature>,
) -> Option<i64> {
    signatures
        .max_by_key(|s| s.created().map(|t| t.as_secs()))
        .and_then(|s| s.key_expiration_time())
        .map(|d| d.as_secs())
        .filter(|&lifetime| lifetime > 0)
        .map(|lifetime| i64::from(created) + lifetime as i64)
}

/// The issuer fingerprints and key ids a signature names, upper-case hex.
pub(crate) fn issuer_ids(sig: &pgp::packet::Signature) -> Vec<String> {
    sig.issuer_fingerprint()
        .iter()
        .map(|f| hex::encode_upper(f.as_bytes()))
        .chain(
            sig.issuer_key_id()
                .iter()
                .map(|k| hex::encode_upper(k.as_ref())),
        )
        .collect()
}

/// The Debian archive keys shipped with the source tree (see
/// `vendor-keys/README.md` for where they come from and how to refresh them).
const VENDORED: &[(&str, &str)] = &[
    (
        "debian-archive-trixie-automatic.asc",
        include_str!("../../../vendor-keys/debian-archive-trixie-automatic.asc"),
    ),
    (
        "debian-archive-trixie-stable.asc",
        include_str!("../../../vendor-keys/debian-archive-trixie-stable.asc"),
    ),
    (
        "debian-archive-bookworm-automatic.asc",
        include_str!("../../../vendor-keys/debian-archive-bookworm-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-stable.asc",
        include_str!("../../../vendor-keys/debian-archive-bookworm-stable.asc"),
    ),
];

/// One key (primary or signing subkey) that may sign a Release.
#[derive(Debug, Clone)]
pub(crate) struct TrustedKey {
    /// Name of the file it came from, for error messages.
    pub(crate) origin: String,
    pub(crate) fingerprint: String,
    pub(crate) key: KeyMaterial,
    /// Unix time after which the key no longer counts.
    pub(crate) expires: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) enum KeyMaterial {
    Primary(pgp::packet::PublicKey),
    Subkey(pgp::packet::PublicSubkey),
}

/// Whether a signature names `fingerprint` (or its key ID) as its issuer.
fn issued_by(sig: &pgp::packet::Signature, fingerprint: &str) -> bool {
    sig.issuer_fingerprint()
        .iter()
        .any(|f| hex::encode_upper(f.as_bytes()) == fingerprint)
        || sig
            .issuer_key_id()
            .iter()
            .any(|k| fingerprint.ends_with(&hex::encode_upper(k.as_ref())))
}

/// The set of keys an InRelease may be signed with.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub(crate) keys: Vec<TrustedKey>,
}

impl Keyring {
    /// The vendored Debian archive keys.
    pub fn vendored() -> Result<Self> {
        Self::from_armored(VENDORED.iter().map(|(n, t)| (n.to_string(), t.to_string())))
    }

    /// Keys from ASCII-armoured certificates, `(name, text)`. Self-signatures
    /// and subkey bindings are checked here, so a key whose binding does not
    /// verify is refused rather than trusted.
    pub fn from_armored(certs: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut keys = Vec::new();
        for (name, text) in certs {
            let key_err = |message: String| Error::Key {
                name: name.clone(),
                message,
            };
            let (iter, _) = SignedPublicKey::from_armor_many(text.as_bytes())
                .map_err(|e| key_err(format!("not an armoured OpenPGP certificate: {e}")))?;
            for cert in iter {
                let cert = cert.map_err(|e| key_err(format!("cannot parse certificate: {e}")))?;
                // Only self-signatures count: the user IDs also carry
                // certifications by other keys, which are not ours to check.
                let primary = &cert.primary_key;
                let primary_fp = hex::encode_upper(primary.fingerprint().as_bytes());
                let self_sigs: Vec<&pgp::packet::Signature> = cert
                    .details
                    .users
                    .iter()
                    .flat_map(|u| u.signatures.iter().map(move |s| (u, s)))
                    .filter(|(_, s)| issued_by(s, &primary_fp))
                    .filter(|(u, s)| {
                        s.verify_certification(primary, pgp::types::Tag::UserId, &u.id)
                            .is_ok()
                    })
                    .map(|(_, s)| s)
                    .collect();
                if self_sigs.is_empty() {
                    return Err(key_err(format!(
                        "key {primary_fp} has no valid self-signature"
                    )));
                }
                for sub in &cert.public_subkeys {
                    sub.verify_bindings(primary)
                        .map_err(|e| key_err(format!("subkey binding does not verify: {e}")))?;
                }
                keys.push(TrustedKey {
                    origin: name.clone(),
                    fingerprint: hex::encode_upper(cert.primary_key.fingerprint().as_bytes()),
                    key: KeyMaterial::Primary(cert.primary_key.clone()),
                    expires: expiry(primary.created_at().as_secs(), self_sigs.iter().copied()),
                });
                for sub in &cert.public_subkeys {
                    keys.push(TrustedKey {
                        origin: name.clone(),
                        fingerprint: hex::encode_upper(sub.key.fingerprint().as_bytes()),
                        key: KeyMaterial::Subkey(sub.key.clone()),
                        expires: expiry(sub.key.created_at().as_secs(), sub.signatures.iter()),
                    });
                }
            }
        }
        if keys.is_empty() {
            return Err(Error::Key {
                name: "keyring".into(),
                message: "no keys loaded".into(),
            });
        }
        Ok(Keyring { keys })
    }

    /// Fingerprints (upper-case hex) of the primary keys only.
    pub fn primary_fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| matches!(k.key, KeyMaterial::Primary(_)))
            .map(|k| k.fingerprint.clone())
            .collect()
    }

    /// Fingerprints (upper-case hex) of every key and subkey in the ring.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// Verifies a cleartext-signed message and returns the signed text (LF
    /// line endings) and the fingerprint of the key that verified it.
    pub fn verify_cleartext(
        &self,
        url: &str,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(String, String)> {
        let sig_err = |message: String| Error::Signature {
            url: url.to_owned(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| sig_err("not UTF-8 text".into()))?;
        let (msg, _) = CleartextSignedMessage::from_string(text)
            .map_err(|e| sig_err(format!("not a cleartext-signed OpenPGP message: {e}")))?;
        let signed = msg.signed_text();
        let mut issuers = Vec::new();
        let mut expired = Vec::new();
        for sig in msg.signatures() {
            let ids = issuer_ids(sig);
            for key in &self.keys {
                if !ids.is_empty() && !ids.iter().any(|id| key.fingerprint.ends_with(id.as_str())) {
                    continue;
                }
                let ok = match &key.key {
                    KeyMaterial::Primary(k) => sig.verify(k, signed.as_bytes()).is_ok(),
                    KeyMaterial::Subkey(k) => sig.verify(k, signed.as_bytes()).is_ok(),
                };
                if !ok {
                    continue;
                }
                if key.expires.is_some_and(|e| e < now.timestamp()) {
                    expired.push(format!("{} from {}", key.fingerprint, key.origin));
                    continue;
                }
                return Ok((signed.replace("\r\n", "\n"), key.fingerprint.clone()));
            }
            issuers.extend(ids);
        }
        if !expired.is_empty() {
            return Err(sig_err(format!(
                "signed only by expired keys ({}); refresh vendor-keys/ from a newer debian-archive-keyring",
                expired.join(", ")
            )));
        }
        let known = issuers.iter().any(|id| {
            self.keys
                .iter()
                .any(|k| k.fingerprint.ends_with(id.as_str()))
        });
        if known {
            Err(sig_err(format!(
                "BAD signature: no signature verifies against the trusted keys (issuers {}); the file was altered or corrupted",
                issuers.join(", ")
            )))
        } else {
            Err(sig_err(format!(
                "signed by unknown key(s) {}; trusted keys are {} (see vendor-keys/README.md)",
                if issuers.is_empty() {
                    "(no issuer)".to_owned()
                } else {
                    issuers.join(", ")
                },
                self.fingerprints().join(", ")
            )))
        }
    }
}

/// The parsed fields of a verified Release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub suite: String,
    pub codename: String,
    /// `Date:` verbatim, as recorded in the lock.
    pub date_raw: String,
    pub date: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: arch-all packages are
    /// listed in each binary-<arch>/Packages, not in binary-all.
    pub arch_all_in_arch_indexes: bool,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// Path below `dists/<suite>/` -> (size, sha256).
    pub sha256: BTreeMap<String, (u64, String)>,
}

/// Parses an RFC 2822 date as used in Release files ("Sat, 21 Nov 2026
/// 09:15:44 UTC"); `UTC` is accepted as a zone name, as apt does.
pub fn parse_date(value: &str) -> Option<DateTime<Utc>> {
    let v = value.trim();
    let v = v
        .strip_suffix(" UTC")
        .map(|s| format!("{s} +0000"))
        .unwrap_or_else(|| v.to_owned());
    DateTime::parse_from_rfc2822(&v)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

impl Release {
    /// Parses the signed text of a Release; `url` names it in errors.
    pub fn parse(url: &str, text: &str) -> Result<Self> {
        let err = |message: String| Error::Release {
            url: url.to_owned(),
            message,
        };
        let stanzas = crate::deb822::parse(text);
        let s = stanzas.first().ok_or_else(|| err("empty Release".into()))?;
        let field = |name: &str| s.get(name).map(str::to_owned);
        let date_raw = field("Date").ok_or_else(|| err("no Date field".into()))?;
        let date =
            parse_date(&date_raw).ok_or_else(|| err(format!("unparsable Date {date_raw:?}")))?;
        let valid_until = match s.get("Valid-Until") {
            Some(v) => {
                Some(parse_date(v).ok_or_else(|| err(format!("unparsable Valid-Until {v:?}")))?)
            }
            None => None,
        };
        let mut sha256 = BTreeMap::new();
        for line in s.get("SHA256").unwrap_or("").lines() {
            let mut w = line.split_whitespace();
            if let (Some(hash), Some(size), Some(path)) = (w.next(), w.next(), w.next()) {
                let size = size
                    .parse()
                    .map_err(|_| err(format!("bad size in SHA256 line {line:?}")))?;
                sha256.insert(path.to_owned(), (size, hash.to_ascii_lowercase()));
            }
        }
        let words = |name: &str| -> Vec<String> {
            s.get(name)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        Ok(Release {
            suite: field("Suite").unwrap_or_default(),
            codename: field("Codename").unwrap_or_default(),
            date_raw,
            date,
            valid_until,
            acquire_by_hash: s
                .get("Acquire-By-Hash")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            arch_all_in_arch_indexes: s
                .get("No-Support-for-Architecture-all")
                .is_some_and(|v| v.split_whitespace().any(|w| w == "Packages")),
            architectures: words("Architectures"),
            components: words("Components"),
            sha256,
        })
    }
}

/// What a fetched InRelease must satisfy beyond its signature.
#[derive(Debug, Clone)]
pub struct ReleaseCheck<'a> {
    /// The suite asked for; the Release must name it as Suite or Codename,
    /// so one suite's signed Release cannot stand in for another's.
    pub suite: &'a str,
    pub now: DateTime<Utc>,
    /// `Date` recorded by the previous lock: an older Release is a rollback.
    pub not_older_than: Option<&'a str>,
    /// Whether a Release past its `Valid-Until` is refused (recipe
    /// `distribution.check_valid_until`).
    pub check_valid_until: bool,
}

/// Verifies an InRelease and parses it: signature, suite, freshness
/// (`Valid-Until`) and rollback (`Date` older than the lock's).
pub fn verify_inrelease(
    url: &str,
    bytes: &[u8],
    keyring: &Keyring,
    check: &ReleaseCheck<'_>,
) -> Result<Release> {
    let (text, _fingerprint) = keyring.verify_cleartext(url, bytes, check.now)?;
    let release = Release::parse(url, &text)?;
    let err = |message: String| Error::Release {
        url: url.to_owned(),
        message,
    };
    if release.suite != check.suite && release.codename != check.suite {
        return Err(err(format!(
            "asked for suite {:?} but the Release is Suite {:?} / Codename {:?}",
            check.suite, release.suite, release.codename
        )));
    }
    if let Some(until) = release
        .valid_until
        .filter(|until| check.check_valid_until && *until < check.now)
    {
        return Err(err(format!(
            "expired: Valid-Until {} is before now ({}); the mirror is stale or replaying an old Release \
             (a recipe for a snapshot mirror may set distribution.check_valid_until = false)",
            until.to_rfc2822(),
            check.now.to_rfc2822()
        )));
    }
    if let Some(previous) = check.not_older_than {
        let previous_date = parse_date(previous).ok_or_else(|| {
            err(format!(
                "the lock's release date {previous:?} is unparsable"
            ))
        })?;
        if release.date < previous_date {
            return Err(err(format!(
                "rollback: Date {:?} is older than {previous:?} recorded in the lock; refusing an older archive state",
                release.date_raw
            )));
        }
    }
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_keys_load_with_subkeys() {
        let ring = Keyring::vendored().unwrap();
        let fps = ring.fingerprints();
        // Primary keys and the automatic keys' signing subkeys.
        for fp in [
            "04B54C3CDCA79751B16BC6B5225629DF75B188BD",
            "B8E5F13176D2A7A75220028078DBA3BC47EF2265",
            "41587F7DB8C774BCCF131416762F67A0B2C39DE4",
            "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
            "4CB50190207B4758A3F73A796ED0E7B82643E131",
            "4D64FEC119C2029067D6E791F8D2585B8783D481",
        ] {
            assert!(fps.iter().any(|f| f == fp), "{fp} missing from {fps:?}");
        }
    }

    #[test]
    fn dates_parse_with_utc_zone() {
        let d = parse_date("Sat, 21 Nov 2026 09:15:44 UTC").unwrap();
        assert_eq!(d.to_rfc3339(), "2026-11-21T09:15:44+00:00");
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn release_fields_parse() {
        let text = "Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 21 Nov 2026 09:15:44 UTC\n\
Valid-Until: Sat, 28 Nov 2026 09:15:44 UTC\nAcquire-By-Hash: yes\nNo-Support-for-Architecture-all: Packages\n\
Architectures: all amd64\nComponents: main contrib\nSHA256:\n 0a0b 12 main/binary-amd64/Packages.xz\n ffff 0 main/binary-all/Packages\n";
        let r = Release::parse("u", text).unwrap();
        assert_eq!(
            (r.suite.as_str(), r.codename.as_str()),
            ("stable", "trixie")
        );
        assert!(r.acquire_by_hash && r.arch_all_in_arch_indexes);
        assert!(r.valid_until.is_some());
        assert_eq!(
            r.sha256["main/binary-amd64/Packages.xz"],
            (12, "0a0b".to_owned())
        );
        assert_eq!(r.components, ["main", "contrib"]);
    }
}
