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
    fn refuses_uppercase_short_and_non_hex() {
        let upper = Digest::of(b"abc").to_hex().to_uppercase();
        assert!(Digest::parse(&upper).is_err());
        assert!(Digest::parse("abcd").is_err());
        assert!(Digest::parse(&"g".repeat(64)).is_err());
        assert!(Digest::parse(&"é".repeat(32)).is_err());
    }
}
