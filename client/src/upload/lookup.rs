//! The server, not this machine's journal, decides what is uploaded already. Before a file the
//! journal does not know is created, the client asks the server what it holds of it (`lookup`:
//! same folder, name and size) and checks the answer against its own bytes: a completed upload
//! by its content hash (one read of the file, nothing sent), an unfinished one by the digests of
//! the chunks the server holds (those chunks read, nothing else). So another laptop, a colleague
//! with the same token, or a wiped state folder costs a read of the file, never a second copy
//! on the server.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ferry_proto::{ChunkLayout, Digest, FoundComplete, FoundReceiving, Frame};

use crate::digests::hash_file;
use crate::journal::FileKey;
use crate::{Client, ClientError};

/// What the server holds of a file, as checked against the file.
pub(super) enum Held {
    /// The same content is published: nothing to send.
    Same(FoundComplete),
    /// An unfinished upload holds chunks of this very file (every durable chunk's digest
    /// matched): resume it. The digests are the file's, for the content hash at `finish`.
    Resume {
        upload_id: String,
        chunk_size: u64,
        digests: Vec<(u64, Digest)>,
    },
    /// A different file was published from this folder and name (its published path).
    Different(String),
    /// Nothing of it.
    Nothing,
}

/// Content hash and plain SHA-256 of the file, by chunk size: computed once, also for `--dedup`.
pub(super) type Hashes = HashMap<u64, (Digest, Digest)>;

impl Client {
    /// Asks the server what it holds of `key`'s file published as `name` in `dir`, and checks
    /// it against the file's bytes.
    pub(super) async fn ask_server(
        &mut self,
        key: &FileKey,
        file: &Arc<File>,
        (name, dir): (&str, &[String]),
        hashes: &mut Hashes,
        reconnects: &mut u32,
    ) -> Result<Held, ClientError> {
        let ask = |req| Frame::Lookup {
            req,
            file_name: name.to_owned(),
            dir: dir.to_vec(),
            size: key.size,
        };
        let (complete, receiving) = match self.request_retrying(ask, reconnects).await? {
            Frame::Found {
                complete,
                receiving,
                ..
            } => (complete, receiving),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected found, got {}",
                    other.kind()
                )))
            }
        };
        for found in &complete {
            let (content, _) = self.hashes(key, file, found.chunk_size, hashes).await?;
            if content.to_hex() == found.content_hash {
                return Ok(Held::Same(found.clone()));
            }
        }
        for found in receiving.iter().filter(|r| r.durable_bytes > 0) {
            if let Some(digests) = self.matching(key, file, found, reconnects).await? {
                return Ok(Held::Resume {
                    upload_id: found.upload_id.clone(),
                    chunk_size: found.chunk_size,
                    digests,
                });
            }
        }
        Ok(match complete.into_iter().next() {
            Some(other) => Held::Different(other.file_name),
            None => Held::Nothing,
        })
    }

    /// The file's content hash and plain digest with `chunk_size`: read once per chunk size.
    pub(super) async fn hashes(
        &self,
        key: &FileKey,
        file: &Arc<File>,
        chunk_size: u64,
        hashes: &mut Hashes,
    ) -> Result<(Digest, Digest), ClientError> {
        if let Some(known) = hashes.get(&chunk_size) {
            return Ok(*known);
        }
        let (file, size) = (file.clone(), key.size);
        let computed = tokio::task::spawn_blocking(move || hash_file(&file, size, chunk_size))
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(|e| ClientError::local(format!("cannot read {}", key.path.display()), e))?;
        hashes.insert(chunk_size, computed);
        Ok(computed)
    }

    /// The digests of the chunks the server holds of `found`, if every one equals this file's
    /// chunk there (each read and hashed here); `None` at the first that differs.
    async fn matching(
        &mut self,
        key: &FileKey,
        file: &Arc<File>,
        found: &FoundReceiving,
        reconnects: &mut u32,
    ) -> Result<Option<Vec<(u64, Digest)>>, ClientError> {
        let Ok(layout) = ChunkLayout::new(key.size, found.chunk_size) else {
            return Ok(None);
        };
        let mut checked = Vec::new();
        let mut from = 0;
        // Each page moves `from` past at least one chunk: at most one page per chunk.
        for _ in 0..=layout.count() {
            let id = found.upload_id.clone();
            let ask = move |req| Frame::Digests {
                req,
                upload_id: id.clone(),
                from,
            };
            let (chunks, next) = match self.request_retrying(ask, reconnects).await {
                Ok(Frame::DigestPage { chunks, next, .. }) => (chunks, next),
                // Finished, aborted or expired meanwhile: not this file's to resume.
                Ok(_) | Err(ClientError::Server { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let (file, page) = (file.clone(), chunks);
            let verified = tokio::task::spawn_blocking(move || same_chunks(&file, &layout, &page))
                .await
                .map_err(|e| ClientError::Local(e.to_string()))?
                .map_err(|e| {
                    ClientError::local(format!("cannot read {}", key.path.display()), e)
                })?;
            match verified {
                Some(page) => checked.extend(page),
                None => return Ok(None),
            }
            match next {
                Some(n) if n > from => from = n,
                Some(_) => return Ok(None),
                None => return Ok(Some(checked)),
            }
        }
        Ok(None)
    }
}

/// Reads and hashes each chunk of `page` from `file`; the digests if all equal the server's.
fn same_chunks(
    file: &File,
    layout: &ChunkLayout,
    page: &[(u64, String)],
) -> std::io::Result<Option<Vec<(u64, Digest)>>> {
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(page.len());
    for (index, theirs) in page {
        let Ok(index) = layout.index(*index) else {
            return Ok(None);
        };
        let span = layout.span(index);
        buf.resize(span.len as usize, 0);
        file.read_exact_at(&mut buf, span.offset)?;
        let ours = Digest::of(&buf);
        if ours.to_hex() != *theirs {
            return Ok(None);
        }
        out.push((index.get(), ours));
    }
    Ok(Some(out))
}
