//! The commit of a batch of received chunks, run as its own task: the backend makes them
//! durable (`Backend::commit`), and only then may the session acknowledge them.

use ferry_proto::CommitBatch;

use super::Driver;
use crate::store::CommitError;

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
