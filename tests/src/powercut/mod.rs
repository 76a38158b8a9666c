//! A file system that forgets, at a simulated power cut, every write that was not made durable:
//! Jepsen's LazyFS idea, small enough to read in one sitting. It runs inside the test process
//! through FUSE (the `fuser` crate, mounting directly as root, no libfuse needed) and keeps
//! everything in memory; `model.rs` says what survives a cut.
//!
//! A cut has two steps. [`PowerCutFs::power_off`] is the instant of the cut: from then on every
//! change fails with EIO and reaches nothing, so what the processes above do while they are
//! being killed cannot count. [`PowerCutFs::cut`], called after every process using the mount
//! is dead, unmounts, rolls the state back to what was durable, and mounts again, so no kernel
//! cache (page cache, dentries) outlives the cut.

pub mod model;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
pub use model::{Metadata, Stats};
use model::{Node, State};

/// A mounted power-cut file system. Unmounted on drop.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    hold: Arc<Hold>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl PowerCutFs {
    /// Whether this machine can mount FUSE file systems at all.
    pub fn available() -> bool {
        Path::new("/dev/fuse").exists()
    }

    /// Mounts an empty file system at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path, mode: Metadata) -> std::io::Result<Self> {
        let mut fs = Self {
            state: Arc::new(Mutex::new(State::new(mode))),
            hold: Arc::default(),
            mountpoint: mountpoint.to_owned(),
            session: None,
        };
        fs.session = Some(fs.spawn()?);
        Ok(fs)
    }

    /// The instant of the power cut (see the module doc); `cut` brings the power back.
    pub fn power_off(&self) {
        self.lock().power_off();
    }

    /// Cuts the power now if some file holds written but unsynced bytes; in one step, so the
    /// cut is sure to lose them.
    pub fn power_off_if_unsynced(&self) -> bool {
        let mut state = self.lock();
        let unsynced = state.has_unsynced();
        if unsynced {
            state.power_off();
        }
        unsynced
    }

    /// Arms a cut at the next hard link (the moment `ferryd` publishes a file).
    pub fn power_off_after_link(&self) {
        self.lock().power_off_after_link();
    }

    /// Arms a cut at the `n`th hard link from now.
    pub fn power_off_after_links(&self, n: u32) {
        self.lock().power_off_after_links(n);
    }

    pub fn is_off(&self) -> bool {
        self.lock().is_off()
    }

    /// After the processes are dead: unmount, forget everything not durable, power on, mount
    /// again. Implies `power_off` if it has not happened.
    pub fn cut(&mut self) -> std::io::Result<()> {
        self.power_off();
        if let Some(session) = self.session.take() {
            session.umount_and_join()?;
        }
        self.lock().cut();
        self.session = Some(self.spawn()?);
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Holds back the next fsync of the directory at `path` (relative to the mount point) for
    /// up to `limit`: the call returns only then (or at [`PowerCutFs::release`]), as a slow disk
    /// would, while every other operation goes on — the window in which another thread may
    /// rely on an entry of that directory that is not durable yet.
    pub fn hold_next_dir_sync(&self, path: &Path, limit: Duration) -> std::io::Result<()> {
        let state = self.lock();
        let mut ino = model::ROOT;
        for part in path.iter() {
            ino = state
                .lookup(ino, part)
                .map_err(std::io::Error::from_raw_os_error)?;
        }
        *self.hold.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((ino, limit));
        Ok(())
    }

    /// Whether a held-back directory sync is waiting right now.
    pub fn holding(&self) -> bool {
        self.hold.holding.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets a held-back directory sync go on at once.
    pub fn release(&self) {
        self.hold
            .release
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn spawn(&self) -> std::io::Result<BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("ferry-powercut".into()),
            MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(2);
        let fs = Glue {
            state: self.state.clone(),
            hold: self.hold.clone(),
        };
        fuser::spawn_mount(fs, &self.mountpoint, &config)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

/// The `fuser::Filesystem` face of [`State`]: every call locks the state, applies one
/// operation and replies. Nothing is cached in the kernel (zero TTLs, no keep-cache), so the
/// state is the only truth.
struct Glue {
    state: Arc<Mutex<State>>,
    hold: Arc<Hold>,
}

/// A directory sync to hold back (`PowerCutFs::hold_next_dir_sync`).
#[derive(Default)]
struct Hold {
    /// The directory's inode and how long to hold; taken by its next fsync.
    armed: Mutex<Option<(u64, Duration)>>,
    /// Set while a held sync waits.
    holding: std::sync::atomic::AtomicBool,
    /// Set to end the wait early.
    release: std::sync::atomic::AtomicBool,
}

const TTL: Duration = Duration::ZERO;

impl Glue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// mknod, mkdir and create: a new file or directory, and its attributes.
    fn make(
        &self,
        req: &Request,
        (parent, name): (INodeNo, &OsStr),
        dir: bool,
        (mode, umask): (u32, u32),
    ) -> Result<FileAttr, Errno> {
        let mut state = self.lock();
        let perm = (mode & !umask & 0o7777) as u16;
        let ino = state
            .create(parent.0, name, dir, perm, (req.uid(), req.gid()))
            .map_err(errno)?;
        attr(&state, ino)
    }
}

fn attr(state: &State, ino: u64) -> Result<FileAttr, Errno> {
    let inode = state.inode(ino).map_err(Errno::from_i32)?;
    let (kind, size) = match &inode.node {
        Node::File { content, .. } => (FileType::RegularFile, content.len()),
        Node::Dir { entries, .. } => (FileType::Directory, entries.len() as u64),
    };
    let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + inode.version);
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm: inode.perm,
        nlink: inode.links,
        uid: inode.uid,
        gid: inode.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Filesystem for Glue {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.lock();
        match state
            .lookup(parent.0, name)
            .and_then(|ino| attr(&state, ino).map_err(|_| libc::ENOENT))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.lock(), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let mut result = Ok(());
        if let Some(len) = size {
            result = result.and_then(|()| state.set_len(ino.0, len));
        }
        if let Some(mode) = mode {
            result = result.and_then(|()| state.set_perm(ino.0, (mode & 0o7777) as u16));
        }
        match result.map_err(errno).and_then(|()| attr(&state, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::ENOSYS);
        }
        match self.make(req, (parent, name), false, (mode, umask)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make(req, (parent, name), true, (mode, umask)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .lock()
            .rename(parent.0, name, newparent.0, newname, no_replace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        match state
            .link(ino.0, newparent.0, newname)
            .map_err(errno)
            .and_then(|()| attr(&state, ino.0))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().inode(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        let entries = match state.entries(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [(OsStr::new("."), ino.0), (OsStr::new(".."), ino.0)];
        let all = dots
            .into_iter()
            .chain(entries.iter().map(|(name, &ino)| (name.as_os_str(), ino)));
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match state.inode(child).map(|i| &i.node) {
                Ok(Node::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A directory's fsync makes its entries durable: the same operation on the state.
        let held = {
            let mut armed = self.hold.armed.lock().unwrap_or_else(|p| p.into_inner());
            match *armed {
                Some((dir, limit)) if dir == ino.0 => armed.take().map(|_| limit),
                _ => None,
            }
        };
        let Some(limit) = held else {
            return self.fsync(req, ino, fh, datasync, reply);
        };
        // Replied from another thread, after the wait: the FUSE threads serve everything else.
        use std::sync::atomic::Ordering::SeqCst;
        self.hold.holding.store(true, SeqCst);
        self.hold.release.store(false, SeqCst);
        let (state, hold) = (self.state.clone(), self.hold.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + limit;
            while std::time::Instant::now() < until && !hold.release.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let synced = state.lock().unwrap_or_else(|p| p.into_inner()).sync(ino.0);
            hold.holding.store(false, SeqCst);
            match synced {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 TiB, all free: space checks pass; the content lives in memory, sparse.
        let blocks = 1 << 30;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, (parent, name), false, (mode, umask)) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.lock().allocate(ino.0, offset.saturating_add(length)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}
