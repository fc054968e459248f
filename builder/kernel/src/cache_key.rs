//! Cache keys for built artifacts (the kernel here, passt in usmol-passt):
//! sha256 over named, length-prefixed fields, so no two input sets hash the
//! same byte stream, starting with the builder's own identity.

use sha2::{Digest, Sha256};

pub struct CacheKey(Sha256);

impl CacheKey {
    /// A key whose first field names the builder version, `revision` (bumped
    /// when a build step changes its output) and the architecture.
    pub fn new(revision: u32) -> Self {
        let mut key = CacheKey(Sha256::new());
        key.field(
            "builder",
            format!(
                "{} {} {}",
                env!("CARGO_PKG_VERSION"),
                revision,
                std::env::consts::ARCH
            )
            .as_bytes(),
        );
        key
    }

    pub fn field(&mut self, name: &str, bytes: &[u8]) {
        for part in [name.as_bytes(), bytes] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    /// Hex of the digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}
