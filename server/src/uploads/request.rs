//! What a front end hands the upload service: who asks ([`Principal`], through which
//! [`Frontend`]), a new upload as asked for ([`NewUpload`], [`Extra`]), and what a `finish`
//! answers ([`Finished`]).

use ferry_proto::OnExists;

use crate::links::Link;

/// Who asks: an owner, through a token or an upload link, on one connection (or one HTTP
/// exchange).
#[derive(Clone, Debug)]
pub struct Principal {
    pub owner: String,
    /// The upload link it logged in with, if not a token: it sees and makes only that link's
    /// uploads, within its bounds, and never sees the owner's other files.
    pub link: Option<Link>,
    /// The connection (or exchange) that attaches uploads: unique for the server's run.
    pub conn: u64,
    /// The front end it came through (metrics count by it).
    pub frontend: Frontend,
}

/// The front ends, as metrics name them (`frontend` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// `ferry/1` over QUIC.
    Quic,
    /// The same frames in a browser's WebTransport session.
    WebTransport,
    /// tus 1.0 over HTTPS.
    Tus,
    /// The IETF resumable-upload draft over HTTPS.
    Ietf,
}

impl Frontend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::WebTransport => "webtransport",
            Self::Tus => "tus",
            Self::Ietf => "ietf",
        }
    }
}

/// A new upload as a front end asks for it.
#[derive(Clone, Debug)]
pub struct NewUpload {
    pub file_name: String,
    pub dir: Vec<String>,
    pub size: u64,
    /// The client's choice; a backend may choose another (`created.upload.chunk_size`).
    pub chunk_size: u64,
    pub desc: String,
    pub on_exists: OnExists,
    pub extra: Extra,
}

/// What only the HTTP front end asks for at create.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// The length is not known yet (`size` is ignored): see `UploadRecord::deferred`.
    pub deferred: bool,
    /// A tus partial upload, to be concatenated by a final one and never published itself.
    pub partial: bool,
    /// The tus `Upload-Metadata`, kept to be given back.
    pub metadata: Option<String>,
}

/// A `finish` that published (or found published) the upload.
pub struct Finished {
    pub upload_id: String,
    /// The published path under the owner's folder (for a link's session: the asked one).
    pub file_name: String,
    pub size: u64,
    pub content_hash: String,
}
