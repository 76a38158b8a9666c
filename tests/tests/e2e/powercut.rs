//! Acknowledged means durable, also when the power fails (issue 15). `ferryd` runs on the
//! power-cut file system (`ferry_tests::powercut`), which forgets every write not made durable
//! by fsync/fdatasync. The test cuts the power at random moments, right after acks and right
//! after `finish`, restarts `ferryd` on what survived, and holds the server to what it told
//! the client:
//! - every chunk acknowledged (or reported durable by `resume`) is still durable;
//! - an upload whose `created` reply arrived still exists;
//! - an upload reported complete is still complete, under the same name, with the same bytes,
//!   and every published file belongs to exactly one complete upload (nothing published twice);
//! - the certificate the client pinned survives;
//! - a copy published by `dedup` (every tenth cut, once something is complete; cut at its
//!   staging link, at its published link, or after the `deduped` reply) is, once told, still
//!   published under its name with the source's bytes; untold, it is either complete or gone
//!   without a trace (no receiving upload, no stray file).
//!
//! `FERRY_POWERCUT_RUNS` sets the cuts per metadata mode (25 by default, about 4 s in CI),
//! `FERRY_POWERCUT_SEED` the seed (printed at the start of every run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_client::upload::send_chunk;
use ferry_client::{Client, ClientError, Options, Target};
use ferry_proto::{ChunkSet, Digest, ErrorCode, Frame};
use ferry_tests::powercut::{Metadata, PowerCutFs};
use ferry_tests::*;
use tokio::sync::watch;

const CHUNK: u64 = 64 << 10;
/// The client's pace: a 1–3 MiB upload takes 60–180 ms, so random cuts land mid-transfer.
const RATE: u64 = 16 << 20;
/// Names reused on purpose, so publishing has to number them (`clip (1).mov`).
const NAMES: [&str; 3] = ["clip.mov", "视频 第一集.mp4", "b-roll.mov"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged_lenient_metadata() {
    power_cuts(Metadata::Lenient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged_strict_metadata() {
    power_cuts(Metadata::Strict).await;
}

/// The file system itself, through the kernel: what was synced survives a cut, the rest not.
#[test]
fn the_file_system_forgets_what_was_not_synced() {
    use std::io::Write;
    if !PowerCutFs::available() {
        eprintln!("SKIPPED: /dev/fuse is absent, the power-cut test needs FUSE");
        return;
    }
    for mode in [Metadata::Lenient, Metadata::Strict] {
        let work = tempfile::tempdir().unwrap();
        let mut fs = PowerCutFs::mount(work.path(), mode).expect("mount (FUSE needs root)");
        let dir = work.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut synced = std::fs::File::create(dir.join("synced")).unwrap();
        synced.write_all(b"kept").unwrap();
        synced.sync_data().unwrap();
        synced.write_all(b" and lost").unwrap();
        drop(synced);
        std::fs::write(dir.join("unsynced"), b"lost").unwrap();
        std::fs::File::open(work.path())
            .unwrap()
            .sync_all()
            .unwrap();
        if mode == Metadata::Strict {
            std::fs::File::open(&dir).unwrap().sync_all().unwrap();
        }
        fs.cut().unwrap();
        assert_eq!(
            std::fs::read(dir.join("synced")).unwrap(),
            b"kept",
            "{mode:?}"
        );
        assert_eq!(
            std::fs::read(dir.join("unsynced")).unwrap(),
            b"",
            "{mode:?}"
        );
        std::fs::write(dir.join("entry"), b"").unwrap();
        fs.cut().unwrap();
        assert_eq!(
            dir.join("entry").exists(),
            mode == Metadata::Lenient,
            "{mode:?}"
        );
        assert!(fs.stats().files_lost >= 2, "{mode:?}: {:?}", fs.stats());
    }
}

async fn power_cuts(mode: Metadata) {
    if !PowerCutFs::available() {
        eprintln!("SKIPPED: /dev/fuse is absent, the power-cut test needs FUSE");
        return;
    }
    let runs: u64 = env_or("FERRY_POWERCUT_RUNS", 25);
    let seed: u64 = env_or("FERRY_POWERCUT_SEED", seed_from_clock());
    eprintln!("power cuts ({mode:?}): {runs} cuts, FERRY_POWERCUT_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let mut rig = Rig::start(mode);
    let fingerprint = rig.server.fingerprint.clone();
    let mut current: Option<Upload> = None;
    let mut done: Vec<Upload> = Vec::new();
    let mut copies: Vec<Copy> = Vec::new();
    let mut tally = Tally::default();
    for cut in 0..runs {
        if cut % 10 == 9 && !done.is_empty() {
            let source = &done[rng.below(done.len() as u64) as usize];
            // 1: the staging link, 2: the published link, 3: after the reply.
            let links = 1 + rng.below(3) as u32;
            let name = format!("copy-{cut}.bin");
            let told = rig.dedup_until(source, &name, links).await;
            rig.restart();
            eprintln!("cut {cut}: dedup, cut at link {links}: told {told:?}");
            let what = format!("cut {cut} (dedup, link {links}, seed {seed})");
            if let Some((id, file_name)) = told {
                tally.deduplicated += 1;
                copies.push(Copy {
                    id,
                    file_name,
                    data: source.data.clone(),
                });
            }
            let upload = current.get_or_insert_with(|| Upload::new(&mut rng, rig.work.path()));
            rig.check(upload, &done, &what).await;
            rig.check_copies(&copies, &what).await;
            continue;
        }
        let upload = current.get_or_insert_with(|| Upload::new(&mut rng, rig.work.path()));
        let trigger = match cut % 5 {
            0 => Trigger::Unsynced,
            1 => Trigger::After(Duration::from_millis(rng.below(200))),
            2 => Trigger::Acks(1 + rng.below(4)),
            3 => Trigger::Linked,
            _ => Trigger::Finished,
        };
        let before = rig.fs.stats();
        let told = rig.run_until(upload, trigger).await;
        rig.restart();
        let after = rig.fs.stats();
        eprintln!(
            "cut {cut}: {trigger:?}: {} acks, finished {:?}; lost {} pages in {} files, {} entries",
            told.acks,
            told.finished,
            after.pages_lost - before.pages_lost,
            after.files_lost - before.files_lost,
            after.entries_lost - before.entries_lost
        );
        assert_eq!(
            rig.server.fingerprint, fingerprint,
            "cut {cut}: the certificate changed across the cut"
        );
        let what = format!("cut {cut} ({trigger:?}, seed {seed})");
        upload.absorb(&told);
        tally.lossy_cuts += u64::from(after.files_lost > before.files_lost);
        tally.acked_chunks += upload.durable.len();
        rig.check(upload, &done, &what).await;
        rig.check_copies(&copies, &what).await;
        if upload.complete.is_some() {
            tally.completed += 1;
            done.extend(current.take());
        }
    }
    let stats = rig.fs.stats();
    let recovered = rig.recovered();
    eprintln!(
        "power cuts ({mode:?}): {runs} cuts, {} uploads completed, {} deduplicated copies \
         confirmed, {} acknowledged chunks checked after cuts, all still durable; file \
         system: unsynced writes lost at {} cuts \
         ({} pages of 16 KiB in {} files), {} directory entries lost, {} file syncs, {} directory \
         syncs; ferryd recovery: {recovered}",
        tally.completed,
        tally.deduplicated,
        tally.acked_chunks,
        tally.lossy_cuts,
        stats.pages_lost,
        stats.files_lost,
        stats.entries_lost,
        stats.file_syncs,
        stats.dir_syncs
    );
    assert_eq!(stats.cuts, runs);
    if runs >= 5 {
        assert!(
            stats.files_lost > 0,
            "no cut found unsynced data: the cuts did not hit uploads in progress"
        );
        // A cut right after the link: the link survives in lenient mode (the publish is
        // completed at restart), not in strict mode (it is rolled back, then finished again).
        let settled = match mode {
            Metadata::Lenient => "published=",
            Metadata::Strict => "rolled_back=",
        };
        assert!(
            !recovered.contains(&format!("{settled}0")),
            "a cut during publish was not reconciled ({settled}): {recovered}"
        );
    }
}

/// A copy the server said it published by `dedup`.
struct Copy {
    id: String,
    file_name: String,
    data: Bytes,
}

/// When to cut the power.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// This long after the client starts (or resumes) the upload.
    After(Duration),
    /// As soon as this many ack frames have arrived.
    Acks(u64),
    /// As soon as `finished` has arrived.
    Finished,
    /// As soon as some file holds written but unsynced bytes (a chunk arriving).
    Unsynced,
    /// The instant `ferryd` links the published file, before it syncs the directory.
    Linked,
}

/// What the client was told during one run, as it was told.
#[derive(Debug, Clone, Default)]
struct Told {
    id: Option<String>,
    acked: ChunkSet,
    acks: u64,
    finished: Option<String>,
}

/// One file to upload, and what the server has promised about it so far.
struct Upload {
    name: &'static str,
    data: Bytes,
    id: Option<String>,
    /// Chunks acknowledged or reported durable: must never shrink.
    durable: ChunkSet,
    /// The final name, once the server said complete.
    complete: Option<String>,
}

impl Upload {
    fn new(rng: &mut Rng, dir: &Path) -> Self {
        let size = (1 << 20) + rng.below(2 << 20) as usize;
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        let path = random_file(dir, "source.bin", size, rng.next());
        let data = Bytes::from(std::fs::read(path).unwrap());
        Self {
            name,
            data,
            id: None,
            durable: ChunkSet::new(),
            complete: None,
        }
    }

    fn count(&self) -> u64 {
        (self.data.len() as u64).div_ceil(CHUNK)
    }

    fn absorb(&mut self, told: &Told) {
        self.id = self.id.take().or(told.id.clone());
        for index in told.acked.iter() {
            self.durable.insert(index);
        }
        if told.finished.is_some() {
            self.complete = told.finished.clone();
        }
    }
}

struct Rig {
    work: tempfile::TempDir,
    // Dropped after the server (fields drop in order): ferryd dies before the unmount.
    server: ServerProcess,
    fs: PowerCutFs,
    data: PathBuf,
    token: String,
    /// The logs of every `ferryd` that ran, for the recovery counts.
    logs: String,
}

impl Rig {
    fn start(mode: Metadata) -> Self {
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

    fn serve(data: &Path) -> ServerProcess {
        ServerProcess::start_with(data, "127.0.0.1:0", &["--max-uploads", "0"])
    }

    /// After `run_until` cut the power and killed `ferryd`: rolls the file system back to
    /// what was durable and starts `ferryd` again on it.
    fn restart(&mut self) {
        self.logs += &std::fs::read_to_string(&self.server.log).unwrap_or_default();
        self.fs.cut().expect("remount after the cut");
        self.server = Self::serve(&self.data);
    }

    fn client(&self) -> Client {
        let state = self.work.path().join("client");
        let target = Target {
            server: self.server.addr.to_string(),
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
    async fn run_until(&mut self, upload: &Upload, trigger: Trigger) -> Told {
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
    async fn check(&self, upload: &mut Upload, done: &[Upload], what: &str) {
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
    async fn dedup_until(
        &mut self,
        source: &Upload,
        name: &str,
        links: u32,
    ) -> Option<(String, String)> {
        if links <= 2 {
            self.fs.power_off_after_links(links);
        }
        let mut client = self.client();
        let sha256 = Digest::of(&source.data).to_hex();
        let size = source.data.len() as u64;
        let ask = |req| Frame::Dedup {
            req,
            file_name: name.to_owned(),
            size,
            sha256: sha256.clone(),
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
    async fn check_copies(&self, copies: &[Copy], what: &str) {
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
    fn recovered(&self) -> String {
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
        sha256: Digest::of(&data).to_hex(),
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

#[derive(Default)]
struct Tally {
    /// Cuts that threw away written but unsynced bytes.
    lossy_cuts: u64,
    completed: u64,
    /// `deduped` replies received (the copy then checked after every later cut).
    deduplicated: u64,
    acked_chunks: u64,
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
