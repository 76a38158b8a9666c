//! Back online in seconds after a crash, however much is staged (issue 14). Re-verification
//! after an unclean stop runs in the background; the server listens first.

use std::time::{Duration, Instant};

use ferry_proto::ChunkSet;
use ferry_tests::stage::stage_uploads;
use ferry_tests::*;

/// 3 GiB staged in 4 uploads, left as by a crash, one chunk tampered with while the server
/// was down. The restarted server lists and accepts a new upload within 2 s while it is still
/// re-verifying (paced to 64 MiB/s, so that takes ~48 s), and the tampered chunk is still
/// found: the `resume` of its upload waits for that upload's verification and re-requests it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_with_gibibytes_staged_is_back_in_seconds_and_still_finds_tampering() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let token = ferry_server::Tokens::new(&data).add("alice").unwrap();
    let (chunk, size) = (8u64 << 20, 768u64 << 20);
    let staged = stage_uploads(&data, "alice", 4, size, chunk);
    let victim = staged.last().unwrap();
    let staging = data.join("staging").join(format!("{}.part", victim.id));
    let mut bytes = std::fs::read(&staging).unwrap();
    bytes[5 * chunk as usize + 100] ^= 0xff;
    std::fs::write(&staging, &bytes).unwrap();
    drop(bytes);

    let started = Instant::now();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", &["--verify-rate", "64M"]);
    let listening = started.elapsed();
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "new.bin", 1 << 20, 9);
    let mut opts = server.options(&token, local.path());
    opts.chunk_size = 256 << 10;
    let mut client = ferry_client::Client::new(opts).unwrap();
    let listed = client.list().await.expect("list while verifying");
    let report = client
        .upload(&source, "")
        .await
        .expect("a new upload while verifying");
    let served = started.elapsed();
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    eprintln!("restart with 3 GiB staged: listening after {listening:?}, list and a new 1 MiB upload done after {served:?}");
    assert_eq!(listed.iter().filter(|u| u.state == "receiving").count(), 4);
    assert_eq!(report.status, "complete");
    assert!(served < Duration::from_secs(2), "took {served:?}");
    assert!(
        !log.contains("re-verified durable chunks after an unclean stop"),
        "verification was over already: the test proves nothing"
    );

    let conn = client.connection().await.unwrap();
    let info = conn
        .resume(&victim.id)
        .await
        .expect("resume after verification");
    let durable = ChunkSet::from_wire(&info.durable, victim.layout.count()).unwrap();
    let missing: Vec<u64> = (0..victim.layout.count())
        .filter(|i| !durable.contains(*i))
        .collect();
    assert_eq!(
        missing,
        vec![5],
        "the tampered chunk, and only it, is re-requested"
    );
}
