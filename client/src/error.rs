//! Client errors, sorted by what the user can do about them: wait and retry (the upload
//! resumes), or fix something (token, fingerprint, file).

use ferry_proto::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke. Retrying may work.
    #[error("connection lost: {0}")]
    Connection(String),
    /// No connection could be made at all (no answer within the connect timeout, say): never
    /// called "lost", since it never existed. Retried only if this run was connected before.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with an error frame.
    #[error("server refused: {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The server's certificate is not the one pinned.
    #[error("server certificate {presented} does not match the expected {expected}; if the server's certificate was replaced on purpose, remove its line from {known_servers} or pass --fingerprint")]
    Trust {
        presented: String,
        expected: String,
        known_servers: String,
    },
    /// Another `ferry` process resumed this upload.
    #[error("upload taken over by another client: {0}")]
    TakenOver(String),
    /// The server broke the protocol (a reply of the wrong type, a bogus ack).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local file or directory problem.
    #[error("{0}")]
    Local(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The server's disk stayed full for `FULL_PATIENCE` with nothing acknowledged: said at
    /// once when it began, given up on then. Resumable later (exit 1), not retried now.
    #[error("storage_full: {0}; everything acknowledged is kept on the server: run the same command again once it has space")]
    ServerFull(String),
    /// The user pressed Ctrl-C (SIGINT). Everything acknowledged stays on the server.
    #[error("interrupted; run the same command to resume")]
    Interrupted,
}

impl ClientError {
    /// True when reconnecting and resuming may get past this.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connection(_) | Self::Unreachable(_) => true,
            Self::Server { code, .. } => {
                matches!(
                    code,
                    ErrorCode::ShuttingDown
                        | ErrorCode::StorageError
                        | ErrorCode::StorageFull
                        | ErrorCode::Internal
                )
            }
            _ => false,
        }
    }

    /// The process exit code: 1 interrupted but resumable, 2 usage, auth or permanent, 130
    /// stopped by Ctrl-C (128 + SIGINT, as shells report it).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Interrupted => 130,
            Self::Connection(_)
            | Self::Unreachable(_)
            | Self::TakenOver(_)
            | Self::ServerFull(_) => 1,
            e if e.is_retryable() => 1,
            _ => 2,
        }
    }

    pub fn local(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Self::Local(format!("{what}: {err}"))
    }
}

impl From<ferry_proto::SenderError> for ClientError {
    fn from(e: ferry_proto::SenderError) -> Self {
        match e {
            ferry_proto::SenderError::Rejected { code, message, .. } => {
                Self::Server { code, message }
            }
            other => Self::Protocol(other.to_string()),
        }
    }
}
