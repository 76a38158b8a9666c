//! The same promise over tus (issue 23): an offset the server gave out — in a PATCH's `204` or
//! a HEAD's answer — is durable, whole chunks and the partial chunk a request left (its tail)
//! alike. `ferryd` runs on the power-cut file system; a client appends with PATCHes of uneven
//! lengths, some broken off mid-body, while another asks HEAD in a loop; the power is cut at a
//! random moment and `ferryd` restarted on what survived. Then the offset must be at least the
//! largest one told, the staging file must hold the source's bytes up to it, and at the end
//! the published file equals the source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_tests::http::Https;

use super::*;

const SIZE: usize = 40_000_000;

fn serve(data: &Path) -> ServerProcess {
    ServerProcess::start_with(data, "127.0.0.1:0", &["--web-listen", "127.0.0.1:0"])
}

fn https(server: &ServerProcess) -> Https {
    Https::new(server.web.expect("the web listener"), &server.fingerprint)
}

/// Appends from the server's offset until told to stop: each round a HEAD, then a PATCH of
/// 0.2–2 MB that is sent whole or broken off part way. Every offset an answer gives is
/// recorded in `told` (the largest).
async fn append_forever(
    web: Https,
    token: String,
    id: String,
    source: Arc<Vec<u8>>,
    told: Arc<AtomicU64>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let auth = format!("Bearer {token}");
    let url = format!("/files/{id}");
    // Bounded by the cut: the task is aborted then; and by the source's end.
    for _ in 0..10_000 {
        let Ok(head) = web
            .try_send(
                "HEAD",
                &url,
                &[("Tus-Resumable", "1.0.0"), ("Authorization", &auth)],
                b"",
            )
            .await
        else {
            return;
        };
        if head.status != 200 {
            return;
        }
        let at = head.offset();
        told.fetch_max(at, Ordering::SeqCst);
        if at as usize >= SIZE {
            return;
        }
        // Paced, so that cuts land mid-upload: 0.2–2 MB, then a pause of 10–60 ms.
        tokio::time::sleep(Duration::from_millis(10 + rng.below(50))).await;
        let len = (200_000 + rng.below(1_800_000) as usize).min(SIZE - at as usize);
        let body = &source[at as usize..at as usize + len];
        let offset = at.to_string();
        let headers = [
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Authorization", auth.as_str()),
            ("Upload-Offset", offset.as_str()),
        ];
        if rng.below(3) == 0 {
            let part = 1 + rng.below(len as u64 - 1) as usize;
            web.send_broken("PATCH", &url, &headers, len as u64, &body[..part])
                .await;
        } else {
            match web.try_send("PATCH", &url, &headers, body).await {
                Ok(reply) if reply.status == 204 => {
                    told.fetch_max(reply.offset(), Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// Asks HEAD in a loop, recording every offset it is told.
async fn head_forever(web: Https, token: String, id: String, told: Arc<AtomicU64>) {
    let auth = format!("Bearer {token}");
    let url = format!("/files/{id}");
    for _ in 0..100_000 {
        match web
            .try_send(
                "HEAD",
                &url,
                &[("Tus-Resumable", "1.0.0"), ("Authorization", &auth)],
                b"",
            )
            .await
        {
            Ok(head) if head.status == 200 => {
                told.fetch_max(head.offset(), Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_no_offset_told_over_tus() {
    if !PowerCutFs::available() {
        eprintln!("SKIPPED: /dev/fuse is absent, the power-cut test needs FUSE");
        return;
    }
    let runs = env_or("FERRY_POWERCUT_RUNS", 25).min(10);
    let seed = env_or("FERRY_POWERCUT_SEED", seed_from_clock());
    eprintln!("power cuts over tus: {runs} cuts, FERRY_POWERCUT_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut fs =
        PowerCutFs::mount(&mnt, Metadata::Strict).expect("mount the power-cut file system");
    let data = mnt.join("data");
    let out = std::process::Command::new(binary("ferryd"))
        .args(["token", "add", "alice", "--init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "token add failed: {out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut server = serve(&data);
    let source = {
        let path = random_file(work.path(), "take.mov", SIZE, seed);
        Arc::new(std::fs::read(path).unwrap())
    };
    let len = SIZE.to_string();
    let auth = format!("Bearer {token}");
    let created = https(&server)
        .send(
            "POST",
            "/files/",
            &[
                ("Tus-Resumable", "1.0.0"),
                ("Authorization", &auth),
                ("Upload-Length", &len),
            ],
            b"",
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.upload_id();
    let told = Arc::new(AtomicU64::new(0));
    let mut tails = 0;
    for cut in 0..runs {
        let web = https(&server);
        let appending = tokio::spawn(append_forever(
            web.clone(),
            token.clone(),
            id.clone(),
            source.clone(),
            told.clone(),
            rng.next(),
        ));
        let heading = tokio::spawn(head_forever(web, token.clone(), id.clone(), told.clone()));
        tokio::time::sleep(Duration::from_millis(30 + rng.below(400))).await;
        fs.power_off();
        server.kill9();
        tokio::time::sleep(Duration::from_millis(20)).await;
        appending.abort();
        heading.abort();
        let promised = told.load(Ordering::SeqCst);
        fs.cut().expect("remount after the cut");
        server = serve(&data);
        let head = https(&server)
            .send(
                "HEAD",
                &format!("/files/{id}"),
                &[("Tus-Resumable", "1.0.0"), ("Authorization", &auth)],
                b"",
            )
            .await;
        assert_eq!(head.status, 200, "cut {cut} (seed {seed}): {head:?}");
        let now = head.offset();
        eprintln!("cut {cut}: told {promised}, held after the restart {now}");
        assert!(
            now >= promised,
            "cut {cut} (seed {seed}): the server told offset {promised}, and holds {now} after the power cut"
        );
        if now % (8 << 20) != 0 && (now as usize) < SIZE {
            tails += 1;
        }
        if (now as usize) < SIZE {
            let staged = std::fs::read(data.join("staging").join(format!("{id}.part"))).unwrap();
            assert!(
                staged.len() >= now as usize && staged[..now as usize] == source[..now as usize],
                "cut {cut} (seed {seed}): the bytes up to offset {now} differ from the source"
            );
        }
        told.store(now, Ordering::SeqCst);
        if now as usize >= SIZE {
            break;
        }
    }
    // The rest, then the whole file.
    let web = https(&server);
    let at = web
        .send(
            "HEAD",
            &format!("/files/{id}"),
            &[("Tus-Resumable", "1.0.0"), ("Authorization", &auth)],
            b"",
        )
        .await
        .offset() as usize;
    if at < SIZE {
        let offset = at.to_string();
        let reply = web
            .send(
                "PATCH",
                &format!("/files/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", "application/offset+octet-stream"),
                    ("Authorization", &auth),
                    ("Upload-Offset", &offset),
                ],
                &source[at..],
            )
            .await;
        assert_eq!(reply.status, 204, "{reply:?}");
    }
    let folder = data.join("files/alice");
    let name = std::fs::read_dir(&folder)
        .unwrap()
        .next()
        .expect("the published file")
        .unwrap()
        .file_name();
    let published = std::fs::read(folder.join(name)).unwrap();
    assert!(
        published == *source,
        "the published file differs from the source"
    );
    eprintln!("power cuts over tus: {runs} cuts, {tails} restarts held a partial chunk's bytes");
    server.kill9();
    drop(fs);
}
