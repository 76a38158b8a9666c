//! The store's unit tests: publishing, recovery, limits.

use std::fs::File;

use ferry_proto::OnExists;

use super::*;

fn record(name: &str, size: u64) -> UploadRecord {
    UploadRecord {
        owner: "alice".into(),
        file_name: name.into(),
        desc: String::new(),
        size,
        chunk_size: 4096,
        state: RecordState::Receiving,
        created_at: 1,
        updated_at: 1,
        final_name: None,
        content_hash: None,
        dir: Vec::new(),
        on_exists: OnExists::Rename,
        dedup: false,
        stamp: None,
        remote: None,
        link: None,
        deferred: false,
        partial: false,
        metadata: None,
        frontend: None,
    }
}

/// An upload caught by a crash between recording its publish and finishing it; the link
/// made or not.
fn interrupted_publish(linked: bool) -> (tempfile::TempDir, UploadId) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let id = store.create(&record("a.mov", 10)).unwrap();
    let mut intent = record("a.mov", 10);
    intent.state = RecordState::Publishing;
    intent.final_name = Some("a.mov".into());
    intent.content_hash = Some("00".repeat(32));
    store.put_record(id, &intent).unwrap();
    if linked {
        let owner = store.owner_dir("alice");
        fs::create_dir_all(&owner).unwrap();
        fs::hard_link(store.staging_path(id), owner.join("a.mov")).unwrap();
    }
    store.sync().unwrap();
    (dir, id)
}

#[test]
fn publish_interrupted_after_the_link_is_completed_at_start() {
    let (dir, id) = interrupted_publish(true);
    let (store, report) = Store::open(dir.path(), 0).unwrap();
    assert_eq!(report.reconciled.published, 1);
    let record = store.record(id).unwrap().unwrap();
    assert_eq!(record.state, RecordState::Complete);
    assert_eq!(record.final_name.as_deref(), Some("a.mov"));
    assert!(!store.staging_path(id).exists(), "staging name removed");
    assert!(dir.path().join("files/alice/a.mov").exists());
}

#[test]
fn publish_interrupted_before_the_link_is_rolled_back_and_can_finish_again() {
    let (dir, id) = interrupted_publish(false);
    let (store, report) = Store::open(dir.path(), 0).unwrap();
    assert_eq!(report.reconciled.rolled_back, 1);
    let record = store.record(id).unwrap().unwrap();
    assert_eq!(record.state, RecordState::Receiving);
    assert_eq!(record.final_name, None);
    let name = store.publish(id, &record, Digest::of(&[0; 10])).unwrap();
    assert_eq!(name, "a.mov", "published once, under its own name");
}

/// Regression (issue 8): "the server has 0 bytes free" when 48 MiB were free and 64 MiB
/// kept in reserve; both figures are said now, in human units.
#[test]
fn no_space_says_both_figures() {
    let e = NoSpace {
        needed: 100 << 20,
        free: 48 << 20,
        reserve: 64 << 20,
    };
    assert_eq!(
        e.to_string(),
        "the file needs 100.0 MiB; the server has 48.0 MiB free and keeps 64.0 MiB in reserve (--min-free-space)"
    );
}

/// Regression (issue 8): when every numbered name was taken, publishing failed with
/// `storage_error` and the client retried forever; it is a permanent error now, and the
/// upload stays open, all chunks durable.
#[test]
fn publish_with_every_name_taken_is_name_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let id = store.create(&record("x.bin", 10)).unwrap();
    let owner = store.owner_dir("alice");
    fs::create_dir_all(&owner).unwrap();
    for n in 0..MAX_NUMBERED {
        let name = match n {
            0 => "x.bin".to_owned(),
            n => ferry_proto::name::numbered("x.bin", n),
        };
        File::create(owner.join(name)).unwrap();
    }
    let err = store
        .publish(id, &record("x.bin", 10), Digest::of(&[0; 10]))
        .unwrap_err();
    assert!(err.downcast_ref::<NameExhausted>().is_some(), "{err:#}");
    let back = store.record(id).unwrap().unwrap();
    assert_eq!(back.state, RecordState::Receiving);
}

/// Regression (issue 8): completed uploads were kept on record without bound. The oldest
/// beyond the history bound are forgotten now; the quota still counts their bytes.
#[test]
fn history_is_bounded_and_the_quota_still_counts_what_was_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), 0).unwrap();
    store.max_history = 3;
    for n in 0..5 {
        let mut rec = record("same.bin", 10);
        rec.updated_at = n;
        let id = store.create(&rec).unwrap();
        store.publish(id, &rec, Digest::of(&[0; 10])).unwrap();
    }
    let complete = store.list("alice").unwrap();
    assert_eq!(complete.len(), 3, "the newest three stay on record");
    assert_eq!(store.published_bytes("alice").unwrap(), 50);
    let files = fs::read_dir(store.owner_dir("alice")).unwrap().count();
    assert_eq!(files, 5, "pruning forgets records, never files");
}

#[test]
fn orphans_leftovers_and_lost_uploads_are_settled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let lost = store.create(&record("lost.mov", 10)).unwrap();
    fs::remove_file(store.staging_path(lost)).unwrap();
    let done = store.create(&record("done.mov", 10)).unwrap();
    let published = store
        .publish(done, &record("done.mov", 10), Digest::of(&[0; 10]))
        .unwrap();
    fs::hard_link(
        store.owner_dir("alice").join(&published),
        store.staging_path(done),
    )
    .unwrap();
    let orphan = store.staging_path(UploadId::random().unwrap());
    fs::write(&orphan, b"no record").unwrap();
    let unrelated = dir.path().join("staging").join("notes.txt");
    fs::write(&unrelated, b"not ours").unwrap();
    drop(store);

    let (store, report) = Store::open(dir.path(), 0).unwrap();
    let expected = Reconciled {
        orphans: 1,
        leftovers: 1,
        lost: 1,
        ..Default::default()
    };
    assert_eq!(report.reconciled, expected);
    assert!(!orphan.exists() && !store.staging_path(done).exists());
    assert!(
        unrelated.exists(),
        "files not named like staging files are left alone"
    );
    assert!(store.record(lost).unwrap().is_none());
    assert!(store.owner_dir("alice").join(&published).exists());
    drop(store);
    let (_, again) = Store::open(dir.path(), 0).unwrap();
    assert!(!again.reconciled.any(), "nothing left to settle");
}

/// Regression (issue 21, finding 11): a power cut before a new folder's entry was durable lost
/// a published file while its record stayed `complete`, so a re-run was told it was there. At
/// start such a record is forgotten (and its bytes leave the owner's usage).
#[test]
fn a_complete_upload_whose_file_vanished_is_forgotten_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let id = store.create(&record("gone.mov", 10)).unwrap();
    let name = store
        .publish(id, &record("gone.mov", 10), Digest::of(&[0; 10]))
        .unwrap();
    assert_eq!(store.published_bytes("alice").unwrap(), 10);
    fs::remove_file(store.owner_dir("alice").join(&name)).unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path(), 0).unwrap();
    assert_eq!(report.reconciled.vanished, 1);
    assert!(store.record(id).unwrap().is_none());
    assert_eq!(store.published_bytes("alice").unwrap(), 0);
}

/// A completed upload of `bytes` as `name`, its staging file written first.
fn published(store: &Store, name: &str, bytes: &[u8]) -> (UploadId, String) {
    let rec = record(name, bytes.len() as u64);
    let id = store.create(&rec).unwrap();
    fs::write(store.staging_path(id), bytes).unwrap();
    let name = store.publish(id, &rec, Digest::of(bytes)).unwrap();
    (id, name)
}

/// `dedup` finds the owner's completed upload of the same content and publishes a second
/// link, never another owner's (unless allowed), never a file rewritten since.
#[test]
fn dedup_links_unchanged_content_of_the_same_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let bytes = b"ten bytes!";
    let digest = Digest::of(bytes);
    published(&store, "a.mov", bytes);
    assert!(store
        .find_content("bob", (10, 4096), digest, false, "a.mov")
        .unwrap()
        .is_none());
    assert!(store
        .find_content("bob", (10, 4096), digest, true, "a.mov")
        .unwrap()
        .is_some());
    assert!(store
        .find_content("alice", (11, 4096), digest, false, "a.mov")
        .unwrap()
        .is_none());
    assert!(
        store
            .find_content("alice", (10, 8192), digest, false, "a.mov")
            .unwrap()
            .is_none(),
        "a content hash of another chunk size is another digest"
    );
    let found = store
        .find_content("alice", (10, 4096), digest, false, "a.mov")
        .unwrap()
        .unwrap();
    let (id, name) = store
        .publish_dedup(&found.path, &record("copy.mov", 10), digest)
        .unwrap();
    assert_eq!(name, "copy.mov");
    let owner = store.owner_dir("alice");
    assert_eq!(fs::read(owner.join("copy.mov")).unwrap(), bytes);
    let rec = store.record(id).unwrap().unwrap();
    assert_eq!((rec.state, rec.dedup), (RecordState::Complete, true));
    assert!(!store.staging_path(id).exists());
    assert_eq!(store.published_bytes("alice").unwrap(), 20);

    // Rewritten in place after publishing (both names are one file, so both changed): no
    // longer offered, its stamp changed.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(owner.join("a.mov"), b"TEN BYTES!").unwrap();
    assert!(store
        .find_content("alice", (10, 4096), digest, false, "a.mov")
        .unwrap()
        .is_none());
}

/// With `on_exists` skip or fail, publishing refuses a taken name and leaves the upload as
/// it was; a refused dedup leaves nothing behind.
#[test]
fn a_taken_name_is_refused_unless_renaming() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let (_, first) = published(&store, "a.mov", b"0123456789");
    let mut rec = record("a.mov", 10);
    rec.on_exists = OnExists::Fail;
    assert!(store.name_taken(&rec));
    let id = store.create(&rec).unwrap();
    let err = store.publish(id, &rec, Digest::of(&[0; 10])).unwrap_err();
    assert!(err.downcast_ref::<NameTaken>().is_some(), "{err:#}");
    assert_eq!(
        store.record(id).unwrap().unwrap().state,
        RecordState::Receiving
    );

    let source = store.owner_dir("alice").join(&first);
    let digest = Digest::of(b"0123456789");
    let err = store.publish_dedup(&source, &rec, digest).unwrap_err();
    assert!(err.downcast_ref::<NameTaken>().is_some(), "{err:#}");
    let records = store.list("alice").unwrap();
    assert_eq!(records.len(), 2, "the refused dedup left no record");
    let staged = fs::read_dir(dir.path().join("staging")).unwrap().count();
    assert_eq!(staged, 1, "only the receiving upload's staging file");
}

/// A crash between a dedup's intent and its link: the next start removes it entirely
/// (never back to receiving: its staging name is a link to a published file).
#[test]
fn an_interrupted_dedup_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 0).unwrap();
    let (_, first) = published(&store, "a.mov", b"0123456789");
    let source = store.owner_dir("alice").join(&first);
    let id = UploadId::random().unwrap();
    fs::hard_link(&source, store.staging_path(id)).unwrap();
    let mut intent = record("b.mov", 10);
    intent.state = RecordState::Publishing;
    intent.final_name = Some("b.mov".into());
    intent.content_hash = Some(Digest::of(b"0123456789").to_hex());
    intent.dedup = true;
    store.put_record(id, &intent).unwrap();
    store.sync().unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path(), 0).unwrap();
    assert_eq!(report.reconciled.rolled_back, 1);
    assert!(store.record(id).unwrap().is_none());
    assert!(!store.staging_path(id).exists());
    assert_eq!(
        fs::read(&source).unwrap(),
        b"0123456789",
        "the source is untouched"
    );
}
