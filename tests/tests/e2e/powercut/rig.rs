//! The power-cut rig: `ferryd` on the power-cut file system, the client that drives one
//! upload (or one `dedup`) until the trigger, the cut and restart, and the checks that hold the
//! restarted server to what it told the client.

use super::*;

pub(super) struct Rig {
    pub(super) work: tempfile::TempDir,
    // Dropped after the server (fields drop in order): ferryd dies before the unmount.
    pub(super) server: ServerProcess,
    pub(super) fs: PowerCutFs,
    pub(super) data: PathBuf,
    pub(super) token: String,
    /// The logs of every `ferryd` that ran, for the recovery counts.
    pub(super) logs: String,
}

impl Rig {
    pub(super) fn start(mode: Metadata) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mnt = work.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = PowerCutFs::mount(&mnt, mode).unwrap_or_else(|e| {
            panic!("cannot mount the power-cut file system (FUSE needs root): {e}")
        });
        let data = mnt.join("data");
        let out = std::process::Command::new(binary("ferryd"))
            .args(["token", "add", "alice", "--init", "--data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "token add failed: {out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let server = Self::serve(&data);
        Self {
            work,
            server,
            fs,
            data,
            token,
            logs: String::new(),
        }
    }

    pub(super) fn serve(data: &Path) -> ServerProcess {
        ServerProcess::start_with(data, "127.0.0.1:0", &["--max-uploads", "0"])
    }

    /// After `run_until` cut the power and killed `ferryd`: rolls the file system back to
    /// what was durable and starts `ferryd` again on it.
    pub(super) fn restart(&mut self) {
        self.logs += &std::fs::read_to_string(&self.server.log).unwrap_or_default();
        self.fs.cut().expect("remount after the cut");
        self.server = Self::serve(&self.data);
    }

    pub(super) fn client(&self) -> Client {
        self.client_in("client")
    }

    /// A client with its own state folder `name` under the work folder.
    pub(super) fn client_in(&self, name: &str) -> Client {
        let state = self.work.path().join(name);
        let target = Target {
            server: self.server.addr.to_string(),
            alternates: Vec::new(),
            token: self.token.clone(),
            fingerprint: Some(self.server.fingerprint.clone()),
            known_servers: state.join("known_servers"),
            idle_timeout: Duration::from_secs(5),
            congestion: Default::default(),
            ca: None,
        };
        let mut opts = Options::new(target, state);
        opts.chunk_size = CHUNK;
        Client::new(opts).expect("client starts")
    }

    /// Uploads (creating or resuming) until `trigger`, then cuts the power and kills `ferryd`;
    /// returns what the client was told, up to the moment `ferryd` died.
    pub(super) async fn run_until(&mut self, upload: &Upload, trigger: Trigger) -> Told {
        if let Trigger::Linked = trigger {
            self.fs.power_off_after_link();
        }
        let (tx, mut rx) = watch::channel(Told::default());
        let plan = (upload.name, upload.data.clone(), upload.id.clone());
        let durable = upload.durable.clone();
        let mut task = tokio::spawn(drive(self.client(), plan, durable, tx));
        let started = Instant::now();
        let fire = async {
            match trigger {
                Trigger::After(delay) => {
                    tokio::time::sleep_until((started + delay).into()).await;
                }
                Trigger::Acks(n) => {
                    let _ = rx.wait_for(|t| t.acks >= n || t.finished.is_some()).await;
                }
                Trigger::Finished => {
                    let _ = rx.wait_for(|t| t.finished.is_some()).await;
                }
                Trigger::Unsynced => {
                    while !self.fs.power_off_if_unsynced() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Trigger::Linked => {
                    while !self.fs.is_off() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        };
        let limit = tokio::time::sleep(Duration::from_secs(30));
        let fired = tokio::select! {
            () = fire => true,
            ended = &mut task => match ended {
                Ok(Ok(())) => false,
                // ferryd's writes fail once the power is off; it may say so before it dies.
                Ok(Err(_)) if self.fs.is_off() => false,
                Ok(Err(e)) => panic!("the upload failed before the cut: {e}"),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            () = limit => panic!("{trigger:?} did not happen within 30 s"),
        };
        self.fs.power_off();
        self.server.kill9();
        if fired {
            // What ferryd sent before it died may still be arriving.
            tokio::time::sleep(Duration::from_millis(20)).await;
            task.abort();
        }
        let told = rx.borrow().clone();
        told
    }

    /// Holds the restarted server to every promise made so far.
    pub(super) async fn check(&self, upload: &mut Upload, done: &[Upload], what: &str) {
        let mut client = self.client();
        if let Some(id) = upload.id.clone() {
            let resume = |req| Frame::Resume {
                req,
                upload_id: id.clone(),
                from: 0,
            };
            let conn = client.connection().await.expect("connect after the cut");
            match conn.request(resume).await {
                Ok(Frame::Resumed { upload: info, .. }) => {
                    let now = ChunkSet::from_wire(&info.durable, upload.count()).unwrap();
                    let lost: Vec<u64> = upload
                        .durable
                        .iter()
                        .filter(|i| !now.contains(*i))
                        .collect();
                    assert!(
                        lost.is_empty(),
                        "{what}: acknowledged chunks {lost:?} of upload {id} are no longer durable"
                    );
                    if upload.complete.is_some() {
                        assert_eq!(
                            now.len(),
                            upload.count(),
                            "{what}: a complete upload reopened"
                        );
                    }
                    upload.durable = now;
                }
                Err(ClientError::Server {
                    code: ErrorCode::NotFound,
                    ..
                }) => panic!("{what}: upload {id} was created and acknowledged, and is gone"),
                other => panic!("{what}: resume of {id} answered {other:?}"),
            }
        }
        let listed = client.list().await.expect("list after the cut");
        client.close().await;
        let mut published = BTreeSet::new();
        for summary in listed.iter().filter(|s| s.state == "complete") {
            published.insert(summary.file_name.clone());
            if upload.id.as_deref() == Some(&summary.upload_id) && upload.complete.is_none() {
                // Complete on the server, the reply lost in the cut: as good as told.
                upload.complete = Some(summary.file_name.clone());
            }
        }
        for up in done.iter().chain(std::iter::once(&*upload)) {
            let (Some(id), Some(name)) = (&up.id, &up.complete) else {
                continue;
            };
            let summary = listed.iter().find(|s| &s.upload_id == id);
            assert!(
                summary.is_some_and(|s| s.state == "complete" && &s.file_name == name),
                "{what}: upload {id} was reported complete as {name:?}, now {summary:?}"
            );
        }
        let on_disk = files_in(&self.data.join("files").join("alice"));
        assert_eq!(
            on_disk, published,
            "{what}: published files differ from the complete uploads"
        );
        if let Some(name) = &upload.complete {
            let path = self.data.join("files").join("alice").join(name);
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes == upload.data,
                "{what}: {name} differs from its source"
            );
        }
    }

    /// Asks the server to publish `source`'s content as `name` by `dedup`, cutting the power at
    /// the `links`th hard link from now (1: the staging link, 2: the published link) or, for 3,
    /// right after the reply. Returns the reply's id and name if `deduped` arrived.
    pub(super) async fn dedup_until(
        &mut self,
        source: &Upload,
        name: &str,
        links: u32,
    ) -> Option<(String, String)> {
        if links <= 2 {
            self.fs.power_off_after_links(links);
        }
        let mut client = self.client();
        let hash = ContentHasher::of(&source.data, CHUNK as usize).to_hex();
        let size = source.data.len() as u64;
        let ask = |req| Frame::Dedup {
            req,
            file_name: name.to_owned(),
            size,
            chunk_size: CHUNK,
            content_hash: hash.clone(),
            desc: String::new(),
            dir: Vec::new(),
            on_exists: Default::default(),
        };
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            client.connection().await?.request(ask).await
        })
        .await
        .expect("dedup answered within 30 s");
        self.fs.power_off();
        self.server.kill9();
        match reply {
            Ok(Frame::Deduped {
                upload_id,
                file_name,
                existing,
                ..
            }) => {
                assert!(!existing, "{name} is a new name");
                Some((upload_id, file_name))
            }
            Ok(Frame::NoMatch { .. }) => {
                panic!("no match for the content of a completed upload")
            }
            // The power went off under the request.
            Ok(other) => panic!("dedup answered {other:?}"),
            Err(_) => None,
        }
    }

    /// Every copy the server said it published is complete, under its name, with the bytes of
    /// its source.
    pub(super) async fn check_copies(&self, copies: &[Copy], what: &str) {
        if copies.is_empty() {
            return;
        }
        let mut client = self.client();
        let listed = client.list().await.expect("list after the cut");
        client.close().await;
        for copy in copies {
            let summary = listed.iter().find(|s| s.upload_id == copy.id);
            assert!(
                summary.is_some_and(|s| s.state == "complete" && s.file_name == copy.file_name),
                "{what}: copy {} was deduplicated as {:?}, now {summary:?}",
                copy.id,
                copy.file_name
            );
            let path = self.data.join("files").join("alice").join(&copy.file_name);
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes == copy.data,
                "{what}: {} differs from its source",
                copy.file_name
            );
        }
        assert!(
            listed
                .iter()
                .all(|s| s.state == "complete" || !s.file_name.starts_with("copy-")),
            "{what}: an interrupted dedup left an upload that is not complete"
        );
    }

    /// The recovery counts `ferryd` logged, summed over its restarts.
    pub(super) fn recovered(&self) -> String {
        let keys = [
            "chunks_verified",
            "chunks_mismatched",
            "published",
            "rolled_back",
            "orphans_removed",
            "leftovers_removed",
            "lost",
        ];
        // The log may carry colour codes around field names.
        let mut plain = String::with_capacity(self.logs.len());
        let mut rest = self.logs.as_str();
        while let Some(at) = rest.find('\x1b') {
            plain.push_str(&rest[..at]);
            rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
        }
        plain.push_str(rest);
        let sum = |key: &str| -> u64 {
            plain
                .split_whitespace()
                .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        };
        keys.map(|k| format!("{k}={}", sum(k))).join(" ")
    }
}

/// The client side of one run: create or resume, send every missing chunk (eight streams at a
/// time), collect acks, finish. Reports everything it is told through `told`.
async fn drive(
    mut client: Client,
    (name, data, id): (&'static str, Bytes, Option<String>),
    durable: ChunkSet,
    told: watch::Sender<Told>,
) -> Result<(), ClientError> {
    let count = (data.len() as u64).div_ceil(CHUNK);
    let conn = client.connection().await?;
    let resuming = id.is_some();
    let id = match id {
        Some(id) => id,
        None => {
            let create = |req| Frame::Create {
                req,
                file_name: name.into(),
                size: data.len() as u64,
                chunk_size: CHUNK,
                desc: String::new(),
                dir: Vec::new(),
                on_exists: Default::default(),
                deferred: false,
            };
            match conn.request(create).await? {
                Frame::Created { upload, .. } => upload.upload_id,
                other => panic!("expected created, got {other:?}"),
            }
        }
    };
    told.send_modify(|t| t.id = Some(id.clone()));
    if resuming {
        let resume = |req| Frame::Resume {
            req,
            upload_id: id.clone(),
            from: 0,
        };
        conn.request(resume).await?;
    }
    if durable.len() < count {
        let missing: Vec<u64> = (0..count).filter(|i| !durable.contains(*i)).collect();
        tokio::spawn(send_all(
            conn.quic().clone(),
            id.clone(),
            data.clone(),
            missing,
        ));
        let mut acked = durable;
        while acked.len() < count {
            match tokio::time::timeout(Duration::from_secs(20), conn.events.recv()).await {
                Ok(Some(Frame::Ack { chunks, .. })) => {
                    for [start, end] in chunks {
                        acked.insert_range(start, end);
                    }
                    let now = acked.clone();
                    told.send_modify(|t| {
                        t.acked = now;
                        t.acks += 1;
                    });
                }
                // A chunk the server could not store (its disk failed at the cut): the run
                // is over; run_until decides whether that was the cut or a bug.
                Ok(Some(Frame::Reject { code, message, .. })) => {
                    return Err(ClientError::Server { code, message })
                }
                Ok(Some(other)) => panic!("unexpected event {other:?}"),
                Ok(None) => return Err(conn.lost()),
                Err(_) => panic!("no ack within 20 s"),
            }
        }
    }
    let finish = |req| Frame::Finish {
        req,
        upload_id: id.clone(),
        content_hash: ContentHasher::of(&data, CHUNK as usize).to_hex(),
        size: None,
    };
    match conn.request(finish).await? {
        Frame::Finished { file_name, .. } => told.send_modify(|t| t.finished = Some(file_name)),
        other => panic!("expected finished, got {other:?}"),
    }
    Ok(())
}

/// Sends `missing` chunks of `data` at [`RATE`], eight streams at a time; stops at the first failure (the
/// server is gone).
async fn send_all(quic: quinn::Connection, id: String, data: Bytes, missing: Vec<u64>) {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pace = std::sync::Arc::new(ferry_client::rate::RateLimiter::new(RATE));
    let mut streams = tokio::task::JoinSet::new();
    for index in missing {
        if streams.len() >= 8 && !matches!(streams.join_next().await, Some(Ok(Ok(())))) {
            return;
        }
        let (quic, id, sent, pace) = (quic.clone(), id.clone(), sent.clone(), pace.clone());
        let start = (index * CHUNK) as usize;
        let piece = data.slice(start..(start + CHUNK as usize).min(data.len()));
        streams.spawn(async move {
            let digest = Digest::of(&piece);
            send_chunk(&quic, &id, index, piece, digest, Some(&pace), &sent).await
        });
    }
    while streams.join_next().await.is_some() {}
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}
