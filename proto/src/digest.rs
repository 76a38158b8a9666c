//! SHA-256 digests as they travel: 32 bytes in memory, 64 lowercase hex characters on the wire.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Parsed from the wire with [`Digest::parse`], so a value of this type is
/// always exactly 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

/// A digest on the wire that is not 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest must be 64 lowercase hex characters, got {got:?}")]
pub struct DigestParseError {
    /// The offending text, cut to 80 characters so a hostile peer cannot make logs huge.
    pub got: String,
}

impl Digest {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let valid = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 32];
        if !valid || hex::decode_to_slice(text, &mut bytes).is_err() {
            return Err(DigestParseError {
                got: text.chars().take(80).collect(),
            });
        }
        Ok(Self(bytes))
    }

    /// The digest as 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex characters, the wire form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<Sha256> for Digest {
    fn from(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

/// The content hash of an upload: SHA-256 over its chunk digests (32 bytes each) in index
/// order. With 4 MiB chunks it equals Dropbox's `content_hash`; an empty file's is the SHA-256
/// of nothing. Both sides compute it from digests they already have, so checking a whole file
/// at `finish` reads no data again.
#[derive(Clone, Default)]
pub struct ContentHasher(Sha256);

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk's digest.
    pub fn push(&mut self, chunk: &Digest) {
        self.0.update(chunk.as_bytes());
    }

    pub fn finish(self) -> Digest {
        self.0.into()
    }

    /// The content hash of `data` cut into chunks of `chunk_size` bytes.
    pub fn of(data: &[u8], chunk_size: usize) -> Digest {
        let mut hasher = Self::new();
        for chunk in data.chunks(chunk_size.max(1)) {
            hasher.push(&Digest::of(chunk));
        }
        hasher.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_hex()), Ok(d));
    }

    #[test]
    fn content_hash_is_sha256_over_chunk_digests() {
        let data = b"abcdefghij";
        let mut joined = Vec::new();
        for part in [&data[..4], &data[4..8], &data[8..]] {
            joined.extend_from_slice(Digest::of(part).as_bytes());
        }
        assert_eq!(ContentHasher::of(data, 4), Digest::of(&joined));
        assert_eq!(ContentHasher::of(b"", 4), Digest::of(b""));
        assert_ne!(ContentHasher::of(data, 4), ContentHasher::of(data, 5));
        // The example in docs/protocol.md §3.6.
        assert_eq!(
            ContentHasher::of(b"0123456789", 4).to_hex(),
            "02c260a7e4fe35d64b77e33a7382ff564c5912ef4bbe758118d9abaa58256698"
        );
    }

    #[test]
    fn refuses_uppercase_short_and_non_hex() {
        let upper = Digest::of(b"abc").to_hex().to_uppercase();
        assert!(Digest::parse(&upper).is_err());
        assert!(Digest::parse("abcd").is_err());
        assert!(Digest::parse(&"g".repeat(64)).is_err());
        assert!(Digest::parse(&"é".repeat(32)).is_err());
    }
}
