//! The sled database and its trees, and the sync that makes its records durable.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_migrations as migrations;

use crate::fsutil::sync_dir;

/// The database and its trees.
pub(super) struct Db {
    pub(super) db: sled::Db,
    /// sled's log file (`db/db` in sled 0.34), opened a second time for [`Db::sync`].
    log: File,
    /// sled's directory, where it renames new snapshots into place.
    dir: PathBuf,
    pub(super) uploads: sled::Tree,
    pub(super) chunks: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) expired: sled::Tree,
    pub(super) owners: sled::Tree,
    pub(super) hooks: sled::Tree,
}

impl Db {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .with_context(|| format!("failed to open the database {}", path.display()))?;
        // sled writes `conf` once and never syncs it, nor the directories it creates: after a
        // power cut it would find an empty configuration file.
        let synced = File::open(path.join("conf"))
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_dir(&path.join("blobs")))
            .and_then(|()| sync_dir(path))
            .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))));
        synced.with_context(|| format!("failed to sync the database {}", path.display()))?;
        let log = File::open(path.join("db"))
            .with_context(|| format!("failed to open the database log in {}", path.display()))?;
        Ok(Self {
            log,
            dir: path.to_owned(),
            uploads: db.open_tree(migrations::UPLOADS)?,
            chunks: db.open_tree(migrations::CHUNKS)?,
            meta: db.open_tree(migrations::META)?,
            expired: db.open_tree(migrations::EXPIRED)?,
            owners: db.open_tree(migrations::OWNERS)?,
            hooks: db.open_tree(migrations::HOOKS)?,
            db,
        })
    }

    /// Makes every record written so far durable. sled 0.34's `flush` writes its buffers with
    /// `pwrite` and waits on `sync_file_range`, which commits no metadata (the log grew), does
    /// not flush the disk's write cache, and on some file systems (FUSE) does nothing; its real
    /// fsync runs in a background thread every 500 ms. So after sled's flush this fdatasyncs
    /// sled's log file through our own descriptor (fsync acts on the file, not the
    /// descriptor) and fsyncs sled's directory, where snapshots are renamed into place. An
    /// extra sync never puts the files in a state sled's own recovery must not already handle:
    /// the kernel may write back dirty pages at any moment.
    pub(super) fn sync(&self) -> Result<()> {
        self.db.flush().context("failed to flush the database")?;
        self.log
            .sync_data()
            .context("failed to sync the database log")?;
        self.sync_blobs()
            .context("failed to sync the database's blob files")?;
        sync_dir(&self.dir).context("failed to sync the database directory")?;
        Ok(())
    }

    /// sled writes a value too large for its log (over about 128 KiB serialised: a tree node of
    /// records with long descriptions can get there) to a file in `blobs/`, and never syncs
    /// it. The directory is almost always empty, so this usually costs one `readdir`.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut any = false;
        for entry in fs::read_dir(&blobs)? {
            match File::open(entry?.path()).and_then(|f| f.sync_all()) {
                // Removed by sled's blob collector meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                result => result?,
            }
            any = true;
        }
        if any {
            sync_dir(&blobs)?;
        }
        Ok(())
    }
}
