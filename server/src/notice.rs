//! The operator's notice (`ferryd notice`): kept in `DATA/notice`, sent in `welcome`, and pushed
//! to every connected client when it is set.

use std::path::PathBuf;
use std::sync::RwLock;

use anyhow::Result;
use tracing::info;

use crate::fsutil;

/// Where the operator's notice is kept, in the data directory.
const NOTICE_FILE: &str = "notice";
/// Longest notice, in bytes.
pub const MAX_NOTICE: usize = 1024;

pub struct Notices {
    path: PathBuf,
    current: RwLock<Option<String>>,
    /// Each new notice, for every connection to push to its client. A connection that lags
    /// behind by more than 16 skips to the newest.
    tx: tokio::sync::broadcast::Sender<String>,
}

impl Notices {
    /// The notice kept in `data_dir`, if any.
    pub fn open(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join(NOTICE_FILE);
        let current = std::fs::read_to_string(&path)
            .ok()
            .filter(|n| !n.is_empty());
        Self {
            path,
            current: RwLock::new(current),
            tx: tokio::sync::broadcast::channel(16).0,
        }
    }

    /// The current notice, if any.
    pub fn current(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New notices from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    /// Sets (or, with `None`, clears) the notice: kept durably for `welcome`, and pushed to
    /// every connected client.
    pub fn set(&self, text: Option<String>) -> Result<()> {
        match &text {
            Some(text) => fsutil::write_atomic(&self.path, text.as_bytes())?,
            None if self.path.exists() => fsutil::remove_file_durable(&self.path)?,
            None => {}
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = text.clone();
        if let Some(text) = text {
            info!(text, "notice set");
            let _ = self.tx.send(text);
        } else {
            info!("notice cleared");
        }
        Ok(())
    }
}
