//! The commit of a batch of received chunks, run as its own task: the backend makes them
//! durable (`Backend::commit`), and only then may the session acknowledge them. Several may run
//! at once (the commit policy's `max_in_flight`), each reporting under its batch's id.

use std::collections::HashMap;
use std::future::Future;

use ferry_proto::{CommitBatch, ErrorCode};
use tokio::task::{Id, JoinSet};

use super::{Driver, WireError};
use crate::store::CommitError;

/// The commits of one driver that are running, each with the id of its batch. Dropped, it
/// aborts them (the driver stopped: the upload is gone, or the server stops).
pub(super) struct Commits {
    tasks: JoinSet<Result<(), CommitError>>,
    batches: HashMap<Id, u64>,
}

impl Commits {
    pub(super) fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            batches: HashMap::new(),
        }
    }

    pub(super) fn spawn(
        &mut self,
        batch: u64,
        commit: impl Future<Output = Result<(), CommitError>> + Send + 'static,
    ) {
        let task = self.tasks.spawn(commit);
        self.batches.insert(task.id(), batch);
    }

    /// The next commit to end, with its batch's id: a task that panicked is a failure with
    /// `internal`. `None` when none is running.
    pub(super) async fn join_next(&mut self) -> Option<(u64, Result<(), CommitError>)> {
        let (task, result) = match self.tasks.join_next_with_id().await? {
            Ok((task, result)) => (task, result),
            Err(e) => (
                e.id(),
                Err(WireError::new(ErrorCode::Internal, e.to_string()).into()),
            ),
        };
        let batch = self.batches.remove(&task)?;
        Some((batch, result))
    }
}

impl Driver {
    /// The commit of `batch`, to run as its own task.
    pub(super) fn persist(
        &self,
        batch: CommitBatch,
    ) -> impl std::future::Future<Output = Result<(), CommitError>> + Send + 'static {
        self.backend.commit(
            self.id,
            &self.record,
            self.file.clone(),
            *self.session.layout(),
            batch,
        )
    }
}
