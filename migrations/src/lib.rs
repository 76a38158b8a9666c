//! Numbered, idempotent schema steps for the server's sled store. `migrate` runs at every
//! start: it reads `schema_version` from the `meta` tree, applies each later step in order
//! (recording the version after each), and refuses a store written by a newer Ferry.

/// The schema version this build writes.
pub const CURRENT: u32 = 5;
/// Tree holding `schema_version` and the clean-shutdown marker.
pub const META: &str = "meta";
/// Tree of upload records: upload id (16 bytes) → JSON record.
pub const UPLOADS: &str = "uploads";
/// Tree of durable chunks: upload id (16 bytes) ++ chunk index (u64 BE) → SHA-256 (32 bytes).
pub const CHUNKS: &str = "chunks";
/// Tree of expired uploads (since v2): upload id (16 bytes) → JSON `{owner, expired_at}`, so a
/// client resuming one learns it expired instead of "not found".
pub const EXPIRED: &str = "expired";
/// Tree of owners (since v3): owner name → bytes of the uploads they completed (u64 BE), kept
/// even when old completed records are pruned, so the quota still counts them.
pub const OWNERS: &str = "owners";
/// Tree of `--on-complete` hook jobs waiting to run (since v4): sequence number (u64 BE) →
/// JSON job, written in the same transaction as the upload's complete record, removed after
/// the hook ran.
pub const HOOKS: &str = "hooks";
/// Key of the schema version (u32 BE) in `meta`.
pub const SCHEMA_VERSION: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The store was written by a newer Ferry; running an older one on it could corrupt it.
    #[error("the store has schema version {found}, newer than the {supported} this ferryd supports; run a newer ferryd")]
    TooNew { found: u32, supported: u32 },
    /// `schema_version` is not a 4-byte value.
    #[error("the store's schema_version record is corrupt ({len} bytes)")]
    Corrupt { len: usize },
    #[error(transparent)]
    Sled(#[from] sled::Error),
}

/// One schema step: brings a store at version `to - 1` to version `to`. Must be idempotent,
/// since a crash between the step and the version record re-runs it.
struct Step {
    to: u32,
    apply: fn(&sled::Db) -> Result<(), sled::Error>,
}

const STEPS: &[Step] = &[
    Step { to: 1, apply: v1 },
    Step { to: 2, apply: v2 },
    Step { to: 3, apply: v3 },
    Step { to: 4, apply: v4 },
    Step { to: 5, apply: v5 },
];

/// v1: the three trees of the first release.
fn v1(db: &sled::Db) -> Result<(), sled::Error> {
    for tree in [META, UPLOADS, CHUNKS] {
        db.open_tree(tree)?;
    }
    Ok(())
}

/// v2: the `expired` tree of tombstones.
fn v2(db: &sled::Db) -> Result<(), sled::Error> {
    db.open_tree(EXPIRED)?;
    Ok(())
}

/// v3: the `owners` tree, its published-bytes counters computed from the completed records
/// (recomputed, not added to, so a re-run is harmless). Upload records may from now on be in
/// state `publishing`, which a v2 ferryd cannot read: the version keeps it off the store.
fn v3(db: &sled::Db) -> Result<(), sled::Error> {
    /// The fields this step needs of an upload record.
    #[derive(serde::Deserialize)]
    struct Record {
        owner: String,
        size: u64,
        state: String,
    }
    let mut published: std::collections::BTreeMap<String, u64> = Default::default();
    for entry in db.open_tree(UPLOADS)?.iter() {
        let (_, raw) = entry?;
        if let Ok(record) = serde_json::from_slice::<Record>(&raw) {
            if record.state == "complete" {
                *published.entry(record.owner).or_default() += record.size;
            }
        }
    }
    let owners = db.open_tree(OWNERS)?;
    for (owner, bytes) in published {
        owners.insert(owner.as_bytes(), &bytes.to_be_bytes())?;
    }
    Ok(())
}

/// v4: the `hooks` tree. Upload records may from now on be published by `dedup` (`dedup`:
/// true, their staging name a second link to a published file): a v3 ferryd would roll an
/// interrupted one back to `receiving` and could then write into the published file. The
/// version keeps it off the store.
fn v4(db: &sled::Db) -> Result<(), sled::Error> {
    db.open_tree(HOOKS)?;
    Ok(())
}

/// v5: nothing to change. Upload records may from now on be of a length not yet declared
/// (`deferred`: their `size` is only the bound their layout is cut for, their staging file
/// holds only what arrived) or tus partial uploads (`partial`: never to be published by
/// themselves), and `meta` may hold `tail/<id>` (a partial chunk's bytes): a v4 ferryd would
/// take such an upload for one of its provisional size, and could publish a partial one. The
/// version keeps it off the store.
fn v5(_db: &sled::Db) -> Result<(), sled::Error> {
    Ok(())
}

/// The store's schema version; 0 for a new store.
pub fn version(db: &sled::Db) -> Result<u32, MigrationError> {
    match db.open_tree(META)?.get(SCHEMA_VERSION)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| MigrationError::Corrupt { len: v.len() })?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// Brings `db` to [`CURRENT`]. Returns the version found before.
pub fn migrate(db: &sled::Db) -> Result<u32, MigrationError> {
    let found = version(db)?;
    if found > CURRENT {
        return Err(MigrationError::TooNew {
            found,
            supported: CURRENT,
        });
    }
    let meta = db.open_tree(META)?;
    for step in STEPS.iter().filter(|s| s.to > found) {
        (step.apply)(db)?;
        meta.insert(SCHEMA_VERSION, &step.to.to_be_bytes())?;
        db.flush()?;
    }
    Ok(found)
}

/// Writes a schema version directly. For tests and fixtures that need a store from another
/// version.
pub fn set_version(db: &sled::Db, version: u32) -> Result<(), sled::Error> {
    db.open_tree(META)?
        .insert(SCHEMA_VERSION, &version.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> sled::Db {
        sled::Config::new().path(dir).open().unwrap()
    }

    #[test]
    fn new_store_reaches_current_and_rerun_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert_eq!(migrate(&db).unwrap(), 0);
        assert_eq!(version(&db).unwrap(), CURRENT);
        assert_eq!(migrate(&db).unwrap(), CURRENT);
        assert!(db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == CHUNKS.as_bytes()));
    }

    #[test]
    fn v1_store_is_brought_to_current_keeping_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        v1(&db).unwrap();
        set_version(&db, 1).unwrap();
        db.open_tree(UPLOADS).unwrap().insert(b"k", b"v").unwrap();
        assert_eq!(migrate(&db).unwrap(), 1);
        assert_eq!(version(&db).unwrap(), CURRENT);
        assert!(db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == EXPIRED.as_bytes()));
        assert_eq!(
            db.open_tree(UPLOADS).unwrap().get(b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn v3_counts_the_bytes_each_owner_completed() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        v1(&db).unwrap();
        v2(&db).unwrap();
        set_version(&db, 2).unwrap();
        let uploads = db.open_tree(UPLOADS).unwrap();
        let rows = [
            (b"a", r#"{"owner":"alice","size":10,"state":"complete"}"#),
            (b"b", r#"{"owner":"alice","size":5,"state":"complete"}"#),
            (b"c", r#"{"owner":"alice","size":99,"state":"receiving"}"#),
            (b"d", r#"{"owner":"bob","size":7,"state":"complete"}"#),
        ];
        for (key, value) in rows {
            uploads.insert(key, value.as_bytes()).unwrap();
        }
        migrate(&db).unwrap();
        migrate(&db).unwrap();
        let owners = db.open_tree(OWNERS).unwrap();
        let bytes = |o: &str| {
            u64::from_be_bytes(owners.get(o).unwrap().unwrap().as_ref().try_into().unwrap())
        };
        assert_eq!((bytes("alice"), bytes("bob")), (15, 7));
        v3(&db).unwrap();
        assert_eq!(bytes("alice"), 15, "a re-run recomputes, it does not add");
    }

    #[test]
    fn newer_store_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        set_version(&db, CURRENT + 1).unwrap();
        let err = migrate(&db).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the store has schema version {}, newer than the {CURRENT} this ferryd supports; run a newer ferryd", CURRENT + 1)
        );
        assert_eq!(
            version(&db).unwrap(),
            CURRENT + 1,
            "a refused store is left untouched"
        );
    }

    #[test]
    fn corrupt_version_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.open_tree(META)
            .unwrap()
            .insert(SCHEMA_VERSION, &b"x"[..])
            .unwrap();
        assert!(matches!(
            migrate(&db),
            Err(MigrationError::Corrupt { len: 1 })
        ));
    }
}
