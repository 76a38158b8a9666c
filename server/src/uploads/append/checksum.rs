//! A tus body checksum (`Upload-Checksum`): the algorithms taken and their running hashes.

use sha2::{Digest as _, Sha256};

/// A body checksum: the algorithm's running hash and the value the client sent.
pub struct Checksum {
    hash: Hash,
    expected: Vec<u8>,
}

enum Hash {
    Sha1(sha1::Sha1),
    Sha256(Sha256),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
}

/// The checksum algorithms taken (tus `Tus-Checksum-Algorithm`).
pub const CHECKSUM_ALGORITHMS: &[&str] = &["sha256", "sha1", "sha512", "md5"];

impl Checksum {
    /// A checksum of `algorithm` (one of [`CHECKSUM_ALGORITHMS`]) expecting `expected`;
    /// `None` for another algorithm.
    pub fn new(algorithm: &str, expected: Vec<u8>) -> Option<Self> {
        let hash = match algorithm {
            "sha1" => Hash::Sha1(Default::default()),
            "sha256" => Hash::Sha256(Default::default()),
            "sha512" => Hash::Sha512(Default::default()),
            "md5" => Hash::Md5(Default::default()),
            _ => return None,
        };
        Some(Self { hash, expected })
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match &mut self.hash {
            Hash::Sha1(h) => h.update(data),
            Hash::Sha256(h) => h.update(data),
            Hash::Sha512(h) => h.update(data),
            Hash::Md5(h) => h.update(data),
        }
    }

    pub(super) fn algorithm(&self) -> &'static str {
        match self.hash {
            Hash::Sha1(_) => "sha1",
            Hash::Sha256(_) => "sha256",
            Hash::Sha512(_) => "sha512",
            Hash::Md5(_) => "md5",
        }
    }

    pub(super) fn matches(self) -> bool {
        let got: Vec<u8> = match self.hash {
            Hash::Sha1(h) => h.finalize().to_vec(),
            Hash::Sha256(h) => h.finalize().to_vec(),
            Hash::Sha512(h) => h.finalize().to_vec(),
            Hash::Md5(h) => h.finalize().to_vec(),
        };
        got == self.expected
    }
}
