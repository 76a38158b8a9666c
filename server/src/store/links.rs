//! What each upload link has created (`crate::links`), counted in the `meta` tree.

use anyhow::Result;

use super::{Store, UploadRecord};

impl Store {
    /// What upload link `id` has created: files and bytes (`crate::links`).
    pub fn link_usage(&self, id: &str) -> Result<(u64, u64)> {
        let raw = self.db()?.meta.get(format!("link/{id}"))?;
        Ok(raw.map_or((0, 0), |raw| decode_usage(&raw)))
    }

    /// Adds to (or, negative, takes from) what upload link `id` has created.
    pub fn add_link_usage(&self, id: &str, files: i64, bytes: i64) -> Result<()> {
        self.db()?
            .meta
            .update_and_fetch(format!("link/{id}"), |old| {
                let (f, b) = old.map_or((0, 0), decode_usage);
                let f = f.saturating_add_signed(files);
                let b = b.saturating_add_signed(bytes);
                Some([f.to_be_bytes(), b.to_be_bytes()].concat())
            })?;
        Ok(())
    }

    /// Gives back what an upload counted against its upload link, if it was made through one.
    pub fn give_back_to_link(&self, record: &UploadRecord) -> Result<()> {
        match &record.link {
            Some(id) => {
                // An upload of unknown length counted no bytes yet.
                let size = if record.deferred { 0 } else { record.size };
                self.add_link_usage(id, -1, -i64::try_from(size).unwrap_or(i64::MAX))
            }
            None => Ok(()),
        }
    }
}

/// A link's usage as stored: files then bytes, big-endian u64s.
fn decode_usage(raw: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    (word(0), word(8))
}
