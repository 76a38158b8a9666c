//! The resume record of a growing source: one small JSON file per source in the state
//! directory (`growing/<key>.json`), keyed by the service and the source.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ClientError;

/// What a growing upload is resumed by: one small JSON file per source in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) upload_id: String,
}

/// The resume record of one growing source.
pub(super) struct JournalFile {
    path: PathBuf,
    pub(super) stem: String,
}

impl JournalFile {
    pub(super) fn new(state_dir: &Path, scope: &str, key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let stem = hex::encode(&h.finalize()[..16]);
        Self {
            path: state_dir.join("growing").join(format!("{stem}.json")),
            stem,
        }
    }

    pub(super) fn read(&self) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    pub(super) fn write(&self, record: &Record) -> Result<(), ClientError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
        }
        let data = serde_json::to_vec(record).expect("a record serialises");
        crate::journal::write_atomic(&self.path, &data)
            .map_err(|e| ClientError::local("cannot write the resume journal", e))
    }

    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
