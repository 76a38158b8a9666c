//! The drivers of this server, by upload id: started on demand from what the backend holds,
//! found again by the connections that attach, asked to stop at shutdown, and the one place an
//! idle upload of the local store is expired without racing a driver starting on it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{ChunkSet, UploadSession};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use super::{CommitPolicy, Driver, Msg};
use crate::store::{Backend, Store, UploadId, UploadRecord};

/// A running driver: its mailbox and its task.
type Running = (mpsc::UnboundedSender<Msg>, JoinHandle<()>);

/// The drivers of this server, by upload id.
#[derive(Default)]
pub struct Registry {
    drivers: Mutex<HashMap<UploadId, Running>>,
}

impl Registry {
    /// Uploads with a running driver.
    pub fn running(&self) -> usize {
        let drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        drivers.values().filter(|(tx, _)| !tx.is_closed()).count()
    }

    /// The running driver of `id`, if any.
    pub fn get(&self, id: UploadId) -> Option<mpsc::UnboundedSender<Msg>> {
        let drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        drivers
            .get(&id)
            .filter(|(tx, _)| !tx.is_closed())
            .map(|(tx, _)| tx.clone())
    }

    /// The driver of `id`, started if needed from the stored record and `durable` (what the
    /// backend holds: `Backend::durable_at_start`). The caller has checked that the record
    /// exists, belongs to the caller, and is receiving.
    pub(crate) fn get_or_start(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        policy: CommitPolicy,
        (id, record): (UploadId, UploadRecord),
        durable: ChunkSet,
    ) -> anyhow::Result<mpsc::UnboundedSender<Msg>> {
        let mut drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, _)) = drivers.get(&id).filter(|(tx, _)| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let layout = record.layout()?;
        let path = backend.staging_path(id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            id,
            record,
            backend: backend.clone(),
            session: UploadSession::new(layout, durable, policy),
            policy,
            file: Arc::new(file),
            attached: None,
            takeovers: watch::Sender::new(0),
            rx,
            flush: false,
        };
        let registry = self.clone();
        // No parent: the driver outlives the connection that started it (takeovers, reconnects).
        let span = info_span!(parent: None, "upload", id = %id, name = %driver.record.file_name);
        let handle = tokio::spawn(
            async move {
                driver.run().await;
                registry
                    .drivers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }
            .instrument(span),
        );
        drivers.insert(id, (tx.clone(), handle));
        Ok(tx)
    }

    /// Removes a stale upload of the local store unless a connection is driving it. Without a
    /// running driver the removal happens under the registry lock, so no driver can start on it
    /// meanwhile.
    pub async fn expire_if_idle(
        &self,
        store: &Arc<Store>,
        id: UploadId,
        owner: &str,
        now: u64,
    ) -> bool {
        let driver = {
            let drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
            match drivers.get(&id).filter(|(tx, _)| !tx.is_closed()) {
                Some((tx, _)) => tx.clone(),
                None => return store.expire(id, owner, now).is_ok(),
            }
        };
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Expire { now, reply });
        rx.await.unwrap_or(false)
    }

    /// Asks every driver to commit what it has received and stop; waits for them.
    pub async fn shutdown(&self, limit: Duration) {
        let handles: Vec<_> = {
            let mut drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
            drivers
                .drain()
                .map(|(_, (tx, handle))| {
                    let _ = tx.send(Msg::Shutdown);
                    handle
                })
                .collect()
        };
        let all = futures_join_all(handles);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("upload drivers did not stop in time");
        }
    }
}

async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}
