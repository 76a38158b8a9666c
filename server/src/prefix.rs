//! The whole-file SHA-256, computed while the upload runs: each time the contiguous durable
//! prefix grows, the new chunks are read back (from the page cache, usually) and fed to one
//! hasher in the blocking pool. `finish` then only hashes what is left, so finishing a 10 GiB
//! upload does not re-read 10 GiB. The state lives in memory; after a server restart the
//! driver starts again from the first chunk, in the background as the prefix is known.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ferry_proto::{ChunkLayout, Digest};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

type Job = JoinHandle<std::io::Result<(Sha256, u64)>>;

pub struct PrefixHash {
    /// The hasher over chunks `[0, done)`; `None` while a job owns it.
    hasher: Option<Sha256>,
    /// Chunks hashed so far.
    done: u64,
    job: Option<Job>,
}

impl PrefixHash {
    pub fn new() -> Self {
        Self {
            hasher: Some(Sha256::new()),
            done: 0,
            job: None,
        }
    }

    pub fn running(&self) -> bool {
        self.job.is_some()
    }

    /// Starts hashing chunks `[done, prefix)` unless a job is running already.
    pub fn advance(&mut self, file: &Arc<File>, layout: &ChunkLayout, prefix: u64) {
        if self.job.is_some() || prefix <= self.done {
            return;
        }
        let Some(hasher) = self.hasher.take() else {
            return;
        };
        let (file, layout, from) = (file.clone(), *layout, self.done);
        self.job = Some(tokio::task::spawn_blocking(move || {
            hash_chunks(hasher, &file, &layout, from, prefix)
        }));
    }

    /// Waits for the running job, if any, and takes its result.
    pub async fn settle(&mut self) {
        if let Some(job) = self.job.take() {
            self.completed(job.await);
        }
    }

    /// The running job's handle, for a `select!`.
    pub fn job(&mut self) -> Option<&mut Job> {
        self.job.as_mut()
    }

    /// Takes the result of the job that `job()` completed.
    pub fn completed(
        &mut self,
        result: Result<std::io::Result<(Sha256, u64)>, tokio::task::JoinError>,
    ) {
        self.job = None;
        match result {
            Ok(Ok((hasher, done))) => {
                self.hasher = Some(hasher);
                self.done = done;
            }
            // A read failed: start over at finish, which reads everything again.
            _ => *self = Self::new(),
        }
    }

    /// The digest of the whole file: waits for the running job and hashes what is left.
    /// Resets the state, so a later attempt starts from the first chunk again.
    pub async fn finish(
        &mut self,
        file: &Arc<File>,
        layout: &ChunkLayout,
    ) -> std::io::Result<Digest> {
        self.settle().await;
        let hasher = self.hasher.take().unwrap_or_default();
        let (file, layout, from) = (file.clone(), *layout, self.done);
        *self = Self::new();
        let (hasher, _) = tokio::task::spawn_blocking(move || {
            hash_chunks(hasher, &file, &layout, from, layout.count())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(hasher.into())
    }
}

fn hash_chunks(
    mut hasher: Sha256,
    file: &File,
    layout: &ChunkLayout,
    from: u64,
    to: u64,
) -> std::io::Result<(Sha256, u64)> {
    let mut buf = vec![0u8; 1 << 20];
    for index in layout
        .indices()
        .skip(from as usize)
        .take((to - from) as usize)
    {
        let span = layout.span(index);
        let mut offset = span.offset;
        let end = span.offset + span.len;
        while offset < end {
            let n = (end - offset).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
    }
    Ok((hasher, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn incremental_digest_equals_the_plain_one() {
        let mut tmp = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        tmp.write_all(&data).unwrap();
        let file = Arc::new(tmp);
        let layout = ChunkLayout::new(data.len() as u64, 4096 + 17).unwrap();
        let mut prefix = PrefixHash::new();
        prefix.advance(&file, &layout, 3);
        prefix.settle().await;
        prefix.advance(&file, &layout, 10);
        let digest = prefix.finish(&file, &layout).await.unwrap();
        assert_eq!(digest, Digest::of(&data));
        // After finish the state starts over, and a second finish agrees.
        assert_eq!(
            prefix.finish(&file, &layout).await.unwrap(),
            Digest::of(&data)
        );
    }
}
