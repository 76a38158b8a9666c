//! How a growing upload begins: created `deferred`, or found again from the resume record and
//! the server's answer, with what the server holds checked against the source.

use super::*;

impl Client {
    /// `create` of unknown length.
    pub(super) async fn create_growing(&mut self, job: &Growing) -> Result<State, ClientError> {
        let (name, dir, desc) = (job.name.clone(), job.dir.clone(), job.desc.clone());
        let (chunk_size, on_exists) = (self.opts.chunk_size, self.opts.on_exists);
        let create = |req| Frame::Create {
            req,
            file_name: name,
            size: 0,
            chunk_size,
            desc,
            dir,
            on_exists,
            deferred: true,
        };
        let conn = self.connection().await?;
        let info = match conn.request(create).await? {
            Frame::Created { upload, .. } => upload,
            other => return Err(unexpected("created", &other)),
        };
        let mut state = State::new(&info, false);
        state.attached_on = Some(conn.quic().stable_id());
        Ok(state)
    }

    /// The upload of an earlier run, if the server still has it unfinished.
    pub(super) async fn reopen(&mut self, record: &Record) -> Result<Option<State>, ClientError> {
        let conn = self.connection().await?;
        let attached_on = conn.quic().stable_id();
        let info = match conn.resume(&record.upload_id).await {
            Ok(info) => info,
            Err(ClientError::Server {
                code: ErrorCode::NotFound | ErrorCode::Expired,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !info.deferred {
            // Published already, or its length declared by a run that died just before
            // finishing: this run starts afresh (the other expires unless resumed otherwise).
            return Ok(None);
        }
        let mut state = State::new(&info, true);
        state.attached_on = Some(attached_on);
        // What the server holds, with its digests: the content hash needs them, and a followed
        // file is checked against them.
        let mut from = 0;
        for _ in 0..1_000_000 {
            let upload_id = state.id.clone();
            let page = self
                .connection()
                .await?
                .request(|req| Frame::Digests {
                    req,
                    upload_id,
                    from,
                })
                .await?;
            let Frame::DigestPage { chunks, next, .. } = page else {
                return Err(unexpected("digest_page", &page));
            };
            let mut digests = state.digests.lock().unwrap_or_else(|p| p.into_inner());
            for (index, hex) in chunks {
                let digest =
                    Digest::parse(&hex).map_err(|e| ClientError::Protocol(e.to_string()))?;
                digests.insert(index, digest);
            }
            match next {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        state.skipped = state.acked.len() * state.cs;
        Ok(Some(state))
    }

    /// A resumed followed file: the chunks the server holds are compared with the file's, and
    /// those that differ (rewritten since) are forgotten there to be sent again.
    pub(super) async fn check_held(
        &mut self,
        state: &mut State,
        feed: &Feed,
    ) -> Result<(), ClientError> {
        let Feed::File { file, path, .. } = feed else {
            return Ok(());
        };
        let len = file
            .metadata()
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?
            .len();
        let whole = len / state.cs;
        let held: Vec<u64> = state.acked.iter().collect();
        let changed = changed_chunks(file, state, &held, whole).await?;
        self.rewrite(state, changed).await
    }
}

impl State {
    pub(super) fn new(info: &UploadInfo, resumed: bool) -> Self {
        let acked = ChunkSet::from_wire(&info.durable, info.chunk_count).unwrap_or_default();
        Self {
            id: info.upload_id.clone(),
            cs: info.chunk_size,
            acked,
            unacked: BTreeSet::new(),
            todo: BTreeSet::new(),
            digests: Default::default(),
            sent: Default::default(),
            end: None,
            declared: false,
            resumed,
            reconnects: 0,
            rejects: 0,
            attached_on: None,
            progress_every: Duration::from_secs(10),
            reported: Instant::now(),
            skipped: 0,
        }
    }

    /// After a reconnect: the server's durable set is the truth; what was in flight is sent
    /// again.
    pub(super) fn rebuild(&mut self, info: &UploadInfo, feed: &Feed) {
        if let Ok(durable) = ChunkSet::from_wire(&info.durable, info.chunk_count) {
            self.acked = durable;
        }
        let lost: Vec<u64> = std::mem::take(&mut self.unacked).into_iter().collect();
        for index in lost {
            if !self.acked.contains(index) {
                self.todo.insert(index);
            }
        }
        if let Feed::Stdin { held, .. } = feed {
            for (&index, data) in held {
                // The short last chunk waits for the length to be declared.
                let whole = data.len() as u64 == self.cs;
                if !self.acked.contains(index) && (whole || self.declared) {
                    self.todo.insert(index);
                }
            }
        }
    }
}
